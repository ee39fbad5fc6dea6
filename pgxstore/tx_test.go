package pgxstore_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// payments is a minimal business flow with same-transaction completion:
// begin on the pool, then in one transaction insert a charge row and
// complete the record; hook runs between the completion and the commit.
type payments struct {
	t       testing.TB
	s       *pgxstore.Store
	k       *idem.Keeper
	charges string // quoted table name
	runs    atomic.Int32
}

func newPayments(t testing.TB, lease time.Duration) *payments {
	s := newStore(t, pgxstore.Options{})
	charges := pgx.Identifier{s.Options().Schema, "charges"}.Sanitize()
	exec(t, `CREATE TABLE `+charges+` (id bigserial PRIMARY KEY, key text NOT NULL, fence bigint NOT NULL)`)
	return &payments{t: t, s: s, k: &idem.Keeper{Store: s, Lease: lease, Retention: time.Hour}, charges: charges}
}

// pay charges once for key. It reports whether the stored result was
// replayed. On a failed commit it releases the lease when release is set
// (the executor survived), and leaves the record to lease expiry otherwise.
func (p *payments) pay(ctx context.Context, key string, release bool, hook func(tx pgx.Tx) error) (replayed bool, err error) {
	a, err := p.k.Begin(ctx, "tenant", key, fpA)
	if err != nil {
		return false, err
	}
	if a.Replayed() {
		if string(a.Result) != "charged" {
			p.t.Errorf("replayed %q, want %q", a.Result, "charged")
		}
		return true, nil
	}
	l := a.Lease
	p.runs.Add(1)
	err = pgx.BeginFunc(ctx, sharedPool(p.t), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+p.charges+` (key, fence) VALUES ($1, $2)`, key, int64(l.Fence())); err != nil {
			return err
		}
		if err := p.s.CompleteTx(ctx, tx, l.Key(), l.Fence(), []byte("charged"), time.Hour); err != nil {
			return err
		}
		if hook != nil {
			return hook(tx)
		}
		return nil
	})
	if err != nil && release {
		if rerr := l.Release(context.Background()); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	return false, err
}

func (p *payments) charged(key string) int {
	return count(p.t, `SELECT count(*) FROM `+p.charges+` WHERE key = $1`, key)
}

var errRollback = errors.New("handler failed")

// TestSameTransactionCompletion checks that the business write and the
// record's completion commit together or not at all.
func TestSameTransactionCompletion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Commit", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		if replayed, err := p.pay(ctx, "k", true, nil); err != nil || replayed {
			t.Fatalf("first pay = %v, %v", replayed, err)
		}
		for range 3 {
			if replayed, err := p.pay(ctx, "k", true, nil); err != nil || !replayed {
				t.Fatalf("retry = replayed %v, %v; want a replay", replayed, err)
			}
		}
		if n := p.charged("k"); n != 1 || p.runs.Load() != 1 {
			t.Fatalf("%d charges, %d runs; want 1, 1", n, p.runs.Load())
		}
	})

	t.Run("Rollback", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		_, err := p.pay(ctx, "k", true, func(pgx.Tx) error { return errRollback })
		if !errors.Is(err, errRollback) {
			t.Fatalf("pay = %v, want the handler's error", err)
		}
		if n := p.charged("k"); n != 0 {
			t.Fatalf("%d charges after rollback, want 0", n)
		}
		if _, found, err := p.s.Get(ctx, idem.RecordKey("tenant", "k")); err != nil || found {
			t.Fatalf("record after rollback and release: found %v, %v; want none", found, err)
		}
		if replayed, err := p.pay(ctx, "k", true, nil); err != nil || replayed {
			t.Fatalf("retry = replayed %v, %v; want an execution", replayed, err)
		}
		if n := p.charged("k"); n != 1 || p.runs.Load() != 2 {
			t.Fatalf("%d charges, %d runs; want 1, 2", n, p.runs.Load())
		}
	})

	t.Run("RollbackThenLeaseExpiry", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, 100*time.Millisecond)
		if _, err := p.pay(ctx, "k", false, func(pgx.Tx) error { return errRollback }); !errors.Is(err, errRollback) {
			t.Fatalf("pay = %v", err)
		}
		rec, found, err := p.s.Get(ctx, idem.RecordKey("tenant", "k"))
		if err != nil || !found || rec.State != idem.StateInProgress {
			t.Fatalf("record after rollback = %+v, %v, %v; want still in progress", rec, found, err)
		}
		if _, err := p.pay(ctx, "k", false, nil); !errors.Is(err, idem.ErrInFlight) {
			t.Fatalf("retry during the lease = %v, want ErrInFlight", err)
		}
		time.Sleep(150 * time.Millisecond)
		if replayed, err := p.pay(ctx, "k", false, nil); err != nil || replayed {
			t.Fatalf("retry after the lease = replayed %v, %v; want an execution", replayed, err)
		}
		if n := p.charged("k"); n != 1 {
			t.Fatalf("%d charges, want 1", n)
		}
	})

	// The connection dies between the business write (and the completion)
	// and the commit: nothing is visible, and the retry executes once.
	for _, release := range []bool{true, false} {
		name := "KilledConnection/ExecutorReleases"
		if !release {
			name = "KilledConnection/ExecutorDied"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := newPayments(t, 150*time.Millisecond)
			_, err := p.pay(ctx, "k", release, func(tx pgx.Tx) error {
				var pid int
				if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
					return err
				}
				var ok bool
				if err := sharedPool(t).QueryRow(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&ok); err != nil || !ok {
					t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
				}
				// The store reports the dead connection as unavailable.
				err := p.s.CompleteTx(ctx, tx, idem.RecordKey("tenant", "k"), 1, nil, time.Hour)
				if !errors.Is(err, idem.ErrStoreUnavailable) {
					t.Errorf("CompleteTx on a killed connection = %v, want ErrStoreUnavailable", err)
				}
				return nil
			})
			if err == nil {
				t.Fatal("pay with a killed connection succeeded")
			}
			if n := p.charged("k"); n != 0 {
				t.Fatalf("%d charges visible after the killed commit, want 0", n)
			}
			if !release {
				time.Sleep(200 * time.Millisecond) // lease expiry
			}
			// A long lease from here on, so that a slow retry on a loaded
			// machine is not taken over by the next one.
			p.k.Lease = time.Minute
			// Concurrent retries: exactly one executes.
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := p.pay(ctx, "k", true, nil); err != nil && !errors.Is(err, idem.ErrInFlight) {
						t.Errorf("retry: %v", err)
					}
				}()
			}
			wg.Wait()
			if replayed, err := p.pay(ctx, "k", true, nil); err != nil || !replayed {
				t.Fatalf("final retry = replayed %v, %v; want a replay", replayed, err)
			}
			if n := p.charged("k"); n != 1 || p.runs.Load() != 2 {
				t.Fatalf("%d charges, %d runs; want 1 charge, 2 runs", n, p.runs.Load())
			}
		})
	}

	// A stale executor (its lease taken over) cannot complete in its
	// transaction, so it rolls its business write back.
	t.Run("StaleExecutorRollsBack", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, 50*time.Millisecond)
		a, err := p.k.Begin(ctx, "tenant", "k", fpA)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(80 * time.Millisecond)
		if replayed, err := p.pay(ctx, "k", true, nil); err != nil || replayed { // takes over
			t.Fatalf("takeover pay = %v, %v", replayed, err)
		}
		err = pgx.BeginFunc(ctx, sharedPool(t), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+p.charges+` (key, fence) VALUES ('k', $1)`, int64(a.Lease.Fence())); err != nil {
				return err
			}
			return p.s.CompleteTx(ctx, tx, a.Lease.Key(), a.Lease.Fence(), []byte("stale"), time.Hour)
		})
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("stale CompleteTx = %v, want ErrLeaseLost", err)
		}
		if n := p.charged("k"); n != 1 {
			t.Fatalf("%d charges, want 1 (the stale write rolled back)", n)
		}
	})
}

// TestTxCompletion checks Options.TxCompletion: a second Complete by the
// fence that completed the record in its transaction succeeds and changes
// nothing; other fences still get ErrLeaseLost.
func TestTxCompletion(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, txc := range []bool{false, true} {
		s := newStore(t, pgxstore.Options{TxCompletion: txc})
		b := mustBegin(t, s, "k", fpA, time.Minute)
		err := pgx.BeginFunc(ctx, sharedPool(t), func(tx pgx.Tx) error {
			return s.CompleteTx(ctx, tx, "k", b.Fence, []byte("in tx"), time.Hour)
		})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Complete(ctx, "k", b.Fence, []byte("after"), time.Minute)
		if txc && err != nil {
			t.Fatalf("TxCompletion: second Complete by the same fence = %v, want nil", err)
		}
		if !txc && !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("strict: second Complete = %v, want ErrLeaseLost", err)
		}
		if err := s.Complete(ctx, "k", b.Fence-1, nil, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("TxCompletion=%v: Complete(other fence) = %v, want ErrLeaseLost", txc, err)
		}
		rec, _, err := s.Get(ctx, "k")
		if err != nil || string(rec.Result) != "in tx" || rec.Remaining < 50*time.Minute {
			t.Fatalf("TxCompletion=%v: record = %+v, %v; want the in-tx result and retention untouched", txc, rec, err)
		}
		// A plain completion still works with the option set.
		b2 := mustBegin(t, s, "k2", fpA, time.Minute)
		if err := s.Complete(ctx, "k2", b2.Fence, []byte("x"), time.Minute); err != nil {
			t.Fatalf("TxCompletion=%v: Complete = %v", txc, err)
		}
		if err := s.Complete(ctx, "missing", 1, nil, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("TxCompletion=%v: Complete(missing) = %v, want ErrLeaseLost", txc, err)
		}
	}
}
