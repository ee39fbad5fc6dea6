package redisstreams_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/redisstreams"
	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

var errBoom = errors.New("boom")

type env struct {
	rc     *redis.Client
	store  *redisstore.Store
	prefix string
	stream string
}

// newEnv connects to the real Redis (IDEM_REDIS_ADDR) and gives the test a
// stream and store prefix of its own, removed at the end.
func newEnv(t *testing.T) *env {
	t.Helper()
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	rc := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rc.Close() })
	if err := rc.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis %s: %v", addr, err)
	}
	id := fmt.Sprintf("idemmsgtest:%d:%s", time.Now().UnixNano(), t.Name())
	e := &env{rc: rc, prefix: id + ":rec:", stream: id + ":stream"}
	e.store = redisstore.New(rc, redisstore.Options{Prefix: e.prefix})
	// Records expire by themselves (see deduper); the stream is removed.
	t.Cleanup(func() { rc.Del(context.Background(), e.stream) })
	if err := rc.XGroupCreateMkStream(context.Background(), e.stream, "mailer", "0").Err(); err != nil {
		t.Fatal(err)
	}
	return e
}

// deduper returns a Deduper on the test's store whose records expire a
// minute after completion, so tests leave nothing behind in the shared Redis.
func (e *env) deduper() *idemmsg.Deduper {
	return &idemmsg.Deduper{Keeper: &idem.Keeper{Store: e.store}, Retention: time.Minute}
}

func (e *env) add(t *testing.T, ids ...string) {
	t.Helper()
	pipe := e.rc.Pipeline()
	for _, id := range ids {
		pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: e.stream, Values: []any{"event-id", id, "body", "hello"}})
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (e *env) consumer(name string, d *idemmsg.Deduper) *redisstreams.Consumer {
	return &redisstreams.Consumer{Client: e.rc, Stream: e.stream, Group: "mailer", Name: name, Deduper: d, Block: 20 * time.Millisecond, ClaimIdle: 100 * time.Millisecond}
}

func (e *env) pending(t *testing.T) int64 {
	t.Helper()
	p, err := e.rc.XPending(context.Background(), e.stream, "mailer").Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

// pollUntil polls c until want entries were acknowledged, or fails after 10 s.
func pollUntil(t *testing.T, c *redisstreams.Consumer, h redisstreams.Handler, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	got := 0
	for got < want {
		if time.Now().After(deadline) {
			t.Fatalf("acknowledged %d of %d", got, want)
		}
		n, err := c.Poll(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	if got != want {
		t.Fatalf("acknowledged %d, want %d", got, want)
	}
}

type effects struct {
	mu sync.Mutex
	n  map[string]int
}

func (f *effects) handler(_ context.Context, m redis.XMessage) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = map[string]int{}
	}
	f.n[m.Values["event-id"].(string)]++
	return nil
}

func (f *effects) exactlyOnce(t *testing.T, ids ...string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if f.n[id] != 1 {
			t.Errorf("%s ran %d times, want 1", id, f.n[id])
		}
	}
	if len(f.n) != len(ids) {
		t.Errorf("%d distinct ids ran, want %d", len(f.n), len(ids))
	}
}

func TestMisconfigured(t *testing.T) {
	t.Parallel()
	if _, err := (&redisstreams.Consumer{}).Poll(context.Background(), nil); !errors.Is(err, redisstreams.ErrMisconfigured) {
		t.Fatal(err)
	}
}

func TestEventID(t *testing.T) {
	t.Parallel()
	m := redis.XMessage{ID: "1-0", Values: map[string]any{"event-id": "e1", "k": "v"}}
	for _, tc := range []struct {
		c    *redisstreams.Consumer
		m    redis.XMessage
		want string
	}{
		{&redisstreams.Consumer{}, m, "e1"},
		{&redisstreams.Consumer{IDField: "k"}, m, "v"},
		{&redisstreams.Consumer{IDField: "none"}, m, "1-0"},
		{&redisstreams.Consumer{}, redis.XMessage{ID: "2-0", Values: map[string]any{"event-id": ""}}, "2-0"},
		{&redisstreams.Consumer{ID: func(m redis.XMessage) (string, error) { return "x" + m.ID, nil }}, m, "x1-0"},
	} {
		if got, err := tc.c.EventID(tc.m); err != nil || got != tc.want {
			t.Errorf("EventID = %q, want %q", got, tc.want)
		}
	}
}

func TestProcessAndDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a", "b", "a", "c", "b")
	var fx effects
	c := e.consumer("c1", e.deduper())
	pollUntil(t, c, fx.handler, 5)
	fx.exactlyOnce(t, "a", "b", "c")
	if p := e.pending(t); p != 0 {
		t.Fatalf("%d entries pending", p)
	}
}

func TestCreateGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a")
	var fx effects
	c := e.consumer("c1", e.deduper())
	c.Group, c.CreateGroup = "fresh", true
	pollUntil(t, c, fx.handler, 1)
	c2 := e.consumer("c2", e.deduper())
	c2.Group, c2.CreateGroup = "fresh", true // BUSYGROUP is fine
	if _, err := c2.Poll(context.Background(), fx.handler); err != nil {
		t.Fatal(err)
	}
	fx.exactlyOnce(t, "a")
}

// The consumer dies after its side effect (and the completed claim) but
// before XACK: the entry is reclaimed by another consumer and skipped.
func TestCrashAfterEffectBeforeAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a", "b")
	d := e.deduper()
	var fx effects
	ctx := context.Background()
	res, err := e.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "mailer", Consumer: "dead", Streams: []string{e.stream, ">"}, Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res[0].Messages {
		if st, err := d.Once(ctx, e.stream+"/mailer", m.Values["event-id"].(string), func(ctx context.Context) error { return fx.handler(ctx, m) }); st != idemmsg.Executed {
			t.Fatal(st, err)
		}
	}
	// crash: no XACK
	var reruns atomic.Int32
	c := e.consumer("c2", d)
	pollUntil(t, c, func(context.Context, redis.XMessage) error { reruns.Add(1); return nil }, 2)
	if reruns.Load() != 0 {
		t.Fatalf("reclaimed entries ran %d times", reruns.Load())
	}
	fx.exactlyOnce(t, "a", "b")
	if p := e.pending(t); p != 0 {
		t.Fatalf("%d entries pending", p)
	}
}

// The consumer dies after reading and claiming, before its side effect: the
// entry is reclaimed, waits out the dead claim's lease, and runs once.
func TestCrashBeforeEffect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a")
	const lease = 1500 * time.Millisecond // long enough to be seen in flight on a loaded machine
	d := e.deduper()
	d.Keeper.Lease = lease
	ctx := context.Background()
	if err := e.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "mailer", Consumer: "dead", Streams: []string{e.stream, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	if b, err := e.store.Begin(ctx, idem.RecordKey(e.stream+"/mailer", "a"), []byte{}, lease); err != nil || b.Outcome != idem.Acquired {
		t.Fatal(b, err)
	}
	var statuses []idemmsg.Status
	c := e.consumer("c2", d)
	c.OnError = func(_ *redis.XMessage, st idemmsg.Status, _ error) { statuses = append(statuses, st) }
	var fx effects
	pollUntil(t, c, fx.handler, 1)
	fx.exactlyOnce(t, "a")
	if !slices.Contains(statuses, idemmsg.InFlight) {
		t.Fatalf("statuses %v: the dead claim was not respected", statuses)
	}
}

func TestHandlerErrorRedelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a", "b")
	var fx effects
	fails := 0
	c := e.consumer("c1", e.deduper())
	pollUntil(t, c, func(ctx context.Context, m redis.XMessage) error {
		if m.Values["event-id"] == "a" && fails < 2 {
			fails++
			return errBoom
		}
		return fx.handler(ctx, m)
	}, 2)
	fx.exactlyOnce(t, "a", "b")
	if fails != 2 || e.pending(t) != 0 {
		t.Fatalf("fails %d pending %d", fails, e.pending(t))
	}
}

// A restarted consumer (same name) first re-reads its own pending entries.
func TestRestartRereadsOwnPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a")
	ctx := context.Background()
	if err := e.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "mailer", Consumer: "c1", Streams: []string{e.stream, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	var fx effects
	c := e.consumer("c1", e.deduper())
	c.ClaimIdle = time.Hour // not through XAUTOCLAIM
	pollUntil(t, c, fx.handler, 1)
	fx.exactlyOnce(t, "a")
}

// Two consumers hold the same entry at once (the second reclaimed it from a
// slow first): one executes; the holder's XACK clears it.
func TestConcurrentOneExecutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a")
	d := e.deduper()
	var runs atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	slow := e.consumer("slow", d)
	var wg sync.WaitGroup
	var slowAcked int
	wg.Go(func() {
		slowAcked, _ = slow.Poll(context.Background(), func(context.Context, redis.XMessage) error {
			runs.Add(1)
			close(started)
			<-release
			return nil
		})
	})
	<-started
	time.Sleep(150 * time.Millisecond) // past ClaimIdle
	other := e.consumer("other", d)
	var inflight int
	other.OnError = func(_ *redis.XMessage, st idemmsg.Status, _ error) {
		if st == idemmsg.InFlight {
			inflight++
		}
	}
	n, err := other.Poll(context.Background(), func(context.Context, redis.XMessage) error { runs.Add(1); return nil })
	if err != nil || n != 0 || inflight != 1 {
		t.Fatalf("other: acked %d, in flight %d, %v; want 0, 1", n, inflight, err)
	}
	close(release)
	wg.Wait()
	if runs.Load() != 1 || slowAcked != 1 || e.pending(t) != 0 {
		t.Fatalf("runs %d, slow acked %d, pending %d", runs.Load(), slowAcked, e.pending(t))
	}
}

// Property (Redis form): 10,000 entries, 30% duplicates, four consumers
// reclaiming each other's entries, 5% of first attempts failing → every
// distinct id runs at least once, exactly once here (no crash), and never
// twice at the same time.
func TestPropertyRedisForm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const total = 10_000
	rng := rand.New(rand.NewPCG(5, 6))
	var ids []string
	distinct := 0
	for range total {
		if distinct > 0 && rng.IntN(100) < 30 {
			ids = append(ids, fmt.Sprintf("evt-%d", rng.IntN(distinct)))
		} else {
			ids = append(ids, fmt.Sprintf("evt-%d", distinct))
			distinct++
		}
	}
	for i := 0; i < total; i += 1000 {
		e.add(t, ids[i:i+1000]...)
	}
	d := e.deduper()
	var (
		mu      sync.Mutex
		running = map[string]bool{}
		ran     = map[string]int{}
		failed  = map[string]bool{}
		acked   atomic.Int64
	)
	h := func(_ context.Context, m redis.XMessage) error {
		id := m.Values["event-id"].(string)
		mu.Lock()
		if running[id] {
			t.Errorf("%s runs twice at once", id)
		}
		if !failed[id] && len(failed) < distinct/20 && len(id)%3 == 0 {
			failed[id] = true
			mu.Unlock()
			return errBoom
		}
		running[id] = true
		mu.Unlock()
		runtime.Gosched()
		mu.Lock()
		running[id] = false
		ran[id]++
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 4 {
		c := e.consumer(fmt.Sprintf("c%d", i), d)
		c.ClaimIdle = 200 * time.Millisecond
		c.Count = 250
		wg.Go(func() {
			for ctx.Err() == nil && acked.Load() < total {
				n, err := c.Poll(ctx, h)
				if err != nil && ctx.Err() == nil {
					t.Error(err)
					return
				}
				acked.Add(int64(n))
			}
		})
	}
	wg.Wait()
	if acked.Load() < total {
		t.Fatalf("acknowledged %d of %d in time", acked.Load(), total)
	}
	if len(failed) == 0 {
		t.Fatal("no failure injected")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != distinct {
		t.Fatalf("%d distinct ids ran, want %d", len(ran), distinct)
	}
	for id, n := range ran {
		if n != 1 {
			t.Errorf("%s ran %d times", id, n)
		}
	}
	if p := e.pending(t); p != 0 {
		t.Fatalf("%d entries still pending", p)
	}
}
