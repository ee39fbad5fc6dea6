package memstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/leakcheck"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

// clock is a fake store clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var all = storetest.Features{Extend: true, Sweep: true, Wait: true, Inspect: true}

func TestConformanceFakeClock(t *testing.T) {
	c := newClock()
	f := all
	f.Advance = c.Advance
	storetest.Run(t, func(testing.TB) idem.Store {
		return memstore.New(memstore.Options{Now: c.Now})
	}, f)
}

func TestConformanceRealClock(t *testing.T) {
	f := all
	f.MinLease = 20 * time.Millisecond
	storetest.Run(t, func(testing.TB) idem.Store {
		return memstore.New(memstore.Options{})
	}, f)
}

// TestConformanceOneShard puts every key behind one lock, so the shard-wide
// fence high-water mark and map are shared by all keys.
func TestConformanceOneShard(t *testing.T) {
	c := newClock()
	f := all
	f.Advance = c.Advance
	storetest.Run(t, func(testing.TB) idem.Store {
		return memstore.New(memstore.Options{Now: c.Now, Shards: 1})
	}, f)
}

func TestMaxRecords(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{MaxRecords: 3, Now: c.Now})
	const lease, retention = time.Minute, time.Hour

	begin := func(key string) (idem.Begun, error) { return s.Begin(ctx, key, []byte("fp"), lease) }
	mustAcquire := func(key string) uint64 {
		t.Helper()
		b, err := begin(key)
		if err != nil || b.Outcome != idem.Acquired {
			t.Fatalf("Begin(%q) = %+v, %v; want acquired", key, b, err)
		}
		return b.Fence
	}
	wantFull := func(key string) {
		t.Helper()
		_, err := begin(key)
		if !errors.Is(err, idem.ErrStoreFull) || !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Fatalf("Begin(%q) on a full store = %v, want ErrStoreFull wrapping ErrStoreUnavailable", key, err)
		}
	}

	fa := mustAcquire("a")
	fb := mustAcquire("b")
	mustAcquire("c")
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
	wantFull("d")
	if n := s.Len(); n != 3 {
		t.Fatalf("Len after a refused Begin = %d, want 3", n)
	}
	// Keys that have a record are still served when full.
	if b, err := begin("a"); err != nil || b.Outcome != idem.InFlight {
		t.Fatalf("Begin(held key) on a full store = %+v, %v; want in-flight", b, err)
	}
	// Live records are never evicted, however old their lease: an expired
	// lease is taken over, not reclaimed.
	c.Advance(2 * lease)
	wantFull("d")
	if b, err := begin("a"); err != nil || b.Outcome != idem.Acquired || !b.Takeover || b.Fence != fa+1 {
		t.Fatalf("takeover on a full store = %+v, %v", b, err)
	}
	// Release makes room.
	if err := s.Release(ctx, "b", fb); err != nil {
		t.Fatal(err)
	}
	mustAcquire("d")
	wantFull("e")

	// Completed records past retention are reclaimed to make room, wherever
	// they are.
	for _, k := range []string{"a", "c", "d"} {
		b, err := begin(k)
		if err != nil {
			t.Fatal(err)
		}
		_ = b
	}
	for _, k := range []string{"c", "d"} {
		rec, ok, err := s.Get(ctx, k)
		if err != nil || !ok {
			t.Fatalf("Get(%q) = %v, %v", k, ok, err)
		}
		if err := s.Complete(ctx, k, rec.Fence, nil, retention); err != nil {
			t.Fatal(err)
		}
	}
	wantFull("e")
	c.Advance(retention + time.Second)
	mustAcquire("e")
	mustAcquire("f")
	if n := s.Len(); n != 3 {
		t.Fatalf("Len after reclaiming = %d, want 3 (a, e, f)", n)
	}
	wantFull("g")
}

// TestMaxRecordsConcurrent checks that the limit holds exactly under
// concurrent Begins of new keys.
func TestMaxRecordsConcurrent(t *testing.T) {
	const limit, workers, perWorker = 100, 8, 50
	s := memstore.New(memstore.Options{MaxRecords: limit})
	var mu sync.Mutex
	acquired := 0
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				k := string(rune('A'+w)) + "/" + string(rune('0'+i/10)) + string(rune('0'+i%10))
				b, err := s.Begin(context.Background(), k, nil, time.Minute)
				switch {
				case err == nil && b.Outcome == idem.Acquired:
					mu.Lock()
					acquired++
					mu.Unlock()
				case errors.Is(err, idem.ErrStoreFull):
				default:
					t.Errorf("Begin(%q) = %+v, %v", k, b, err)
				}
			}
		})
	}
	wg.Wait()
	if acquired != limit || s.Len() != limit {
		t.Fatalf("acquired %d, Len %d; want exactly %d", acquired, s.Len(), limit)
	}
}

func TestSweepAbandoned(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{Now: c.Now, Abandon: time.Hour})
	b, err := s.Begin(ctx, "k", []byte("A"), time.Minute)
	if err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin = %+v, %v", b, err)
	}
	c.Advance(time.Minute + 59*time.Minute) // lease ended 59m ago
	if n, err := s.Sweep(ctx); n != 0 || err != nil {
		t.Fatalf("Sweep before Abandon = %d, %v; want 0, nil", n, err)
	}
	if b2, _ := s.Begin(ctx, "k", []byte("B"), time.Minute); b2.Outcome != idem.Mismatch {
		t.Fatalf("Begin(other fp) on a lapsed lease = %+v, want mismatch", b2)
	}
	c.Advance(2 * time.Minute)
	if n, err := s.Sweep(ctx); n != 1 || err != nil {
		t.Fatalf("Sweep after Abandon = %d, %v; want 1, nil", n, err)
	}
	if s.Len() != 0 {
		t.Fatalf("Len after Sweep = %d, want 0", s.Len())
	}
	b3, err := s.Begin(ctx, "k", []byte("B"), time.Minute)
	if err != nil || b3.Outcome != idem.Acquired || b3.Takeover || b3.Fence <= b.Fence {
		t.Fatalf("Begin after the abandoned record was swept = %+v, %v; want a fresh fence > %d", b3, err, b.Fence)
	}
}

// TestFenceClock checks that fresh fences follow the store clock in Unix
// microseconds, and keep growing when the clock does not move.
func TestFenceClock(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{Now: c.Now})
	want := uint64(c.Now().UnixMicro())
	prev := uint64(0)
	for i := range 5 {
		b, err := s.Begin(ctx, "k", nil, time.Minute)
		if err != nil || b.Outcome != idem.Acquired {
			t.Fatalf("Begin = %+v, %v", b, err)
		}
		if b.Fence < want || b.Fence <= prev {
			t.Fatalf("cycle %d: fence %d, want ≥ clock %d and > previous %d", i, b.Fence, want, prev)
		}
		prev = b.Fence
		if err := s.Release(ctx, "k", b.Fence); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(time.Second)
	b, _ := s.Begin(ctx, "k", nil, time.Minute)
	if w := uint64(c.Now().UnixMicro()); b.Fence != w {
		t.Fatalf("fence after the clock moved on = %d, want the clock %d", b.Fence, w)
	}
}

// TestWaitCleanup checks that Waits that time out or are canceled leave no
// queue behind, and that a later Complete still wakes new waiters.
func TestWaitCleanup(t *testing.T) {
	ctx := context.Background()
	s := memstore.New(memstore.Options{})
	b, _ := s.Begin(ctx, "k", nil, time.Minute)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if err := s.Wait(ctx, "k", time.Millisecond); err != nil {
				t.Errorf("Wait: %v", err)
			}
		})
	}
	wg.Wait()
	cctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if err := s.Wait(cctx, "k", time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with an expiring ctx = %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, "k", time.Minute) }()
	time.Sleep(5 * time.Millisecond)
	if err := s.Complete(ctx, "k", b.Fence, nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait not woken by Complete")
	}
	if err := s.Wait(ctx, "k", time.Minute); err != nil {
		t.Fatalf("Wait on a completed record = %v, want nil at once", err)
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Benchmark(b, func(testing.TB) idem.Store { return memstore.New(memstore.Options{}) })
}

// BenchmarkBeginComplete measures the direct hot path: a new key's Begin
// and Complete, in parallel, with the keys prepared outside the timer.
func BenchmarkBeginComplete(b *testing.B) {
	s := memstore.New(memstore.Options{})
	fp := idem.Fingerprint([]byte("POST /charges"))
	result := []byte(`{"id":"ch_1"}`)
	var next sync.Mutex
	worker := 0
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		worker++
		prefix := string(rune('a'+worker%26)) + string(rune('a'+worker/26)) + "-"
		next.Unlock()
		ctx := context.Background()
		buf := []byte(prefix)
		for i := 0; pb.Next(); i++ {
			buf = appendInt(buf[:len(prefix)], i)
			k := string(buf)
			bg, err := s.Begin(ctx, k, fp, time.Minute)
			if err != nil || bg.Outcome != idem.Acquired {
				b.Fatalf("Begin = %+v, %v", bg, err)
			}
			if err := s.Complete(ctx, k, bg.Fence, result, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

func appendInt(b []byte, i int) []byte {
	var d [20]byte
	n := len(d)
	for {
		n--
		d[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			break
		}
	}
	return append(b, d[n:]...)
}

// FuzzModel checks the store against storetest's reference model on
// operation sequences decoded from the fuzz input.
func FuzzModel(f *testing.F) {
	c := newClock()
	storetest.Fuzz(f, func(testing.TB) idem.Store {
		return memstore.New(memstore.Options{Now: c.Now, Shards: 2})
	}, storetest.Features{Extend: true, Sweep: true, Inspect: true, Advance: c.Advance})
}

// BenchmarkBaselineMap is the floor BenchmarkBeginComplete is measured
// against: the same keys inserted into 16 mutex-guarded maps of small
// structs, then looked up and updated, with none of the store's semantics.
// The ratio of the two is stable on a noisy machine where absolute figures
// are not.
func BenchmarkBaselineMap(b *testing.B) {
	type rec struct {
		fence  uint64
		result []byte
	}
	type shard struct {
		mu sync.Mutex
		m  map[string]*rec
		_  [64]byte
	}
	shards := make([]shard, 16)
	for i := range shards {
		shards[i].m = map[string]*rec{}
	}
	result := []byte(`{"id":"ch_1"}`)
	var next sync.Mutex
	worker := 0
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		worker++
		prefix := string(rune('a'+worker%26)) + string(rune('a'+worker/26)) + "-"
		next.Unlock()
		buf := []byte(prefix)
		for i := 0; pb.Next(); i++ {
			buf = appendInt(buf[:len(prefix)], i)
			k := string(buf)
			sh := &shards[(i+int(buf[0]))&15]
			sh.mu.Lock()
			if sh.m[k] == nil {
				sh.m[k] = &rec{fence: uint64(i)}
			}
			sh.mu.Unlock()
			sh.mu.Lock()
			if r := sh.m[k]; r != nil {
				r.result = append([]byte(nil), result...)
			}
			sh.mu.Unlock()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

// reportCPU reports the process CPU time per operation since start
// (including the garbage collector's), when the platform measures it.
func reportCPU(b *testing.B, start time.Duration) {
	if end := cpuTime(); end > 0 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkBeginCompleteSteady is BenchmarkBeginComplete in a steady state:
// every worker cycles through 4096 keys whose records are retained for zero
// time, so each Begin reclaims the dead record of its key and the maps do not
// grow. It isolates the hot path from map growth and heap growth.
func BenchmarkBeginCompleteSteady(b *testing.B) {
	s := memstore.New(memstore.Options{})
	fp := idem.Fingerprint([]byte("POST /charges"))
	result := []byte(`{"id":"ch_1"}`)
	var next sync.Mutex
	worker := 0
	b.ReportAllocs()
	defer reportCPU(b, cpuTime())
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		worker++
		prefix := string(rune('a'+worker%26)) + string(rune('a'+worker/26)) + "-"
		next.Unlock()
		ks := make([]string, 4096)
		for i := range ks {
			ks[i] = string(appendInt([]byte(prefix), i))
		}
		ctx := context.Background()
		for i := 0; pb.Next(); i++ {
			k := ks[i%len(ks)]
			bg, err := s.Begin(ctx, k, fp, time.Minute)
			if err != nil || bg.Outcome != idem.Acquired {
				b.Fatalf("Begin = %+v, %v", bg, err)
			}
			if err := s.Complete(ctx, k, bg.Fence, result, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

// TestRecycle checks that a dead record recycled for a fresh Begin carries
// nothing over: fingerprint, result, or buffers shared with replays.
func TestRecycle(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{Now: c.Now})
	big := make([]byte, 5000)
	for i := range big {
		big[i] = byte(i)
	}
	long := append(make([]byte, 40), 1) // longer than the inline buffer
	var prev uint64
	var replays [][]byte
	for i, step := range []struct {
		fp     []byte
		result []byte
	}{
		{[]byte("a"), big},
		{long, []byte("small")},
		{[]byte("b"), nil},
		{nil, []byte("xyz")},
		{[]byte("a"), []byte("0123456789")},
		{long[:39], []byte{}},
		{[]byte("c"), big[:100]},
	} {
		b, err := s.Begin(ctx, "k", step.fp, time.Minute)
		if err != nil || b.Outcome != idem.Acquired || b.Takeover || b.Fence <= prev {
			t.Fatalf("step %d: Begin = %+v, %v; want a fresh acquisition above fence %d", i, b, err, prev)
		}
		prev = b.Fence
		if rec, ok, _ := s.Get(ctx, "k"); !ok || rec.State != idem.StateInProgress || len(rec.Result) != 0 || string(rec.Fingerprint) != string(step.fp) {
			t.Fatalf("step %d: Get = %+v, %v", i, rec, ok)
		}
		if err := s.Complete(ctx, "k", b.Fence, step.result, time.Second); err != nil {
			t.Fatal(err)
		}
		r, err := s.Begin(ctx, "k", step.fp, time.Minute)
		if err != nil || r.Outcome != idem.Replay || string(r.Result) != string(step.result) {
			t.Fatalf("step %d: replay = %+v, %v; want %q", i, r, err, step.result)
		}
		replays = append(replays, r.Result)
		c.Advance(time.Second) // the record dies; the next Begin recycles it
	}
	// Earlier replays were copies: recycling did not overwrite them.
	if string(replays[0]) != string(big) || string(replays[1]) != "small" || string(replays[3]) != "xyz" {
		t.Fatalf("a replayed result changed after its record was recycled")
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
}

// TestWaitWokenByRecycle checks that a Wait on an abandoned record ends when
// a fresh Begin replaces the dead record.
func TestWaitWokenByRecycle(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{Now: c.Now, Abandon: time.Minute})
	if b, err := s.Begin(ctx, "k", nil, time.Second); err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin = %+v, %v", b, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait(ctx, "k", time.Minute) }()
	time.Sleep(10 * time.Millisecond) // let the waiter block
	c.Advance(2 * time.Minute)        // the record is abandoned, then dead
	if b, err := s.Begin(ctx, "k", []byte("other"), time.Second); err != nil || b.Outcome != idem.Acquired || b.Takeover {
		t.Fatalf("Begin on a dead record = %+v, %v; want a fresh acquisition", b, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait not woken when its dead record was replaced")
	}
}

// TestConcurrentChurn runs Begin, Complete, Release, Sweep and clock
// advances at once on a small full store, under -race, and checks that the
// record limit and the counts hold throughout.
func TestConcurrentChurn(t *testing.T) {
	const limit = 32
	ctx := context.Background()
	c := newClock()
	s := memstore.New(memstore.Options{Now: c.Now, MaxRecords: limit, Shards: 4, Abandon: time.Second})

	stop := make(chan struct{})
	sweeper := make(chan struct{})
	go func() {
		defer close(sweeper)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Advance(100 * time.Microsecond)
			if _, err := s.Sweep(ctx); err != nil {
				t.Errorf("Sweep: %v", err)
			}
		}
	}()

	var wg sync.WaitGroup
	var full, acquired sync.Map
	for w := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				k := string(rune('a'+w)) + string(rune('a'+i%50))
				b, err := s.Begin(ctx, k, nil, time.Millisecond)
				if errors.Is(err, idem.ErrStoreFull) {
					full.Store(w, true)
					continue
				}
				if err != nil {
					t.Errorf("Begin: %v", err)
					return
				}
				if b.Outcome != idem.Acquired {
					continue
				}
				acquired.Store(w, true)
				switch i % 3 {
				case 0:
					_ = s.Complete(ctx, k, b.Fence, []byte("r"), time.Millisecond)
				case 1:
					_ = s.Release(ctx, k, b.Fence)
				}
				// Len sums the shards one by one, so while others
				// write it may be off by one per concurrent writer.
				if n := s.Len(); n > limit+4 {
					t.Errorf("Len = %d, above MaxRecords %d", n, limit)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sweeper
	if n := s.Len(); n > limit {
		t.Fatalf("Len = %d at rest, above MaxRecords %d", n, limit)
	}

	c.Advance(time.Hour) // every record is dead now
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.Len(); n != 0 {
		t.Fatalf("Len after sweeping a dead store = %d, want 0", n)
	}
	// A worker may be starved by a full store on a loaded machine; the
	// store as a whole must still have made progress.
	n := 0
	acquired.Range(func(any, any) bool { n++; return true })
	if n == 0 {
		t.Error("no worker ever acquired a key")
	}
	_, wasFull := full.Load(0)
	t.Logf("store was full at times: %v", wasFull)
}

// TestShardCounts checks that any Shards value gives a working store.
func TestShardCounts(t *testing.T) {
	for _, n := range []int{-1, 0, 1, 3, 16, 17, 1 << 20} {
		s := memstore.New(memstore.Options{Shards: n})
		ctx := context.Background()
		for i := range 100 {
			k := string(appendInt(nil, i))
			if b, err := s.Begin(ctx, k, nil, time.Minute); err != nil || b.Outcome != idem.Acquired {
				t.Fatalf("Shards %d: Begin(%q) = %+v, %v", n, k, b, err)
			}
		}
		if s.Len() != 100 {
			t.Fatalf("Shards %d: Len = %d, want 100", n, s.Len())
		}
	}
}

var _ idem.BatchBeginner = (*memstore.Store)(nil)

func TestBeginBatch(t *testing.T) {
	ctx := context.Background()
	s := memstore.New(memstore.Options{MaxRecords: 3})
	fp := []byte("fp")
	if _, err := s.Begin(ctx, "held", fp, time.Minute); err != nil {
		t.Fatal(err)
	}
	res, err := s.BeginBatch(ctx, []string{"a", "held", "b"}, [][]byte{fp, fp, []byte("x")}, time.Minute)
	if err != nil || len(res) != 3 {
		t.Fatalf("BeginBatch = %+v, %v", res, err)
	}
	if res[0].Outcome != idem.Acquired || res[1].Outcome != idem.InFlight || res[2].Outcome != idem.Acquired {
		t.Fatalf("outcomes %+v", res)
	}
	if err := s.Release(ctx, "a", res[0].Fence); err != nil {
		t.Fatal(err)
	}
	// Full on the second key: the first is given back, nothing is returned.
	if _, err := s.BeginBatch(ctx, []string{"c", "d"}, [][]byte{fp, fp}, time.Minute); !errors.Is(err, idem.ErrStoreFull) {
		t.Fatalf("BeginBatch on a full store = %v, want ErrStoreFull", err)
	}
	if n := s.Len(); n != 2 {
		t.Fatalf("Len after a refused batch = %d, want 2", n)
	}
	if _, err := s.BeginBatch(ctx, []string{"c"}, nil, time.Minute); err == nil {
		t.Fatal("BeginBatch with fewer fingerprints than keys succeeded")
	}
}
