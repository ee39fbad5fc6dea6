package idemhttp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// gate is a handler that counts executions, reports when it started, and
// blocks until released.
type gate struct {
	calls   atomic.Int64
	started chan struct{}
	release chan struct{}
}

func newGate() *gate {
	return &gate{started: make(chan struct{}, 100), release: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := g.calls.Add(1)
	g.started <- struct{}{}
	<-g.release
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, "call %d", n)
}

func waitStarted(t *testing.T, ch chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
	}
}

func TestInFlightConflict(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(30 * time.Second)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(g))
	defer srv.Close()

	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)

	r := send(t, srv, req{hdr: []string{key1}})
	if r.status != http.StatusConflict || r.problemCode() != "request-in-progress" {
		t.Fatalf("duplicate in flight: %d %s", r.status, r.body)
	}
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 30 {
		t.Errorf("Retry-After = %q, want 1..30", r.header.Get("Retry-After"))
	}
	// A different request with the key in flight is a mismatch, not a conflict.
	if r := send(t, srv, req{hdr: []string{key1}, body: "other"}); r.status != http.StatusUnprocessableEntity {
		t.Errorf("different request in flight: %d", r.status)
	}
	close(g.release)
	f := recv(t, first)
	if f.status != http.StatusAccepted || string(f.body) != "call 1" {
		t.Fatalf("first: %d %q", f.status, f.body)
	}
	r = send(t, srv, req{hdr: []string{key1}})
	if !r.replayed() || r.wire() != f.wire() {
		t.Errorf("replay after completion:\n%q\nwant\n%q", r.wire(), f.wire())
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times", n)
	}
}

func TestWaitModeReplays(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(30 * time.Second)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Wait: 10 * time.Second}).Handler(g))
	defer srv.Close()

	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)
	second := goSend(t, srv, req{hdr: []string{key1}})
	time.Sleep(20 * time.Millisecond) // let the duplicate start waiting
	close(g.release)
	f, s := recv(t, first), recv(t, second)
	if !s.replayed() || s.wire() != f.wire() {
		t.Errorf("waiting duplicate:\n%q\nwant replay of\n%q", s.raw, f.raw)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times", n)
	}
}

func TestWaitModeBoundGives409(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(30 * time.Second)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Wait: 30 * time.Millisecond}).Handler(g))
	defer srv.Close()
	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)
	start := time.Now()
	r := send(t, srv, req{hdr: []string{key1}})
	if r.status != http.StatusConflict || time.Since(start) < 30*time.Millisecond {
		t.Errorf("after the wait bound: %d after %v", r.status, time.Since(start))
	}
	close(g.release)
	recv(t, first)
}

// TestConcurrentOneKey: 200 simultaneous requests with one key execute the
// handler once; every other answer is a byte-identical replay or a 409 (or,
// in wait mode, a replay).
func TestConcurrentOneKey(t *testing.T) {
	for _, wait := range []time.Duration{0, 10 * time.Second} {
		t.Run(fmt.Sprintf("wait=%v", wait), func(t *testing.T) {
			k, _ := newKeeper(30 * time.Second)
			var calls atomic.Int64
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := calls.Add(1)
				time.Sleep(20 * time.Millisecond)
				w.Header().Set("X-Call", strconv.FormatInt(n, 10))
				fmt.Fprintf(w, "charged once (%d)", n)
			})
			srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Wait: wait,
				MaxWaitersPerKey: 1000}).Handler(h))
			defer srv.Close()
			const n = 200
			res := make([]*rawResp, n)
			var wg sync.WaitGroup
			startGun := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-startGun
					r, err := sendErr(srv, req{hdr: []string{key1}, body: "same"})
					if err != nil {
						t.Error(err)
						return
					}
					res[i] = r
				}()
			}
			close(startGun)
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			if c := calls.Load(); c != 1 {
				t.Fatalf("handler ran %d times", c)
			}
			var firsts, replays, conflicts int
			var orig string
			for _, r := range res {
				if r.status == http.StatusOK && !r.replayed() {
					firsts++
					orig = r.wire()
				}
			}
			for _, r := range res {
				switch {
				case r.status == http.StatusOK && r.replayed():
					replays++
					if r.wire() != orig {
						t.Fatalf("replay differs:\n%q\nwant\n%q", r.wire(), orig)
					}
				case r.status == http.StatusConflict && wait == 0:
					conflicts++
				case r.status == http.StatusOK:
				default:
					t.Fatalf("unexpected answer %d %s", r.status, r.body)
				}
			}
			if firsts != 1 || firsts+replays+conflicts != n {
				t.Fatalf("firsts %d replays %d conflicts %d", firsts, replays, conflicts)
			}
			t.Logf("firsts %d replays %d conflicts %d", firsts, replays, conflicts)
		})
	}
}

func TestFlushStreamsBeforeHandlerEnds(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "part1;")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("flush: %v", err)
		}
		<-release
		fmt.Fprint(w, "part2")
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Stream: true}).Handler(h))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()

	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		rq, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader("x"))
		rq.Host = "test" // the Host of send's requests: the same scope
		rq.Header.Set("Idempotency-Key", "stream")
		resp, err := srv.Client().Do(rq)
		if err == nil {
			buf := make([]byte, 6)
			if _, err = io.ReadFull(resp.Body, buf); err == nil && string(buf) != "part1;" {
				err = fmt.Errorf("first chunk %q", buf)
			}
		}
		got <- result{resp, err}
	}()
	var res result
	select {
	case res = <-got:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the flushed part did not reach the client while the handler ran")
	}
	close(release) // the handler ends only after the client saw part1
	if res.err != nil {
		t.Fatal(res.err)
	}
	rest, _ := io.ReadAll(res.resp.Body)
	res.resp.Body.Close()
	if string(rest) != "part2" {
		t.Fatalf("rest %q", rest)
	}
	r := send(t, srv, req{hdr: []string{"Idempotency-Key: stream"}, body: "x"})
	if !r.replayed() || string(r.body) != "part1;part2" {
		t.Errorf("replay %q replayed=%v", r.body, r.replayed())
	}
}

func TestClientDisconnectStillCompletes(t *testing.T) {
	t.Parallel()
	k, s := newKeeper(0)
	oc := newOutcomes()
	var calls atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-r.Context().Done() // the client has gone
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "done anyway")
	})
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record}).Handler(h))
	defer srv.Close()

	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(req{hdr: []string{key1}}.bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return calls.Load() > 0 })
	c.Close()
	o := oc.next(t)
	if o.Kind != idemhttp.OutcomeExecuted || !o.Stored || o.Status != http.StatusCreated {
		t.Fatalf("outcome %+v", o)
	}
	rec, ok, err := s.Get(context.Background(), idem.RecordKey("", "k1"))
	if err != nil || !ok || rec.State != idem.StateCompleted {
		t.Fatalf("record %+v ok=%v err=%v", rec, ok, err)
	}
	r := send(t, srv, req{hdr: []string{key1}})
	if r.status != http.StatusCreated || string(r.body) != "done anyway" || !r.replayed() {
		t.Errorf("retry: %d %q", r.status, r.body)
	}
	if calls.Load() != 1 {
		t.Errorf("handler ran %d times", calls.Load())
	}
}

func TestPanicReleasesThenRepanics(t *testing.T) {
	t.Parallel()
	for _, pv := range []any{"boom", http.ErrAbortHandler} {
		t.Run(fmt.Sprint(pv), func(t *testing.T) {
			k, s := newKeeper(0)
			oc := newOutcomes()
			var calls atomic.Int64
			h := (&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) == 1 {
					w.WriteHeader(http.StatusCreated)
					panic(pv)
				}
				w.WriteHeader(http.StatusOK)
			}))
			serve := func() (rec *httptest.ResponseRecorder, recovered any) {
				defer func() { recovered = recover() }()
				r := httptest.NewRequest("POST", "/", nil)
				r.Header.Set("Idempotency-Key", "p")
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				return rec, nil
			}
			if _, got := serve(); got != pv {
				t.Fatalf("recovered %v, want the handler's panic %v", got, pv)
			}
			if o := oc.next(t); o.Kind != idemhttp.OutcomePanic || o.Err != nil {
				t.Errorf("outcome %+v", o)
			}
			if _, ok, _ := s.Get(context.Background(), idem.RecordKey("", "p")); ok {
				t.Fatal("record not released after panic")
			}
			rec, got := serve()
			if got != nil || rec.Code != http.StatusOK || calls.Load() != 2 {
				t.Fatalf("retry after panic: %d, panic %v, calls %d", rec.Code, got, calls.Load())
			}
		})
	}
}

// TestLongHandlerRenewsLease: a handler that runs for more than three lease
// periods keeps its key (renewal), so a duplicate meanwhile gets 409.
func TestLongHandlerRenewsLease(t *testing.T) {
	t.Parallel()
	const lease = 150 * time.Millisecond // renewed every 50 ms
	k, s := newKeeper(lease)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k}).Handler(g))
	defer srv.Close()
	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)
	deadline := time.Now().Add(4 * lease)
	for time.Now().Before(deadline) {
		time.Sleep(lease / 2)
		if r := send(t, srv, req{hdr: []string{key1}}); r.status != http.StatusConflict {
			t.Fatalf("duplicate during a long run: %d %s (lease not renewed?)", r.status, r.body)
		}
	}
	close(g.release)
	if f := recv(t, first); f.status != http.StatusAccepted {
		t.Fatalf("first: %d", f.status)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times", n)
	}
	rec, ok, _ := s.Get(context.Background(), idem.RecordKey("", "k1"))
	if !ok || rec.State != idem.StateCompleted {
		t.Errorf("record %+v", rec)
	}
}

// TestDeadExecutorTakenOver: a lease that is never renewed expires; the next
// request takes it over with fence+1, and the dead executor's late
// completion is refused with ErrLeaseLost.
func TestDeadExecutorTakenOver(t *testing.T) {
	t.Parallel()
	const lease = 300 * time.Millisecond
	k, s := newKeeper(lease)
	oc := newOutcomes()
	a := &app{}
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record}).Handler(a))
	defer srv.Close()

	q := req{hdr: []string{key1}, body: "b"}
	// The dead executor claims the key as the middleware would, then stalls.
	hr, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(string(q.bytes()))))
	fp := dfp(hr, []byte("b"))
	att, err := k.Begin(context.Background(), "", "k1", fp)
	if err != nil || att.Lease == nil {
		t.Fatalf("claim: %v", err)
	}
	dead := att.Lease
	if r := send(t, srv, q); r.status != http.StatusConflict {
		t.Fatalf("while the dead lease is live: %d %s", r.status, r.body)
	}
	time.Sleep(lease + 20*time.Millisecond)
	r := send(t, srv, q)
	if r.status != http.StatusCreated || r.replayed() {
		t.Fatalf("takeover: %d %s", r.status, r.body)
	}
	want := fmt.Sprintf(`"fence":%d,`, dead.Fence()+1)
	if !strings.Contains(string(r.body), want) {
		t.Errorf("takeover body %s, want fence %d", r.body, dead.Fence()+1)
	}
	if o := oc.next(t); o.Kind != idemhttp.OutcomeConflict {
		t.Errorf("outcome %+v, want conflict", o)
	}
	if o := oc.next(t); !o.Takeover || o.Fence != dead.Fence()+1 || !o.Stored {
		t.Errorf("outcome %+v", o)
	}
	err = dead.Complete(context.Background(), []byte("stale"))
	if !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("stale completion: %v, want ErrLeaseLost", err)
	}
	rec, ok, _ := s.Get(context.Background(), idem.RecordKey("", "k1"))
	if !ok || rec.State != idem.StateCompleted || rec.Fence != dead.Fence()+1 {
		t.Errorf("record after stale completion: %+v", rec)
	}
	if r2 := send(t, srv, q); !r2.replayed() || r2.wire() != r.wire() {
		t.Errorf("replay after stale completion:\n%q\nwant\n%q", r2.wire(), r.wire())
	}
}

// TestStaleCompletionReported: when the lease is taken over while the
// handler runs, the handler's completion is refused and reported, and the
// stale executor never answers with its own response: it answers the
// winner's stored response, or 503 lease-lost while there is none.
func TestStaleCompletionReported(t *testing.T) {
	t.Parallel()
	const lease = 30 * time.Millisecond
	s := &noExtend{newMem()}
	var lost atomic.Int64
	k := &idem.Keeper{Store: s, Lease: lease, Observer: idem.ObserverFunc(func(_ context.Context, e idem.Event) {
		if e.Kind == idem.EventLeaseLost {
			lost.Add(1)
		}
	})}
	oc := newOutcomes()
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, OnOutcome: oc.record}).Handler(g))
	defer srv.Close()
	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)
	time.Sleep(lease + 20*time.Millisecond)
	second := goSend(t, srv, req{hdr: []string{key1}}) // takes over
	waitStarted(t, g.started)
	g.release <- struct{}{} // one of the two finishes
	o1 := oc.next(t)
	close(g.release)
	o2 := oc.next(t)
	f, sec := recv(t, first), recv(t, second)
	var stale idemhttp.Outcome
	var staleAnswer, winnerAnswer *rawResp
	switch {
	case o1.Takeover && !o2.Takeover:
		stale = o2
		staleAnswer, winnerAnswer = f, sec
		// The winner completed first: the stale executor replays it.
		if !staleAnswer.replayed() || staleAnswer.status != http.StatusAccepted || string(staleAnswer.body) != string(winnerAnswer.body) {
			t.Errorf("stale answer %d %q, want the winner's replay", staleAnswer.status, staleAnswer.body)
		}
	case o2.Takeover && !o1.Takeover:
		stale = o1
		staleAnswer, winnerAnswer = f, sec
		// The stale executor finished first, while the winner ran.
		if staleAnswer.status != http.StatusServiceUnavailable || !strings.Contains(string(staleAnswer.body), idemhttp.CodeLeaseLost) {
			t.Errorf("stale answer %d %q, want 503 lease-lost", staleAnswer.status, staleAnswer.body)
		}
	default:
		t.Fatalf("outcomes %+v %+v", o1, o2)
	}
	if winnerAnswer.status != http.StatusAccepted || winnerAnswer.replayed() {
		t.Errorf("winner answer %d replayed=%v", winnerAnswer.status, winnerAnswer.replayed())
	}
	if stale.Stored || !errors.Is(stale.Err, idem.ErrLeaseLost) {
		t.Errorf("stale executor outcome %+v", stale)
	}
	if lost.Load() != 1 {
		t.Errorf("observer saw %d lease losses", lost.Load())
	}
}

// TestAbandonedRequestReleases: a handler that gives up when its client goes
// away, writing nothing, releases the record; a retry executes.
func TestAbandonedRequestReleases(t *testing.T) {
	t.Parallel()
	k, s := newKeeper(0)
	oc := newOutcomes()
	var calls atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record, Stream: true}).Handler(h))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(req{hdr: []string{key1}}.bytes()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return calls.Load() > 0 })
	c.Close()
	if o := oc.next(t); o.Kind != idemhttp.OutcomeExecuted || o.Stored || !errors.Is(o.Err, context.Canceled) {
		t.Fatalf("outcome %+v", o)
	}
	if _, ok, _ := s.Get(context.Background(), idem.RecordKey("", "k1")); ok {
		t.Fatal("abandoned record kept")
	}
	if r := send(t, srv, req{hdr: []string{key1}}); r.status != http.StatusCreated || r.replayed() || calls.Load() != 2 {
		t.Errorf("retry: %d replayed=%v calls=%d", r.status, r.replayed(), calls.Load())
	}
}

// TestReplayFraming: a handler's own Content-Length is kept; a large body
// streamed in pieces (chunked) replays with the same decoded bytes; 1xx
// informational answers and trailers are passed through, not stored.
func TestReplayFraming(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789", 2000)
	k, _ := newKeeper(0)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cl":
			w.Header().Set("Content-Length", "5")
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, "hello")
		case "/chunked":
			w.Header().Set("Trailer", "X-Sum")
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			for i := 0; i < len(big); i += 100 {
				fmt.Fprint(w, big[i:i+100])
			}
			w.Header().Set("X-Sum", "42")
		}
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(h))
	defer srv.Close()

	q := req{path: "/cl", hdr: []string{key1}}
	a, b := send(t, srv, q), send(t, srv, q)
	if !b.replayed() || a.wire() != b.wire() || b.header.Get("Content-Length") != "5" {
		t.Errorf("Content-Length set by the handler:\n%q\n%q", a.wire(), b.wire())
	}
	q = req{path: "/chunked", hdr: []string{"Idempotency-Key: k2"}}
	a, b = send(t, srv, q), send(t, srv, q)
	if !strings.Contains(string(a.raw), "103 Early Hints") || a.status != 200 {
		t.Errorf("first answer lacks the 103: %.200q", a.raw)
	}
	if !b.replayed() || b.status != 200 || string(b.body) != big || string(a.body) != big {
		t.Errorf("chunked replay: %d, %d bytes", b.status, len(b.body))
	}
	if strings.Contains(string(b.raw), "103 Early Hints") || strings.Contains(string(b.raw), "X-Sum") || b.header.Get("Trailer") != "" {
		t.Errorf("replay carries informational or trailer data: %.300q", b.raw)
	}
	if b.header.Get("Link") == "" {
		t.Errorf("replay lost the Link header: %v", b.header)
	}
}

// TestOuterMiddlewareHeaders: headers set by outer middleware before the
// handler (a per-request id) are not stored, so a replay carries the fresh
// value; a header the handler changed is stored.
func TestOuterMiddlewareHeaders(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	var n atomic.Int64
	inner := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Vary", "Accept")
		w.WriteHeader(http.StatusCreated)
	}))
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", strconv.FormatInt(n.Add(1), 10))
		w.Header().Set("Vary", "Origin")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "1")
		inner.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(outer)
	defer srv.Close()
	a := send(t, srv, req{hdr: []string{key1}})
	b := send(t, srv, req{hdr: []string{key1}})
	if !b.replayed() || a.header.Get("X-Request-Id") != "1" || b.header.Get("X-Request-Id") != "2" {
		t.Errorf("request ids: first %q, replay %q (replayed=%v)", a.header.Get("X-Request-Id"), b.header.Get("X-Request-Id"), b.replayed())
	}
	if got := b.header.Values("Vary"); len(got) != 2 || got[0] != "Origin" || got[1] != "Accept" {
		t.Errorf("Vary on replay = %q", got)
	}
}

// TestConnectionNamedHeadersNotStored: a header the handler names in
// Connection is hop-by-hop and not stored.
func TestConnectionNamedHeadersNotStored(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "x-hop, keep-alive")
		w.Header().Set("X-Hop", "secret")
		w.Header().Set("X-End", "kept")
		// Deliberately non-canonical names, as a handler may set them:
		w.Header()["set-cookie"] = []string{"non-canonical=secret"}
		w.Header()["x-hop"] = []string{"non-canonical"}
		w.WriteHeader(http.StatusCreated)
	}))
	serve := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/", nil)
		r.Header.Set("Idempotency-Key", "c")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	serve()
	w := serve()
	for name := range w.Header() {
		if strings.EqualFold(name, "Set-Cookie") || strings.EqualFold(name, "X-Hop") {
			t.Errorf("%s replayed", name)
		}
	}
	if w.Header().Get("Idempotency-Replayed") != "true" || w.Header().Get("Connection") != "" || w.Header().Get("X-End") != "kept" {
		t.Errorf("replayed headers %v", w.Header())
	}
}

// TestDisconnectMidBodyStoresWholeBody: the client leaves after the first
// part of a large streamed body; the handler's io.Copy still runs to the
// end, and the record stores the whole body, never a truncated one.
func TestDisconnectMidBodyStoresWholeBody(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	oc := newOutcomes()
	big := strings.Repeat("abcdefgh", 64<<10) // 512 KiB
	var calls atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		fmt.Fprint(w, big[:8])
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		n, err := io.Copy(w, strings.NewReader(big[8:]))
		if err != nil || n != int64(len(big)-8) {
			t.Errorf("io.Copy after disconnect: %d, %v", n, err)
		}
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, OnOutcome: oc.record, Stream: true}).Handler(h))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(req{hdr: []string{key1}}.bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 8)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != big[:8] {
		t.Fatalf("first part %q %v", first, err)
	}
	c.Close()
	if o := oc.next(t); o.Kind != idemhttp.OutcomeExecuted || !o.Stored || o.Status != 200 {
		t.Fatalf("outcome %+v", o)
	}
	r := send(t, srv, req{hdr: []string{key1}})
	if !r.replayed() || string(r.body) != big || calls.Load() != 1 {
		t.Errorf("replay: replayed=%v, %d bytes, calls %d", r.replayed(), len(r.body), calls.Load())
	}
}

// TestHijackReleases: a handler that hijacks the connection answers outside
// the middleware's sight; the record is released, not stored as a 200.
func TestHijackReleases(t *testing.T) {
	t.Parallel()
	k, s := newKeeper(0)
	oc := newOutcomes()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
		brw.Flush()
	})
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record}).Handler(h))
	defer srv.Close()
	if r := send(t, srv, req{hdr: []string{key1}}); string(r.body) != "hi" {
		t.Fatalf("hijacked answer %q", r.body)
	}
	if o := oc.next(t); o.Stored || o.Err == nil {
		t.Errorf("outcome %+v", o)
	}
	if _, ok, _ := s.Get(context.Background(), idem.RecordKey("", "k1")); ok {
		t.Error("record kept after hijack")
	}
}

// TestHandlerGetsBody: the handler receives the very bytes that were
// fingerprinted, with an exact ContentLength and a working GetBody, also
// for a chunked request.
func TestHandlerGetsBody(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b1, _ := io.ReadAll(r.Body)
		rc, err := r.GetBody()
		if err != nil {
			t.Fatal(err)
		}
		b2, _ := io.ReadAll(rc)
		fmt.Fprintf(w, "%d %d %q %q %v", r.ContentLength, len(r.TransferEncoding), b1, b2, r.Header.Get("Content-Type"))
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(h))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "POST /pay HTTP/1.1\r\nHost: x\r\nIdempotency-Key: b\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	raw, _ := io.ReadAll(c)
	if !strings.HasSuffix(string(raw), `5 0 "abcde" "abcde" text/plain`) {
		t.Errorf("handler saw: %q", raw)
	}
}

// TestTooLargeChunked: a chunked body over MaxBody is refused with 413 and
// the handler does not run, also when an outer http.MaxBytesReader is the
// one that trips.
func TestTooLargeChunked(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	var calls atomic.Int64
	h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, MaxBody: 16}).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
	}))
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/limited" {
			r.Body = http.MaxBytesReader(w, r.Body, 4)
		}
		h.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(outer)
	defer srv.Close()
	for _, c := range []struct {
		path, chunks string
		want         int
	}{
		{"/pay", "11\r\n0123456789abcdefg\r\n0\r\n\r\n", 413}, // 17 bytes
		{"/pay", "10\r\n0123456789abcdef\r\n0\r\n\r\n", 200},  // 16 bytes
		{"/limited", "5\r\n01234\r\n0\r\n\r\n", 413},
	} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k%d\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n%s", c.path, len(c.chunks), c.chunks)
		raw, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.HasPrefix(string(raw), fmt.Sprintf("HTTP/1.1 %d ", c.want)) {
			t.Errorf("%s %q: %.120q", c.path, c.chunks, raw)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// flakyStore fails the first Complete or Release with ErrStoreUnavailable,
// after applying it (applied) or not.
type flakyStore struct {
	*memstore.Store
	applied bool
	fails   atomic.Int64
}

func (s *flakyStore) Complete(ctx context.Context, key string, fence uint64, result []byte, ret time.Duration) error {
	if s.fails.Add(1) == 1 {
		if s.applied {
			if err := s.Store.Complete(ctx, key, fence, result, ret); err != nil {
				return err
			}
		}
		return fmt.Errorf("reply lost: %w", idem.ErrStoreUnavailable)
	}
	return s.Store.Complete(ctx, key, fence, result, ret)
}

func (s *flakyStore) Release(ctx context.Context, key string, fence uint64) error {
	if s.fails.Add(1) == 1 {
		if s.applied {
			if err := s.Store.Release(ctx, key, fence); err != nil {
				return err
			}
		}
		return fmt.Errorf("reply lost: %w", idem.ErrStoreUnavailable)
	}
	return s.Store.Release(ctx, key, fence)
}

// TestCompletionRetriedAfterStoreFailure: a completion or release that fails
// with a store error is retried (fenced, so safely), so a brief outage does
// not leave the record in progress (which would make the next retry execute
// the handler again after the lease).
func TestCompletionRetriedAfterStoreFailure(t *testing.T) {
	t.Parallel()
	for _, applied := range []bool{false, true} {
		for _, status := range []int{201, 500} {
			t.Run(fmt.Sprintf("applied=%v/status=%d", applied, status), func(t *testing.T) {
				st := &flakyStore{Store: newMem(), applied: applied}
				var events []idem.EventKind
				var mu sync.Mutex
				k := &idem.Keeper{Store: st, Observer: idem.ObserverFunc(func(_ context.Context, e idem.Event) {
					mu.Lock()
					events = append(events, e.Kind)
					mu.Unlock()
				})}
				oc := newOutcomes()
				a := &app{}
				srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k, OnOutcome: oc.record}).Handler(a))
				defer srv.Close()
				q := req{hdr: []string{key1, "X-Status: " + strconv.Itoa(status)}}
				send(t, srv, q)
				o := oc.next(t)
				if o.Err != nil || o.Stored != (status == 201) {
					t.Fatalf("outcome %+v", o)
				}
				if st.fails.Load() < 2 {
					t.Fatalf("store called %d times", st.fails.Load())
				}
				rec, ok, _ := st.Get(context.Background(), idem.RecordKey("", "k1"))
				switch {
				case status == 201 && (!ok || rec.State != idem.StateCompleted):
					t.Errorf("record not completed: %+v", rec)
				case status == 500 && ok:
					t.Errorf("record not released: %+v", rec)
				}
				r := send(t, srv, q)
				if status == 201 && (!r.replayed() || a.calls.Load() != 1) || status == 500 && (r.replayed() || a.calls.Load() != 2) {
					t.Errorf("retry: replayed=%v calls=%d", r.replayed(), a.calls.Load())
				}
				mu.Lock()
				defer mu.Unlock()
				if !slices.Contains(events, idem.EventStoreError) {
					t.Errorf("the failed attempt was not observed: %v", events)
				}
			})
		}
	}
}
