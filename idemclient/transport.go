package idemclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"github.com/idemkit/idem"
)

// Defaults used by a Transport whose corresponding field is zero.
const (
	// DefaultHeader is the request header that carries the key
	// (draft-ietf-httpapi-idempotency-key-header).
	DefaultHeader = "Idempotency-Key"
	// DefaultMaxAttempts is the number of attempts, the first included.
	DefaultMaxAttempts = 5
	// DefaultBaseDelay is the backoff ceiling after the first attempt; it
	// doubles after every further attempt, up to DefaultMaxDelay.
	DefaultBaseDelay = 100 * time.Millisecond
	// DefaultMaxDelay caps the backoff between two attempts. It does not cap
	// a server's Retry-After.
	DefaultMaxDelay = 10 * time.Second
	// DefaultMaxElapsed bounds the time from the start of RoundTrip to the
	// start of its last attempt.
	DefaultMaxElapsed = time.Minute
	// DefaultBodyLimit is how many bytes of a request body without GetBody
	// are buffered so that it can be sent again (1 MiB).
	DefaultBodyLimit = 1 << 20
)

// drainLimit is how much of a discarded response body is read so that its
// connection can be reused; a longer body is closed unread.
const drainLimit = 64 << 10

// Transport is an http.RoundTripper that retries requests safely: it gives
// every POST and PATCH (by default) an Idempotency-Key, keeps that key on
// every retry, and retries only outcomes after which trying again is both
// safe and useful.
//
// The zero value is ready to use and wraps http.DefaultTransport:
//
//	client := &http.Client{Transport: &idemclient.Transport{}}
//
// A Transport is safe for concurrent use, holds no state between requests
// and must not have its fields changed while in use.
//
// # Which requests
//
// A request is managed when it carries a key (the caller's, which is never
// changed, or one the Transport adds because its method is in Methods) or
// when its method is idempotent by definition (GET, HEAD, OPTIONS, TRACE,
// PUT, DELETE: retried without a key). Any other request is passed to Base
// unchanged, exactly once, and Base's response or error is returned as is.
//
// A key lives for one RoundTrip call: a redirect that http.Client follows is
// a new request to another resource and gets a new key, and so does the same
// request passed to RoundTrip twice. To keep one key across calls (or
// processes), set it on the request yourself.
//
// RoundTrip never modifies the caller's request: when it adds a key it sends
// a shallow copy with a copied header map. Base sets the response's Request
// field to the request as sent (http.Transport does), so
// resp.Request.Header carries the key.
//
// # What is retried
//
//   - An error from Base (connection refused or reset, a timeout, a
//     connection closed before the response arrived): the request may or may
//     not have reached the server, and the key makes a second try safe.
//     Errors once the request context is done, and TLS certificate errors,
//     are not retried. For a
//     per-attempt time limit, set the base http.Transport's
//     ResponseHeaderTimeout (and a dial timeout): an attempt that runs into
//     it is retried, while the request context bounds the whole call.
//   - 409 Conflict with a Retry-After header, only for a request carrying a
//     key: a duplicate of that key is still in flight on the server (idemhttp
//     answers so). A 409 without Retry-After is a business conflict and is
//     returned.
//   - 408, 429 and 503, after Retry-After when the server sends one.
//   - Other 5xx (except 501 and 505) when RetryServerErrors is set.
//
// (http.Transport also retries, by itself, a request carrying an
// Idempotency-Key whose reused keep-alive connection broke; the Transport
// does not see those retries, which are safe for the same reason.)
//
// Nothing else is: 400, 401, 403, 404, 413, 422 and every other status are
// returned at once. The wait before a retry is the server's Retry-After if it
// sent one, otherwise exponential backoff with full jitter: a uniformly random
// duration in [0, min(MaxDelay, BaseDelay·2^(n-1))] after attempt n.
//
// # When it stops
//
// RoundTrip makes at most MaxAttempts attempts and starts none later than
// MaxElapsed after it was called, nor later than KeyMaxAge after the key was
// first used, nor after the request context's deadline. When the wait before
// the next attempt would cross one of these limits (including a Retry-After
// longer than the time left), it does not wait: it returns the last response,
// or an *Error. A done context ends a wait at once and no attempt starts
// after it. Responses it does not return are drained (up to 64 KiB) and
// closed.
//
// # Request bodies
//
// A body is sent again by calling the request's GetBody (set by
// http.NewRequest for bytes, strings and bytes.Buffer readers). A body
// without GetBody is read into memory first, up to BodyLimit bytes. A longer
// body is streamed once, unbuffered, and not retried: a retryable response is
// returned as it is and a retryable error is returned as an *Error whose
// Stop is ErrBodyNotReplayable; the observer sees the same reason in
// AttemptInfo.GiveUp.
type Transport struct {
	// Base sends each attempt. If nil, http.DefaultTransport is used.
	Base http.RoundTripper

	// Methods lists the methods whose requests get a key when they have none.
	// If nil, POST and PATCH. Requests of other methods keep a key the
	// caller set, and are then retried like keyed requests.
	Methods []string

	// Header is the name of the key header. If empty, DefaultHeader
	// ("Idempotency-Key").
	Header string

	// KeyFunc returns the key for a request that needs one. If nil, NewKey
	// is used. A KeyFunc may derive the key from the request (an order id,
	// say). An error from it, an empty key or one with control characters
	// (idem.ErrInvalidKey) fails the request before anything is sent.
	KeyFunc func(*http.Request) (string, error)

	// MaxAttempts is the most attempts made for one request, the first
	// included; 1 disables retries. If zero or negative,
	// DefaultMaxAttempts (5).
	MaxAttempts int

	// BaseDelay is the backoff ceiling after the first attempt, doubled after
	// each further one. If zero or negative, DefaultBaseDelay (100 ms).
	BaseDelay time.Duration

	// MaxDelay caps the backoff between attempts (not a server's
	// Retry-After, which MaxElapsed bounds instead). If zero or negative,
	// DefaultMaxDelay (10 s).
	MaxDelay time.Duration

	// MaxElapsed bounds the time from the start of RoundTrip to the start of
	// its last attempt. If zero, DefaultMaxElapsed (1 min); if negative, no
	// bound other than MaxAttempts and the context.
	MaxElapsed time.Duration

	// KeyMaxAge, if positive, is the oldest a key may be when an attempt
	// carrying it starts. Set it comfortably below the server's retention
	// (24 h for idemhttp and Stripe): once a server forgets a key, a retry
	// with it executes the operation again. A key's age counts from the start
	// of RoundTrip, or from the time given to WithKeyTime for a
	// caller-provided key.
	KeyMaxAge time.Duration

	// RetryServerErrors makes 500, 502, 504 and the other 5xx statuses except
	// 501 and 505 retryable. By default only 503 is.
	RetryServerErrors bool

	// BodyLimit is how many bytes of a body without GetBody are buffered to
	// make it replayable. If zero, DefaultBodyLimit (1 MiB); if negative,
	// such bodies are never buffered and so never retried.
	BodyLimit int64

	// OnAttempt, if set, is called after every attempt, on the goroutine
	// running RoundTrip, before the Transport waits. It must not read or
	// close AttemptInfo.Response.Body nor keep the AttemptInfo after it returns.
	OnAttempt func(AttemptInfo)

	// now and wait replace the clock and the backoff sleep in tests.
	now  func() time.Time
	wait func(ctx context.Context, d time.Duration) error
}

// AttemptInfo describes one attempt, for logging and metrics (see
// Transport.OnAttempt).
type AttemptInfo struct {
	// Request is the request as sent, key included.
	Request *http.Request
	// N is the attempt number, starting at 1.
	N int
	// Key is the idempotency key sent; empty if none.
	Key string
	// Response is the response received, or nil if Err is set. Its body
	// belongs to RoundTrip.
	Response *http.Response
	// Status is Response.StatusCode, or 0.
	Status int
	// Err is the attempt's error, or nil.
	Err error
	// Retry reports whether the Transport will wait Delay and try again
	// (unless the request context ends during the wait).
	Retry bool
	// Delay is the wait chosen before the next attempt (0 if Retry is false).
	Delay time.Duration
	// GiveUp is set when the outcome was retryable but no further attempt
	// will be made: ErrBodyNotReplayable, ErrAttemptsExhausted,
	// ErrBudgetExhausted or the context's error.
	GiveUp error
}

var _ http.RoundTripper = (*Transport)(nil)

// keyedRequest lets the request copy and its key header value share one
// allocation.
type keyedRequest struct {
	req http.Request
	val [1]string
}

// RoundTrip implements http.RoundTripper, sending req and retrying it as
// described on Transport. It always closes req.Body.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	hdr := DefaultHeader
	if t.Header != "" {
		hdr = textproto.CanonicalMIMEHeaderKey(t.Header)
	}
	ctx := req.Context()

	var key string
	callerKey := false
	if vs := req.Header[hdr]; len(vs) > 0 {
		key, callerKey = vs[0], true
	}
	addKey := !callerKey && t.keyMethod(req.Method)
	if !callerKey && !addKey && !idempotent(req.Method) {
		resp, err := base.RoundTrip(req)
		t.observe(AttemptInfo{Request: req, N: 1, Response: resp, Status: status(resp), Err: err})
		return resp, err
	}
	keyed := callerKey || addKey
	fail := func(n int, stop, err error) (*http.Response, error) {
		return nil, &Error{Method: req.Method, URL: urlString(req), Key: key, Attempts: n, Stop: stop, Err: err}
	}
	if callerKey && !sendable(key) {
		// net/http would refuse it on every attempt.
		closeBody(req)
		return fail(0, nil, fmt.Errorf("%w: control character in %s", idem.ErrInvalidKey, hdr))
	}

	// The first attempt sends req itself unless a key or a buffered body
	// must be put in: then a shallow copy, never touching the caller's.
	out := req
	if addKey {
		if t.KeyFunc != nil {
			k, err := t.KeyFunc(req)
			if err == nil && (k == "" || !sendable(k)) {
				err = fmt.Errorf("%w: KeyFunc returned %q", idem.ErrInvalidKey, k)
			}
			if err != nil {
				closeBody(req)
				return fail(0, nil, err)
			}
			key = k
		} else {
			var b [16]byte
			var s [36]byte
			newKey(&b, &s)
			key = string(s[:])
		}
		kr := &keyedRequest{req: *req}
		kr.val[0] = key
		// The copy shares the value slices, which nothing modifies.
		h := maps.Clone(req.Header) // faster than make and insert
		if h == nil {
			h = make(http.Header, 1)
		}
		h[hdr] = kr.val[:]
		kr.req.Header = h
		out = &kr.req
	}

	start := t.clock()
	var deadline time.Time // zero: unbounded
	if me := t.maxElapsed(); me >= 0 {
		deadline = start.Add(me)
	}
	if t.KeyMaxAge > 0 && keyed {
		born := start
		if tk, ok := keyTime(ctx); ok && callerKey {
			born = tk
		}
		kd := born.Add(t.KeyMaxAge)
		if !start.Before(kd) {
			closeBody(req)
			return fail(0, ErrKeyExpired, nil)
		}
		if deadline.IsZero() || kd.Before(deadline) {
			deadline = kd
		}
	}
	if cd, ok := ctx.Deadline(); ok && (deadline.IsZero() || cd.Before(deadline)) {
		deadline = cd
	}

	// Make the body replayable.
	replayable := true
	getBody := req.GetBody
	if req.Body != nil && req.Body != http.NoBody && getBody == nil {
		limit := t.bodyLimit()
		if limit < 0 || req.ContentLength > limit {
			replayable = false
		} else {
			buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
			if err != nil {
				closeBody(req)
				return fail(0, nil, err)
			}
			cp := new(http.Request)
			*cp = *out
			if int64(len(buf)) > limit {
				replayable = false
				cp.Body = &prefixedBody{Reader: io.MultiReader(bytes.NewReader(buf), req.Body), c: req.Body}
			} else {
				req.Body.Close()
				getBody = func() (io.ReadCloser, error) {
					if len(buf) == 0 {
						return http.NoBody, nil
					}
					return io.NopCloser(bytes.NewReader(buf)), nil
				}
				cp.Body, _ = getBody()
				cp.GetBody = getBody
				if cp.ContentLength <= 0 {
					cp.ContentLength = int64(len(buf))
				}
			}
			out = cp
		}
	}
	if req.Body == nil || req.Body == http.NoBody {
		getBody = nil
	}

	maxAttempts := t.maxAttempts()
	tmpl := out
	for n := 1; ; n++ {
		if n > 1 {
			cp := new(http.Request)
			*cp = *tmpl
			if getBody != nil {
				body, err := getBody()
				if err != nil {
					return fail(n-1, nil, err)
				}
				cp.Body = body
			}
			out = cp
		}
		resp, err := base.RoundTrip(out)

		var retry bool
		var delay time.Duration
		if err != nil {
			retry = retryableError(err)
		} else {
			retry, delay = t.retryStatus(resp, keyed)
		}
		var stop error
		if retry {
			now := t.clock()
			if delay < 0 {
				delay = t.backoff(n)
			}
			switch {
			case ctx.Err() != nil:
				stop = ctx.Err()
			case !replayable:
				stop = ErrBodyNotReplayable
			case n >= maxAttempts:
				stop = ErrAttemptsExhausted
			case !deadline.IsZero() && !now.Add(delay).Before(deadline):
				stop = ErrBudgetExhausted
			}
		}
		if stop != nil || !retry {
			retry, delay = false, 0
		}
		t.observe(AttemptInfo{Request: out, N: n, Key: key, Response: resp, Status: status(resp),
			Err: err, Retry: retry, Delay: delay, GiveUp: stop})
		if !retry {
			if err != nil {
				return fail(n, stop, err)
			}
			return resp, nil
		}
		if resp != nil {
			drain(resp.Body)
		}
		if werr := t.sleep(ctx, delay); werr != nil {
			return fail(n, ctx.Err(), err)
		}
	}
}

// CloseIdleConnections closes the idle connections of Base (or of
// http.DefaultTransport) if it has such a method, so that
// http.Client.CloseIdleConnections works through the Transport.
func (t *Transport) CloseIdleConnections() {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if c, ok := base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// retryStatus reports whether resp is retryable and the wait the server asked
// for, or -1 when it named none.
func (t *Transport) retryStatus(resp *http.Response, keyed bool) (bool, time.Duration) {
	switch c := resp.StatusCode; {
	case c == http.StatusConflict:
		// Only an in-flight duplicate of our key is worth retrying, and
		// servers that say so send Retry-After.
		if !keyed {
			return false, -1
		}
		d, ok := t.retryAfter(resp)
		return ok, d
	case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests, c == http.StatusServiceUnavailable:
		d, _ := t.retryAfter(resp)
		return true, d
	case c >= 500 && c <= 599 && c != http.StatusNotImplemented && c != http.StatusHTTPVersionNotSupported:
		if !t.RetryServerErrors {
			return false, -1
		}
		d, _ := t.retryAfter(resp)
		return true, d
	}
	return false, -1
}

// retryAfter returns the response's Retry-After as a duration, or -1.
func (t *Transport) retryAfter(resp *http.Response) (time.Duration, bool) {
	vs := resp.Header["Retry-After"]
	if len(vs) == 0 {
		return -1, false
	}
	d, ok := ParseRetryAfter(vs[0], t.clock())
	if !ok {
		return -1, false
	}
	return d, true
}

// backoff returns the full-jitter wait after attempt n (n ≥ 1).
func (t *Transport) backoff(n int) time.Duration {
	base, ceil := t.BaseDelay, t.MaxDelay
	if base <= 0 {
		base = DefaultBaseDelay
	}
	if ceil <= 0 {
		ceil = DefaultMaxDelay
	}
	d := ceil
	if n-1 < 62 {
		if b := base << (n - 1); b > 0 && b>>(n-1) == base && b < ceil {
			d = b
		}
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// sleep waits d or until ctx is done, whichever is first.
func (t *Transport) sleep(ctx context.Context, d time.Duration) error {
	if t.wait != nil {
		return t.wait(ctx, d)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

func (t *Transport) observe(a AttemptInfo) {
	if t.OnAttempt != nil {
		t.OnAttempt(a)
	}
}

func (t *Transport) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

func (t *Transport) keyMethod(m string) bool {
	if t.Methods == nil {
		return m == http.MethodPost || m == http.MethodPatch
	}
	for _, x := range t.Methods {
		if x == m {
			return true
		}
	}
	return false
}

func (t *Transport) maxAttempts() int {
	if t.MaxAttempts > 0 {
		return t.MaxAttempts
	}
	return DefaultMaxAttempts
}

func (t *Transport) maxElapsed() time.Duration {
	if t.MaxElapsed != 0 {
		return t.MaxElapsed
	}
	return DefaultMaxElapsed
}

func (t *Transport) bodyLimit() int64 {
	if t.BodyLimit != 0 {
		return t.BodyLimit
	}
	return DefaultBodyLimit
}

// idempotent reports whether m is idempotent by definition (RFC 9110 §9.2.2).
func idempotent(m string) bool {
	switch m {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// retryableError reports whether an error from the base transport may be
// retried: everything except certificate errors, which another attempt would
// only repeat. (Whether the request's context is done is checked apart: a
// timeout of the base transport, such as ResponseHeaderTimeout or a dial
// timeout, matches context.DeadlineExceeded too, and is retried.)
func retryableError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	return !errors.As(err, &verr) && !errors.As(err, &uerr) && !errors.As(err, &herr) && !errors.As(err, &cerr)
}

// sendable reports whether net/http can send key as a header value: it
// refuses control characters other than horizontal tab.
func sendable(key string) bool {
	for i := 0; i < len(key); i++ {
		if c := key[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// Replayed reports whether resp is a replay of a stored result rather than a
// fresh execution: whether it carries "Idempotency-Replayed: true" or
// "Idempotent-Replayed: true" (the value compared without regard to case).
// It reports false for a nil response.
func Replayed(resp *http.Response) bool {
	if resp == nil {
		return false
	}
	return isTrue(resp.Header["Idempotency-Replayed"]) || isTrue(resp.Header["Idempotent-Replayed"])
}

func isTrue(vs []string) bool {
	return len(vs) > 0 && strings.EqualFold(strings.TrimSpace(vs[0]), "true")
}

func status(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

func urlString(req *http.Request) string {
	if req.URL == nil {
		return ""
	}
	return req.URL.Redacted()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// drain reads what is left of a discarded response body, up to drainLimit,
// so that its connection can be reused, then closes it.
func drain(body io.ReadCloser) {
	if body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, body, drainLimit)
	body.Close()
}

// prefixedBody streams a body whose start was read while trying to buffer it,
// and closes the caller's body.
type prefixedBody struct {
	io.Reader
	c io.Closer
}

func (b *prefixedBody) Close() error { return b.c.Close() }
