package idemclient

// Tests against the real server half: idemhttp's middleware over memstore,
// on loopback.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// faultListener hands out connections that lose a random fraction of the
// server's responses: the whole response is accepted from the server (which
// therefore believes it answered and has completed its record) and thrown
// away, and the connection is closed, so the client sees a connection error
// where the response should have been.
type faultListener struct {
	net.Listener
	mu      sync.Mutex
	rng     *rand.Rand
	rate    float64
	dropped atomic.Int64
}

func (l *faultListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: c, l: l}, nil
}

func (l *faultListener) drop() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rng.Float64() < l.rate
}

// faultConn relies on net/http writing each (small) response with one Write,
// when the handler has returned and its bufio.Writer is flushed.
type faultConn struct {
	net.Conn
	l    *faultListener
	dead atomic.Bool
}

func (c *faultConn) Write(p []byte) (int, error) {
	if c.dead.Load() {
		return len(p), nil // swallowed: the server never learns
	}
	if c.l.drop() {
		c.dead.Store(true)
		c.l.dropped.Add(1)
		c.Conn.Close()
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// payServer is an idempotent endpoint that counts executions per request id.
type payServer struct {
	mu    sync.Mutex
	execs map[string]int    // request id → handler executions
	first map[string]string // request id → body of its first execution
	seq   int
	hold  chan struct{} // if non-nil, the handler waits for it to close
	in    chan struct{} // if non-nil, signalled when the handler starts
}

func (p *payServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	id := string(b)
	if p.in != nil {
		p.in <- struct{}{}
	}
	if p.hold != nil {
		<-p.hold
	}
	p.mu.Lock()
	p.seq++
	p.execs[id]++
	out := fmt.Sprintf(`{"id":%q,"charge":"ch_%d","key":%q}`, id, p.seq, r.Header.Get(DefaultHeader))
	if _, ok := p.first[id]; !ok {
		p.first[id] = out
	}
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, out)
}

func newPayServer(t *testing.T, lease time.Duration, wrap func(net.Listener) net.Listener) (*payServer, *httptest.Server) {
	t.Helper()
	ps := &payServer{execs: map[string]int{}, first: map[string]string{}}
	mw := &idemhttp.Middleware{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{}), Lease: lease},
		ScopeSecret: []byte("idemclient-test-scope-secret"), AllowAnonymous: true}
	srv := httptest.NewUnstartedServer(mw.Handler(ps))
	if wrap != nil {
		srv.Listener = wrap(srv.Listener)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return ps, srv
}

func newBase(t *testing.T) *http.Transport {
	base := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(base.CloseIdleConnections)
	return base
}

// TestExactlyOnceOverLossyConnections sends 1,000 logical POSTs through a
// listener that loses 30% of the responses after the server produced them.
// Every call must return the original response (some as replays) and the
// handler must run exactly 1,000 times.
//
// It runs twice: with keep-alive, net/http's own transport retries some of
// the failures itself (it replays requests carrying an Idempotency-Key on a
// reused connection that broke); without keep-alive every failure reaches
// the Transport (400 calls there: a new connection per attempt is slow
// under -race).
func TestExactlyOnceOverLossyConnections(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		keepAlive bool
		calls     int
	}{{true, 1000}, {false, 400}} {
		t.Run(fmt.Sprintf("keepalive=%v", c.keepAlive), func(t *testing.T) {
			t.Parallel()
			testExactlyOnce(t, c.keepAlive, c.calls)
		})
	}
}

func testExactlyOnce(t *testing.T, keepAlive bool, calls int) {
	const workers = 8
	fl := (*faultListener)(nil)
	ps, srv := newPayServer(t, 0, func(l net.Listener) net.Listener {
		fl = &faultListener{Listener: l, rate: 0.3, rng: rand.New(rand.NewPCG(1, 2))}
		return fl
	})
	var errorsSeen, replays, conflicts atomic.Int64
	base := newBase(t)
	base.DisableKeepAlives = !keepAlive
	tr := &Transport{
		Base:        base,
		BaseDelay:   time.Millisecond,
		MaxDelay:    5 * time.Millisecond,
		MaxAttempts: 50,
		OnAttempt: func(a AttemptInfo) {
			if a.Err != nil {
				errorsSeen.Add(1)
			}
			if a.Status == http.StatusConflict {
				conflicts.Add(1)
			}
		},
	}
	// A 409 (should the retry overtake the completion) asks for ≥ 1 s; keep
	// the test fast by waiting at most 10 ms.
	tr.wait = func(ctx context.Context, d time.Duration) error {
		return (&Transport{}).sleep(ctx, min(d, 10*time.Millisecond))
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	type result struct {
		id, body string
		status   int
		replayed bool
		err      error
	}
	results := make(chan result, calls)
	ids := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				id := fmt.Sprintf("pay-%04d", i)
				resp, err := client.Post(srv.URL+"/charges", "text/plain", strings.NewReader(id))
				if err != nil {
					results <- result{id: id, err: err}
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				results <- result{id: id, body: string(b), status: resp.StatusCode, replayed: Replayed(resp), err: err}
			}
		}()
	}
	for i := range calls {
		ids <- i
	}
	close(ids)
	wg.Wait()
	close(results)

	ps.mu.Lock()
	defer ps.mu.Unlock()
	for r := range results {
		if r.err != nil {
			t.Errorf("%s: %v", r.id, r.err)
			continue
		}
		if r.status != http.StatusCreated || r.body != ps.first[r.id] {
			t.Errorf("%s: %d %s; want 201 %s", r.id, r.status, r.body, ps.first[r.id])
		}
		if r.replayed {
			replays.Add(1)
		}
	}
	total := 0
	for id, n := range ps.execs {
		total += n
		if n != 1 {
			t.Errorf("%s executed %d times", id, n)
		}
	}
	if total != calls || len(ps.execs) != calls {
		t.Errorf("%d handler executions for %d distinct ids, want %d and %d", total, len(ps.execs), calls, calls)
	}
	t.Logf("responses dropped by the listener: %d; attempt errors seen by the client: %d; replays returned: %d; 409s: %d",
		fl.dropped.Load(), errorsSeen.Load(), replays.Load(), conflicts.Load())
	// Without these the test would prove nothing.
	if fl.dropped.Load() < int64(calls/10) || replays.Load() < int64(calls/10) || (!keepAlive && errorsSeen.Load() < int64(calls/10)) {
		t.Errorf("only %d responses dropped and %d replays: the fault injection is not working", fl.dropped.Load(), replays.Load())
	}
}

// TestConcurrentDuplicateWaitsForRetryAfter: a second call with the same key
// while the first runs gets 409 with Retry-After, waits that long, and then
// gets the first call's response as a replay.
func TestConcurrentDuplicateWaitsForRetryAfter(t *testing.T) {
	t.Parallel()
	ps, srv := newPayServer(t, 2*time.Second, nil)
	ps.hold = make(chan struct{})
	ps.in = make(chan struct{}, 2)
	base := newBase(t)
	const key = "order-77"
	post := func(tr *Transport) (*http.Response, string, error) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader("order-77"))
		req.Header.Set(DefaultHeader, key)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), err
	}

	type res struct {
		resp *http.Response
		body string
		err  error
	}
	first := make(chan res, 1)
	go func() {
		resp, body, err := post(&Transport{Base: base})
		first <- res{resp, body, err}
	}()
	<-ps.in // the first call is inside the handler, holding the key

	var attempts []AttemptInfo
	var once sync.Once
	start := time.Now()
	resp, body, err := post(&Transport{Base: base, OnAttempt: func(a AttemptInfo) {
		attempts = append(attempts, a)
		if a.Status == http.StatusConflict {
			once.Do(func() { close(ps.hold) }) // let the first call finish
		}
	}})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	f := <-first
	if f.err != nil {
		t.Fatal(f.err)
	}
	// Normally exactly two attempts; on a starved machine the first call
	// may still be completing when the retry arrives, which earns another
	// 409 and another wait.
	if len(attempts) < 2 || len(attempts) > 3 {
		t.Fatalf("%d attempts; want 409 then the replay", len(attempts))
	}
	for _, a := range attempts[:len(attempts)-1] {
		if a.Status != http.StatusConflict || !a.Retry {
			t.Fatalf("attempt %d: status %d, retry %v; want 409 and a retry", a.N, a.Status, a.Retry)
		}
	}
	ra, ok := ParseRetryAfter(attempts[0].Response.Header.Get("Retry-After"), time.Now())
	if !ok || ra < time.Second || attempts[0].Delay != ra {
		t.Fatalf("409 Retry-After %v (%v), delay chosen %v; want the delay to be the Retry-After", ra, ok, attempts[0].Delay)
	}
	if elapsed < ra {
		t.Errorf("retried after %v, before the Retry-After of %v", elapsed, ra)
	}
	if resp.StatusCode != http.StatusCreated || !Replayed(resp) || body != f.body || Replayed(f.resp) {
		t.Errorf("duplicate got %d %q replayed=%v; first got %q replayed=%v", resp.StatusCode, body, Replayed(resp), f.body, Replayed(f.resp))
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.execs["order-77"] != 1 {
		t.Errorf("handler ran %d times", ps.execs["order-77"])
	}
}

// TestClientErrorsReturnedAtOnce: 422 (key reused for another request) and
// 400 (invalid key) come back from the first attempt; the caller's key is
// sent unchanged.
func TestClientErrorsReturnedAtOnce(t *testing.T) {
	t.Parallel()
	ps, srv := newPayServer(t, 0, nil)
	var n atomic.Int32
	var sentKeys []string
	var mu sync.Mutex
	tr := &Transport{Base: newBase(t), OnAttempt: func(a AttemptInfo) {
		n.Add(1)
		mu.Lock()
		sentKeys = append(sentKeys, a.Request.Header.Get(DefaultHeader))
		mu.Unlock()
	}}
	tr.wait = func(context.Context, time.Duration) error {
		t.Error("the transport waited to retry a client error")
		return nil
	}
	client := &http.Client{Transport: tr}
	do := func(key, body string) int {
		t.Helper()
		n.Store(0)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader(body))
		req.Header.Set(DefaultHeader, key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n.Load() != 1 {
			t.Errorf("%d attempts for a %d; want 1", n.Load(), resp.StatusCode)
		}
		return resp.StatusCode
	}
	if got := do("caller-key-1", "a"); got != http.StatusCreated {
		t.Fatalf("first use: %d", got)
	}
	if got := do("caller-key-1", "b"); got != http.StatusUnprocessableEntity {
		t.Errorf("same key, other body: %d, want 422", got)
	}
	if got := do(strings.Repeat("k", 256), "c"); got != http.StatusBadRequest {
		t.Errorf("256-byte key: %d, want 400", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if sentKeys[0] != "caller-key-1" || sentKeys[1] != "caller-key-1" {
		t.Errorf("keys sent %q; the caller's key must be kept", sentKeys[:2])
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.execs) != 1 {
		t.Errorf("handler ran for %v", ps.execs)
	}
}

// TestCancelDuringRetryAfter: a context canceled while the Transport waits
// out a 409's Retry-After ends RoundTrip at once.
func TestCancelDuringRetryAfter(t *testing.T) {
	t.Parallel()
	ps, srv := newPayServer(t, 30*time.Second, nil)
	ps.hold = make(chan struct{})
	ps.in = make(chan struct{}, 2)
	base := newBase(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/charges", strings.NewReader("x"))
		req.Header.Set(DefaultHeader, "k-cancel")
		if resp, err := (&Transport{Base: base}).RoundTrip(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-ps.in
	defer func() { close(ps.hold); <-done }()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var delay time.Duration
	tr := &Transport{Base: base, OnAttempt: func(a AttemptInfo) {
		if a.Retry {
			delay = a.Delay
			time.AfterFunc(10*time.Millisecond, cancel)
		}
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/charges", strings.NewReader("x"))
	req.Header.Set(DefaultHeader, "k-cancel")
	start := time.Now()
	_, err := tr.RoundTrip(req)
	if el := time.Since(start); el > 3*time.Second || delay < 10*time.Second {
		t.Fatalf("returned after %v with a Retry-After wait of %v; want a prompt return from a long wait", el, delay)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
