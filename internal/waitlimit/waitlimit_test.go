package waitlimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/leakcheck"
	"github.com/idemkit/idem/memstore"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

func TestLimiterBounds(t *testing.T) {
	l := New(3, 2, 100, 100)
	for i := range 2 {
		if !l.Acquire("a") {
			t.Fatalf("slot %d of a refused", i+1)
		}
	}
	if l.Acquire("a") {
		t.Fatal("third slot of a granted past perKey 2")
	}
	if !l.Acquire("b") {
		t.Fatal("slot of b refused")
	}
	if l.Acquire("c") {
		t.Fatal("fourth slot granted past max 3")
	}
	l.Release("a")
	if !l.Acquire("c") {
		t.Fatal("slot not given back by Release")
	}
	l.Release("a")
	l.Release("b")
	l.Release("c")
	if l.total != 0 || len(l.byKey) != 0 {
		t.Fatalf("after releasing everything: total %d, byKey %v", l.total, l.byKey)
	}
	d := New(0, -1, 7, 5)
	if d.max != 7 || d.perKey != 5 {
		t.Fatalf("defaults: max %d perKey %d, want 7 and 5", d.max, d.perKey)
	}
}

// TestBegin: without wait, or without a free slot, an in-flight key is
// answered at once; with a slot the caller waits for the holder's result.
func TestBegin(t *testing.T) {
	ctx := context.Background()
	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}
	held, err := k.Begin(ctx, "s", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	l := New(1, 1, 1, 1)
	if _, err := l.Begin(ctx, k, "s", "k", nil, 0); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("no wait: %v, want in flight", err)
	}
	rk := idem.RecordKey("s", "k")
	if !l.Acquire(rk) {
		t.Fatal("slot refused")
	}
	if _, err := l.Begin(ctx, k, "s", "k", nil, time.Minute); !errors.Is(err, idem.ErrInFlight) {
		t.Fatalf("no free slot: %v, want in flight at once", err)
	}
	l.Release(rk)
	// Completed while (or before) the caller waits: either way it gets
	// the result, through the store's wake-up or its first Begin.
	go func() { _ = held.Lease.Complete(ctx, []byte("r")) }()
	a, err := l.Begin(ctx, k, "s", "k", nil, time.Minute)
	if err != nil || !a.Replayed() || string(a.Result) != "r" {
		t.Fatalf("waiting Begin = %+v, %v; want the holder's result", a, err)
	}
	if l.total != 0 {
		t.Fatalf("slot kept after Begin: total %d", l.total)
	}
}
