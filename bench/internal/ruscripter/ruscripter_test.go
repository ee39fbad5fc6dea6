package ruscripter_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/bench/internal/ruscripter"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestConformance runs the store conformance suite on redisstore with its
// scripts sent through rueidis: the benchmark compares clients on a store
// that behaves exactly as the real one.
func TestConformance(t *testing.T) {
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	sc := ruscripter.New(rc)
	storetest.Run(t, func(t testing.TB) idem.Store {
		s := redisstore.New(c, redisstore.Options{Prefix: storetest.Prefix(t) + ":", Scripter: sc})
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
}

// TestErrors checks the conversions a store depends on: a nil reply is
// redis.Nil, a server error is a redis.Error (Script.Run's NOSCRIPT
// fallback looks for one), and a script not in the cache still runs.
func TestErrors(t *testing.T) {
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableRetry: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	sc := ruscripter.New(rc)
	ctx := context.Background()
	if err := sc.Eval(ctx, "return false", nil).Err(); err != redis.Nil {
		t.Fatalf("nil reply: err = %v, want redis.Nil", err)
	}
	err = sc.Eval(ctx, "return redis.error_reply('BOOM it broke')", nil).Err()
	if !redis.HasErrorPrefix(err, "BOOM") {
		t.Fatalf("error reply: err = %v (%T), want a redis.Error starting with BOOM", err, err)
	}
	// A script no server has seen: EVALSHA fails with NOSCRIPT, Run falls
	// back to EVAL.
	s := redis.NewScript("return {1, 'x', ARGV[1]} -- " + time.Now().String())
	v, err := s.Run(ctx, sc, []string{"k"}, 42).Result()
	if err != nil {
		t.Fatal(err)
	}
	got, ok := v.([]any)
	if !ok || len(got) != 3 || got[0] != int64(1) || got[1] != "x" || got[2] != "42" {
		t.Fatalf("reply %#v, want [1 x 42]", v)
	}
	if ok, err := sc.ScriptExists(ctx, s.Hash()).Result(); err != nil || len(ok) != 1 || !ok[0] {
		t.Fatalf("ScriptExists after EVAL = %v, %v", ok, err)
	}
	if h, err := sc.ScriptLoad(ctx, "return 1").Result(); err != nil || h != redis.NewScript("return 1").Hash() {
		t.Fatalf("ScriptLoad = %q, %v", h, err)
	}
}
