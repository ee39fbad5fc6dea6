package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// Budget is the set of limits RunBudget asks its store constructor for.
// Zero fields mean no limit. Byte sizes are the store's own accounting
// (each store documents what it counts); RunBudget relies only on results
// of BudgetResult bytes taking much more room than a record without one,
// and on a result of at most 1 KiB always fitting a Complete.
type Budget struct {
	MaxRecords         int
	MaxBytes           int64
	MaxRecordsPerScope int
	MaxBytesPerScope   int64
}

// BudgetResult is the size of the results RunBudget stores.
const BudgetResult = 8 << 10

// RunBudget checks a store's record, byte and per-scope limits (SPEC:
// a full store fails closed for new keys, replays keep working). newStore
// returns a fresh, empty store with the given budget; advance moves its
// clock (required: expiry reclaims room).
//
//   - at the byte limit a new key gets idem.ErrStoreFull (wrapping
//     idem.ErrStoreUnavailable); completed keys still replay byte for byte
//     and in-progress keys still answer in-flight;
//   - a Complete refused for room returns idem.ErrStoreFull, leaves the
//     record held by its fence, and a small result then completes it;
//   - records past retention are reclaimed to make room;
//   - a scope at its record or byte quota is refused while another scope
//     still inserts, and a release gives the room back.
func RunBudget(t *testing.T, newStore func(t testing.TB, b Budget) idem.Store, advance func(time.Duration)) {
	ctx := context.Background()
	const lease, retention = time.Minute, time.Hour
	result := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, BudgetResult) }
	fp := []byte("fingerprint")
	wantFull := func(t *testing.T, s idem.Store, key string) {
		t.Helper()
		b, err := s.Begin(ctx, key, fp, lease)
		if !errors.Is(err, idem.ErrStoreFull) || !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Fatalf("Begin(%q) at the limit = %+v, %v; want ErrStoreFull", key, b, err)
		}
	}
	acquire := func(t *testing.T, s idem.Store, key string) uint64 {
		t.Helper()
		b, err := s.Begin(ctx, key, fp, lease)
		if err != nil || b.Outcome != idem.Acquired {
			t.Fatalf("Begin(%q) = %+v, %v; want acquired", key, b, err)
		}
		return b.Fence
	}
	// fill completes keys prefix0, prefix1, … with results until a Begin
	// is refused, and returns the completed keys' results.
	fill := func(t *testing.T, s idem.Store, prefix string) map[string][]byte {
		t.Helper()
		done := map[string][]byte{}
		for i := 0; ; i++ {
			if i > 1000 {
				t.Fatalf("%d keys stored, the budget never refused one", i)
			}
			key := fmt.Sprintf("%s%d", prefix, i)
			b, err := s.Begin(ctx, key, fp, lease)
			if errors.Is(err, idem.ErrStoreFull) {
				if len(done) < 2 {
					t.Fatalf("refused after %d keys, want at least 2", len(done))
				}
				return done
			}
			if err != nil || b.Outcome != idem.Acquired {
				t.Fatalf("Begin(%q) = %+v, %v", key, b, err)
			}
			res := result(i)
			err = s.Complete(ctx, key, b.Fence, res, retention)
			if errors.Is(err, idem.ErrStoreFull) {
				// Refused for room: still held; a small result fits.
				res = []byte("small")
				err = s.Complete(ctx, key, b.Fence, res, retention)
			}
			if err != nil {
				t.Fatalf("Complete(%q) = %v", key, err)
			}
			done[key] = res
		}
	}
	replays := func(t *testing.T, s idem.Store, done map[string][]byte) {
		t.Helper()
		for key, res := range done {
			b, err := s.Begin(ctx, key, fp, lease)
			if err != nil || b.Outcome != idem.Replay || !bytes.Equal(b.Result, res) {
				t.Fatalf("Begin(%q) at the limit = %v, %v; want a replay of its %d bytes", key, b.Outcome, err, len(res))
			}
			if b, err := s.Begin(ctx, key, []byte("other"), lease); err != nil || b.Outcome != idem.Mismatch {
				t.Fatalf("Begin(%q, other fp) at the limit = %+v, %v; want mismatch", key, b, err)
			}
		}
	}

	t.Run("MaxBytes", func(t *testing.T) {
		s := newStore(t, Budget{MaxBytes: 6 * BudgetResult})
		done := fill(t, s, "k")
		replays(t, s, done)
		wantFull(t, s, "new")
		// Sweep or reclaim: past retention, room comes back.
		advance(retention + time.Second)
		f := acquire(t, s, "new")
		if err := s.Complete(ctx, "new", f, result(1), retention); err != nil {
			t.Fatalf("Complete after reclaim = %v", err)
		}
	})

	t.Run("CompleteRefused", func(t *testing.T) {
		s := newStore(t, Budget{MaxBytes: 3 * BudgetResult})
		f1 := acquire(t, s, "a")
		f2 := acquire(t, s, "b")
		if err := s.Complete(ctx, "a", f1, result(0), retention); err != nil {
			t.Fatalf("Complete(a) = %v", err)
		}
		if err := s.Complete(ctx, "b", f2, result(0), retention); err != nil {
			t.Fatalf("Complete(b) = %v", err)
		}
		f3 := acquire(t, s, "c")
		big := bytes.Repeat([]byte("x"), 2*BudgetResult)
		if err := s.Complete(ctx, "c", f3, big, retention); !errors.Is(err, idem.ErrStoreFull) {
			t.Fatalf("Complete over the budget = %v, want ErrStoreFull", err)
		}
		if b, err := s.Begin(ctx, "c", fp, lease); err != nil || b.Outcome != idem.InFlight || b.Fence != f3 {
			t.Fatalf("Begin(c) after a refused Complete = %+v, %v; want in-flight under fence %d", b, err, f3)
		}
		if err := s.Complete(ctx, "c", f3, []byte("omitted"), retention); err != nil {
			t.Fatalf("Complete with a small result = %v", err)
		}
		if b, err := s.Begin(ctx, "c", fp, lease); err != nil || b.Outcome != idem.Replay || string(b.Result) != "omitted" {
			t.Fatalf("Begin(c) = %+v, %v; want a replay", b, err)
		}
	})

	t.Run("MaxRecordsPerScope", func(t *testing.T) {
		s := newStore(t, Budget{MaxRecordsPerScope: 3})
		var fa []uint64
		for i := range 3 {
			fa = append(fa, acquire(t, s, idem.RecordKey("alice", fmt.Sprint(i))))
		}
		wantFull(t, s, idem.RecordKey("alice", "3"))
		for i := range 3 {
			acquire(t, s, idem.RecordKey("bob", fmt.Sprint(i)))
		}
		wantFull(t, s, idem.RecordKey("bob", "3"))
		// In flight, held keys keep answering.
		if b, err := s.Begin(ctx, idem.RecordKey("alice", "0"), fp, lease); err != nil || b.Outcome != idem.InFlight {
			t.Fatalf("Begin(held) = %+v, %v; want in-flight", b, err)
		}
		// A takeover is not a new record.
		advance(lease + time.Second)
		b, err := s.Begin(ctx, idem.RecordKey("alice", "0"), fp, lease)
		if err != nil || b.Outcome != idem.Acquired || !b.Takeover {
			t.Fatalf("takeover at the quota = %+v, %v", b, err)
		}
		fa[0] = b.Fence
		if err := s.Release(ctx, idem.RecordKey("alice", "1"), fa[1]); err != nil {
			t.Fatal(err)
		}
		acquire(t, s, idem.RecordKey("alice", "3"))
		wantFull(t, s, idem.RecordKey("alice", "4"))
	})

	t.Run("MaxBytesPerScope", func(t *testing.T) {
		s := newStore(t, Budget{MaxBytesPerScope: 4 * BudgetResult})
		done := fill(t, s, idem.RecordKey("mallory", "k"))
		replays(t, s, done)
		// Another scope is not affected.
		other := fill(t, s, idem.RecordKey("alice", "k"))
		replays(t, s, other)
		replays(t, s, done)
	})

	t.Run("MaxRecords", func(t *testing.T) {
		s := newStore(t, Budget{MaxRecords: 2})
		f := acquire(t, s, "a")
		acquire(t, s, "b")
		wantFull(t, s, "c")
		if err := s.Complete(ctx, "a", f, []byte("r"), retention); err != nil {
			t.Fatal(err)
		}
		if b, err := s.Begin(ctx, "a", fp, lease); err != nil || b.Outcome != idem.Replay {
			t.Fatalf("replay at the limit = %+v, %v", b, err)
		}
		advance(retention + time.Second)
		acquire(t, s, "c")
	})
}
