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
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
)

// DefaultHeader is the Standard Webhooks event id header.
const DefaultHeader = "webhook-id"

// DefaultMaxBody is the largest body read to find a JSON field id: 1 MiB.
const DefaultMaxBody = 1 << 20

// Errors returned by EventID.
var (
	// ErrNoID reports that the request carries no event id.
	ErrNoID = errors.New("webhook: no event id")
	// ErrBodyTooLarge reports a body longer than Config.MaxBody when the id
	// is read from the body.
	ErrBodyTooLarge = errors.New("webhook: body too large")
)

// Config configures Handler. The zero value reads the id from "webhook-id"
// and needs only Deduper to be set.
type Config struct {
	// Deduper holds the claims. Required. Its Retention must cover the
	// sender's retry horizon (Standard Webhooks senders retry for about 3
	// days; the default 30 days covers it).
	Deduper *idemmsg.Deduper
	// Header is the request header carrying the event id. If empty and
	// JSONField is empty, DefaultHeader ("webhook-id") is used.
	Header string
	// JSONField, if set, reads the id from this top-level field of a JSON
	// object body (a string, or a number used as written) when Header is
	// empty or absent from the request. The body is buffered (at most
	// MaxBody) and handed on to the wrapped handler unchanged.
	JSONField string
	// MaxBody bounds the body read for JSONField. If zero, DefaultMaxBody.
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
	// (missing id, in flight, store failure, handler status not recorded).
	OnError func(r *http.Request, err error)
}

// Handler returns an http.Handler that runs next at most once per event id
// (see the package documentation for the answers). It panics if c.Deduper is
// nil.
func Handler(c Config, next http.Handler) http.Handler {
	if c.Deduper == nil {
		panic("webhook: Config.Deduper is nil")
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
	id, err := EventID(r, h.c.Header, h.c.JSONField, h.c.MaxBody)
	if err != nil {
		h.report(r, err)
		code := http.StatusBadRequest
		if errors.Is(err, ErrBodyTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, err.Error(), code)
		return
	}
	rec := &recorder{ResponseWriter: w}
	st, err := h.c.Deduper.Once(r.Context(), h.c.Scope(r), id, func(ctx context.Context) error {
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
	case idemmsg.InFlight:
		h.report(r, err)
		secs := 1
		var ife *idem.InFlightError
		if errors.As(err, &ife) {
			secs = ife.RetryAfter()
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		http.Error(w, "webhook: event "+strconv.Quote(id)+" is being processed", http.StatusConflict)
	default: // NotRun: store failure
		h.report(r, err)
		w.Header().Set("Retry-After", strconv.Itoa(int((h.c.RetryAfter+time.Second-1)/time.Second)))
		http.Error(w, "webhook: deduplication store unavailable", http.StatusServiceUnavailable)
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
	if r.Body == nil {
		return "", fmt.Errorf("%w: empty body", ErrNoID)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("webhook: reading body: %w", err)
	}
	if int64(len(body)) > maxBody {
		return "", fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, maxBody)
	}
	return JSONField(body, field)
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
