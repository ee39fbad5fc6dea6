package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
	"github.com/idemkit/idem/idemhttp"
)

// HeaderFence is the request header that carries the lease's fence to the
// upstream on executed requests. A client-sent value is always removed.
const HeaderFence = "Idempotency-Fence"

// Problem codes of the proxy's own answers (the middleware's are in
// idemhttp).
const (
	codeUpstreamUnavailable = "upstream-unavailable" // 502: nothing was sent
	codeUpstreamFailed      = "upstream-failed"      // 502: sent, no answer
	codeUpstreamTimeout     = "upstream-timeout"     // 504
)

// proxy routes each request to the handler of its route: the idemhttp
// middleware (configured from the route's policy) around a reverse proxy.
type proxy struct {
	cfg      *proxyconfig.Config
	routes   []proxyconfig.Route
	handlers []http.Handler
	stop     context.Context // canceled to abort upstream calls (shutdown past its bound)
	// abort cancels every upstream call still running.
	abort context.CancelFunc
	// scopes are the routes' scope functions (index as routes), for the
	// admin /keys endpoint.
	scopes []*idemhttp.IdentityScope
	// tr is the tracing of -otel-endpoint; nil when off.
	tr *tracing
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.tr != nil {
		p.tr.serve(w, r, p.routes[p.cfg.Match(r.Method, r.URL.Path)].Name, p.route)
		return
	}
	p.route(w, r)
}

// route hands the request to its route's handler.
func (p *proxy) route(w http.ResponseWriter, r *http.Request) {
	if err := checkPath(r); err != nil {
		writeProblem(w, http.StatusBadRequest, codePathInvalid, "Request path invalid",
			"The request path must be absolute and free of dot segments (. and ..), empty segments (//), encoded slashes or backslashes, and control characters: "+err.Error()+".")
		return
	}
	p.handlers[p.cfg.Match(r.Method, r.URL.Path)].ServeHTTP(w, r)
}

// codePathInvalid (400) answers a request whose path could be read in more
// than one way (see checkPath).
const codePathInvalid = "path-invalid"

// checkPath refuses request paths that a route matcher and the upstream
// could read differently, so that what is matched against the routes is
// exactly what is forwarded: dot segments ("." and "..", also
// percent-encoded), empty segments ("//"), encoded slashes and
// backslashes (%2F, %5C) and literal backslashes, control characters
// (also encoded, such as %00), and relative paths. An upstream that
// resolved "/internal/../v1/charges" itself would otherwise run a route's
// request under another route's policy. The asterisk form ("OPTIONS *") is
// allowed. The proxy refuses rather than cleans: a client that sends such a
// path has a bug or is probing, and a cleaned path would still be
// forwarded as the raw one by some upstreams.
func checkPath(r *http.Request) error {
	if r.URL.Path == "*" && r.URL.RawPath == "" {
		return nil
	}
	raw := r.URL.EscapedPath()
	if raw == "" || raw[0] != '/' {
		return errors.New("the path is not absolute")
	}
	for seg := range strings.SplitSeq(raw[1:], "/") {
		if strings.ContainsAny(seg, "\\") {
			return errors.New("it contains a backslash")
		}
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return errors.New("it has a malformed percent-encoding")
		}
		switch {
		case dec == "." || dec == "..":
			return errors.New("it has a dot segment")
		case strings.ContainsAny(dec, "/\\"):
			return errors.New("it has an encoded slash or backslash")
		}
		for i := 0; i < len(dec); i++ {
			if dec[i] < 0x20 || dec[i] == 0x7f {
				return errors.New("it has a control character")
			}
		}
	}
	if strings.Contains(raw, "//") {
		return errors.New("it has an empty segment (//)")
	}
	return nil
}

// newProxy builds the handler for cfg in front of upstream on store (already
// instrumented). With tr (-otel-endpoint), each request runs under a server
// span, the Keepers report to it too, and the upstream gets its trace
// context.
//
// Each route's scope is an idemhttp.IdentityScope keyed with scopeSecret:
// an HMAC of the Host and of every credential the request carries
// (Authorization, Cookie and the route's scope_headers); requests without
// credentials are refused unless the route says anonymous: allow.
func newProxy(cfg *proxyconfig.Config, upstream *url.URL, store idem.Store, m *metrics, log *slog.Logger, scopeSecret []byte, tr *tracing) (*proxy, error) {
	p := &proxy{cfg: cfg, routes: cfg.AllRoutes(), tr: tr}
	p.stop, p.abort = context.WithCancel(context.Background())
	transport := &http.Transport{
		Proxy: nil, // the upstream is reached directly, never via HTTP_PROXY
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	for _, rt := range p.routes {
		route := rt.Name
		rp := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(upstream)
				pr.Out.Host = pr.In.Host // a sidecar keeps the client's Host
				// A sidecar sits behind the service's own edge: keep the
				// X-Forwarded-For chain it received and append the peer.
				if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
					pr.Out.Header["X-Forwarded-For"] = xff
				}
				pr.SetXForwarded()
				if tr != nil {
					tr.inject(pr.Out)
				}
				pr.Out.Header.Del(HeaderFence)
				if f, ok := idem.FenceFromContext(pr.In.Context()); ok {
					pr.Out.Header[HeaderFence] = []string{strconv.FormatUint(f, 10)}
					deliverOnce(pr.Out)
				}
			},
			Transport:     transport,
			FlushInterval: flushInterval(rt.Stream),
			ErrorLog:      errLog,
			ErrorHandler:  upstreamError(log, route, m),
			BufferPool:    copyBuffers,
		}
		var h http.Handler = withTimeout(rp, rt.UpstreamTimeout, p.stop)
		h = m.track(h, route)
		scope := &idemhttp.IdentityScope{Secret: scopeSecret, Headers: rt.ScopeHeaders, Anonymous: rt.Anonymous}
		p.scopes = append(p.scopes, scope)
		if rt.Key != proxyconfig.KeyOff { // key: off passes everything through
			obs := m.observer(route, logEvent(log, route))
			if tr != nil {
				o, err := tr.observer(route)
				if err != nil {
					p.abort()
					return nil, err
				}
				obs = observers{obs, o}
			}
			mw := &idemhttp.Middleware{
				Keeper: &idem.Keeper{
					Store:     store,
					Lease:     rt.Lease,
					Retention: rt.TTL,
					Observer:  obs,
				},
				Methods:        rt.Methods,
				LegacyEncoding: cfg.LegacyRecords,
				Optional:       rt.Key == proxyconfig.KeyOptional,
				Scope:          scope.Scope,
				Fingerprint:    fingerprintFunc(rt.Fingerprint),
				MaxBody:        rt.MaxBody,
				Stored:         rt.Stored.Contains,
				MaxResult:      int(rt.MaxResult),
				NeverReplay:    append(idemhttp.DefaultNeverReplay(), rt.NeverReplay...),
				Wait:           rt.Wait,
				FailOpen:       rt.FailOpen,
				Stream:         rt.Stream,
				OnOutcome:      onOutcome(m, log, route, scope, keyDigest(scopeSecret), tr != nil),
			}
			h = mw.Handler(h)
		}
		p.handlers = append(p.handlers, h)
	}
	return p, nil
}

// fingerprintFunc is the middleware's fingerprint for a route's mode (nil:
// the default).
func fingerprintFunc(m proxyconfig.FingerprintMode) func(*http.Request, []byte) ([]byte, error) {
	if m == proxyconfig.FingerprintCanonicalJSON {
		return idemhttp.CanonicalFingerprint
	}
	return nil
}

// flushInterval is the reverse proxy's flush interval for a route: a
// streaming route sends every write at once; a held route needs no flushing
// (the middleware holds the response until its record is stored), though
// the reverse proxy still flushes event streams and bodies of unknown
// length, which the middleware handles.
func flushInterval(stream bool) time.Duration {
	if stream {
		return -1
	}
	return 0
}

// deliverOnce makes sure that http.Transport never sends an execution's
// request to the upstream a second time (SPEC §3: one execution, one
// delivery). The transport resends a request on its own when a reused
// connection fails and the request is "replayable": a GET, HEAD, OPTIONS
// or TRACE, or any request carrying an Idempotency-Key or
// X-Idempotency-Key header, with no body or a GetBody. The upstream may
// have read and processed the first copy, so the key headers are sent
// under their lower-case names (HTTP field names are case-insensitive;
// the transport looks for the canonical spelling only), which keeps
// requests with a body retryable only when nothing at all was written (the
// transport's nothing-written case, which is safe). Safe methods lose
// GetBody and get a non-nil empty body instead, so they are never resent.
func deliverOnce(out *http.Request) {
	for _, k := range [...]string{"Idempotency-Key", "X-Idempotency-Key"} {
		if vs, ok := out.Header[k]; ok {
			delete(out.Header, k)
			out.Header[strings.ToLower(k)] = vs
		}
	}
	switch out.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, "":
		out.GetBody = nil
		if out.Body == nil || out.Body == http.NoBody {
			out.Body = emptyBody{}
		}
	}
}

// emptyBody is a request body with nothing in it that the transport cannot
// tell from a real one (as it can http.NoBody), so it never resends it.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// withTimeout bounds an upstream call executed under a lease by d, and
// detaches it from the client's cancellation: it runs to its end even if the
// client goes away, so that its response completes the record and the
// client's retry replays it instead of executing again (SPEC §3, client
// disconnect). Such a call still ends at d, when stop is done (a shutdown
// past its bound), or when the lease is lost (another request took the key
// over: its result, not this one's, is the key's). It also notes whether any
// byte of the request was written to the upstream, for the error answer.
// Pass-through requests (not executed under a lease) are left alone: bounded
// and canceled by their client, as with any reverse proxy, so long polls and
// event streams keep working.
func withTimeout(h http.Handler, d time.Duration, stop context.Context) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, leased := idem.FenceFromContext(r.Context()); !leased {
			h.ServeHTTP(w, r)
			return
		}
		ctx, abort := context.WithCancelCause(context.WithoutCancel(r.Context()))
		defer abort(nil)
		ctx, cancel := context.WithTimeoutCause(ctx, d, errUpstreamTimeout)
		defer cancel()
		defer context.AfterFunc(stop, cancel)()
		defer context.AfterFunc(r.Context(), func() {
			if cause := context.Cause(r.Context()); errors.Is(cause, idem.ErrLeaseLost) {
				abort(cause)
			}
		})()
		sent := new(atomic.Bool)
		ctx = context.WithValue(ctx, sentKey{}, sent)
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteHeaderField: func(string, []string) { sent.Store(true) },
		})
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// sentKey is the context key of the flag that records whether any byte of
// the request was written to the upstream.
type sentKey struct{}

// requestSent reports whether any part of the request may have reached the
// upstream: true when a header field was written, or when it is unknown.
func requestSent(ctx context.Context) bool {
	sent, ok := ctx.Value(sentKey{}).(*atomic.Bool)
	return !ok || sent.Load()
}

var errUpstreamTimeout = errors.New("idemproxy: upstream timeout")

// track records executions under a lease in the in-flight gauge and the
// upstream latency histogram.
func (m *metrics) track(h http.Handler, route string) http.Handler {
	hist := m.upstreamT.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := idem.FenceFromContext(r.Context()); !ok {
			h.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		id := m.inflight.add(start)
		defer func() {
			m.inflight.done(id)
			hist.Observe(time.Since(start).Seconds())
		}()
		h.ServeHTTP(w, r)
	})
}

// upstreamError answers a failed upstream round trip: 504 when the route's
// upstream timeout passed, else 502. Both are 5xx, so the middleware
// releases the record and a retry executes.
func upstreamError(log *slog.Logger, route string, m *metrics) func(http.ResponseWriter, *http.Request, error) {
	unreachable := m.upstreamE.WithLabelValues(route, "unreachable")
	timeout := m.upstreamE.WithLabelValues(route, "timeout")
	canceled := m.upstreamE.WithLabelValues(route, "canceled")
	return func(w http.ResponseWriter, r *http.Request, err error) {
		code, status := codeUpstreamUnavailable, http.StatusBadGateway
		detail := "The upstream could not be reached; the request was not sent to it and may be retried with the same key."
		if requestSent(r.Context()) {
			code = codeUpstreamFailed
			detail = "The connection to the upstream failed after the request was sent: the request may have been processed. The key was released; a retry with the same key sends it again, with the same Idempotency-Key and a higher Idempotency-Fence."
		}
		if errors.Is(context.Cause(r.Context()), errUpstreamTimeout) {
			code, status = codeUpstreamTimeout, http.StatusGatewayTimeout
			detail = "The upstream did not answer in time: the request may have been processed. The key was released; a retry with the same key sends it again, with the same Idempotency-Key and a higher Idempotency-Fence."
		}
		lvl, counter := slog.LevelWarn, unreachable
		switch {
		case status == http.StatusGatewayTimeout:
			counter = timeout
		case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
			lvl, counter = slog.LevelInfo, canceled // the client went away
		}
		counter.Inc()
		log.Log(r.Context(), lvl, "upstream error", "route", route, "method", r.Method, "path", r.URL.Path,
			"status", status, "err", err.Error())
		writeProblem(w, status, code, http.StatusText(status), detail)
	}
}

// writeProblem writes an RFC 9457 problem with the members idemhttp uses.
func writeProblem(w http.ResponseWriter, status int, code, title, detail string) {
	b, _ := json.Marshal(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
		Code   string `json:"code"`
	}{idemhttp.ProblemTypePrefix + code, title, status, detail, code})
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// onOutcome counts every outcome and logs the non-trivial ones: everything
// but passthroughs and plain successful executions (those are logged at
// debug level).
//
// The scope is logged as the route computes it (the HMAC, never a raw
// credential). The Idempotency-Key itself is logged only at debug level;
// at info and above the line carries key_hash, a short HMAC of it that
// correlates lines without revealing the key.
//
// When traced, the outcome is also noted on the request's server span.
func onOutcome(m *metrics, log *slog.Logger, route string, scope *idemhttp.IdentityScope, keys keyDigest, traced bool) func(*http.Request, idemhttp.Outcome) {
	counters := map[idemhttp.OutcomeKind]interface{ Inc() }{}
	for k := idemhttp.OutcomeExecuted; k.String() != "unknown"; k++ {
		counters[k] = m.requests.WithLabelValues(route, k.String())
	}
	return func(r *http.Request, o idemhttp.Outcome) {
		if c := counters[o.Kind]; c != nil {
			c.Inc()
		} else {
			m.requests.WithLabelValues(route, o.Kind.String()).Inc()
		}
		if traced {
			outcome(r, o.Kind.String())
		}
		lvl := slog.LevelInfo
		switch o.Kind {
		case idemhttp.OutcomePassthrough:
			return
		case idemhttp.OutcomeExecuted:
			lvl = slog.LevelDebug
			if o.Err != nil || o.Takeover {
				lvl = slog.LevelWarn
			}
		case idemhttp.OutcomeStoreUnavailable, idemhttp.OutcomeReplayInvalid, idemhttp.OutcomePanic:
			lvl = slog.LevelError
		case idemhttp.OutcomeFailOpen:
			lvl = slog.LevelWarn
		}
		if !log.Enabled(r.Context(), lvl) {
			return
		}
		key, _ := idemhttp.ParseKey(r.Header, "")
		sc, _ := scope.Scope(r) // "" when refused (no credential)
		attrs := []slog.Attr{
			slog.String("route", route),
			slog.String("outcome", o.Kind.String()),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.String("key_hash", keys.of(key)),
			slog.String("scope", hex.EncodeToString([]byte(sc))),
			slog.Int("status", o.Status),
		}
		if lvl == slog.LevelDebug {
			attrs = append(attrs, slog.String("key", key))
		}
		if o.Fence != 0 {
			attrs = append(attrs, slog.Uint64("fence", o.Fence))
		}
		if o.Kind == idemhttp.OutcomeExecuted {
			attrs = append(attrs, slog.Bool("stored", o.Stored))
		}
		if o.Takeover {
			attrs = append(attrs, slog.Bool("takeover", true))
		}
		if o.Omitted {
			attrs = append(attrs, slog.Bool("body_omitted", true))
		}
		if o.Err != nil {
			attrs = append(attrs, slog.String("err", o.Err.Error()))
		}
		log.LogAttrs(r.Context(), lvl, "request", attrs...)
	}
}

// logEvent logs the store events that no request outcome reports: failed
// or refused lease renewals, which happen while the upstream runs.
func logEvent(log *slog.Logger, route string) func(context.Context, idem.Event) {
	return func(ctx context.Context, e idem.Event) {
		if e.Op != "extend" || (e.Kind != idem.EventLeaseLost && e.Kind != idem.EventStoreError) {
			return
		}
		msg := "lease renewal failed"
		if e.Kind == idem.EventLeaseLost {
			msg = "lease lost: another request took the key over"
		}
		log.LogAttrs(ctx, slog.LevelWarn, msg, slog.String("route", route), slog.Uint64("fence", e.Fence),
			slog.String("err", errString(e.Err)))
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// copyBuffers lends httputil.ReverseProxy the buffers it copies response
// bodies through. Without a BufferPool it allocates 32 KiB per request:
// 72% of the bytes the proxy allocated under load, and with them most of
// its garbage-collection work (docs/bench/idemproxy.md).
var copyBuffers httputil.BufferPool = &bufferPool{}

// bufferPool is an httputil.BufferPool of 32 KiB buffers.
type bufferPool struct{ p sync.Pool }

// copyBufferSize is the size of ReverseProxy's own buffers.
const copyBufferSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, copyBufferSize)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) != copyBufferSize {
		return
	}
	buf = buf[:copyBufferSize]
	b.p.Put(&buf)
}
