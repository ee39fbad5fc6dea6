package redisstore_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
	"github.com/redis/go-redis/v9"
)

// quiet drops go-redis's log lines (dial failures are expected in the
// server-down tests).
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	leakcheck.VerifyTestMain(m)
}

// standalone returns a client for IDEM_REDIS_ADDR (skip, or fail under CI,
// when unset).
func standalone(t testing.TB) *redis.Client {
	t.Helper()
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("IDEM_REDIS_ADDR=%s: %v", addr, err)
	}
	return c
}

// cluster returns a client for IDEM_REDIS_CLUSTER_ADDRS.
func cluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	addrs := testenv.Need(t, "IDEM_REDIS_CLUSTER_ADDRS")
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
		return n.Ping(ctx).Err()
	}); err != nil {
		t.Fatalf("IDEM_REDIS_CLUSTER_ADDRS=%s: %v", addrs, err)
	}
	return c
}

// backends runs f against the standalone server and the cluster.
func backends(t *testing.T, f func(t *testing.T, c redis.UniversalClient)) {
	t.Run("standalone", func(t *testing.T) { t.Parallel(); f(t, standalone(t)) })
	t.Run("cluster", func(t *testing.T) { t.Parallel(); f(t, cluster(t)) })
}

// newStore returns a Store with a prefix unique to t, closed at cleanup.
func newStore(t testing.TB, c redis.UniversalClient, o redisstore.Options) *redisstore.Store {
	if o.Prefix == "" {
		o.Prefix = storetest.Prefix(t) + ":"
	}
	s := redisstore.New(c, o)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		storetest.Run(t, func(t testing.TB) idem.Store {
			return newStore(t, c, redisstore.Options{})
		}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
	})
}

// TestConformanceScripter runs the suite with the scripts sent through a
// go-redis AutoPipeliner (Options.Scripter).
func TestConformanceScripter(t *testing.T) {
	c := standalone(t)
	ap, err := c.AutoPipeline()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ap.Close() })
	storetest.Run(t, func(t testing.TB) idem.Store {
		return newStore(t, c, redisstore.Options{Scripter: ap})
	}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
}

// TestConformanceAutoPipeline runs the suite with Options.AutoPipeline on
// a single server and on the cluster (each client's own AutoPipeliner, closed
// with the client), and checks that the option took effect.
func TestConformanceAutoPipeline(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{AutoPipeline: true})
		if !st.AutoPipelined() {
			t.Fatal("AutoPipeline did not take effect")
		}
		storetest.Run(t, func(t testing.TB) idem.Store {
			return newStore(t, c, redisstore.Options{AutoPipeline: true})
		}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
	})
}

// countTrips makes h count every round trip c makes. On a cluster the hook
// goes on every node client (the store sends its scripts through the key's
// primary's client, and the cluster client's own commands reach the nodes
// through them too), so that each round trip is counted once.
func countTrips(t *testing.T, c redis.UniversalClient, h *counter) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		c.AddHook(h)
		return
	}
	var mu sync.Mutex
	hooked := map[*redis.Client]bool{}
	add := func(n *redis.Client) {
		mu.Lock()
		defer mu.Unlock()
		if !hooked[n] {
			hooked[n] = true
			n.AddHook(h)
		}
	}
	cc.OnNewNode(add)
	if err := cc.ForEachShard(context.Background(), func(_ context.Context, n *redis.Client) error {
		add(n)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// counter is a go-redis hook that counts round trips: one per command sent
// alone, one per pipeline.
type counter struct{ n atomic.Int64 }

func (h *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}
func (h *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// trips returns the round trips f made.
func (h *counter) trips(f func()) int64 {
	before := h.n.Load()
	f()
	return h.n.Load() - before
}

func TestRoundTrips(t *testing.T) {
	for _, native := range []bool{false, true} {
		t.Run(fmt.Sprintf("NativeBegin=%v", native), func(t *testing.T) {
			testRoundTrips(t, native)
		})
	}
}

// testRoundTrips counts the round trips of each outcome. A conflict (a
// record in progress) costs the native path two: its commands, then the
// script that judges the lease.
func testRoundTrips(t *testing.T, native bool) {
	ctx := context.Background()
	conflictTrips := int64(1)
	if native {
		conflictTrips = 2
	}
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		h := &counter{}
		countTrips(t, c, h)
		s := newStore(t, c, redisstore.Options{NativeBegin: native})
		fp, other := []byte("fp-1"), []byte("fp-2")
		// Load the scripts (EVALSHA's first NOSCRIPT costs an EVAL).
		warm := func(key string) {
			b, err := s.Begin(ctx, key, fp, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Complete(ctx, key, b.Fence, nil, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 16 { // spread over the cluster's primaries
			warm("warm" + strings.Repeat("x", i))
		}

		var b idem.Begun
		var err error
		first := h.trips(func() {
			b, err = s.Begin(ctx, "k", fp, time.Minute)
			if err != nil || b.Outcome != idem.Acquired {
				t.Fatalf("Begin = %+v, %v; want acquired", b, err)
			}
			if err := s.Complete(ctx, "k", b.Fence, []byte("result"), time.Minute); err != nil {
				t.Fatal(err)
			}
		})
		replay := h.trips(func() {
			b, err = s.Begin(ctx, "k", fp, time.Minute)
			if err != nil || b.Outcome != idem.Replay || string(b.Result) != "result" {
				t.Fatalf("Begin = %+v, %v; want replay", b, err)
			}
		})
		mismatch := h.trips(func() {
			b, err = s.Begin(ctx, "k", other, time.Minute)
			if err != nil || b.Outcome != idem.Mismatch {
				t.Fatalf("Begin = %+v, %v; want mismatch", b, err)
			}
		})
		if _, err := s.Begin(ctx, "held", fp, time.Minute); err != nil {
			t.Fatal(err)
		}
		conflict := h.trips(func() {
			b, err = s.Begin(ctx, "held", fp, time.Minute)
			if err != nil || b.Outcome != idem.InFlight {
				t.Fatalf("Begin = %+v, %v; want in-flight", b, err)
			}
		})
		for _, tc := range []struct {
			name      string
			got, want int64
		}{
			{"first execution (begin+complete)", first, 2},
			{"replay", replay, 1},
			{"mismatch", mismatch, 1},
			{"conflict", conflict, conflictTrips},
		} {
			if tc.got != tc.want {
				t.Errorf("%s: %d round trips, want %d", tc.name, tc.got, tc.want)
			}
		}
	})
}

// BenchmarkStore runs storetest.Benchmark against IDEM_REDIS_ADDR:
//
//	go test -run '^$' -bench . -cpu 32 ./redisstore
//
// (-cpu 32 gives b.RunParallel 32 goroutines.) bench/redis compares the same
// paths with redis-benchmark; see docs/bench/redis.md.
func BenchmarkStore(b *testing.B) {
	c := standalone(b)
	storetest.Benchmark(b, func(tb testing.TB) idem.Store {
		return newStore(tb, c, redisstore.Options{})
	})
}
