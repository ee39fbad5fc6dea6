package idem_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/leakcheck"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

// clock is a fake clock, for the store (memstore.Options.Now) and the
// Keeper (idem.Keeper.Clock). Its timers fire only in Advance, in order of
// their due time, each in the calling goroutine with the clock set to that
// time, so a test that advances the clock sees every timer that came due
// run to completion.
type clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

// Advance moves the clock d forward, running the timers that come due.
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if t.active && !t.when.After(target) && (next == nil || t.when.Before(next.when)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		if next.when.After(c.now) {
			c.now = next.when
		}
		next.active = false
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = target
	c.mu.Unlock()
}

func (c *clock) AfterFunc(d time.Duration, f func()) idem.Timer {
	t := &fakeTimer{c: c, f: f}
	t.Reset(d)
	return t
}

type fakeTimer struct {
	c      *clock
	f      func()
	when   time.Time
	active bool
	added  bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.active = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.active
	t.when, t.active = t.c.now.Add(d), true
	if !t.added {
		t.added = true
		t.c.timers = append(t.c.timers, t)
	}
	return was
}

// recorder is an Observer that counts events by kind.
type recorder struct {
	mu     sync.Mutex
	events []idem.Event
}

func (r *recorder) Observe(_ context.Context, e idem.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) count(k idem.EventKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

// faulty wraps a Store and fails every call while down is set.
type faulty struct {
	idem.Store
	down atomic.Bool
}

var errDown = fmt.Errorf("connection refused: %w", idem.ErrStoreUnavailable)

func (f *faulty) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if f.down.Load() {
		return idem.Begun{}, errDown
	}
	return f.Store.Begin(ctx, key, fp, lease)
}

func (f *faulty) Complete(ctx context.Context, key string, fence uint64, res []byte, ret time.Duration) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Complete(ctx, key, fence, res, ret)
}

func (f *faulty) Release(ctx context.Context, key string, fence uint64) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Release(ctx, key, fence)
}

func TestKeeperLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClock()
	obs := &recorder{}
	k := &idem.Keeper{Store: memstore.New(memstore.Options{Now: c.Now}), Lease: 10 * time.Second, Retention: time.Hour, Observer: obs}
	fp := []byte("fp-1")

	a, err := k.Begin(ctx, "tenant", "key-1", fp)
	if err != nil || a.Replayed() {
		t.Fatalf("first Begin = %+v, %v; want a lease", a, err)
	}
	if a.Lease.Fence() == 0 || a.Lease.Takeover() {
		t.Fatalf("fresh lease: fence %d takeover %v", a.Lease.Fence(), a.Lease.Takeover())
	}
	if f, ok := idem.FenceFromContext(a.Lease.Context(ctx)); !ok || f != a.Lease.Fence() {
		t.Fatalf("FenceFromContext = %d, %v", f, ok)
	}

	_, err = k.Begin(ctx, "tenant", "key-1", fp)
	var inflight *idem.InFlightError
	if !errors.As(err, &inflight) || !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("duplicate Begin err = %v, want *InFlightError", err)
	}
	if inflight.LeaseLeft <= 0 || inflight.LeaseLeft > 10*time.Second {
		t.Fatalf("LeaseLeft = %v", inflight.LeaseLeft)
	}
	if _, err := k.Begin(ctx, "tenant", "key-1", []byte("other")); !errors.Is(err, idem.ErrMismatch) {
		t.Fatalf("different fingerprint err = %v, want ErrMismatch", err)
	}
	// Another scope is another record.
	b, err := k.Begin(ctx, "other-tenant", "key-1", fp)
	if err != nil || b.Replayed() {
		t.Fatalf("other scope Begin = %+v, %v; want a lease", b, err)
	}
	if err := b.Lease.Release(ctx); err != nil {
		t.Fatal(err)
	}

	if err := a.Lease.Complete(ctx, []byte("result")); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := a.Lease.Complete(ctx, []byte("again")); err == nil {
		t.Fatal("second Complete on one lease succeeded")
	}
	r, err := k.Begin(ctx, "tenant", "key-1", fp)
	if err != nil || !r.Replayed() || string(r.Result) != "result" {
		t.Fatalf("replay Begin = %+v, %v", r, err)
	}
	if _, err := k.Begin(ctx, "tenant", "key-1", []byte("other")); !errors.Is(err, idem.ErrMismatch) {
		t.Fatalf("completed + different fingerprint err = %v, want ErrMismatch", err)
	}

	c.Advance(time.Hour + time.Second) // past retention: the key is new again
	n, err := k.Begin(ctx, "tenant", "key-1", []byte("other"))
	if err != nil || n.Replayed() {
		t.Fatalf("Begin after retention = %+v, %v; want a lease", n, err)
	}
	if n.Lease.Fence() <= a.Lease.Fence() {
		t.Fatalf("fence after retention %d, want > %d", n.Lease.Fence(), a.Lease.Fence())
	}
	if err := n.Lease.Release(ctx); err != nil {
		t.Fatal(err)
	}

	for kind, want := range map[idem.EventKind]int{
		idem.EventExecuted: 3, idem.EventReplayed: 1, idem.EventConflict: 1, idem.EventMismatch: 2,
		idem.EventTakeover: 0, idem.EventStoreError: 0, idem.EventLeaseLost: 0, idem.EventAcquired: 3,
	} {
		if got := obs.count(kind); got != want {
			t.Errorf("%v events = %d, want %d", kind, got, want)
		}
	}
}

// TestKeeperEventLatency checks that every Begin is reported as one outcome
// carrying the store's latency, and that EventExecuted carries the final
// step's latency apart from the execution time.
func TestKeeperEventLatency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClock()
	obs := &recorder{}
	slow := &slowStore{Store: memstore.New(memstore.Options{Now: c.Now}), c: c, d: 3 * time.Millisecond}
	k := &idem.Keeper{Store: slow, Clock: c, Observer: obs}
	a, err := k.Begin(ctx, "s", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Second) // the operation runs
	if err := a.Lease.Complete(ctx, []byte("r")); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Begin(ctx, "s", "k", nil); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	want := []struct {
		kind         idem.EventKind
		op           string
		dur, storeLt time.Duration
	}{
		{idem.EventAcquired, "begin", 3 * time.Millisecond, 3 * time.Millisecond},
		{idem.EventExecuted, "complete", 3*time.Millisecond + time.Second + 3*time.Millisecond, 3 * time.Millisecond},
		{idem.EventReplayed, "begin", 3 * time.Millisecond, 3 * time.Millisecond},
	}
	if len(obs.events) != len(want) {
		t.Fatalf("events = %+v, want %d", obs.events, len(want))
	}
	for i, w := range want {
		e := obs.events[i]
		if e.Kind != w.kind || e.Op != w.op || e.Duration != w.dur || e.StoreLatency != w.storeLt {
			t.Errorf("event %d = %v %s duration %v store %v; want %v %s %v %v", i, e.Kind, e.Op, e.Duration, e.StoreLatency, w.kind, w.op, w.dur, w.storeLt)
		}
	}
	if got := idem.EventAcquired.String(); got != "acquired" {
		t.Errorf("EventAcquired.String() = %q", got)
	}
}

// slowStore advances a fake clock by d in every Begin and Complete, as a
// store that takes d to answer.
type slowStore struct {
	idem.Store
	c *clock
	d time.Duration
}

func (s *slowStore) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	s.c.Advance(s.d)
	return s.Store.Begin(ctx, key, fp, lease)
}

func (s *slowStore) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	s.c.Advance(s.d)
	return s.Store.Complete(ctx, key, fence, result, retention)
}

func TestKeeperTakeoverAndFencing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClock()
	obs := &recorder{}
	k := &idem.Keeper{Store: memstore.New(memstore.Options{Now: c.Now}), Lease: time.Second, Observer: obs}

	old, err := k.Begin(ctx, "", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Second) // the old executor "died": its lease ran out
	nw, err := k.Begin(ctx, "", "k", nil)
	if err != nil || nw.Replayed() {
		t.Fatalf("takeover Begin = %+v, %v", nw, err)
	}
	if !nw.Lease.Takeover() || nw.Lease.Fence() != old.Lease.Fence()+1 {
		t.Fatalf("takeover fence %d (takeover %v), want %d", nw.Lease.Fence(), nw.Lease.Takeover(), old.Lease.Fence()+1)
	}
	if err := old.Lease.Complete(ctx, []byte("stale")); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("stale Complete = %v, want ErrLeaseLost", err)
	}
	if err := nw.Lease.Complete(ctx, []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	r, err := k.Begin(ctx, "", "k", nil)
	if err != nil || string(r.Result) != "fresh" {
		t.Fatalf("replay = %q, %v; want the new executor's result", r.Result, err)
	}
	if obs.count(idem.EventTakeover) != 1 || obs.count(idem.EventLeaseLost) != 1 {
		t.Fatalf("takeover events %d, lease-lost events %d; want 1 and 1", obs.count(idem.EventTakeover), obs.count(idem.EventLeaseLost))
	}
}

func TestKeeperStoreErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := &faulty{Store: memstore.New(memstore.Options{})}
	obs := &recorder{}
	k := &idem.Keeper{Store: st, Observer: obs}
	st.down.Store(true)
	if _, err := k.Begin(ctx, "", "k", nil); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin with store down = %v, want ErrStoreUnavailable", err)
	}
	if obs.count(idem.EventStoreError) != 1 {
		t.Fatalf("store error events = %d, want 1", obs.count(idem.EventStoreError))
	}
	st.down.Store(false)
	a, err := k.Begin(ctx, "", "k", nil)
	if err != nil {
		t.Fatal(err)
	}

	// Complete retries a store that stays down until its context ends, then
	// lets the caller try again.
	st.down.Store(true)
	cctx, cancel := context.WithTimeout(ctx, 80*time.Millisecond)
	err = a.Lease.Complete(cctx, []byte("r"))
	cancel()
	if !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Complete with store down = %v, want ErrStoreUnavailable", err)
	}
	if obs.count(idem.EventStoreError) < 3 {
		t.Fatalf("store error events = %d, want retries reported", obs.count(idem.EventStoreError))
	}
	if obs.count(idem.EventExecuted) != 0 {
		t.Fatal("executed reported although the record is still in progress")
	}
	st.down.Store(false)
	if err := a.Lease.Complete(ctx, []byte("r")); err != nil {
		t.Fatalf("Complete after the store came back = %v", err)
	}
	if r, err := k.Begin(ctx, "", "k", nil); err != nil || string(r.Result) != "r" {
		t.Fatalf("replay = %q, %v", r.Result, err)
	}

	// A store that is down briefly: Complete succeeds by itself.
	b, err := k.Begin(ctx, "", "k2", nil)
	if err != nil {
		t.Fatal(err)
	}
	st.down.Store(true)
	time.AfterFunc(50*time.Millisecond, func() { st.down.Store(false) })
	if err := b.Lease.Complete(ctx, []byte("r2")); err != nil {
		t.Fatalf("Complete across a short outage = %v", err)
	}
	if _, err := k.Begin(ctx, "", "", nil); !errors.Is(err, idem.ErrInvalidKey) {
		t.Fatalf("empty key = %v, want ErrInvalidKey", err)
	}
}

// lostReply applies Complete but reports a timeout the first time, as when
// the store's answer is lost on the network.
type lostReply struct {
	*memstore.Store
	once sync.Once
}

func (s *lostReply) Complete(ctx context.Context, key string, fence uint64, res []byte, ret time.Duration) error {
	err := s.Store.Complete(ctx, key, fence, res, ret)
	lost := false
	s.once.Do(func() { lost = true })
	if lost {
		return fmt.Errorf("read tcp: i/o timeout: %w", idem.ErrStoreUnavailable)
	}
	return err
}

// A Complete whose answer was lost is retried, refused (the record is
// completed), and recognised as applied through the Inspector.
func TestCompleteLostReply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	k := &idem.Keeper{Store: &lostReply{Store: memstore.New(memstore.Options{})}}
	a, err := k.Begin(ctx, "", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Lease.Complete(ctx, []byte("done")); err != nil {
		t.Fatalf("Complete with a lost reply = %v, want nil", err)
	}
	if r, err := k.Begin(ctx, "", "k", nil); err != nil || string(r.Result) != "done" {
		t.Fatalf("replay = %q, %v", r.Result, err)
	}
}

func TestDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}
	type charge struct {
		ID     string
		Amount int
	}
	var runs atomic.Int32
	fn := func(ctx context.Context) (charge, error) {
		if _, ok := idem.FenceFromContext(ctx); !ok {
			t.Error("fn's context has no fence")
		}
		runs.Add(1)
		return charge{ID: "ch_1", Amount: 500}, nil
	}
	v, replayed, err := idem.Do(ctx, k, "acct", "pay-1", fn)
	if err != nil || replayed || v.ID != "ch_1" {
		t.Fatalf("first Do = %+v, %v, %v", v, replayed, err)
	}
	v, replayed, err = idem.Do(ctx, k, "acct", "pay-1", fn)
	if err != nil || !replayed || v != (charge{"ch_1", 500}) {
		t.Fatalf("second Do = %+v, %v, %v", v, replayed, err)
	}
	if runs.Load() != 1 {
		t.Fatalf("fn ran %d times, want 1", runs.Load())
	}

	// An error releases the key: the next call runs fn again.
	boom := errors.New("card declined by network")
	_, _, err = idem.Do(ctx, k, "acct", "pay-2", func(context.Context) (charge, error) { return charge{}, boom })
	if err != boom {
		t.Fatalf("Do error = %v, want %v itself", err, boom)
	}
	if _, replayed, err := idem.Do(ctx, k, "acct", "pay-2", fn); err != nil || replayed {
		t.Fatalf("Do after error = %v, %v; want a fresh run", replayed, err)
	}

	// A panic releases the key and re-panics.
	func() {
		defer func() {
			if recover() != "kaboom" {
				t.Error("Do did not re-panic with fn's value")
			}
		}()
		_, _, _ = idem.Do(ctx, k, "acct", "pay-3", func(context.Context) (charge, error) { panic("kaboom") })
	}()
	if _, replayed, err := idem.Do(ctx, k, "acct", "pay-3", fn); err != nil || replayed {
		t.Fatalf("Do after panic = %v, %v; want a fresh run", replayed, err)
	}

	// Same key, different fingerprint.
	_, _, err = idem.DoCall(ctx, k, idem.Call[charge]{Scope: "acct", Key: "pay-1", Fingerprint: []byte("x")}, fn)
	if !errors.Is(err, idem.ErrMismatch) {
		t.Fatalf("DoCall with another fingerprint = %v, want ErrMismatch", err)
	}
}

// A lease that outlives three lease periods is renewed and never taken over.
// The store and the Keeper share a fake clock: renewal runs as the test
// advances it.
func TestRenewal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lease := 60 * time.Millisecond
	c := newClock()
	k := &idem.Keeper{Store: memstore.New(memstore.Options{Now: c.Now}), Lease: lease, Clock: c}
	a, err := k.Begin(ctx, "", "long", nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Lease.StartRenewal()
	for range 24 { // four leases
		if _, err := k.Begin(ctx, "", "long", nil); !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("Begin during a renewed lease = %v, want ErrInFlight", err)
		}
		c.Advance(lease / 6)
	}
	if a.Lease.IsLost() {
		t.Fatal("renewed lease reported lost")
	}
	if err := a.Lease.Complete(ctx, []byte("done")); err != nil {
		t.Fatalf("Complete after renewal: %v", err)
	}

	// Without renewal the lease runs out and the next Begin takes over.
	b, err := k.Begin(ctx, "", "dead", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Advance(lease + time.Millisecond)
	d, err := k.Begin(ctx, "", "dead", nil)
	if err != nil || d.Replayed() || d.Lease.Fence() != b.Lease.Fence()+1 {
		t.Fatalf("takeover of an unrenewed lease = %+v, %v", d, err)
	}
	// The stale holder's renewal now fails and reports the loss.
	b.Lease.StartRenewal()
	c.Advance(lease)
	select {
	case <-b.Lease.Lost():
	default:
		t.Fatal("renewal of a lost lease did not report it")
	}
	if err := b.Lease.Complete(ctx, nil); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("stale Complete = %v, want ErrLeaseLost", err)
	}
	if err := d.Lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// noWaiter hides a store's Waiter so that BeginWait polls.
type noWaiter struct{ idem.Store }

func TestBeginWait(t *testing.T) {
	t.Parallel()
	for name, st := range map[string]idem.Store{
		"waiter": memstore.New(memstore.Options{}),
		"poll":   noWaiter{memstore.New(memstore.Options{})},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			k := &idem.Keeper{Store: st, Lease: 5 * time.Second}
			a, err := k.Begin(ctx, "", "w", []byte("fp"))
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				time.Sleep(30 * time.Millisecond)
				_ = a.Lease.Complete(context.Background(), []byte("waited"))
			}()
			start := time.Now()
			r, err := k.BeginWait(ctx, "", "w", []byte("fp"), 2*time.Second)
			if err != nil || !r.Replayed() || string(r.Result) != "waited" {
				t.Fatalf("BeginWait = %+v, %v", r, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("BeginWait took %v; the completion should wake it", d)
			}

			// The bound passes while the holder runs: the last InFlightError.
			b, err := k.Begin(ctx, "", "w2", nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = k.BeginWait(ctx, "", "w2", nil, 50*time.Millisecond)
			if !errors.Is(err, idem.ErrInFlight) {
				t.Fatalf("BeginWait past its bound = %v, want ErrInFlight", err)
			}
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := k.BeginWait(cctx, "", "w2", nil, time.Second); err == nil {
				t.Fatal("BeginWait with a canceled context succeeded")
			}
			_ = b.Lease.Release(ctx)
		})
	}
}

func TestMarkCompleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := memstore.New(memstore.Options{})
	obs := &recorder{}
	k := &idem.Keeper{Store: st, Lease: time.Minute, Retention: time.Hour, Observer: obs}
	a, err := k.Begin(ctx, "s", "tx", []byte("fp"))
	if err != nil {
		t.Fatal(err)
	}
	lctx := a.Lease.Context(ctx)
	l, ok := idem.LeaseFromContext(lctx)
	if !ok || l != a.Lease || l.Retention() != time.Hour || l.Key() != idem.RecordKey("s", "tx") {
		t.Fatalf("LeaseFromContext = %v, %v", l, ok)
	}
	if f, ok := idem.FenceFromContext(lctx); !ok || f != l.Fence() {
		t.Fatalf("FenceFromContext = %d, %v", f, ok)
	}
	// The caller completes the record itself (as in a database transaction).
	if err := st.Complete(ctx, l.Key(), l.Fence(), []byte("in-tx"), l.Retention()); err != nil {
		t.Fatal(err)
	}
	l.StartRenewal()
	l.MarkCompleted()
	if err := l.Complete(ctx, []byte("outer")); err != nil {
		t.Fatalf("Complete after MarkCompleted = %v, want nil", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release after MarkCompleted = %v, want nil", err)
	}
	r, err := k.Begin(ctx, "s", "tx", []byte("fp"))
	if err != nil || string(r.Result) != "in-tx" {
		t.Fatalf("replay = %q, %v; want the in-transaction result", r.Result, err)
	}
	if obs.count(idem.EventExecuted) != 1 {
		t.Fatalf("executed events = %d, want 1", obs.count(idem.EventExecuted))
	}
	// Without MarkCompleted a second Complete is an error.
	b, _ := k.Begin(ctx, "s", "plain", nil)
	_ = b.Lease.Complete(ctx, nil)
	if err := b.Lease.Complete(ctx, nil); err == nil {
		t.Fatal("second Complete without MarkCompleted returned nil")
	}
}

// freezingStore makes every Extend made while the store is frozen wait
// (honouring ctx) until the freeze ends, the way a SIGSTOPped Redis or a
// locked table does.
type freezingStore struct {
	idem.Store
	mu     sync.Mutex
	until  time.Time
	calls  atomic.Int64
	frozen atomic.Int64 // calls that waited for the freeze
}

func (s *freezingStore) freeze(d time.Duration) {
	s.mu.Lock()
	s.until = time.Now().Add(d)
	s.mu.Unlock()
}

func (s *freezingStore) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	s.calls.Add(1)
	s.mu.Lock()
	wait := time.Until(s.until)
	s.mu.Unlock()
	if wait > 0 {
		s.frozen.Add(1)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return fmt.Errorf("stalled: %w", ctx.Err())
		case <-t.C:
		}
	}
	return s.Store.(idem.Extender).Extend(ctx, key, fence, lease)
}

// TestRenewalSurvivesStall: a store freeze of 70% of the lease, starting
// right after a successful renewal (the worst moment), does not let the
// lease lapse: the next attempt may wait for all the time left on the
// lease, where it was once bounded by a third of it, so a duplicate never
// takes the key over.
func TestRenewalSurvivesStall(t *testing.T) {
	const lease = 400 * time.Millisecond
	mem := memstore.New(memstore.Options{})
	st := &freezingStore{Store: mem}
	k := &idem.Keeper{Store: st, Lease: lease}
	a, err := k.Begin(context.Background(), "s", "stall", []byte("fp"))
	if err != nil || a.Lease == nil {
		t.Fatal(a, err)
	}
	a.Lease.StartRenewal()
	waitUntil(t, func() bool { return st.calls.Load() >= 1 })
	st.freeze(lease * 7 / 10)
	// Probe for a takeover until well past two leases.
	other := &idem.Keeper{Store: mem, Lease: lease}
	deadline := time.Now().Add(2 * lease)
	for time.Now().Before(deadline) {
		_, err := other.Begin(context.Background(), "s", "stall", []byte("fp"))
		if !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("after %d extensions a duplicate got %v: the lease lapsed", st.calls.Load(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.frozen.Load() == 0 {
		t.Fatal("no extension met the freeze: the test proved nothing")
	}
	if err := a.Lease.Complete(context.Background(), []byte("r")); err != nil {
		t.Fatal(err)
	}
	if a.Lease.IsLost() {
		t.Fatal("lease reported lost")
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition not reached")
		}
	}
}

// TestRenewalRetriesWithinLease: an extension that fails fast (store
// unreachable) is retried at once with backoff rather than at the next
// period, and renewal resumes when the store is back. The store and the
// Keeper share a fake clock.
func TestRenewalRetriesWithinLease(t *testing.T) {
	t.Parallel()
	const lease = 300 * time.Millisecond
	c := newClock()
	mem := memstore.New(memstore.Options{Now: c.Now})
	st := &flakyExtend{Store: mem}
	st.down.Store(true)
	k := &idem.Keeper{Store: st, Lease: lease, Clock: c}
	a, err := k.Begin(context.Background(), "s", "flaky", []byte("fp"))
	if err != nil || a.Lease == nil {
		t.Fatal(a, err)
	}
	a.Lease.StartRenewal()
	// Down from the first renewal (at lease/4) for another 40% of the lease:
	// retries after 10, 20 and 30 ms (backoff capped at a tenth of the
	// lease), then every 30 ms.
	c.Advance(lease/4 + lease*4/10)
	st.down.Store(false)
	if n := st.calls.Load(); n < 3 {
		t.Errorf("%d extension attempts while the store was down, want retries within the lease", n)
	}
	c.Advance(lease)
	other := &idem.Keeper{Store: mem, Lease: lease, Clock: c}
	if _, err := other.Begin(context.Background(), "s", "flaky", []byte("fp")); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("duplicate got %v: the lease lapsed", err)
	}
	if err := a.Lease.Complete(context.Background(), []byte("r")); err != nil {
		t.Fatal(err)
	}
}

type flakyExtend struct {
	idem.Store
	down  atomic.Bool
	calls atomic.Int64
}

func (s *flakyExtend) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	s.calls.Add(1)
	if s.down.Load() {
		return fmt.Errorf("refused: %w", idem.ErrStoreUnavailable)
	}
	return s.Store.(idem.Extender).Extend(ctx, key, fence, lease)
}

// TestLostLeaseCancelsContext: the lease's contexts are canceled with a
// cause matching ErrLeaseLost when the store refuses the fence.
func TestLostLeaseCancelsContext(t *testing.T) {
	mem := memstore.New(memstore.Options{})
	k := &idem.Keeper{Store: mem, Lease: time.Second}
	a, err := k.Begin(context.Background(), "s", "lost", []byte("fp"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := a.Lease.Context(context.Background())
	// Another executor takes the record: release ours behind its back.
	if err := mem.Release(context.Background(), a.Lease.Key(), a.Lease.Fence()); err != nil {
		t.Fatal(err)
	}
	if err := a.Lease.Extend(context.Background()); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("extend: %v", err)
	}
	select {
	case <-ctx.Done():
	default:
		t.Fatal("context not canceled")
	}
	if !errors.Is(context.Cause(ctx), idem.ErrLeaseLost) || !a.Lease.IsLost() {
		t.Errorf("cause %v", context.Cause(ctx))
	}
	// A context taken after the loss is canceled at once.
	if ctx2 := a.Lease.Context(context.Background()); ctx2.Err() == nil {
		t.Error("late context not canceled")
	}
}

// TestCompleteRefusedButApplied: a completion applied by a client-library
// retry whose own reply says "lease lost" is recognised through the
// Inspector: Complete returns nil, not a false ErrLeaseLost.
func TestCompleteRefusedButApplied(t *testing.T) {
	mem := memstore.New(memstore.Options{})
	st := &retryingComplete{Store: mem}
	k := &idem.Keeper{Store: st}
	a, err := k.Begin(context.Background(), "s", "retried", []byte("fp"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Lease.Complete(context.Background(), []byte("r")); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if a.Lease.IsLost() {
		t.Error("lease marked lost")
	}
}

// retryingComplete applies Complete, then answers as a client library's
// hidden retry would: the record is no longer in progress, lease lost.
type retryingComplete struct{ idem.Store }

func (s *retryingComplete) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if err := s.Store.Complete(ctx, key, fence, result, retention); err != nil {
		return err
	}
	return s.Store.Complete(ctx, key, fence, result, retention)
}

func (s *retryingComplete) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	return s.Store.(idem.Inspector).Get(ctx, key)
}

// countingBatch counts BeginBatch calls of a memstore, or fails them.
type countingBatch struct {
	*memstore.Store
	calls atomic.Int32
	fail  error
}

func (s *countingBatch) BeginBatch(ctx context.Context, keys []string, fps [][]byte, lease time.Duration) ([]idem.Begun, error) {
	s.calls.Add(1)
	if s.fail != nil {
		return nil, s.fail
	}
	return s.Store.BeginBatch(ctx, keys, fps, lease)
}

// noBatch hides a store's BatchBeginner (and its other capabilities).
type noBatch struct{ idem.Store }

func TestBeginBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, batched := range []bool{true, false} {
		t.Run(fmt.Sprint("batched=", batched), func(t *testing.T) {
			t.Parallel()
			cb := &countingBatch{Store: memstore.New(memstore.Options{})}
			var st idem.Store = cb
			if !batched {
				st = noBatch{cb}
			}
			rec := &recorder{}
			k := &idem.Keeper{Store: st, Observer: rec, BatchParallelism: 4}
			fp := []byte("fp")
			done, err := k.Begin(ctx, "s", "done", fp)
			if err != nil {
				t.Fatal(err)
			}
			if err := done.Lease.Complete(ctx, []byte("r")); err != nil {
				t.Fatal(err)
			}
			busy, err := k.Begin(ctx, "s", "busy", fp)
			if err != nil {
				t.Fatal(err)
			}
			keys := []string{"new", "done", "busy", "done", "", "new2"}
			fps := [][]byte{fp, fp, fp, []byte("other"), fp, nil}
			atts, errs := k.BeginBatch(ctx, "s", keys, fps)
			if len(atts) != len(keys) || len(errs) != len(keys) {
				t.Fatalf("%d attempts, %d errors for %d keys", len(atts), len(errs), len(keys))
			}
			if errs[0] != nil || atts[0].Lease == nil || errs[5] != nil || atts[5].Lease == nil {
				t.Fatalf("new keys: %+v %v, %+v %v", atts[0], errs[0], atts[5], errs[5])
			}
			if errs[1] != nil || !atts[1].Replayed() || string(atts[1].Result) != "r" {
				t.Fatalf("done: %+v, %v", atts[1], errs[1])
			}
			if !errors.Is(errs[2], idem.ErrInFlight) || !errors.Is(errs[3], idem.ErrMismatch) || !errors.Is(errs[4], idem.ErrInvalidKey) {
				t.Fatalf("errors: %v", errs)
			}
			if want := map[bool]int32{true: 1, false: 0}[batched]; cb.calls.Load() != want {
				t.Fatalf("BeginBatch reached the store %d times, want %d", cb.calls.Load(), want)
			}
			if rec.count(idem.EventReplayed) != 1 || rec.count(idem.EventConflict) != 1 || rec.count(idem.EventMismatch) != 1 {
				t.Fatalf("events: %+v", rec.events)
			}
			// The leases are ordinary leases.
			l := atts[0].Lease
			if l.Key() != idem.RecordKey("s", "new") {
				t.Fatalf("lease key %q", l.Key())
			}
			if got, ok := idem.LeaseFromContext(l.Context(ctx)); !ok || got != l {
				t.Fatal("LeaseFromContext of the lease's context")
			}
			if err := l.Complete(ctx, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := atts[5].Lease.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if a, err := k.Begin(ctx, "s", "new", fp); err != nil || string(a.Result) != "x" {
				t.Fatalf("replay of a batch lease: %+v, %v", a, err)
			}
			if a, err := k.Begin(ctx, "s", "new2", nil); err != nil || a.Lease == nil {
				t.Fatalf("begin after a batch release: %+v, %v", a, err)
			} else {
				_ = a.Lease.Release(ctx)
			}
			_ = busy.Lease.Release(ctx)
			if n := rec.count(idem.EventExecuted); n != 5 {
				t.Fatalf("%d executed events, want 5", n)
			}
		})
	}
}

func TestBeginBatchStoreError(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	k := &idem.Keeper{Store: &countingBatch{Store: memstore.New(memstore.Options{}), fail: errDown}, Observer: rec}
	_, errs := k.BeginBatch(context.Background(), "s", []string{"a", "b"}, nil)
	for i, err := range errs {
		if !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Fatalf("key %d: %v, want ErrStoreUnavailable", i, err)
		}
	}
	if rec.count(idem.EventStoreError) != 2 {
		t.Fatalf("events: %+v", rec.events)
	}
	if atts, errs := k.BeginBatch(context.Background(), "s", nil, nil); len(atts) != 0 || len(errs) != 0 {
		t.Fatal("empty batch")
	}
}

// Batch leases renew, and complete through the core's retry and Inspector
// path: a Complete whose answer was lost is recognised as applied.
func TestBeginBatchLeasesRenewAndRecover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	lease := 60 * time.Millisecond
	st := &lostReply{Store: memstore.New(memstore.Options{})}
	k := &idem.Keeper{Store: st, Lease: lease}
	atts, errs := k.BeginBatch(ctx, "s", []string{"a", "b"}, nil)
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	for _, a := range atts {
		a.Lease.StartRenewal()
	}
	time.Sleep(3 * lease)
	if _, err := k.Begin(ctx, "s", "b", nil); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("Begin during a renewed batch lease = %v, want ErrInFlight", err)
	}
	for _, a := range atts {
		if err := a.Lease.Complete(ctx, []byte("done")); err != nil {
			t.Fatalf("Complete (one answer lost) = %v, want nil", err)
		}
	}
}

func TestKeeperWithRetention(t *testing.T) {
	t.Parallel()
	k := &idem.Keeper{Store: memstore.New(memstore.Options{}), Lease: time.Second, Retention: time.Hour}
	c := k.WithRetention(time.Minute)
	if c == k || c.Retention != time.Minute || c.Lease != time.Second || c.Store != k.Store {
		t.Fatalf("copy %+v", c)
	}
	if k.Retention != time.Hour {
		t.Fatalf("original modified: %v", k.Retention)
	}
}

// flakyComplete fails the first n Complete calls with ErrStoreUnavailable.
type flakyComplete struct {
	idem.Store
	mu sync.Mutex
	n  int
}

func (s *flakyComplete) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	s.mu.Lock()
	fail := s.n > 0
	s.n--
	s.mu.Unlock()
	if fail {
		return errDown
	}
	return s.Store.Complete(ctx, key, fence, result, retention)
}

// TestCompleteRetryEvents: a completion that fails once and then succeeds
// is reported as one EventStoreError marked Retrying, then EventExecuted;
// only the final outcome is unmarked.
func TestCompleteRetryEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	obs := &recorder{}
	k := &idem.Keeper{Store: &flakyComplete{Store: memstore.New(memstore.Options{}), n: 1}, Observer: obs}
	a, err := k.Begin(ctx, "s", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Lease.Complete(ctx, []byte("r")); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	var kinds []string
	for _, e := range obs.events {
		kinds = append(kinds, fmt.Sprintf("%v/%v", e.Kind, e.Retrying))
	}
	if got, want := strings.Join(kinds, " "), "acquired/false store_error/true executed/false"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}
