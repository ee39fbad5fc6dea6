// Package webhook verifies and deduplicates incoming webhooks: an
// http.Handler wrapper that checks the sender's signature and timestamp, then
// runs the wrapped handler once per event id and answers 2xx to the sender's
// retries, so a notification, a payment update or a provisioning request is
// applied once however often the sender retries, and never for a request the
// sender did not sign.
//
// # Verification before deduplication
//
// Config.Verifier runs first, before any store call. Two schemes are built
// in:
//
//   - Standard (https://www.standardwebhooks.com, used by Svix and others):
//     headers webhook-id, webhook-timestamp (unix seconds) and
//     webhook-signature, a space-separated list of "v1,<base64>" entries,
//     each an HMAC-SHA256 of "<id>.<timestamp>.<body>" under the base64 key
//     of a "whsec_…" secret. The id deduplicated on is the signed
//     webhook-id.
//   - Stripe: header Stripe-Signature "t=<unix>,v1=<hex>[,v1=…]", an
//     HMAC-SHA256 of "<t>.<body>" under the whole "whsec_…" secret; v0 and
//     other schemes are ignored. The id deduplicated on is the body's "id"
//     field (evt_…).
//
// Both accept several secrets (rotation) and several signatures (a sender
// rotating its secret signs with both); a request passes when any signature
// matches under any secret. MACs are compared in constant time. The signed
// timestamp must lie within the tolerance (DefaultTolerance, 5 minutes) of
// the receiver's clock, in the past or the future; the clock is injectable
// (Standard.Now, Stripe.Now). The signature is checked first, so
// ErrTimestampStale always means an authentic delivery that came too late (a
// captured request replayed, or a clock off by minutes).
//
// The timestamp rule is what refuses a captured delivery replayed after its
// id has been forgotten: a delivery signed at t is accepted from t-tolerance
// to t+tolerance only, so as long as the Deduper's retention is longer than
// twice the tolerance (Handler refuses a configuration where it is not) the
// id of every delivery that can still pass verification is still remembered.
// Senders sign each attempt when they send it, so their own retries carry
// fresh timestamps and pass; the retention must still cover the sender's
// retry horizon (see Config.Deduper).
//
// Running without verification requires Config.Unverified, an explicit
// opt-out for requests authenticated before this handler. Do not verify
// inside the wrapped handler: it runs after the dedup step, so an unsigned
// request for a processed id would get the duplicate answer (telling anyone
// which ids exist) instead of a refusal.
//
// VerifyStandard and VerifyStripe verify a request outside the handler (any
// framework), and SignStandard and SignStripe sign one (tests, senders).
// A custom scheme implements Verifier (VerifierFunc adapts a function).
//
// # Answers
//
//	situation                                    status and problem code
//	first delivery                               the wrapped handler's own
//	handler answered 2xx earlier (duplicate)     200 (Config.DuplicateStatus), empty body, Idempotent-Replayed: true
//	same id being processed now (in flight)      409 request-in-progress, Retry-After (seconds left on the lease)
//	store unreachable                            503 store-unavailable, Retry-After (Config.RetryAfter); handler not run
//	unsigned                                     401 webhook-signature-missing; no store call, handler not run
//	no signature matches (forged, wrong secret)  401 webhook-signature-invalid; no store call, handler not run
//	signed outside the tolerance                 401 webhook-timestamp-stale; no store call, handler not run
//	signature headers unparseable or repeated    400 webhook-signature-malformed; no store call, handler not run
//	id missing / invalid                         400 webhook-id-missing / webhook-id-invalid; handler not run
//	body larger than MaxBody                     413 request-too-large; handler not run
//
// Every refusal is an RFC 9457 application/problem+json body with type,
// title, status, detail and a stable code (the Code constants); the detail
// is fixed text, never part of the request. Verification refusals are 401
// (the request is not authenticated; no WWW-Authenticate challenge is sent,
// as no HTTP authentication scheme applies) except unparseable headers, 400.
// They are answered identically whether or not the id was processed.
// Config.OnError receives the underlying error (errors.Is with
// ErrSignatureMissing, ErrSignatureInvalid, ErrSignatureMalformed,
// ErrTimestampStale, ErrNoID, ErrBodyTooLarge, idem.ErrInvalidKey…).
//
// Only a 2xx answer of the wrapped handler marks the event processed. Any
// other status (4xx and 5xx alike), or a panic, releases the claim so that the
// sender's next retry runs the handler again: a webhook sender treats every
// non-2xx answer as a failure and retries it, so remembering it would turn a
// transient failure into a silently dropped event. 409 and 503 are answered
// for in-flight and store failures precisely because senders retry them
// (Stripe, GitHub, Svix and Standard Webhooks senders retry any non-2xx).
package webhook
