package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
)

// Attributes of the proxy's server spans, besides the semantic conventions'
// http.request.method, url.path and http.response.status_code.
const (
	// attrRoute is the name of the route that handled the request.
	attrRoute = attribute.Key("idemproxy.route")
	// attrOutcome is the request's outcome, as in idemproxy_requests_total
	// (executed, replayed, conflict, mismatch, passthrough, …).
	attrOutcome = attribute.Key("idemproxy.outcome")
)

// otlpTracesPath is the path of OTLP/HTTP trace exports, added to an
// -otel-endpoint given without one.
const otlpTracesPath = "/v1/traces"

// otelEndpoint is a parsed -otel-endpoint.
type otelEndpoint struct {
	host     string // host:port
	path     string // URL path of the exports
	insecure bool   // http://, not https://
}

// parseOTelEndpoint parses -otel-endpoint: an http:// or https:// URL (the
// collector's base URL, to which /v1/traces is added when it has no path,
// or the full URL of the exports when it has one), or host:port, which
// means http://host:port.
func parseOTelEndpoint(s string) (otelEndpoint, error) {
	if !strings.Contains(s, "://") {
		u, err := url.Parse("http://" + s)
		if err != nil || u.Host != s || !validHostPort(u, true) {
			return otelEndpoint{}, fmt.Errorf("want a URL such as http://127.0.0.1:4318, or host:port, not %q", s)
		}
		return otelEndpoint{host: s, path: otlpTracesPath, insecure: true}, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !validHostPort(u, false) || u.User != nil ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return otelEndpoint{}, fmt.Errorf("want an http:// or https:// URL with a host and no user info, query or fragment, such as http://127.0.0.1:4318, not %q", s)
	}
	e := otelEndpoint{host: u.Host, path: u.EscapedPath(), insecure: u.Scheme == "http"}
	if e.path == "" || e.path == "/" {
		e.path = otlpTracesPath
	}
	return e, nil
}

// validHostPort reports whether u has a host name and, if it has a port
// (or needPort), a port within 1-65535.
func validHostPort(u *url.URL, needPort bool) bool {
	if u.Hostname() == "" {
		return false
	}
	p := u.Port()
	if p == "" {
		return !needPort && !strings.HasSuffix(u.Host, ":")
	}
	n, err := strconv.ParseUint(p, 10, 16)
	return err == nil && n > 0
}

// tracing is the proxy's OpenTelemetry tracing (-otel-endpoint): a server
// span per request, continued from the W3C trace context the request
// carries and passed on to the upstream, with the Keeper's events on it.
// A nil *tracing (the default) puts nothing in the request path.
type tracing struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TraceContext
	// hashSecret keys idemotel's scope and key hashes.
	hashSecret []byte
}

// newTracing sets up tracing to endpoint with an OTLP/HTTP exporter behind
// a batching span processor. The exporter also reads the standard
// OTEL_EXPORTER_OTLP_* variables (headers, timeout, compression,
// certificates), and the resource OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES; -otel-endpoint wins over the endpoint
// variables. Nothing is sent before the first span ends.
func newTracing(endpoint string, scopeSecret []byte) (*tracing, error) {
	e, err := parseOTelEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(e.host), otlptracehttp.WithURLPath(e.path)}
	if e.insecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(context.Background(),
		resource.WithAttributes(attribute.String("service.name", "idemproxy"), attribute.String("service.version", versionString())),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(context.Background())
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	// The hashes of scopes and keys on span events are HMACs under a key
	// of their own, derived from the scope secret.
	mac := hmac.New(sha256.New, scopeSecret)
	mac.Write([]byte("idemproxy otel hash"))
	return &tracing{tp: tp, tracer: tp.Tracer("github.com/idemkit/idem/cmd/idemproxy"), hashSecret: mac.Sum(nil)}, nil
}

// shutdown ends the spans still buffered (it exports them) and stops the
// exporter.
func (t *tracing) shutdown(ctx context.Context) error {
	return t.tp.Shutdown(ctx)
}

// observer returns the idemotel observer of one route: idempotency events
// on the request's server span. Metrics stay Prometheus (metrics.go): the
// observer's meter is a no-op.
func (t *tracing) observer(route string) (idem.Observer, error) {
	return idemotel.NewObserver(idemotel.Options{
		TracerProvider: t.tp,
		MeterProvider:  noop.NewMeterProvider(),
		HashSecret:     t.hashSecret,
		Attributes:     []attribute.KeyValue{attrRoute.String(route)},
	})
}

// serve runs next under a server span named "idemproxy METHOD ROUTE",
// child of the trace context of r (traceparent, tracestate) when it has
// one. The span is in the context next gets, for the Keeper's observer and
// for inject.
func (t *tracing) serve(w http.ResponseWriter, r *http.Request, route string, next func(http.ResponseWriter, *http.Request)) {
	ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	method := spanMethod(r.Method)
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", method),
		attribute.String("url.path", r.URL.Path),
		attrRoute.String(route),
	}
	if method != r.Method {
		attrs = append(attrs, attribute.String("http.request.method_original", r.Method))
	}
	ctx, span := t.tracer.Start(ctx, "idemproxy "+method+" "+route, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	defer span.End()
	sw := &statusWriter{ResponseWriter: w}
	next(sw, r.WithContext(ctx))
	if sw.status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	}
}

// inject puts the trace context of out's context (the request's server
// span) in out's headers, replacing what the client sent.
func (t *tracing) inject(out *http.Request) {
	out.Header.Del("Traceparent")
	out.Header.Del("Tracestate")
	t.prop.Inject(out.Context(), propagation.HeaderCarrier(out.Header))
}

// outcome notes a request's outcome on its span, if it has a recording one.
func outcome(r *http.Request, kind string) {
	if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
		span.SetAttributes(attrOutcome.String(kind))
	}
}

// spanMethod is the method as the semantic conventions want it in span
// names and http.request.method: a known method, or _OTHER.
func spanMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// statusWriter notes the final status code written through it. It keeps
// http.Flusher and, through Unwrap, what http.ResponseController reaches
// (hijacking, deadlines).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush sends buffered data to the client (http.Flusher).
func (s *statusWriter) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// observers is an idem.Observer that reports to each of its observers.
type observers []idem.Observer

func (os observers) Observe(ctx context.Context, e idem.Event) {
	for _, o := range os {
		o.Observe(ctx, e)
	}
}
