// Package idemhttp is net/http middleware that makes retries of unsafe
// requests safe, following the Idempotency-Key header draft
// (draft-ietf-httpapi-idempotency-key-header) and the behaviour contract of
// this module (SPEC §3).
//
// A protected request (POST and PATCH by default) carries a key:
//
//	Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"
//
// The first request with a key runs the handler exactly once. Its response
// streams to the client as written and is stored; every retry with the same
// key and the same request (method, path and query, Content-Type, body) gets
// the stored status, headers and body bytes back with
// Idempotency-Replayed: true and Idempotent-Replayed: true, without running
// the handler.
//
//	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}
//	mw := &idemhttp.Middleware{Keeper: k, ScopeSecret: secret}
//	http.ListenAndServe(addr, authenticate(mw.Handler(mux)))
//
// # Scope: whose key is it
//
// Keys are scoped, so a caller never reads, waits for or collides with
// another caller's record (SPEC §3). Run the middleware after your
// authentication and set Middleware.Scope to a function that returns the
// authenticated principal (tenant or account id, from the request's
// context). Without one, the default is an IdentityScope keyed with
// Middleware.ScopeSecret: an HMAC-SHA-256 of the request's Host (lower-cased)
// and every credential it carries, namely Authorization (auth-scheme
// case-insensitive), Cookie and Middleware.ScopeHeaders (such as
// X-Api-Key); never the raw values. The secret must be the same on every
// instance sharing the store and across restarts; Handler panics when
// neither Scope nor ScopeSecret is set. A request without any credential
// is refused (400 credentials-required) unless Middleware.AllowAnonymous is
// set, and then anonymous requests share one scope per Host, never one with
// a credentialed caller. A request whose Connection header names a
// credential header it carries is refused (400 credential-hop-by-hop): a
// proxy would strip that credential before the application.
//
// # Answers
//
// Errors are RFC 9457 application/problem+json documents with the members
// type (ProblemTypePrefix + code), title, status, detail and code. The
// codes are stable; clients should branch on them:
//
//	status  code                      when
//	400     idempotency-key-missing   no key, and keys are required (Optional unset)
//	400     idempotency-key-invalid   empty, > 255 bytes, not visible ASCII, bad sf-string, or two header lines
//	400     request-body-unreadable   the request body could not be read
//	400     credentials-required      no credential, and anonymous callers are not allowed (AllowAnonymous)
//	400     credential-hop-by-hop     the Connection header names a credential header the request carries
//	400     scope-invalid             Middleware.Scope returned another error
//	400     request-invalid           Middleware.Fingerprint returned an error
//	409     request-in-progress       the key is executing; Retry-After = seconds left on its lease (≥ 1)
//	413     request-too-large         the body is larger than MaxBody (default 1 MiB)
//	422     idempotency-key-reused    the key was used for a different request; nothing changed
//	500     stored-response-invalid   the stored response cannot be decoded; the handler does not run
//	503     store-unavailable         the store failed; the handler did not run (Retry-After: 1)
//	503     request-canceled          the request was canceled before its key was claimed
//
// # What is stored
//
// Responses with a status below 500 other than 429 complete the record
// (so 4xx answers replay deterministically); 5xx, 429, a handler panic
// (including http.ErrAbortHandler) and an abandoned request (the handler
// returned without writing anything after the client went away) release it
// so that a retry executes.
// Middleware.Stored changes the policy. The record is completed or
// released by a store call detached from the request's context (bounded by
// CompleteTimeout), so a client that disconnects does not prevent it; a
// store failure there is retried within that bound (the step is fenced, so
// a retry is safe), because a record left in progress would let the next
// retry execute the handler again once the lease expires.
//
// The status and headers are snapshotted when the handler writes the
// status (or returns without writing: an implicit 200 with an empty body).
// Hop-by-hop headers (and those named in Connection) and the NeverReplay
// list (by default Set-Cookie, Authorization, WWW-Authenticate,
// Proxy-Authenticate and Date) are neither stored nor replayed; a replay
// gets a fresh Date, and its Content-Length is the stored body's. Headers
// that outer middleware set on the ResponseWriter before the request reached
// the middleware (a request id, CORS headers) are not stored unless the
// handler changed them: the outer middleware sets them afresh on each
// replay. A body
// larger than MaxResult reaches the client whole but is not stored: a
// replay answers the status and headers with an empty body and
// Idempotency-Replay: omitted. Informational (1xx) responses and trailers
// are passed through and not stored.
//
// # Leases and fences
//
// While the handler runs it holds the key's lease. Once it has run for a
// third of the lease period the lease is extended, and then again every
// third of the period (idem.Lease.StartRenewal) until the record is
// completed or released, when the store implements idem.Extender. Requests
// shorter than that cost one timer, not a goroutine. The lease's fence is in the handler's context
// (idem.FenceFromContext), so a downstream write can be made conditional
// on it. If the lease is nevertheless taken over (a stalled process), the
// late completion is refused with idem.ErrLeaseLost: the client still gets
// its response, the newer executor's record stands, and the loss is
// reported through Keeper.Observer and Outcome.Err.
//
// # The response writer
//
// The handler's http.ResponseWriter passes every write through at once and
// supports http.Flusher, http.Hijacker and Unwrap (for
// http.ResponseController). Writes made directly to the unwrapped writer are
// not recorded; a handler that hijacks the connection answers out of sight,
// so its record is released, not stored. Once a write to the client fails because the client went
// away, later writes are recorded and reported as successful without being
// sent, so that a handler copying a body runs to its end and the record
// holds the whole response; handlers see the departure in the request's
// context.
//
// Place response-transforming middleware (compression, for instance)
// outside idemhttp: the stored response is what the handler wrote, and the
// fingerprint does not include Accept-Encoding.
//
// # The key header
//
// The key is an RFC 9651 Item: an sf-string or a bare value (see
// ParseKey). Two Idempotency-Key field lines are refused (400
// idempotency-key-invalid), and a single line is never split at commas.
//
// This package imports only the standard library.
package idemhttp
