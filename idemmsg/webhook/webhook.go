package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
)

// DefaultHeader is the Standard Webhooks event id header.
const DefaultHeader = "webhook-id"

// DefaultMaxBody is the largest body read to verify a signature or to find a
// JSON field id: 1 MiB.
const DefaultMaxBody = 1 << 20

// Errors returned by EventID (and given to Config.OnError).
var (
	// ErrNoID reports that the request carries no event id.
	ErrNoID = errors.New("webhook: no event id")
	// ErrBodyTooLarge reports a body longer than Config.MaxBody when the
	// body is read, to verify it or to find the id in it.
	ErrBodyTooLarge = errors.New("webhook: body too large")
)

// Config configures Handler. Deduper is required, and so is a choice about
// verification: a Verifier (Standard, Stripe or your own), or Unverified.
// With Verifier set to Standard the other fields may stay zero; with Stripe,
// too (the id is then read from the body's "id" field).
type Config struct {
	// Deduper holds the claims. Required. Its retention
	// (Deduper.EffectiveRetention) must cover the sender's retry horizon
	// (Standard Webhooks senders retry for about 3 days; the default 30 days
	// covers it), and be more than twice the Verifier's tolerance (Handler checks it for Standard and Stripe).
	Deduper *idemmsg.Deduper
	// Verifier authenticates every request before its id is claimed:
	// Standard{Secrets: …} for Standard Webhooks senders (Svix and others),
	// Stripe{Secrets: …} for Stripe, or your own. A refused request is
	// answered 401 or 400 (see the package documentation) without any store
	// call, so it can neither claim an id nor learn whether one was
	// processed, and OnError receives the verification error. Required
	// unless Unverified is set.
	Verifier Verifier
	// Unverified runs the wrapped handler without verifying requests. It is
	// an explicit opt-out, for tests and for requests authenticated before
	// this handler (by a gateway, by mutual TLS, or by a wrapping handler
	// that rejects them first). Without a Verifier or Unverified, Handler
	// panics. Verifying inside the wrapped handler is too late: an unsigned
	// request for a processed id would be answered as a duplicate.
	Unverified bool
	// Header is the request header carrying the event id. If Header and
	// JSONField are both empty: DefaultHeader ("webhook-id"), or the JSON
	// field "id" when Verifier is a Stripe. With a Standard Verifier it
	// must be empty or "webhook-id", and with Stripe it must be empty: the
	// id must be covered by the signature, or a captured delivery could be
	// replayed under another id and run again.
	Header string
	// ID, if set, replaces Header and JSONField: it returns the event id of
	// a request. If it reads r.Body it must put an equivalent body back
	// for the wrapped handler. With a Verifier it must return an id covered
	// by the signature (a signed header, or a field of the body), or a
	// captured delivery could be replayed under another id. The id must be
	// 1 to 255 bytes; an error is answered 400 (as a missing id).
	ID idemmsg.IDFunc[*http.Request]
	// JSONField, if set, reads the id from this top-level field of a JSON
	// object body (a string, or a number used as written) when Header is
	// empty or absent from the request. The body is buffered (at most
	// MaxBody) and handed on to the wrapped handler unchanged.
	JSONField string
	// MaxBody bounds the body read for verification (every request when a
	// Verifier is set) and for JSONField; a longer body is answered 413. If
	// zero, DefaultMaxBody (1 MiB).
	MaxBody int64
	// Scope returns the scope of a request: senders or endpoints that must
	// not share ids get different scopes. If nil, the request path is used.
	Scope func(*http.Request) string
	// DuplicateStatus is the answer to a duplicate. If zero, 200.
	DuplicateStatus int
	// RetryAfter is the Retry-After sent with a 503 when the store fails. If
	// zero, 5 s.
	RetryAfter time.Duration
	// OnError, if set, is called with every error the handler answers
	// (verification refused, missing id, in flight, store failure, handler
	// status not recorded), and for a delivery acknowledged without being
	// processed: an id reused with another body (Deduper.FingerprintPayload;
	// answered 200, error matching idem.ErrMismatch) or a poison delivery
	// (Deduper.MaxAttempts; error matching idemmsg.ErrPoisoned). With
	// FingerprintPayload or MaxAttempts set the body is buffered (at most
	// MaxBody) even without a Verifier.
	OnError func(r *http.Request, err error)
}

// Handler returns an http.Handler that verifies each request (Config.Verifier)
// and then runs next at most once per event id (see the package documentation
// for the answers). It panics on a configuration error: a nil Deduper;
// neither a Verifier nor Unverified, or both; a Standard or Stripe Verifier
// without a valid secret, with a tolerance not less than half the Deduper's
// retention, or with an id header that its signature does not cover.
func Handler(c Config, next http.Handler) http.Handler {
	if c.Deduper == nil {
		panic("webhook: Config.Deduper is nil")
	}
	switch {
	case c.Verifier == nil && !c.Unverified:
		panic("webhook: Config.Verifier is nil: set it (webhook.Standard, webhook.Stripe) or set Config.Unverified to run without verification")
	case c.Verifier != nil && c.Unverified:
		panic("webhook: Config.Verifier and Config.Unverified are both set")
	}
	if err := checkVerifier(&c); err != nil {
		panic(err.Error())
	}
	if c.Header == "" && c.JSONField == "" {
		c.Header = DefaultHeader
	}
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.DuplicateStatus == 0 {
		c.DuplicateStatus = http.StatusOK
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5 * time.Second
	}
	if c.Scope == nil {
		c.Scope = func(r *http.Request) string { return r.URL.Path }
	}
	return &handler{c: c, next: next}
}

// checkVerifier checks a built-in Verifier against c, and defaults c's id
// source for Stripe.
func checkVerifier(c *Config) error {
	var (
		tol    time.Duration
		err    error
		scheme string
	)
	switch v := c.Verifier.(type) {
	case Standard:
		scheme, tol, err = "Standard", v.Tolerance, checkSecrets(v.Secrets, true)
	case *Standard:
		if v == nil {
			return errors.New("webhook: Config.Verifier is a nil *Standard")
		}
		scheme, tol, err = "Standard", v.Tolerance, checkSecrets(v.Secrets, true)
	case Stripe:
		scheme, tol, err = "Stripe", v.Tolerance, checkSecrets(v.Secrets, false)
	case *Stripe:
		if v == nil {
			return errors.New("webhook: Config.Verifier is a nil *Stripe")
		}
		scheme, tol, err = "Stripe", v.Tolerance, checkSecrets(v.Secrets, false)
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("webhook: %s verifier: %w", scheme, err)
	}
	tol = tolerance(tol)
	retention := c.Deduper.EffectiveRetention()
	if retention <= 2*tol {
		// A delivery signed at t is accepted from t-tol to t+tol; its
		// record, completed at t-tol at the earliest, must outlive t+tol.
		return fmt.Errorf("webhook: %s verifier: tolerance %v must be less than half the Deduper's retention %v, or a replay accepted by the timestamp rule could find its id forgotten", scheme, tol, retention)
	}
	switch scheme {
	case "Standard":
		if c.Header != "" && !strings.EqualFold(c.Header, DefaultHeader) {
			return fmt.Errorf("webhook: Standard verifier: Config.Header %q is not signed; leave it empty (webhook-id is signed) or use JSONField", c.Header)
		}
	case "Stripe":
		if c.Header != "" {
			return fmt.Errorf("webhook: Stripe verifier: Config.Header %q is not signed; leave it empty (the body's \"id\" field is used)", c.Header)
		}
		if c.JSONField == "" {
			c.JSONField = "id"
		}
	}
	return nil
}

func checkSecrets(secrets []string, standard bool) error {
	if standard {
		_, err := standardKeys(secrets)
		return err
	}
	if len(secrets) == 0 {
		return fmt.Errorf("%w: no secret", ErrSecretInvalid)
	}
	for i, s := range secrets {
		if s == "" {
			return fmt.Errorf("%w: secret %d is empty", ErrSecretInvalid, i)
		}
	}
	return nil
}

type handler struct {
	c    Config
	next http.Handler
}

// errStatus is returned by the wrapped run when next answered non-2xx.
type errStatus int

func (e errStatus) Error() string { return "webhook: handler answered " + strconv.Itoa(int(e)) }

func (h *handler) report(r *http.Request, err error) {
	if h.c.OnError != nil {
		h.c.OnError(r, err)
	}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body []byte
	if h.c.Verifier != nil {
		// Verification comes first, before any store call: a refused
		// request claims nothing and learns nothing about processed ids.
		var err error
		if body, err = readBody(r, h.c.MaxBody); err == nil {
			err = h.c.Verifier.Verify(r, body)
		}
		if err != nil {
			h.report(r, err)
			writeProblem(w, refusalCode(err, true))
			return
		}
	}
	buffered := h.c.Verifier != nil
	if !buffered && (h.c.Deduper.FingerprintPayload || h.c.Deduper.MaxAttempts > 0) {
		// The payload is fingerprinted or handed to OnPoison.
		var err error
		if body, err = readBody(r, h.c.MaxBody); err != nil {
			h.report(r, err)
			writeProblem(w, refusalCode(err, false))
			return
		}
		buffered = true
	}
	var id string
	var err error
	if h.c.ID != nil {
		id, err = h.c.ID(r)
		if err == nil && (id == "" || len(id) > idem.MaxKeyLen) {
			err = fmt.Errorf("%w: id has %d bytes, want 1 to %d", idem.ErrInvalidKey, len(id), idem.MaxKeyLen)
		}
	} else {
		id, err = eventID(r, h.c.Header, h.c.JSONField, h.c.MaxBody, body, buffered)
	}
	if err != nil {
		h.report(r, err)
		writeProblem(w, refusalCode(err, false))
		return
	}
	rec := &recorder{ResponseWriter: w}
	st, err := h.c.Deduper.OnceMessage(r.Context(), h.c.Scope(r), idemmsg.Message{ID: id, Payload: body}, func(ctx context.Context) error {
		h.next.ServeHTTP(rec, r.WithContext(ctx))
		if code := rec.status(); code < 200 || code > 299 {
			return errStatus(code)
		}
		return nil
	})
	switch st {
	case idemmsg.Executed, idemmsg.Failed:
		// next answered already. A completion error (ErrNotRecorded) is
		// only reported: the sender has its 2xx, the event was processed.
		if err != nil && !errors.As(err, new(errStatus)) {
			h.report(r, err)
		}
		if !rec.wrote {
			w.WriteHeader(rec.status()) // next wrote nothing: 200, as net/http would
		}
	case idemmsg.Duplicate:
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(h.c.DuplicateStatus)
	case idemmsg.Mismatched, idemmsg.Poisoned:
		// Acknowledged without (or after failing) processing: reported,
		// and answered 200 so that the sender stops retrying, unless the
		// wrapped handler answered already (its last failure).
		h.report(r, err)
		if !rec.wrote {
			w.WriteHeader(http.StatusOK)
		}
	case idemmsg.InFlight:
		h.report(r, err)
		secs := 1
		var ife *idem.InFlightError
		if errors.As(err, &ife) {
			secs = ife.RetryAfter()
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeProblem(w, CodeInProgress)
	default: // NotRun: store failure
		h.report(r, err)
		w.Header().Set("Retry-After", strconv.Itoa(int((h.c.RetryAfter+time.Second-1)/time.Second)))
		writeProblem(w, CodeStoreUnavailable)
	}
}

// EventID returns the event id of r: the value of header if set and present,
// otherwise (when field is set) the top-level JSON field of the body, read up
// to maxBody bytes and put back for the next reader. The id must be 1 to 255
// bytes of visible ASCII (idem.ValidateKey) when read from a header, and a
// non-empty string or number of at most 255 bytes when read from JSON. It
// returns ErrNoID (wrapped) when there is no id, ErrBodyTooLarge when the
// body exceeds maxBody, and an error matching idem.ErrInvalidKey for a bad
// one.
func EventID(r *http.Request, header, field string, maxBody int64) (string, error) {
	return eventID(r, header, field, maxBody, nil, false)
}

// eventID is EventID; when buffered, body is the request body already read
// (and put back) by readBody.
func eventID(r *http.Request, header, field string, maxBody int64, body []byte, buffered bool) (string, error) {
	if header != "" {
		vs := r.Header.Values(header)
		switch {
		case len(vs) > 1:
			return "", fmt.Errorf("%w: header %s given %d times", idem.ErrInvalidKey, header, len(vs))
		case len(vs) == 1:
			if err := idem.ValidateKey(vs[0]); err != nil {
				return "", fmt.Errorf("webhook: header %s: %w", header, err)
			}
			return vs[0], nil
		}
		if field == "" {
			return "", fmt.Errorf("%w: header %s missing", ErrNoID, header)
		}
	}
	if !buffered {
		if r.Body == nil {
			return "", fmt.Errorf("%w: empty body", ErrNoID)
		}
		var err error
		if body, err = readBody(r, maxBody); err != nil {
			return "", err
		}
	}
	return JSONField(body, field)
}

// readBody reads r's body, at most maxBody bytes, and puts it back for the
// next reader. It returns ErrBodyTooLarge (wrapped) for a longer body and
// errBodyUnreadable (wrapped) when reading fails.
func readBody(r *http.Request, maxBody int64) ([]byte, error) {
	if r.Body == nil {
		r.Body = http.NoBody
		return []byte{}, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBodyUnreadable, err)
	}
	if int64(len(body)) > maxBody {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, maxBody)
	}
	return body, nil
}

// JSONField returns the top-level field of the JSON object in body as an
// event id: a string's value, or a number's literal text. It returns ErrNoID
// (wrapped) when the body is not a JSON object or lacks the field or the
// field is null, and an error matching idem.ErrInvalidKey when the value is
// empty, longer than 255 bytes, or not a string or number.
func JSONField(body []byte, field string) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return "", fmt.Errorf("%w: body is not a JSON object: %v", ErrNoID, err)
	}
	raw, ok := obj[field]
	if !ok || string(raw) == "null" {
		return "", fmt.Errorf("%w: field %q missing", ErrNoID, field)
	}
	var id string
	switch c := raw[0]; {
	case c == '"':
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", fmt.Errorf("%w: field %q: %v", idem.ErrInvalidKey, field, err)
		}
	case c == '-' || c >= '0' && c <= '9':
		id = string(raw)
	default:
		return "", fmt.Errorf("%w: field %q is not a string or number", idem.ErrInvalidKey, field)
	}
	if id == "" || len(id) > idem.MaxKeyLen {
		return "", fmt.Errorf("%w: field %q has %d bytes, want 1 to %d", idem.ErrInvalidKey, field, len(id), idem.MaxKeyLen)
	}
	return id, nil
}

// recorder remembers the status the wrapped handler wrote.
type recorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote && code >= 200 {
		r.code, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.code, r.wrote = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush implements http.Flusher when the underlying writer does.
func (r *recorder) Flush() {
	if !r.wrote {
		r.code, r.wrote = http.StatusOK, true
	}
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
