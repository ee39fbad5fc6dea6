package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

func TestBudget(t *testing.T) {
	c := newClock()
	storetest.RunBudget(t, func(_ testing.TB, b storetest.Budget) idem.Store {
		return memstore.New(memstore.Options{
			Now:                c.Now,
			MaxRecords:         b.MaxRecords,
			MaxBytes:           b.MaxBytes,
			MaxRecordsPerScope: b.MaxRecordsPerScope,
			MaxBytesPerScope:   b.MaxBytesPerScope,
		})
	}, c.Advance)
}

// TestBudgetConcurrent checks that the byte budget and the per-scope quota
// hold exactly under concurrent Begins and Completes of new keys, and that
// every byte is given back when the records go.
func TestBudgetConcurrent(t *testing.T) {
	ctx := context.Background()
	const per = memstore.RecordOverhead + memstore.CompletionReserve + 64 // upper bound of one in-progress record here
	const limit = 50
	s := memstore.New(memstore.Options{MaxBytes: limit * per, MaxRecordsPerScope: limit / 2, Shards: 4})
	var acquired atomic.Int64
	var mu sync.Mutex
	fences := map[string]uint64{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				key := idem.RecordKey(fmt.Sprint(g%2), fmt.Sprintf("%d-%d", g, i))
				b, err := s.Begin(ctx, key, []byte("fp"), time.Minute)
				if errors.Is(err, idem.ErrStoreFull) {
					continue
				}
				if err != nil || b.Outcome != idem.Acquired {
					t.Errorf("Begin = %+v, %v", b, err)
					return
				}
				acquired.Add(1)
				mu.Lock()
				fences[key] = b.Fence
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := acquired.Load(); n > limit || n < limit/2 {
		t.Fatalf("acquired %d records of about %d bytes with a budget of %d records' worth", n, per, limit)
	}
	for key, f := range fences {
		if err := s.Release(ctx, key, f); err != nil {
			t.Fatal(err)
		}
	}
	// Everything was given back: each scope takes its full quota again.
	for _, scope := range []string{"0", "1"} {
		for i := range limit / 2 {
			if b, err := s.Begin(ctx, idem.RecordKey(scope, fmt.Sprint(i)), nil, time.Minute); err != nil || b.Outcome != idem.Acquired {
				t.Fatalf("Begin after release = %+v, %v", b, err)
			}
		}
	}
}
