// Package webhook deduplicates incoming webhooks by the sender's event id:
// an http.Handler wrapper that runs the wrapped handler once per event id and
// answers 2xx to the sender's retries, so a notification, a payment update or
// a provisioning request is applied once however often the sender retries.
//
// The event id is read from the Standard Webhooks "webhook-id" header by
// default, or from a configured header or top-level JSON field of the body.
// Verify the sender's signature before this handler (wrap it), so an
// unauthenticated request can never claim an id.
//
// Answers:
//
//	situation                                    status
//	first delivery                               the wrapped handler's own
//	handler answered 2xx earlier (duplicate)     200 (Config.DuplicateStatus), empty body, Idempotent-Replayed: true
//	same id being processed now (in flight)      409 with Retry-After (seconds left on the lease)
//	store unreachable                            503 with Retry-After (Config.RetryAfter); handler not run
//	id missing or invalid                        400; handler not run
//	body larger than MaxBody (JSON field mode)   413; handler not run
//
// Only a 2xx answer of the wrapped handler marks the event processed. Any
// other status (4xx and 5xx alike), or a panic, releases the claim so that the
// sender's next retry runs the handler again: a webhook sender treats every
// non-2xx answer as a failure and retries it, so remembering it would turn a
// transient failure into a silently dropped event. 409 and 503 are answered
// for in-flight and store failures precisely because senders retry them
// (Stripe, GitHub, Svix and Standard Webhooks senders retry any non-2xx).
package webhook
