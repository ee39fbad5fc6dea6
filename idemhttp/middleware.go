package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idemkit/idem"

	"github.com/idemkit/idem/internal/waitlimit"
)

// Defaults of Middleware's zero-valued fields.
const (
	// DefaultMaxBody is the request body limit when Middleware.MaxBody is 0.
	DefaultMaxBody = 1 << 20
	// DefaultMaxResult is the stored body cap when Middleware.MaxResult is 0.
	DefaultMaxResult = 1 << 20
	// DefaultCompleteTimeout bounds the store call that completes or releases
	// a record when Middleware.CompleteTimeout is 0.
	DefaultCompleteTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds reading a protected request's body when
	// Middleware.BodyTimeout is 0.
	DefaultBodyTimeout = 30 * time.Second
	// DefaultMaxWaiters bounds the requests held in wait mode at once when
	// Middleware.MaxWaiters is 0.
	DefaultMaxWaiters = 1000
	// DefaultMaxWaitersPerKey bounds the requests held in wait mode for one
	// key when Middleware.MaxWaitersPerKey is 0.
	DefaultMaxWaitersPerKey = 16
)

// Response headers set on replays.
const (
	// HeaderReplayed is set to "true" on every replayed response, together
	// with HeaderReplayedAlt.
	HeaderReplayed = "Idempotency-Replayed"
	// HeaderReplayedAlt is the spelling some clients (Stripe's) look for.
	HeaderReplayedAlt = "Idempotent-Replayed"
	// HeaderReplay is set to "omitted" on a replay whose body was larger
	// than the stored-result cap and was not stored.
	HeaderReplay = "Idempotency-Replay"
)

// hopByHop are the connection-specific headers (RFC 9110 §7.6.1 and the
// classic list of RFC 2616), which are never stored or replayed whatever
// Middleware.NeverReplay says. Headers named in a Connection header are
// dropped too.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// DefaultNeverReplay returns the headers that are neither stored nor
// replayed when Middleware.NeverReplay is nil (SPEC §3), besides the
// hop-by-hop headers that are always dropped: Set-Cookie, Authorization,
// WWW-Authenticate, Proxy-Authenticate and Date (a fresh Date is sent on
// every answer).
func DefaultNeverReplay() []string {
	return []string{"Set-Cookie", "Authorization", "Www-Authenticate", "Proxy-Authenticate", "Date"}
}

// Middleware is net/http middleware that makes POST and PATCH (by default)
// requests carrying an Idempotency-Key header safe to retry (SPEC §3): the
// first request with a key runs the handler once, live; its response is
// stored and replayed byte for byte to every retry with the same key and
// the same request; a retry while the first still runs gets 409, a reuse of
// the key for a different request 422, and when the store is unreachable the
// handler does not run (503) unless FailOpen is set.
//
// Configure the exported fields, then call Handler. Handler reads the
// configuration once: later changes to the fields have no effect on handlers
// already built. Zero values give the documented defaults; only Keeper is
// required.
type Middleware struct {
	// Keeper runs the record state machine: store, lease, retention and
	// observer. Required.
	Keeper *idem.Keeper

	// Methods are the protected methods. Requests with other methods pass
	// through untouched, even with a key. If nil, POST and PATCH.
	Methods []string

	// Optional lets protected requests without a key pass through
	// unprotected. If false (the default) they are answered 400
	// idempotency-key-missing. An invalid key is answered 400
	// idempotency-key-invalid either way.
	Optional bool

	// Header is the request header carrying the key. If empty,
	// DefaultHeader ("Idempotency-Key").
	Header string

	// Scope returns the scope of a request's key: who the key belongs to
	// (tenant, account, API key). Two scopes never share a record, so a
	// caller can never read another caller's stored response. Run the
	// middleware after authentication and prefer a Scope that returns the
	// authenticated principal (the tenant or account id your
	// authentication put in the request's context). ErrNoCredentials is
	// answered 400 credentials-required, ErrHopByHopCredential 400
	// credential-hop-by-hop, any other error 400 scope-invalid. If nil, an
	// IdentityScope built from ScopeSecret, ScopeHeaders and
	// AllowAnonymous: an HMAC of the Host and of every credential the
	// request carries (Authorization, Cookie, ScopeHeaders).
	//
	// Handler panics if both Scope and ScopeSecret are unset: there is no
	// safe default (an unkeyed hash of a credential can be reversed by
	// guessing, and a random per-process secret would silently give every
	// caller a new scope after a restart or on another instance, so retries
	// would execute again).
	Scope func(*http.Request) (string, error)

	// ScopeSecret keys the default scope's HMAC (IdentityScope.Secret) when
	// Scope is nil: at least MinScopeSecret (16) random bytes, kept secret,
	// the same on every instance sharing the store and across restarts.
	ScopeSecret []byte

	// ScopeHeaders are the credential headers the default scope covers on
	// top of Authorization and Cookie (IdentityScope.Headers), for example
	// X-Api-Key. Ignored when Scope is set.
	ScopeHeaders []string

	// AllowAnonymous lets requests that carry no credential use the default
	// scope: they share one scope per Host, never one with a credentialed
	// caller. If false (the default) they are answered 400
	// credentials-required. Ignored when Scope is set.
	AllowAnonymous bool

	// Fingerprint returns the fingerprint of a request: same key with a
	// different fingerprint is answered 422. body is the request body (read
	// in full, at most MaxBody bytes); Fingerprint must not retain it. An
	// error is answered 400 request-invalid. If nil, DefaultFingerprint.
	// Set CanonicalFingerprint to fingerprint the RFC 8785 canonical form of
	// JSON bodies (Content-Type application/json or */*+json), so that
	// member order, insignificant white space, string escapes and number
	// spelling do not matter; a body that is not valid I-JSON is
	// fingerprinted as raw bytes, and the handler gets it unchanged.
	Fingerprint func(r *http.Request, body []byte) ([]byte, error)

	// MaxBody is the largest request body, in bytes, that a protected
	// request may carry: larger bodies are answered 413 request-too-large
	// and the handler does not run. If 0 (or negative), DefaultMaxBody
	// (1 MiB).
	MaxBody int64

	// Stored reports whether a response with the given status completes the
	// record (and is replayed to retries). Otherwise the record is released
	// and a retry executes again. If nil, statuses below 500 except 429.
	Stored func(status int) bool

	// MaxResult caps the stored body, in bytes. The client always gets the
	// whole response; when the body is larger, the record stores the status
	// and headers only and a replay answers them with an empty body and
	// Idempotency-Replay: omitted. If 0 (or negative), DefaultMaxResult
	// (1 MiB).
	MaxResult int

	// NeverReplay lists response headers that are neither stored nor
	// replayed, in addition to the hop-by-hop headers (and those named in
	// Connection), which are always dropped. If nil, DefaultNeverReplay(); an empty non-nil slice
	// drops nothing more.
	NeverReplay []string

	// Wait, if positive, turns on wait mode: a retry that arrives while the
	// first request still runs is held for up to Wait and answered with the
	// replay when the first completes (or executes, if the first released
	// the key), instead of 409. If the bound passes it gets 409.
	Wait time.Duration

	// MaxWaiters bounds the requests held in wait mode at once, in all and
	// per key (a request holds a slot while it claims or waits for its key,
	// not while it executes): a duplicate past either bound is answered 409
	// at once, as without wait mode,
	// so that a flood of retries of one slow request cannot hold unbounded
	// connections and goroutines. If zero,
	// DefaultMaxWaiters (1,000 in all, DefaultMaxWaitersPerKey = 16 per
	// key); MaxWaitersPerKey likewise.
	MaxWaiters       int
	MaxWaitersPerKey int

	// BodyTimeout bounds the time to read a protected request's body
	// (which the middleware reads whole before claiming the key), so a
	// client that sends its body slowly cannot hold a connection without
	// limit: past it the request is answered 400 request-body-unreadable.
	// It applies only where the ResponseWriter supports read deadlines
	// (net/http's does). If zero, DefaultBodyTimeout (30 s); negative
	// disables it.
	BodyTimeout time.Duration

	// FailOpen runs the handler unprotected (no record, no replay) when the
	// store cannot be reached. If false (the default) such requests are
	// answered 503 store-unavailable and the handler does not run.
	FailOpen bool

	// CompleteTimeout bounds the store call that completes or releases the
	// record after the handler returns, including its retries after store
	// failures. That call is detached from the request's context, so it
	// happens even when the client has gone. If 0, DefaultCompleteTimeout
	// (10 s).
	CompleteTimeout time.Duration

	// Stream turns off holding the response. By default the handler's
	// response reaches the client only after its record was completed in
	// the store (SPEC §3, acknowledged ⇒ replayable): it is held (up to
	// MaxResult bytes of body) and released once the store said yes; if
	// the completion cannot be made the client gets 503 outcome-unknown
	// instead. With Stream, every write goes to the client at once and the
	// record is completed after the handler returns: the first byte comes
	// sooner, but a client may hold a response whose record was never
	// completed (the process died, or the store failed, in between), and a
	// retry sent the instant the response was read may get 409. Set it only
	// for routes that stream by nature (server-sent events, long polls,
	// large downloads); such routes are outside the acknowledgement
	// guarantee. Without Stream, an event stream (text/event-stream) that
	// the handler flushes, and a body that grows past MaxResult, complete
	// the record early with the body omitted and then stream.
	Stream bool

	// LegacyEncoding stores responses in encoding version 1, which versions
	// of idem before 2026-12 read, instead of the compact version 2 (static
	// tables for common headers, no stored Content-Length). Both versions
	// are always read. Set it during a rolling upgrade while instances of
	// an older version share the store, and remove it once every instance
	// runs this version: an older instance answers a version-2 response
	// with 500 stored-response-invalid. See CHANGELOG.md.
	LegacyEncoding bool

	// OnOutcome, if set, is called once per request that reaches the
	// middleware, after the answer, with what happened. It runs on the
	// request's goroutine and must be fast. Store-level events (takeovers,
	// lease losses, store errors) are reported by Keeper.Observer as well.
	OnOutcome func(r *http.Request, o Outcome)
}

// OutcomeKind names what the middleware did with a request.
type OutcomeKind uint8

// Outcome kinds. String returns the name in parentheses.
const (
	// OutcomeExecuted (executed): the handler ran under a lease. See
	// Outcome.Stored and Outcome.Err for what became of the record.
	OutcomeExecuted OutcomeKind = iota + 1
	// OutcomeReplayed (replayed): a stored response was replayed.
	OutcomeReplayed
	// OutcomeConflict (conflict): the key was in flight; 409.
	OutcomeConflict
	// OutcomeMismatch (mismatch): the key was used for a different request; 422.
	OutcomeMismatch
	// OutcomeKeyMissing (key_missing): no key and keys are required; 400.
	OutcomeKeyMissing
	// OutcomeKeyInvalid (key_invalid): malformed or repeated key; 400.
	OutcomeKeyInvalid
	// OutcomeTooLarge (too_large): the body exceeded MaxBody; 413.
	OutcomeTooLarge
	// OutcomeBadRequest (bad_request): the body could not be read, or Scope
	// or Fingerprint failed; 400.
	OutcomeBadRequest
	// OutcomeStoreUnavailable (store_unavailable): the store failed; 503.
	OutcomeStoreUnavailable
	// OutcomeFailOpen (fail_open): the store failed and the handler ran
	// unprotected (FailOpen).
	OutcomeFailOpen
	// OutcomePassthrough (passthrough): the method is not protected, or the
	// key is missing and Optional is set; the handler ran unprotected.
	OutcomePassthrough
	// OutcomeCanceled (canceled): the request was canceled while its key was
	// being claimed (or waited for); the handler did not run.
	OutcomeCanceled
	// OutcomeReplayInvalid (replay_invalid): the stored response could not
	// be decoded; 500. The handler did not run.
	OutcomeReplayInvalid
	// OutcomePanic (panic): the handler panicked; the record was released
	// and the panic continued.
	OutcomePanic
)

var outcomeNames = [...]string{
	OutcomeExecuted:         "executed",
	OutcomeReplayed:         "replayed",
	OutcomeConflict:         "conflict",
	OutcomeMismatch:         "mismatch",
	OutcomeKeyMissing:       "key_missing",
	OutcomeKeyInvalid:       "key_invalid",
	OutcomeTooLarge:         "too_large",
	OutcomeBadRequest:       "bad_request",
	OutcomeStoreUnavailable: "store_unavailable",
	OutcomeFailOpen:         "fail_open",
	OutcomePassthrough:      "passthrough",
	OutcomeCanceled:         "canceled",
	OutcomeReplayInvalid:    "replay_invalid",
	OutcomePanic:            "panic",
}

// String returns the kind's name, as used in metrics labels.
func (k OutcomeKind) String() string {
	if int(k) < len(outcomeNames) && outcomeNames[k] != "" {
		return outcomeNames[k]
	}
	return "unknown"
}

// Outcome describes what the middleware did with one request.
type Outcome struct {
	Kind OutcomeKind
	// Status is the status code answered: the handler's for executed and
	// fail_open; 0 for passthrough (the response is not observed) and
	// panic.
	Status int
	// Fence is the lease's fence when the handler ran under a lease.
	Fence uint64
	// Takeover reports that the lease was taken over from an executor whose
	// lease had expired.
	Takeover bool
	// Stored reports, for executed, that the record was completed with the
	// response (otherwise it was released, or the store refused or failed).
	// A handler that returns without writing anything after its client went
	// away abandoned the request: the record is released and Err is the
	// request context's error. A handler that hijacks the connection is
	// treated the same way (its answer is not seen).
	Stored bool
	// Omitted reports that the body was over MaxResult and was not stored
	// (executed), or was not stored originally (replayed).
	Omitted bool
	// Err is the error behind store_unavailable, fail_open, bad_request,
	// key_invalid, canceled and replay_invalid outcomes, and, for executed
	// and panic, the error of the completing or releasing store call (for
	// example wrapping idem.ErrLeaseLost when a takeover happened while the
	// handler ran: the client got the handler's response, and the newer
	// executor's record stands).
	Err error
}

// handler is a configured Middleware around next.
type handler struct {
	next            http.Handler
	keeper          *idem.Keeper
	methods         []string
	optional        bool
	header          string
	scope           func(*http.Request) (string, error)
	fingerprint     func(*http.Request, []byte) ([]byte, error)
	maxBody         int64
	stored          func(int) bool
	maxResult       int
	deny            map[string]bool
	wait            time.Duration
	waiters         *waitlimit.Limiter
	bodyTimeout     time.Duration
	failOpen        bool
	completeTimeout time.Duration
	stream          bool
	legacy          bool // LegacyEncoding
	onOutcome       func(*http.Request, Outcome)
}

// Handler returns next wrapped by the middleware. Its signature fits chi's
// Router.Use and similar middleware chains. Handler panics if m.Keeper or
// m.Keeper.Store is nil, as http.Handle panics on a nil handler: that is a
// programming error found at start-up.
func (m *Middleware) Handler(next http.Handler) http.Handler {
	if m.Keeper == nil || m.Keeper.Store == nil {
		panic("idemhttp: Middleware.Keeper with a Store is required")
	}
	if next == nil {
		panic("idemhttp: nil handler")
	}
	scope := m.Scope
	if scope == nil {
		if len(m.ScopeSecret) == 0 {
			panic("idemhttp: set Middleware.Scope (preferably to a function returning the authenticated principal) " +
				"or Middleware.ScopeSecret (at least 16 random bytes, the same on every instance and across restarts); " +
				"a random per-process secret would silently make retries execute again after a restart or on another instance")
		}
		if len(m.ScopeSecret) < MinScopeSecret {
			panic("idemhttp: Middleware.ScopeSecret must be at least 16 bytes")
		}
		id := &IdentityScope{Secret: m.ScopeSecret, Headers: m.ScopeHeaders, Anonymous: m.AllowAnonymous}
		scope = id.Scope
	}
	h := &handler{
		next:            next,
		keeper:          m.Keeper,
		methods:         []string{http.MethodPost, http.MethodPatch},
		optional:        m.Optional,
		header:          DefaultHeader,
		scope:           scope,
		fingerprint:     m.Fingerprint,
		maxBody:         m.MaxBody,
		stored:          m.Stored,
		maxResult:       m.MaxResult,
		wait:            m.Wait,
		waiters:         waitlimit.New(m.MaxWaiters, m.MaxWaitersPerKey, DefaultMaxWaiters, DefaultMaxWaitersPerKey),
		bodyTimeout:     m.BodyTimeout,
		failOpen:        m.FailOpen,
		completeTimeout: m.CompleteTimeout,
		stream:          m.Stream,
		legacy:          m.LegacyEncoding,
		onOutcome:       m.OnOutcome,
	}
	if m.Methods != nil {
		h.methods = append([]string(nil), m.Methods...)
	}
	if m.Header != "" {
		h.header = textproto.CanonicalMIMEHeaderKey(m.Header)
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBody
	}
	if h.maxResult <= 0 {
		h.maxResult = DefaultMaxResult
	}
	if h.completeTimeout <= 0 {
		h.completeTimeout = DefaultCompleteTimeout
	}
	if h.bodyTimeout == 0 {
		h.bodyTimeout = DefaultBodyTimeout
	}
	never := m.NeverReplay
	if never == nil {
		never = DefaultNeverReplay()
	}
	h.deny = make(map[string]bool, len(hopByHop)+len(never))
	for _, n := range hopByHop {
		h.deny[n] = true
	}
	for _, n := range never {
		h.deny[textproto.CanonicalMIMEHeaderKey(n)] = true
	}
	return h
}

// defaultStored is the default storage policy: statuses below 500 except 429.
func defaultStored(status int) bool { return status < 500 && status != http.StatusTooManyRequests }

func (h *handler) report(r *http.Request, o Outcome) {
	if h.onOutcome != nil {
		h.onOutcome(r, o)
	}
}

func (h *handler) protected(method string) bool {
	for _, m := range h.methods {
		if m == method {
			return true
		}
	}
	return false
}

// ServeHTTP implements SPEC §3.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.protected(r.Method) {
		h.next.ServeHTTP(w, r)
		h.report(r, Outcome{Kind: OutcomePassthrough})
		return
	}
	key, err := parseKeyValues(r.Header[h.header])
	if err != nil {
		if errors.Is(err, ErrKeyMissing) {
			if h.optional {
				h.next.ServeHTTP(w, r)
				h.report(r, Outcome{Kind: OutcomePassthrough})
				return
			}
			WriteProblem(w, CodeKeyMissing, "")
			h.report(r, Outcome{Kind: OutcomeKeyMissing, Status: http.StatusBadRequest, Err: err})
			return
		}
		WriteProblem(w, CodeKeyInvalid, "")
		h.report(r, Outcome{Kind: OutcomeKeyInvalid, Status: http.StatusBadRequest, Err: err})
		return
	}
	scope, err := h.scope(r)
	if err != nil {
		code := CodeScopeInvalid
		switch {
		case errors.Is(err, ErrNoCredentials):
			code = CodeCredentialsRequired
		case errors.Is(err, ErrHopByHopCredential):
			code = CodeCredentialHopByHop
		}
		WriteProblem(w, code, "")
		h.report(r, Outcome{Kind: OutcomeBadRequest, Status: http.StatusBadRequest, Err: err})
		return
	}
	bp, err := h.readBodyTimed(w, r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if err == errTooLarge || errors.As(err, &tooLarge) {
			w.Header().Set("Connection", "close")
			WriteProblem(w, CodeTooLarge, "")
			h.report(r, Outcome{Kind: OutcomeTooLarge, Status: http.StatusRequestEntityTooLarge, Err: err})
			return
		}
		w.Header().Set("Connection", "close") // the rest of the body is not read
		WriteProblem(w, CodeBodyUnreadable, "")
		h.report(r, Outcome{Kind: OutcomeBadRequest, Status: http.StatusBadRequest, Err: err})
		return
	}
	defer putBody(bp)
	body := bodyBytes(bp)
	var fp []byte
	switch {
	case h.fingerprint != nil:
		fp, err = h.fingerprint(r, body)
		if err != nil {
			WriteProblem(w, CodeRequestInvalid, "")
			h.report(r, Outcome{Kind: OutcomeBadRequest, Status: http.StatusBadRequest, Err: err})
			return
		}
	default:
		fp = fingerprint(r, body, false)
	}

	a, err := h.waiters.Begin(r.Context(), h.keeper, scope, key, fp, h.wait)
	if err != nil {
		h.refuse(w, r, body, err)
		return
	}
	if a.Lease == nil {
		h.replay(w, r, a.Result)
		return
	}
	h.execute(w, r, body, a.Lease)
}

// refuse answers a request whose key could not be claimed.
func (h *handler) refuse(w http.ResponseWriter, r *http.Request, body []byte, err error) {
	var inflight *idem.InFlightError
	switch {
	case errors.As(err, &inflight):
		w.Header()["Retry-After"] = []string{strconv.Itoa(inflight.RetryAfter())}
		WriteProblem(w, CodeInProgress, "")
		h.report(r, Outcome{Kind: OutcomeConflict, Status: http.StatusConflict, Err: err})
	case errors.Is(err, idem.ErrMismatch):
		WriteProblem(w, CodeKeyReused, "")
		h.report(r, Outcome{Kind: OutcomeMismatch, Status: http.StatusUnprocessableEntity, Err: err})
	case r.Context().Err() != nil:
		w.Header()["Retry-After"] = []string{"1"}
		WriteProblem(w, CodeCanceled, "")
		h.report(r, Outcome{Kind: OutcomeCanceled, Status: http.StatusServiceUnavailable, Err: err})
	case errors.Is(err, idem.ErrStoreFull):
		// A budget or scope quota refused a new key: a policy limit, not an
		// outage, so never fail open (that would let one caller switch
		// idempotency off for all by filling the store).
		w.Header()["Retry-After"] = []string{"1"}
		WriteProblem(w, CodeStoreFull, "")
		h.report(r, Outcome{Kind: OutcomeStoreUnavailable, Status: http.StatusServiceUnavailable, Err: err})
	case h.failOpen:
		r2 := r.WithContext(r.Context()) // shallow copy: only the body changes
		setBody(r2, bytes.Clone(body))
		c := newCapture(w, h, r, nil)
		h.next.ServeHTTP(c, r2)
		status := c.code
		if status == 0 {
			status = http.StatusOK
		}
		c.free()
		h.report(r, Outcome{Kind: OutcomeFailOpen, Status: status, Err: err})
	default:
		w.Header()["Retry-After"] = []string{"1"}
		WriteProblem(w, CodeStoreUnavailable, "")
		h.report(r, Outcome{Kind: OutcomeStoreUnavailable, Status: http.StatusServiceUnavailable, Err: err})
	}
}

// replay answers a stored response.
func (h *handler) replay(w http.ResponseWriter, r *http.Request, result []byte) {
	status, omitted, err := h.writeReplay(w, result)
	if err != nil {
		WriteProblem(w, CodeStoredResponseInvalid, "")
		h.report(r, Outcome{Kind: OutcomeReplayInvalid, Status: http.StatusInternalServerError, Err: err})
		return
	}
	h.report(r, Outcome{Kind: OutcomeReplayed, Status: status, Omitted: omitted})
}

// writeReplay writes the stored response result with the replay headers.
// It writes nothing and returns an error when result cannot be decoded.
func (h *handler) writeReplay(w http.ResponseWriter, result []byte) (status int, omitted bool, err error) {
	d, err := decodeResponse(result)
	if err != nil {
		return 0, false, err
	}
	hdr := w.Header()
	d.eachHeader(func(name string, vs []string) {
		if !h.denied(name) {
			hdr[name] = vs
		}
	})
	vals := make([]string, 3)
	vals[0], vals[1] = "true", "true"
	hdr[HeaderReplayed] = vals[0:1:1]
	hdr[HeaderReplayedAlt] = vals[1:2:2]
	if d.omitted {
		vals[2] = "omitted"
		hdr[HeaderReplay] = vals[2:3:3]
		// An empty body; with no Content-Length net/http sends
		// Content-Length: 0 (or nothing, for statuses without a body).
		delete(hdr, "Content-Length")
	} else if d.length {
		// Stored as a flag (encoding version 2): the stored body's length.
		vals[2] = strconv.Itoa(len(d.body))
		hdr["Content-Length"] = vals[2:3:3]
	} else if cl, ok := hdr["Content-Length"]; ok && (len(cl) != 1 || cl[0] != strconv.Itoa(len(d.body))) {
		// The handler declared a length it did not write: answer the
		// truth. (A Content-Length the handler did not set is left to
		// net/http, which frames the replay as it framed the original.)
		vals[2] = strconv.Itoa(len(d.body))
		hdr["Content-Length"] = vals[2:3:3]
	}
	w.WriteHeader(d.status)
	if len(d.body) > 0 {
		_, _ = w.Write(d.body)
	}
	return d.status, d.omitted, nil
}

// execute runs the handler under lease, completes or releases the record,
// and only then answers the client (SPEC §3: acknowledged ⇒ replayable).
func (h *handler) execute(w http.ResponseWriter, r *http.Request, body []byte, lease *idem.Lease) {
	lease.StartRenewal()
	r2 := r.WithContext(lease.Context(r.Context()))
	setBody(r2, bytes.Clone(body))
	c := newCapture(w, h, r, lease)
	finished := false
	defer func() {
		if finished {
			return
		}
		// The handler panicked (or called runtime.Goexit): release the
		// record so a retry executes, and let the panic continue. A held
		// response was never sent; net/http breaks the connection.
		var err error
		if !c.early {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.completeTimeout)
			err = lease.Release(ctx)
			cancel()
		}
		h.report(r, Outcome{Kind: OutcomePanic, Fence: lease.Fence(), Takeover: lease.Takeover(), Err: err})
	}()
	h.next.ServeHTTP(c, r2)
	finished = true

	// A handler that wrote nothing and returned after its client went away
	// abandoned the request: release, so that a retry executes. (Had the
	// client stayed, net/http would have answered an implicit 200.)
	abandoned := c.code == 0 && r.Context().Err() != nil || c.hijacked
	if c.code == 0 {
		c.snapshot(http.StatusOK)
	}
	o := Outcome{Kind: OutcomeExecuted, Status: c.code, Fence: lease.Fence(), Takeover: lease.Takeover(), Omitted: c.omit}
	if c.early && !c.through {
		// commitEarly decided the record (and the answer) already.
		o.Stored, o.Err = !c.failed, c.earlyErr
		if c.failed {
			o.Status = c.answered
		}
		c.free()
		h.report(r, o)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.completeTimeout)
	defer cancel()
	store := !abandoned && h.storedStatus(c.code)
	if store {
		result := make([]byte, len(c.buf))
		copy(result, c.buf)
		if c.omit {
			markOmitted(result)
		}
		o.Err = lease.Complete(ctx, result)
		if errors.Is(o.Err, idem.ErrStoreFull) && !c.omit && len(result) > c.head {
			// The store's byte budget refused the body: record status and
			// headers only, as for a body over the cap (a replay answers
			// them with Idempotency-Replay: omitted). The client still gets
			// the whole response, and the handler does not run again.
			result = result[:c.head]
			markOmitted(result)
			o.Omitted = true
			o.Err = lease.Complete(ctx, result)
		}
		o.Stored = o.Err == nil
	} else {
		o.Err = lease.Release(ctx)
	}
	switch {
	case !c.holding() || abandoned:
		// Written through already (Stream, or a streamed response that is
		// not stored), or nobody to answer.
		if abandoned && o.Err == nil {
			if c.hijacked {
				o.Err = errHijacked
			} else {
				o.Err = context.Cause(r.Context())
			}
		}
	case o.Err == nil || !store && !errors.Is(o.Err, idem.ErrLeaseLost):
		// Completed: the response is replayable; send it. Or released (a
		// response that is not stored), where a failed release only delays
		// the retry until the lease ends.
		c.send()
	default:
		o.Status = h.notRecorded(ctx, c, o.Err)
	}
	c.free()
	h.report(r, o)
}

// storedStatus reports whether a response with status completes the record.
func (h *handler) storedStatus(status int) bool {
	if h.stored == nil {
		return defaultStored(status)
	}
	return h.stored(status)
}

// notRecorded answers, in place of the handler's held response, a request
// whose record could not be completed (err), and returns the status sent.
// When another executor took the key over (ErrLeaseLost), the client gets
// that executor's stored response if there is one, as a replay, else a 503
// lease-lost problem: an executor whose lease was lost never answers with
// its own result. Otherwise the outcome is unknown (the store may or may
// not have applied the completion): 503 outcome-unknown, and a retry is
// safe (it replays, or executes again once the lease ends).
func (h *handler) notRecorded(ctx context.Context, c *capture, err error) int {
	c.reset()
	w := c.w
	if errors.Is(err, idem.ErrLeaseLost) || c.lease.IsLost() {
		if res, ok, _ := c.lease.Superseded(ctx); ok {
			if status, _, derr := h.writeReplay(w, res); derr == nil {
				return status
			}
		}
		w.Header()["Retry-After"] = []string{"1"}
		WriteProblem(w, CodeLeaseLost, "")
		return http.StatusServiceUnavailable
	}
	w.Header()["Retry-After"] = []string{"1"}
	WriteProblem(w, CodeOutcomeUnknown, "")
	return http.StatusServiceUnavailable
}

// denied reports whether a header is never stored: the deny set, and
// trailers announced with http.TrailerPrefix (trailers are not stored).
// Names set by direct map assignment may be non-canonical ("set-cookie");
// they are looked up canonically too.
func (h *handler) denied(name string) bool {
	if h.deny[name] || strings.HasPrefix(name, http.TrailerPrefix) {
		return true
	}
	c := textproto.CanonicalMIMEHeaderKey(name)
	return c != name && (h.deny[c] || strings.HasPrefix(c, http.TrailerPrefix))
}

// connectionListed reports whether name is listed in the Connection header
// values conn (which makes it hop-by-hop).
func connectionListed(conn []string, name string) bool {
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			if textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(tok)) == textproto.CanonicalMIMEHeaderKey(name) {
				return true
			}
		}
	}
	return false
}

var errTooLarge = errors.New("idemhttp: request body too large")

// errHijacked is Outcome.Err for a handler that hijacked the connection:
// its response was not seen, so the record was released.
var errHijacked = errors.New("idemhttp: connection hijacked; response not stored")

// bodyPool holds request body buffers. A buffer is only lent for the
// fingerprint and the claim; the handler gets its own copy, which it may
// retain.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledBody is the largest buffer kept in bodyPool.
const maxPooledBody = 64 << 10

// readBody reads the whole body, at most h.maxBody bytes, into a pooled
// buffer that the caller returns with putBody. A request without a body
// gives (nil, nil).
func (h *handler) readBody(r *http.Request) (*[]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > h.maxBody {
		return nil, errTooLarge
	}
	bp := bodyPool.Get().(*[]byte)
	buf := (*bp)[:0]
	if r.ContentLength >= 0 && int64(cap(buf)) < r.ContentLength+1 {
		buf = make([]byte, 0, r.ContentLength+1) // +1: room for the read that sees EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		k, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if int64(len(buf)) > h.maxBody {
			err = errTooLarge
		}
		if err == io.EOF {
			*bp = buf
			return bp, nil
		}
		if err != nil {
			*bp = buf
			putBody(bp)
			return nil, err
		}
	}
}

func putBody(bp *[]byte) {
	if bp != nil && cap(*bp) <= maxPooledBody {
		*bp = (*bp)[:0]
		bodyPool.Put(bp)
	}
}

// bodyBytes returns the bytes of a pooled body (nil for none).
func bodyBytes(bp *[]byte) []byte {
	if bp == nil {
		return nil
	}
	return *bp
}

// setBody gives r a fresh reader over body, which the middleware read, its
// exact ContentLength, and a GetBody returning another (so that an http.Transport forwarding r, as a
// reverse proxy does, may replay it).
func setBody(r *http.Request, body []byte) {
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil // the length is known now
	if body == nil {
		r.Body = http.NoBody
		r.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	r.Body = newBodyReader(body)
	r.GetBody = func() (io.ReadCloser, error) { return newBodyReader(body), nil }
}

// bodyReader is an io.ReadCloser over bytes (one allocation, where
// io.NopCloser(bytes.NewReader(b)) takes two).
type bodyReader struct{ bytes.Reader }

func newBodyReader(b []byte) *bodyReader {
	r := &bodyReader{}
	r.Reset(b)
	return r
}

// Close does nothing and returns nil.
func (*bodyReader) Close() error { return nil }
