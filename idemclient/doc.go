// Package idemclient is the client half of the idempotency-key contract: an
// http.RoundTripper that retries requests safely.
//
// Idempotency keys only pay off if clients retry correctly: the same key on
// every retry of one logical request, a wait when the server says the key is
// still in flight (409 with Retry-After) or that it is overloaded (429, 503),
// no retry at all after a client error such as 400 or 422, and no retry once
// the server may have forgotten the key. Transport does this for any
// http.Client by changing one line:
//
//	client := &http.Client{Transport: &idemclient.Transport{}}
//
// POST and PATCH requests without an Idempotency-Key get a random one
// (NewKey: a UUIDv4 from crypto/rand); a key set by the caller is sent
// unchanged. GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent by
// definition and are retried without a key. Other requests pass through
// untouched. See Transport for what is retried, how long it waits and when
// it stops; Replayed tells a replayed response from a fresh one, and
// ParseRetryAfter reads a Retry-After header.
//
// When the Transport gives up on a keyed request it returns the last
// response, or an *Error carrying the key so that the caller can persist it
// and retry later (WithKeyTime, KeyMaxAge) without executing the operation
// twice.
//
// This package imports only the standard library and starts no goroutines.
package idemclient
