package idemotel_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemotel"
)

// The scope every request of the HTTP tests runs under: an identity, which
// must never appear in telemetry.
const httpScope = "acct:alice@example.com"

const httpLease = 10 * time.Second

// server is an idemhttp.Middleware with an idemotel.Observer behind an
// httptest server whose handler wrapper starts one server span per request
// (as otelhttp would).
type server struct {
	t     *testing.T
	h     *otelHarness
	clk   *clock
	store *testStore
	srv   *httptest.Server
	ended chan string // a request's id, once its span ended

	block   atomic.Bool   // the next handler run blocks
	entered chan struct{} // a blocked handler started
	unblock chan struct{} // lets a blocked handler return
	runs    atomic.Int32
}

func newServer(t *testing.T, o idemotel.Options) *server {
	s := &server{t: t, h: newHarness(t), clk: newClock(), ended: make(chan string, 16),
		entered: make(chan struct{}), unblock: make(chan struct{})}
	s.store = newTestStore(s.clk)
	obs := s.h.observer(t, o)
	mw := &idemhttp.Middleware{
		Keeper: &idem.Keeper{Store: s.store, Clock: s.clk, Lease: httpLease, Observer: obs},
		Scope:  func(*http.Request) (string, error) { return httpScope, nil },
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.runs.Add(1)
		if s.block.CompareAndSwap(true, false) {
			s.entered <- struct{}{}
			<-s.unblock
		}
		if r.URL.Path == "/fail" {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge %d", n)
	})
	handler := mw.Handler(app)
	tracer := s.h.tp.Tracer("test-server")
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		ctx, span := tracer.Start(r.Context(), r.Method+" "+r.URL.Path,
			trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("test.request", id)))
		handler.ServeHTTP(w, r.WithContext(ctx))
		span.End()
		s.ended <- id
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// response is what a request got.
type response struct {
	status   int
	body     string
	replayed bool
	id       string
}

// send makes one request and waits until its server span ended.
func (s *server) send(id, path, key, body string) response {
	r := s.start(id, path, key, body)
	if got := <-s.ended; got != id {
		s.t.Fatalf("span of %s ended, want %s", got, id)
	}
	return r
}

// start makes one request without waiting for its span.
func (s *server) start(id, path, key, body string) response {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.srv.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("X-Request-Id", id)
	res, err := s.srv.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, body: string(b), replayed: res.Header.Get(idemhttp.HeaderReplayed) == "true", id: id}
}

// span returns the ended server span of request id.
func (s *server) span(id string) sdktrace.ReadOnlySpan {
	s.t.Helper()
	var found sdktrace.ReadOnlySpan
	for _, sp := range s.h.spans.Ended() {
		if v, ok := attrs(sp.Attributes())["test.request"]; ok && v.AsString() == id {
			if found != nil {
				s.t.Fatalf("two spans for request %s", id)
			}
			found = sp
		}
	}
	if found == nil {
		s.t.Fatalf("no span for request %s", id)
	}
	return found
}

// want describes one expected span event.
type want struct {
	name    string
	outcome string
	op      string
	fence   bool          // idem.fence is present (and the same on every event of the request)
	latency time.Duration // 0: no idem.store.latency
	errType string        // "": no error.type
}

// check asserts that request id has exactly the events ws, with their
// attributes, and the status code.
func (s *server) check(id string, status codes.Code, ws ...want) sdktrace.ReadOnlySpan {
	s.t.Helper()
	sp := s.span(id)
	var names []string
	for _, w := range ws {
		names = append(names, w.name)
	}
	if got := eventNames(sp); strings.Join(got, ",") != strings.Join(names, ",") {
		s.t.Fatalf("%s: events %v, want %v", id, got, names)
	}
	scopeHash := sha8(httpScope)
	var fence int64
	for i, w := range ws {
		a := attrs(sp.Events()[i].Attributes)
		str := func(k attribute.Key) string { return a[k].AsString() }
		if str(idemotel.AttrOutcome) != w.outcome || str(idemotel.AttrOp) != w.op {
			s.t.Errorf("%s %s: outcome %q op %q, want %q %q", id, w.name, str(idemotel.AttrOutcome), str(idemotel.AttrOp), w.outcome, w.op)
		}
		if str(idemotel.AttrScopeHash) != scopeHash {
			s.t.Errorf("%s %s: scope hash %q, want %q", id, w.name, str(idemotel.AttrScopeHash), scopeHash)
		}
		if len(str(idemotel.AttrKeyHash)) != 16 {
			s.t.Errorf("%s %s: key hash %q", id, w.name, str(idemotel.AttrKeyHash))
		}
		if _, ok := a[idemotel.AttrKey]; ok {
			s.t.Errorf("%s %s: the key is recorded without Options.Key", id, w.name)
		}
		if v, ok := a[idemotel.AttrFence]; ok != w.fence || ok && v.AsInt64() <= 0 {
			s.t.Errorf("%s %s: fence %v (%v), want one: %v", id, w.name, v.String(), ok, w.fence)
		} else if ok && fence != 0 && v.AsInt64() != fence {
			s.t.Errorf("%s %s: fence %d, the request's other events %d", id, w.name, v.AsInt64(), fence)
		} else if ok {
			fence = v.AsInt64()
		}
		if v, ok := a[idemotel.AttrStoreLatency]; ok != (w.latency != 0) || !near(v.AsFloat64(), w.latency.Seconds()) {
			s.t.Errorf("%s %s: store latency %v (%v), want %v", id, w.name, v.String(), ok, w.latency)
		}
		_, hasExec := a[idemotel.AttrExecutionDuration]
		if hasExec != (w.outcome == "executed") {
			s.t.Errorf("%s %s: execution duration present %v", id, w.name, hasExec)
		}
		if v, ok := a[idemotel.AttrErrorType]; ok != (w.errType != "") || v.AsString() != w.errType {
			s.t.Errorf("%s %s: error.type %q (%v), want %q", id, w.name, v.AsString(), ok, w.errType)
		}
	}
	if sp.Status().Code != status {
		s.t.Errorf("%s: status %v %q, want %v", id, sp.Status().Code, sp.Status().Description, status)
	}
	return sp
}

// TestHTTP drives idemhttp through every outcome and checks that each
// request has one span with exactly its idempotency events, what the
// metrics count, and that the scope and the keys never show.
func TestHTTP(t *testing.T) {
	s := newServer(t, idemotel.Options{})
	s.store.fail = func(op, rk string) error {
		_, key, _ := idem.SplitRecordKey(rk)
		switch {
		case key == "key-down" && op == "begin":
			return fmt.Errorf("teststore: %w: connection refused", idem.ErrStoreUnavailable)
		case key == "key-badcomplete" && op == "complete":
			return errors.New("teststore: disk on fire")
		}
		return nil
	}
	// First execution, then its replay.
	if r := s.send("first", "/pay", "key-one", "a"); r.status != http.StatusCreated || r.replayed {
		t.Fatalf("first: %+v", r)
	}
	s.check("first", codes.Unset,
		want{name: "idem.acquired", outcome: "acquired", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.complete", outcome: "executed", op: "complete", fence: true, latency: completeLat})
	ev := s.span("first").Events()[1]
	if d := attrs(ev.Attributes)[idemotel.AttrExecutionDuration].AsFloat64(); !near(d, (beginLat + completeLat).Seconds()) {
		t.Errorf("execution duration %v s, want %v", d, beginLat+completeLat)
	}
	if r := s.send("replay", "/pay", "key-one", "a"); r.status != http.StatusCreated || !r.replayed {
		t.Fatalf("replay: %+v", r)
	}
	s.check("replay", codes.Unset, want{name: "idem.replayed", outcome: "replayed", op: "begin", latency: beginLat})

	// Reused with another body.
	if r := s.send("mismatch", "/pay", "key-one", "b"); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("mismatch: %+v", r)
	}
	s.check("mismatch", codes.Unset, want{name: "idem.mismatch", outcome: "mismatch", op: "begin", latency: beginLat})

	// A duplicate while the first runs: 409.
	s.block.Store(true)
	held := make(chan response, 1)
	go func() { held <- s.start("held", "/pay", "key-two", "a") }()
	<-s.entered
	if r := s.send("conflict", "/pay", "key-two", "a"); r.status != http.StatusConflict {
		t.Fatalf("conflict: %+v", r)
	}
	s.check("conflict", codes.Unset, want{name: "idem.conflict", outcome: "conflict", op: "begin", fence: true, latency: beginLat})
	s.unblock <- struct{}{}
	if r := <-held; r.status != http.StatusCreated {
		t.Fatalf("held: %+v", r)
	}
	<-s.ended
	s.check("held", codes.Unset,
		want{name: "idem.acquired", outcome: "acquired", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.complete", outcome: "executed", op: "complete", fence: true, latency: completeLat})

	// The first executor stalls past its lease: the retry takes the key
	// over (fence 2) and completes; the stale executor's completion is
	// refused (lease lost) and it answers the new executor's response.
	s.block.Store(true)
	stale := make(chan response, 1)
	go func() { stale <- s.start("stale", "/pay", "key-three", "a") }()
	<-s.entered
	s.clk.Advance(httpLease + time.Second)
	taken := s.send("takeover", "/pay", "key-three", "a")
	if taken.status != http.StatusCreated || taken.replayed {
		t.Fatalf("takeover: %+v", taken)
	}
	s.check("takeover", codes.Unset,
		want{name: "idem.takeover", outcome: "takeover", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.complete", outcome: "executed", op: "complete", fence: true, latency: completeLat})
	s.unblock <- struct{}{}
	if r := <-stale; r.status != http.StatusCreated || !r.replayed || r.body != taken.body {
		t.Fatalf("stale: %+v, want the replay of %+v", r, taken)
	}
	<-s.ended
	sp := s.check("stale", codes.Error,
		want{name: "idem.acquired", outcome: "acquired", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.complete", outcome: "executed", op: "complete", fence: true, latency: completeLat},
		want{name: "idem.lease_lost", outcome: "lease_lost", op: "complete", fence: true, latency: completeLat, errType: "lease_lost"})
	staleFence := attrs(sp.Events()[0].Attributes)[idemotel.AttrFence].AsInt64()
	takeFence := attrs(s.span("takeover").Events()[0].Attributes)[idemotel.AttrFence].AsInt64()
	if takeFence <= staleFence {
		t.Errorf("takeover fence %d, stale fence %d", takeFence, staleFence)
	}
	if msg := attrs(sp.Events()[2].Attributes)[idemotel.AttrErrorMessage].AsString(); !strings.Contains(msg, "lease lost") {
		t.Errorf("lease lost message %q", msg)
	}

	// A 500 is not stored: the record is released.
	if r := s.send("release", "/fail", "key-four", "a"); r.status != http.StatusInternalServerError {
		t.Fatalf("release: %+v", r)
	}
	s.check("release", codes.Unset,
		want{name: "idem.acquired", outcome: "acquired", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.release", outcome: "executed", op: "release", fence: true, latency: releaseLat})

	// The store is down at begin: 503, and the request is an error.
	if r := s.send("down", "/pay", "key-down", "a"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("down: %+v", r)
	}
	sp = s.check("down", codes.Error,
		want{name: "idem.store_error", outcome: "store_error", op: "begin", latency: beginLat, errType: "store_unavailable"})
	if msg := attrs(sp.Events()[0].Attributes)[idemotel.AttrErrorMessage].AsString(); msg != "teststore: idem: store unavailable: connection refused" {
		t.Errorf("store error message %q", msg)
	}

	// The completion fails (not transiently: no retry): 503 outcome
	// unknown. The span is left for the server instrumentation to mark.
	if r := s.send("badcomplete", "/pay", "key-badcomplete", "a"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("badcomplete: %+v", r)
	}
	s.check("badcomplete", codes.Unset,
		want{name: "idem.acquired", outcome: "acquired", op: "begin", fence: true, latency: beginLat},
		want{name: "idem.complete", outcome: "executed", op: "complete", fence: true, latency: completeLat},
		want{name: "idem.store_error", outcome: "store_error", op: "complete", fence: true, latency: completeLat, errType: "_OTHER"})

	// One span per request, no other span (StoreSpans is off).
	const requests = 10
	if got := len(s.h.spans.Ended()); got != requests {
		t.Errorf("%d spans, want %d (one per request)", got, requests)
	}
	for _, sp := range s.h.spans.Ended() {
		if sp.SpanKind() != trace.SpanKindServer || sp.Parent().IsValid() {
			t.Errorf("span %s kind %v parent %v: only the server spans should exist", sp.Name(), sp.SpanKind(), sp.Parent())
		}
	}

	rm := s.h.metrics(t)
	wantCounts := map[string]int64{
		"acquired/begin":       5, // first, held, stale, release, badcomplete
		"takeover/begin":       1,
		"replayed/begin":       1,
		"mismatch/begin":       1,
		"conflict/begin":       1,
		"store_error/begin":    1,
		"executed/complete":    5, // first, held, takeover, stale, badcomplete
		"executed/release":     1,
		"lease_lost/complete":  1,
		"store_error/complete": 1,
	}
	got := counts(t, rm)
	if fmt.Sprint(got) != fmt.Sprint(wantCounts) {
		t.Errorf("idem.events:\n got %v\nwant %v", got, wantCounts)
	}
	// One observation per timed store step: every begin, and each
	// completion or release once (not again for its lease_lost or
	// store_error).
	store := histograms(t, rm, idemotel.MetricStoreDuration)
	wantStore := map[string]hist{
		"acquired/begin":    {5, 5 * beginLat.Seconds()},
		"takeover/begin":    {1, beginLat.Seconds()},
		"replayed/begin":    {1, beginLat.Seconds()},
		"mismatch/begin":    {1, beginLat.Seconds()},
		"conflict/begin":    {1, beginLat.Seconds()},
		"store_error/begin": {1, beginLat.Seconds()},
		"executed/complete": {5, 5 * completeLat.Seconds()},
		"executed/release":  {1, releaseLat.Seconds()},
	}
	if fmt.Sprint(sortedKeys(store)) != fmt.Sprint(sortedKeys(wantStore)) {
		t.Errorf("idem.store.duration points %v, want %v", sortedKeys(store), sortedKeys(wantStore))
	}
	for k, w := range wantStore {
		if g := store[k]; g.count != w.count || !near(g.sum, w.sum) {
			t.Errorf("idem.store.duration %s: %+v, want %+v", k, g, w)
		}
	}
	exec := histograms(t, rm, idemotel.MetricExecutionDuration)
	if g := exec["executed/release"]; g.count != 1 || !near(g.sum, (beginLat+releaseLat).Seconds()) {
		t.Errorf("idem.execution.duration release: %+v", g)
	}
	if g := exec["executed/complete"]; g.count != 5 {
		t.Errorf("idem.execution.duration complete: %+v, want 5 observations", g)
	}
	if len(exec) != 2 {
		t.Errorf("idem.execution.duration points %v", sortedKeys(exec))
	}

	spans := s.h.spans.Ended()
	mustNotShow(t, spans, rm, httpScope, "the scope")
	mustNotShow(t, spans, rm, "alice", "a part of the scope")
	for _, k := range []string{"key-one", "key-two", "key-three", "key-four", "key-down", "key-badcomplete"} {
		mustNotShow(t, spans, rm, k, "the key")
	}
}

// TestHTTPStoreSpans: with StoreSpans, each store step is a child span of
// the request's span, back-dated by its latency.
func TestHTTPStoreSpans(t *testing.T) {
	s := newServer(t, idemotel.Options{StoreSpans: true, Key: true})
	if r := s.send("first", "/pay", "key-one", "a"); r.status != http.StatusCreated {
		t.Fatalf("first: %+v", r)
	}
	if r := s.send("replay", "/pay", "key-one", "a"); !r.replayed {
		t.Fatalf("replay: %+v", r)
	}
	if r := s.send("release", "/fail", "key-two", "a"); r.status != http.StatusInternalServerError {
		t.Fatalf("release: %+v", r)
	}
	type child struct {
		name, outcome string
		d             time.Duration
	}
	wants := map[string][]child{
		"first":   {{"idem.begin", "acquired", beginLat}, {"idem.complete", "executed", completeLat}},
		"replay":  {{"idem.begin", "replayed", beginLat}},
		"release": {{"idem.begin", "acquired", beginLat}, {"idem.release", "executed", releaseLat}},
	}
	all := s.h.spans.Ended()
	if len(all) != 3+5 {
		t.Errorf("%d spans, want 3 request spans and 5 store spans", len(all))
	}
	for id, ws := range wants {
		parent := s.span(id)
		var kids []sdktrace.ReadOnlySpan
		for _, sp := range all {
			if sp.Parent().SpanID() == parent.SpanContext().SpanID() {
				kids = append(kids, sp)
			}
		}
		if len(kids) != len(ws) {
			t.Fatalf("%s: %d child spans, want %d", id, len(kids), len(ws))
		}
		for i, w := range ws {
			k := kids[i]
			a := attrs(k.Attributes())
			if k.Name() != w.name || a[idemotel.AttrOutcome].AsString() != w.outcome {
				t.Errorf("%s child %d: %s %s, want %s %s", id, i, k.Name(), a[idemotel.AttrOutcome].AsString(), w.name, w.outcome)
			}
			if k.SpanContext().TraceID() != parent.SpanContext().TraceID() {
				t.Errorf("%s child %s in another trace", id, k.Name())
			}
			if d := k.EndTime().Sub(k.StartTime()); d != w.d {
				t.Errorf("%s child %s lasts %v, want %v (back-dated by the store latency)", id, k.Name(), d, w.d)
			}
			// The span event of the step is stamped when the step ended.
			ev := parent.Events()[i]
			if !ev.Time.Equal(k.EndTime()) || !k.StartTime().Before(ev.Time) {
				t.Errorf("%s child %s [%v, %v], event at %v", id, k.Name(), k.StartTime(), k.EndTime(), ev.Time)
			}
			if a[idemotel.AttrKey].AsString() != "key-one" && a[idemotel.AttrKey].AsString() != "key-two" {
				t.Errorf("%s child %s: idem.key %q with Options.Key", id, k.Name(), a[idemotel.AttrKey].AsString())
			}
			if k.Status().Code != codes.Unset {
				t.Errorf("%s child %s status %v", id, k.Name(), k.Status())
			}
		}
	}
	mustNotShow(t, all, s.h.metrics(t), httpScope, "the scope")
}
