package idemmsg_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
)

// clock is a manual clock for the fake store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newDeduper(t *testing.T) (*idemmsg.Deduper, *fakestore.Store, *clock) {
	t.Helper()
	c := newClock()
	s := fakestore.New(c.Now)
	return &idemmsg.Deduper{Keeper: &idem.Keeper{Store: s}}, s, c
}

var errBoom = errors.New("boom")

func TestStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    idemmsg.Status
		name string
		ack  bool
	}{
		{idemmsg.Executed, "executed", true},
		{idemmsg.Duplicate, "duplicate", true},
		{idemmsg.InFlight, "in-flight", false},
		{idemmsg.Failed, "failed", false},
		{idemmsg.NotRun, "not-run", false},
		{0, "unknown", false},
	} {
		if got := tc.s.String(); got != tc.name {
			t.Errorf("Status(%d).String() = %q, want %q", tc.s, got, tc.name)
		}
		if got := tc.s.Ack(); got != tc.ack {
			t.Errorf("%v.Ack() = %v, want %v", tc.s, got, tc.ack)
		}
	}
}

func TestOnceSequences(t *testing.T) {
	t.Parallel()
	type step struct {
		id      string
		fnErr   error
		advance time.Duration // before the step
		fail    string        // store op to fail during the step
		failN   int           // how many times (default 1)
		want    idemmsg.Status
		wantErr error
		wantRun bool
	}
	day := 24 * time.Hour
	for _, tc := range []struct {
		name  string
		lease time.Duration
		steps []step
	}{
		{"first executes, redelivery is a duplicate", 0, []step{
			{id: "m1", want: idemmsg.Executed, wantRun: true},
			{id: "m1", want: idemmsg.Duplicate},
			{id: "m2", want: idemmsg.Executed, wantRun: true},
		}},
		{"handler error releases, redelivery executes", 0, []step{
			{id: "m1", fnErr: errBoom, want: idemmsg.Failed, wantErr: errBoom, wantRun: true},
			{id: "m1", want: idemmsg.Executed, wantRun: true},
			{id: "m1", want: idemmsg.Duplicate},
		}},
		{"store down at begin: not run, then executes", 0, []step{
			{id: "m1", fail: "begin", want: idemmsg.NotRun, wantErr: idem.ErrStoreUnavailable},
			{id: "m1", want: idemmsg.Executed, wantRun: true},
		}},
		{"store blip at complete: retried by the lease", 0, []step{
			{id: "m1", fail: "complete", want: idemmsg.Executed, wantRun: true},
			{id: "m1", want: idemmsg.Duplicate},
		}},
		{"store down at complete: executed but not recorded", 30 * time.Millisecond, []step{
			{id: "m1", fail: "complete", failN: 1 << 30, want: idemmsg.Executed, wantErr: idemmsg.ErrNotRecorded, wantRun: true},
			{id: "m1", want: idemmsg.InFlight, wantErr: idem.ErrInFlight},
			// The lease expired: the redelivery runs again (at-least-once).
			// (FailN resets the store's failures to one blip.)
			{id: "m1", advance: time.Second, fail: "complete", want: idemmsg.Executed, wantRun: true},
		}},
		{"duplicate within retention skipped, after retention processed again", 0, []step{
			{id: "m1", want: idemmsg.Executed, wantRun: true},
			{id: "m1", advance: 29 * day, want: idemmsg.Duplicate},
			{id: "m1", advance: 1*day + time.Second, want: idemmsg.Executed, wantRun: true},
		}},
		{"empty id", 0, []step{
			{id: "", want: idemmsg.NotRun, wantErr: idem.ErrInvalidKey},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d, s, c := newDeduper(t)
			d.Keeper.Lease = tc.lease
			ctx := context.Background()
			for n, st := range tc.steps {
				c.Advance(st.advance)
				if st.fail != "" {
					n := st.failN
					if n == 0 {
						n = 1
					}
					s.FailN(st.fail, n, errors.New("connection refused"))
				}
				ran := false
				got, err := d.Once(ctx, "orders", st.id, func(context.Context) error {
					ran = true
					return st.fnErr
				})
				if got != st.want || ran != st.wantRun {
					t.Fatalf("step %d: Once = %v (ran %v), want %v (ran %v); err %v", n, got, ran, st.want, st.wantRun, err)
				}
				if st.wantErr == nil && err != nil || st.wantErr != nil && !errors.Is(err, st.wantErr) {
					t.Fatalf("step %d: err = %v, want %v", n, err, st.wantErr)
				}
			}
		})
	}
}

func TestOnceScopesAreSeparate(t *testing.T) {
	t.Parallel()
	d, _, _ := newDeduper(t)
	ctx := context.Background()
	for _, scope := range []string{"a", "b", "a:b", ""} {
		st, err := d.Once(ctx, scope, "m1", func(context.Context) error { return nil })
		if st != idemmsg.Executed || err != nil {
			t.Fatalf("scope %q: %v %v, want executed", scope, st, err)
		}
	}
}

func TestOnceFenceInContext(t *testing.T) {
	t.Parallel()
	d, _, _ := newDeduper(t)
	var fence uint64
	_, err := d.Once(context.Background(), "s", "m", func(ctx context.Context) error {
		var ok bool
		fence, ok = idem.FenceFromContext(ctx)
		if !ok {
			return errors.New("no fence in context")
		}
		return nil
	})
	if err != nil || fence == 0 {
		t.Fatalf("fence %d, err %v", fence, err)
	}
}

func TestOnceInFlight(t *testing.T) {
	t.Parallel()
	d, _, _ := newDeduper(t)
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan idemmsg.Status)
	go func() {
		st, _ := d.Once(ctx, "s", "m", func(context.Context) error {
			close(started)
			<-release
			return nil
		})
		done <- st
	}()
	<-started
	st, err := d.Once(ctx, "s", "m", func(context.Context) error {
		t.Error("duplicate ran while the first was in flight")
		return nil
	})
	var ife *idem.InFlightError
	if st != idemmsg.InFlight || !errors.As(err, &ife) || ife.LeaseLeft <= 0 {
		t.Fatalf("concurrent duplicate: %v %v, want in-flight with lease left", st, err)
	}
	close(release)
	if st := <-done; st != idemmsg.Executed {
		t.Fatalf("first: %v", st)
	}
	if st, _ := d.Once(ctx, "s", "m", nil); st != idemmsg.Duplicate {
		t.Fatalf("after completion: %v, want duplicate", st)
	}
}

func TestOncePanicReleases(t *testing.T) {
	t.Parallel()
	d, _, _ := newDeduper(t)
	ctx := context.Background()
	func() {
		defer func() {
			if r := recover(); r != "kaboom" {
				t.Fatalf("recovered %v, want the handler's panic", r)
			}
		}()
		_, _ = d.Once(ctx, "s", "m", func(context.Context) error { panic("kaboom") })
	}()
	st, err := d.Once(ctx, "s", "m", func(context.Context) error { return nil })
	if st != idemmsg.Executed || err != nil {
		t.Fatalf("after panic: %v %v, want executed", st, err)
	}
}

func TestOnceCanceledContextStillRecords(t *testing.T) {
	t.Parallel()
	d, s, _ := newDeduper(t)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := d.Once(ctx, "s", "m", func(context.Context) error { cancel(); return nil })
	if st != idemmsg.Executed || err != nil {
		t.Fatalf("%v %v", st, err)
	}
	rec, ok, _ := s.Get(context.Background(), idem.RecordKey("s", "m"))
	if !ok || rec.State != idem.StateCompleted {
		t.Fatalf("record %+v ok=%v, want completed", rec, ok)
	}
}

// Crash injection on the store form: the consumer dies at three points.
func TestOnceCrashes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("after side effect and completion, before ack: redelivery skipped", func(t *testing.T) {
		t.Parallel()
		d, _, _ := newDeduper(t)
		effects := 0
		if st, _ := d.Once(ctx, "s", "m", func(context.Context) error { effects++; return nil }); st != idemmsg.Executed {
			t.Fatal(st)
		}
		// crash: no ack. The broker redelivers.
		st, _ := d.Once(ctx, "s", "m", func(context.Context) error { effects++; return nil })
		if st != idemmsg.Duplicate || effects != 1 {
			t.Fatalf("redelivery %v, effects %d; want duplicate, 1", st, effects)
		}
	})
	t.Run("before the side effect: redelivery processed once after the lease", func(t *testing.T) {
		t.Parallel()
		d, s, c := newDeduper(t)
		// The dead consumer claimed the id and died: nothing completes or releases it.
		if b, err := s.Begin(ctx, idem.RecordKey("s", "m"), []byte{}, time.Minute); err != nil || b.Outcome != idem.Acquired {
			t.Fatal(b, err)
		}
		effects := 0
		fn := func(context.Context) error { effects++; return nil }
		if st, _ := d.Once(ctx, "s", "m", fn); st != idemmsg.InFlight {
			t.Fatalf("while the dead lease lives: %v, want in-flight", st)
		}
		c.Advance(time.Minute)
		if st, _ := d.Once(ctx, "s", "m", fn); st != idemmsg.Executed {
			t.Fatalf("after the lease: %v, want executed", st)
		}
		if st, _ := d.Once(ctx, "s", "m", fn); st != idemmsg.Duplicate || effects != 1 {
			t.Fatalf("then: %v with %d effects, want duplicate and 1", st, effects)
		}
	})
	t.Run("handler error: redelivered and processed", func(t *testing.T) {
		t.Parallel()
		d, _, _ := newDeduper(t)
		tries := 0
		fn := func(context.Context) error {
			tries++
			if tries < 3 {
				return errBoom
			}
			return nil
		}
		var st idemmsg.Status
		for range 3 {
			st, _ = d.Once(ctx, "s", "m", fn)
		}
		if st != idemmsg.Executed || tries != 3 {
			t.Fatalf("%v after %d tries", st, tries)
		}
	})
}

func TestOnceConcurrentDuplicatesOneExecutes(t *testing.T) {
	t.Parallel()
	d, _, _ := newDeduper(t)
	var runs atomic.Int32
	var wg sync.WaitGroup
	statuses := make([]idemmsg.Status, 64)
	gate := make(chan struct{})
	for i := range statuses {
		wg.Go(func() {
			<-gate
			statuses[i], _ = d.Once(context.Background(), "s", "m", func(context.Context) error {
				runs.Add(1)
				time.Sleep(time.Millisecond)
				return nil
			})
		})
	}
	close(gate)
	wg.Wait()
	count := map[idemmsg.Status]int{}
	for _, s := range statuses {
		count[s]++
	}
	if runs.Load() != 1 || count[idemmsg.Executed] != 1 || count[idemmsg.InFlight]+count[idemmsg.Duplicate] != 63 {
		t.Fatalf("runs %d, statuses %v", runs.Load(), count)
	}
}

func TestOnceRenewsLongHandlers(t *testing.T) {
	t.Parallel()
	s := fakestore.New(nil) // real clock: renewal runs on a real ticker
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: s, Lease: 150 * time.Millisecond}}
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = d.Once(context.Background(), "s", "m", func(context.Context) error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	for range 4 { // 4 × 100 ms > 2 leases
		time.Sleep(100 * time.Millisecond)
		if st, _ := d.Once(context.Background(), "s", "m", func(context.Context) error { return nil }); st != idemmsg.InFlight {
			close(release)
			<-done
			t.Fatalf("a renewed lease was taken over: %v", st)
		}
	}
	close(release)
	<-done
	if s.Calls("extend") == 0 {
		t.Fatal("no extension happened")
	}
}

// Property: 10,000 deliveries, 30% of them duplicates (some concurrent with
// the original, some redelivered after it, some after a failed attempt) →
// every distinct id executed exactly once when no crash happens, and never
// two executions of one id at the same time.
func TestPropertyMemoryForm(t *testing.T) {
	t.Parallel()
	const total, dupPct = 10_000, 30
	rng := rand.New(rand.NewPCG(1, 2))
	var deliveries []string
	distinct := 0
	for len(deliveries) < total {
		if distinct > 0 && rng.IntN(100) < dupPct {
			deliveries = append(deliveries, fmt.Sprintf("evt-%d", rng.IntN(distinct)))
		} else {
			deliveries = append(deliveries, fmt.Sprintf("evt-%d", distinct))
			distinct++
		}
	}
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}
	var (
		mu       sync.Mutex
		running  = map[string]bool{}
		executed = map[string]int{}
		failOnce = map[string]bool{}
	)
	handler := func(id string) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			if running[id] {
				mu.Unlock()
				t.Errorf("%s executing twice at once", id)
				return nil
			}
			// One id in 10 fails its first attempt: it must be redelivered.
			if strings.HasSuffix(id, "7") && !failOnce[id] {
				failOnce[id] = true
				mu.Unlock()
				return errBoom
			}
			running[id] = true
			mu.Unlock()
			runtime.Gosched() // widen the window in which a second execution would be seen
			mu.Lock()
			running[id] = false
			executed[id]++
			mu.Unlock()
			return nil
		}
	}
	// 8 consumers share a queue; a message that is not acknowledged is put
	// back at the end (redelivery).
	queue := make(chan string, total*2)
	for _, id := range deliveries {
		queue <- id
	}
	var pending sync.WaitGroup
	pending.Add(total)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for id := range queue {
				st, _ := d.Once(context.Background(), "prop", id, handler(id))
				if st.Ack() {
					pending.Done()
				} else {
					queue <- id
				}
			}
		})
	}
	pending.Wait()
	close(queue)
	wg.Wait()
	if len(failOnce) == 0 {
		t.Fatal("no handler failure was injected")
	}
	if len(executed) != distinct {
		t.Fatalf("%d distinct ids executed, want %d", len(executed), distinct)
	}
	for id, n := range executed {
		if n != 1 {
			t.Errorf("%s executed %d times", id, n)
		}
	}
}
