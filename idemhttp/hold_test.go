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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// gatedStore blocks Complete until gate is closed (when gate is set), and
// fails Complete with err (when set).
type gatedStore struct {
	idem.Store
	entered chan struct{} // receives when Complete is entered
	gate    chan struct{}
	err     error
	delay   time.Duration
}

func (s *gatedStore) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.gate != nil {
		<-s.gate
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	if s.err != nil {
		return s.err
	}
	return s.Store.Complete(ctx, key, fence, result, retention)
}

// Get makes the wrapper an Inspector.
func (s *gatedStore) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	return s.Store.(idem.Inspector).Get(ctx, key)
}

// TestHeldUntilCompleted: no byte of a response that will be stored
// reaches the client before the store has completed its record.
func TestHeldUntilCompleted(t *testing.T) {
	t.Parallel()
	st := &gatedStore{Store: newMem(), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	k := &idem.Keeper{Store: st}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "part1;")
		http.NewResponseController(w).Flush() // held: not an event stream
		fmt.Fprint(w, "part2")
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(h))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(req{hdr: []string{key1}}.bytes()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-st.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("Complete not called")
	}
	// Complete is blocked: nothing may have been sent.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var one [1]byte
	if n, err := c.Read(one[:]); n > 0 || !isTimeout(err) {
		t.Fatalf("a byte reached the client before the record was completed: n=%d err=%v", n, err)
	}
	close(st.gate)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 || string(body) != "part1;part2" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestCompletionFailureAnswers503: when the record cannot be completed, the
// client gets 503 outcome-unknown, never the unrecorded response, and none
// of the handler's headers.
func TestCompletionFailureAnswers503(t *testing.T) {
	t.Parallel()
	st := &gatedStore{Store: newMem(), err: fmt.Errorf("down: %w", idem.ErrStoreUnavailable)}
	k := &idem.Keeper{Store: st}
	oc := newOutcomes()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Set-Cookie", "s=1")
		w.Header().Set("X-Charge", "ch_1")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, `{"id":"ch_1"}`)
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, CompleteTimeout: 50 * time.Millisecond, OnOutcome: oc.record}).Handler(h))
	defer srv.Close()
	r := send(t, srv, req{hdr: []string{key1}})
	if r.status != 503 || r.problemCode() != idemhttp.CodeOutcomeUnknown || r.header.Get("Retry-After") == "" {
		t.Fatalf("answer %d %q", r.status, r.body)
	}
	if strings.Contains(string(r.raw), "ch_1") || r.header.Get("Set-Cookie") != "" {
		t.Fatalf("the unrecorded response leaked: %q", r.raw)
	}
	o := oc.next(t)
	if o.Kind != idemhttp.OutcomeExecuted || o.Stored || o.Status != 503 || !errors.Is(o.Err, idem.ErrStoreUnavailable) {
		t.Errorf("outcome %+v", o)
	}
}

// TestSequentialRetryReplays: a retry sent the instant the first response
// has been read replays it (and a retry of a released 500 executes), 1,000
// pairs in a row, on a store whose writes take a moment (as fsync or a
// network hop do).
func TestSequentialRetryReplays(t *testing.T) {
	t.Parallel()
	st := &slowWrites{Store: newMem(), d: 200 * time.Microsecond}
	k := &idem.Keeper{Store: st}
	var calls atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.Header.Get("X-Fail") != "" {
			w.WriteHeader(500)
			fmt.Fprintf(w, "fail %d", n)
			return
		}
		w.WriteHeader(201)
		fmt.Fprintf(w, "call %d", n)
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(h))
	defer srv.Close()
	c := srv.Client()
	defer c.CloseIdleConnections()
	do := func(key string, fail bool) (int, string, bool) {
		rq, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader("x"))
		rq.Header.Set("Idempotency-Key", key)
		if fail {
			rq.Header.Set("X-Fail", "1")
		}
		resp, err := c.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), resp.Header.Get("Idempotency-Replayed") == "true"
	}
	n := 1000
	if testing.Short() {
		n = 200
	}
	for i := range n {
		fail := i%10 == 9
		key := fmt.Sprintf("seq-%d", i)
		s1, b1, _ := do(key, fail)
		s2, b2, rep := do(key, fail)
		switch {
		case fail && (s1 != 500 || s2 != 500 || rep || b1 == b2):
			t.Fatalf("pair %d (500): %d %q then %d %q replayed=%v; want two executions", i, s1, b1, s2, b2, rep)
		case !fail && (s1 != 201 || s2 != 201 || !rep || b1 != b2):
			t.Fatalf("pair %d: %d %q then %d %q replayed=%v; want a replay", i, s1, b1, s2, b2, rep)
		}
	}
}

// slowWrites delays every Complete and Release by d.
type slowWrites struct {
	idem.Store
	d time.Duration
}

func (s *slowWrites) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	time.Sleep(s.d)
	return s.Store.Complete(ctx, key, fence, result, retention)
}

func (s *slowWrites) Release(ctx context.Context, key string, fence uint64) error {
	time.Sleep(s.d)
	return s.Store.Release(ctx, key, fence)
}

// TestOverCapCompletesEarly: a body larger than MaxResult completes the
// record (body omitted) before the first byte goes out, then streams; a
// replay answers the status with the omitted marker. If that completion
// fails, the client gets 503 outcome-unknown.
func TestOverCapCompletesEarly(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789", 100)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(201)
		for i := 0; i < len(big); i += 100 {
			fmt.Fprint(w, big[i:i+100])
		}
	})
	t.Run("ok", func(t *testing.T) {
		t.Parallel()
		k, _ := newKeeper(0)
		oc := newOutcomes()
		srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, MaxResult: 250, OnOutcome: oc.record}).Handler(h))
		defer srv.Close()
		r := send(t, srv, req{hdr: []string{key1}})
		if r.status != 201 || string(r.body) != big {
			t.Fatalf("first answer %d, %d bytes", r.status, len(r.body))
		}
		if o := oc.next(t); !o.Stored || !o.Omitted || o.Err != nil {
			t.Errorf("outcome %+v", o)
		}
		r2 := send(t, srv, req{hdr: []string{key1}})
		if r2.status != 201 || len(r2.body) != 0 || !r2.replayed() || r2.header.Get("Idempotency-Replay") != "omitted" {
			t.Fatalf("replay %d %q %v", r2.status, r2.body, r2.header)
		}
	})
	t.Run("store down", func(t *testing.T) {
		t.Parallel()
		st := &gatedStore{Store: newMem(), err: fmt.Errorf("down: %w", idem.ErrStoreUnavailable)}
		oc := newOutcomes()
		srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: &idem.Keeper{Store: st}, MaxResult: 250, CompleteTimeout: 30 * time.Millisecond, OnOutcome: oc.record}).Handler(h))
		defer srv.Close()
		r := send(t, srv, req{hdr: []string{key1}})
		if r.status != 503 || r.problemCode() != idemhttp.CodeOutcomeUnknown || strings.Contains(string(r.body), "0123") {
			t.Fatalf("answer %d %q", r.status, r.body)
		}
		if o := oc.next(t); o.Stored || o.Status != 503 {
			t.Errorf("outcome %+v", o)
		}
	})
}

// TestEventStreamCompletesOnFlush: a flushed text/event-stream response
// completes the record (body omitted) and then streams while the handler
// runs.
func TestEventStreamCompletesOnFlush(t *testing.T) {
	t.Parallel()
	k, s := newKeeper(0)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 1\n\n")
		http.NewResponseController(w).Flush()
		<-release
		fmt.Fprint(w, "data: 2\n\n")
	})
	srv := httptest.NewServer((&idemhttp.Middleware{Scope: emptyScope, Keeper: k}).Handler(h))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(req{hdr: []string{key1}}.bytes())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		close(release)
		t.Fatal(err)
	}
	first := make([]byte, len("data: 1\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		close(release)
		t.Fatal(err)
	}
	rec, ok, _ := s.Get(context.Background(), idem.RecordKey("", "k1"))
	if !ok || rec.State != idem.StateCompleted {
		t.Errorf("record while streaming: %+v %v", rec, ok)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "data: 2\n\n" {
		t.Errorf("rest %q", rest)
	}
}

// fakeRenewal acknowledges extensions without making them while hold is
// set, so the lease lapses in the store while its executor believes it
// renewed (as a store stall past the lease would); then passes them on.
type fakeRenewal struct {
	idem.Store
	hold atomic.Bool
}

func (s *fakeRenewal) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if s.hold.Load() {
		return nil
	}
	return s.Store.(idem.Extender).Extend(ctx, key, fence, lease)
}

func (s *fakeRenewal) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	return s.Store.(idem.Inspector).Get(ctx, key)
}

// TestLostLeaseCancelsAndAnswersWinner: when renewal finds the lease lost,
// the handler's context is canceled with ErrLeaseLost, and the stale
// executor answers the winner's stored response, never its own.
func TestLostLeaseCancelsAndAnswersWinner(t *testing.T) {
	t.Parallel()
	const lease = 60 * time.Millisecond
	st := &fakeRenewal{Store: newMem()}
	st.hold.Store(true)
	k := &idem.Keeper{Store: st, Lease: lease}
	canceled := make(chan error, 1)
	var calls atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-r.Context().Done()
			canceled <- context.Cause(r.Context())
			w.WriteHeader(201)
			fmt.Fprint(w, "stale")
			return
		}
		w.WriteHeader(201)
		fmt.Fprint(w, "winner")
	})
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(h))
	defer srv.Close()
	q := req{hdr: []string{key1}, body: "x"}
	first := goSend(t, srv, q)
	waitFor(t, func() bool { return calls.Load() == 1 })
	time.Sleep(lease + 30*time.Millisecond) // the lease lapses in the store
	r2 := send(t, srv, q)                   // takes over and completes
	if r2.status != 201 || string(r2.body) != "winner" || r2.replayed() {
		t.Fatalf("winner answer %d %q", r2.status, r2.body)
	}
	st.hold.Store(false) // the next renewal finds the fence refused
	select {
	case err := <-canceled:
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Errorf("handler context cause %v, want ErrLeaseLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stale executor's context was not canceled")
	}
	r1 := recv(t, first)
	if r1.status != 201 || string(r1.body) != "winner" || !r1.replayed() {
		t.Fatalf("stale executor answered %d %q replayed=%v, want the winner's replay", r1.status, r1.body, r1.replayed())
	}
}
