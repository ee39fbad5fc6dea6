package main

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is a fake OTLP/HTTP collector: it accepts POST /v1/traces
// (protobuf, gzip or not) and keeps the spans.
type otlpReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	res   []*commonpb.KeyValue // resource attributes seen
	bad   []string             // requests it could not read
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			rc.fail(r.Method + " " + r.URL.Path)
			http.NotFound(w, r)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				rc.fail(err.Error())
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			rc.fail(err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.ResourceSpans {
			rc.res = append(rc.res, rs.GetResource().GetAttributes()...)
			for _, ss := range rs.ScopeSpans {
				rc.spans = append(rc.spans, ss.Spans...)
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *otlpReceiver) fail(what string) {
	rc.mu.Lock()
	rc.bad = append(rc.bad, what)
	rc.mu.Unlock()
}

// serverSpans returns the server spans of trace id (hex).
func (rc *otlpReceiver) serverSpans(traceID string) []*tracepb.Span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range rc.spans {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER && hex.EncodeToString(s.TraceId) == traceID {
			out = append(out, s)
		}
	}
	return out
}

func attrOf(kvs []*commonpb.KeyValue, key string) (*commonpb.AnyValue, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

func eventNames(s *tracepb.Span) []string {
	var out []string
	for _, e := range s.Events {
		out = append(out, e.Name)
	}
	return out
}

// traceUpstream is an API that answers 201 and records the traceparent of
// each request it gets.
type traceUpstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	tp  []string
}

func newTraceUpstream(t *testing.T) *traceUpstream {
	u := &traceUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.tp = append(u.tp, r.Header.Get("Traceparent")+"|"+r.Header.Get("Tracestate"))
		u.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte("made"))
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *traceUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.tp)
}

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
	clientParent  = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// TestOTelTraces runs the binary with -otel-endpoint pointing at a fake
// OTLP/HTTP collector and sends a request carrying a traceparent, then its
// retry: the upstream gets the trace context of the proxy's span (same
// trace id, the proxy's span as parent, the client's tracestate kept); the
// collector gets, once the proxy shut down (the batch is flushed), one
// server span per request, child of the client's span, with the HTTP
// attributes, the outcome and the Keeper's events (acquired and complete,
// then replayed).
func TestOTelTraces(t *testing.T) {
	rc := newOTLPReceiver(t)
	u := newTraceUpstream(t)
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-otel-endpoint", rc.srv.URL)
	c := client(t)
	hdr := map[string]string{"Idempotency-Key": newKey(), "Traceparent": clientParent, "Tracestate": "vendor=v1"}
	for i, want := range []string{"", "true"} {
		r := do(t, c, "POST", p.addr+"/ok", hdr, "{}")
		if r.status != 201 || r.header.Get("Idempotency-Replayed") != want {
			t.Fatalf("request %d: %d %v %s", i, r.status, r.header, r.body)
		}
	}
	p.stop()

	seen := u.seen()
	if len(seen) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(seen))
	}
	tp, ts, _ := strings.Cut(seen[0], "|")
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[1] != clientTraceID || parts[2] == clientSpanID || ts != "vendor=v1" {
		t.Fatalf("upstream's trace context %q %q: want trace %s under the proxy's span, tracestate kept", tp, ts, clientTraceID)
	}

	spans := rc.serverSpans(clientTraceID)
	if len(rc.bad) > 0 || len(spans) != 2 {
		t.Fatalf("%d server spans of the trace (bad exports %q), want 2: %v", len(spans), rc.bad, spans)
	}
	slices.SortFunc(spans, func(a, b *tracepb.Span) int { return int(a.StartTimeUnixNano - b.StartTimeUnixNano) })
	for i, s := range spans {
		if s.Name != "idemproxy POST default" || hex.EncodeToString(s.ParentSpanId) != clientSpanID {
			t.Errorf("span %d: name %q parent %x; want idemproxy POST default under the client's span", i, s.Name, s.ParentSpanId)
		}
		for key, want := range map[string]string{"http.request.method": "POST", "url.path": "/ok", "idemproxy.route": "default",
			"idemproxy.outcome": []string{"executed", "replayed"}[i]} {
			if v, ok := attrOf(s.Attributes, key); !ok || v.GetStringValue() != want {
				t.Errorf("span %d: %s = %v, want %q", i, key, v, want)
			}
		}
		if v, ok := attrOf(s.Attributes, "http.response.status_code"); !ok || v.GetIntValue() != 201 {
			t.Errorf("span %d: status code %v", i, v)
		}
	}
	if hex.EncodeToString(spans[0].SpanId) != parts[2] {
		t.Errorf("the upstream's parent span is %s, want the executing request's span %x", parts[2], spans[0].SpanId)
	}
	if ev := eventNames(spans[0]); !slices.Contains(ev, "idem.acquired") || !slices.Contains(ev, "idem.complete") {
		t.Errorf("first request's events %q, want idem.acquired and idem.complete", ev)
	}
	if ev := eventNames(spans[1]); !slices.Contains(ev, "idem.replayed") || slices.Contains(ev, "idem.acquired") {
		t.Errorf("retry's events %q, want idem.replayed", ev)
	}
	if v, ok := attrOf(rc.res, "service.name"); !ok || v.GetStringValue() != "idemproxy" {
		t.Errorf("resource service.name = %v", v)
	}
	for _, s := range spans {
		for _, e := range s.Events {
			for _, kv := range e.Attributes {
				if strings.Contains(kv.Value.GetStringValue(), hdr["Idempotency-Key"]) {
					t.Errorf("event %s shows the key in %s", e.Name, kv.Key)
				}
			}
		}
	}
}

// TestOTelOff: without -otel-endpoint the proxy starts no span: the
// upstream gets the client's trace context untouched.
func TestOTelOff(t *testing.T) {
	u := newTraceUpstream(t)
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:")
	hdr := map[string]string{"Idempotency-Key": newKey(), "Traceparent": clientParent, "Tracestate": "vendor=v1"}
	if r := do(t, client(t), "POST", p.addr+"/ok", hdr, "{}"); r.status != 201 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if seen := u.seen(); len(seen) != 1 || seen[0] != clientParent+"|vendor=v1" {
		t.Fatalf("upstream saw %q, want the client's %q", seen, clientParent)
	}
}

// TestOTelEndpointFlag checks what -otel-endpoint accepts.
func TestOTelEndpointFlag(t *testing.T) {
	for in, want := range map[string]otelEndpoint{
		"http://127.0.0.1:4318":              {"127.0.0.1:4318", "/v1/traces", true},
		"http://127.0.0.1:4318/":             {"127.0.0.1:4318", "/v1/traces", true},
		"https://otel.example:443/custom/v1": {"otel.example:443", "/custom/v1", false},
		"collector:4318":                     {"collector:4318", "/v1/traces", true},
	} {
		got, err := parseOTelEndpoint(in)
		if err != nil || got != want {
			t.Errorf("parseOTelEndpoint(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"collector", "ftp://x:1", "http://", "http://u:p@h:1", "http://h:1?x=1", ":"} {
		if _, err := parseOTelEndpoint(in); err == nil {
			t.Errorf("parseOTelEndpoint(%q) accepted", in)
		}
	}
	withEnv(t, nil)
	_, err := parseArgs([]string{"-upstream", "http://a:1", "-otel-endpoint", "collector"}, new(bytes.Buffer))
	if _, ok := err.(*usageError); !ok || !strings.Contains(err.Error(), "-otel-endpoint: want a URL") {
		t.Fatalf("bad -otel-endpoint: %v", err)
	}
	cfg := writeFile(t, "c.yaml", "otel_endpoint: http://127.0.0.1:4318\nrequire_store: true\n")
	o, err := parseArgs([]string{"-upstream", "http://a:1", "-config", cfg}, new(bytes.Buffer))
	if err != nil || o.otelEndpoint != "http://127.0.0.1:4318" || !o.requireStore {
		t.Fatalf("config: %+v %v", o, err)
	}
	o, err = parseArgs([]string{"-upstream", "http://a:1", "-config", cfg, "-otel-endpoint", "h:1", "-require-store=false"}, new(bytes.Buffer))
	if err != nil || o.otelEndpoint != "h:1" || o.requireStore {
		t.Fatalf("flags over the config: %+v %v", o, err)
	}
}
