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
		if err := p.s.With(tx).Complete(ctx, l.Key(), l.Fence(), []byte("charged"), time.Hour); err != nil {
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
				err := p.s.With(tx).Complete(ctx, idem.RecordKey("tenant", "k"), 1, nil, time.Hour)
				if !errors.Is(err, idem.ErrStoreUnavailable) {
					t.Errorf("Complete in a tx on a killed connection = %v, want ErrStoreUnavailable", err)
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
			return p.s.CompleteIn(ctx, tx, a.Lease, []byte("stale"))
		})
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("stale CompleteIn = %v, want ErrLeaseLost", err)
		}
		if n := p.charged("k"); n != 1 {
			t.Fatalf("%d charges, want 1 (the stale write rolled back)", n)
		}
	})
}

// TestMarkCompleted checks same-transaction completion through a Keeper:
// the executor completes the record in its business transaction and, once
// that committed, marks its lease completed, so the Keeper-level Complete
// (or Release) that a wrapper such as idemhttp runs afterwards does nothing
// and returns nil. The store itself stays strict (SPEC §2): a second
// Complete of the completed record is refused.
func TestMarkCompleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const scope, key = "tenant", "order-1"

	// inTx runs CompleteIn for l with result in a transaction that charges
	// once, and commits it unless fail is set.
	inTx := func(t *testing.T, s *pgxstore.Store, charges string, l *idem.Lease, result string, fail error) error {
		return pgx.BeginFunc(ctx, sharedPool(t), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO `+charges+` (key, fence) VALUES ($1, $2)`, l.Key(), int64(l.Fence())); err != nil {
				return err
			}
			if err := s.CompleteIn(ctx, tx, l, []byte(result)); err != nil {
				return err
			}
			return fail
		})
	}
	begin := func(t *testing.T, k *idem.Keeper) *idem.Lease {
		t.Helper()
		a, err := k.Begin(ctx, scope, key, fpA)
		if err != nil || a.Replayed() {
			t.Fatalf("Begin = %+v, %v; want a lease", a, err)
		}
		return a.Lease
	}

	t.Run("Commit", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		l := begin(t, p.k)
		if l.Key() != idem.RecordKey(scope, key) {
			t.Fatalf("Lease.Key() = %q, want RecordKey(scope, key)", l.Key())
		}
		if err := inTx(t, p.s, p.charges, l, "in tx", nil); err != nil {
			t.Fatalf("transaction: %v", err)
		}
		l.MarkCompleted()
		// What the wrapper does after the handler returns: nothing, nil.
		if err := l.Complete(ctx, []byte("after")); err != nil {
			t.Fatalf("Lease.Complete after MarkCompleted = %v, want nil", err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Lease.Release after MarkCompleted = %v, want nil", err)
		}
		// The store is strict: the same fence cannot complete again.
		if err := p.s.Complete(ctx, l.Key(), l.Fence(), []byte("again"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("store Complete after complete = %v, want ErrLeaseLost", err)
		}
		rec, found, err := p.s.Get(ctx, l.Key())
		if err != nil || !found || rec.State != idem.StateCompleted || string(rec.Result) != "in tx" ||
			rec.Fence != l.Fence() || rec.Remaining < 50*time.Minute {
			t.Fatalf("record = %+v, %v, %v; want completed in tx, with the Keeper's retention (1 h)", rec, found, err)
		}
		a, err := p.k.Begin(ctx, scope, key, fpA)
		if err != nil || !a.Replayed() || string(a.Result) != "in tx" {
			t.Fatalf("retry = %+v, %v; want the in-tx result replayed", a, err)
		}
		if n := p.charged(l.Key()); n != 1 {
			t.Fatalf("%d charges, want 1", n)
		}
	})

	// Without MarkCompleted the Keeper's Complete reaches the store, which
	// refuses it and leaves the in-tx result alone: the mark is needed.
	t.Run("CommitWithoutMark", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		l := begin(t, p.k)
		if err := inTx(t, p.s, p.charges, l, "in tx", nil); err != nil {
			t.Fatalf("transaction: %v", err)
		}
		if err := l.Complete(ctx, []byte("after")); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Lease.Complete without MarkCompleted = %v, want ErrLeaseLost", err)
		}
		if rec, _, err := p.s.Get(ctx, l.Key()); err != nil || string(rec.Result) != "in tx" {
			t.Fatalf("record = %+v, %v; want the in-tx result", rec, err)
		}
	})

	t.Run("Rollback", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		l := begin(t, p.k)
		if err := inTx(t, p.s, p.charges, l, "in tx", errRollback); !errors.Is(err, errRollback) {
			t.Fatalf("transaction = %v, want the handler's error", err)
		}
		// No MarkCompleted: the lease is released as usual.
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Lease.Release after rollback = %v, want nil", err)
		}
		if _, found, err := p.s.Get(ctx, l.Key()); err != nil || found {
			t.Fatalf("record after rollback and release: found %v, %v; want none", found, err)
		}
		if n := p.charged(l.Key()); n != 0 {
			t.Fatalf("%d charges after rollback, want 0", n)
		}
		l2 := begin(t, p.k) // the retry executes
		if l2.Fence() <= l.Fence() {
			t.Fatalf("retry fence %d, want > %d", l2.Fence(), l.Fence())
		}
		if err := inTx(t, p.s, p.charges, l2, "in tx", nil); err != nil {
			t.Fatalf("retry transaction: %v", err)
		}
		l2.MarkCompleted()
		if err := l2.Complete(ctx, nil); err != nil {
			t.Fatalf("retry Lease.Complete = %v, want nil", err)
		}
		if a, err := p.k.Begin(ctx, scope, key, fpA); err != nil || !a.Replayed() || string(a.Result) != `in tx` {
			t.Fatalf("after the retry = %+v, %v; want a replay", a, err)
		}
		if n := p.charged(l.Key()); n != 1 {
			t.Fatalf("%d charges, want 1", n)
		}
	})

	// idem.Do puts the lease in fn's context; fn completes in its
	// transaction and marks the lease, and Do's own Complete is a no-op.
	t.Run("Do", func(t *testing.T) {
		t.Parallel()
		p := newPayments(t, time.Minute)
		runs := 0
		fn := func(ctx context.Context) (string, error) {
			runs++
			l, ok := idem.LeaseFromContext(ctx)
			if !ok {
				return "", errors.New("no lease in context")
			}
			if err := inTx(t, p.s, p.charges, l, `"in tx"`, nil); err != nil { // JSON, Do's codec
				return "", err
			}
			l.MarkCompleted()
			return "after", nil // Do's Complete does nothing after the mark
		}
		for i, want := range []string{"after", "in tx"} {
			v, replayed, err := idem.Do(ctx, p.k, scope, key, fn)
			if err != nil || replayed != (i > 0) || v != want {
				t.Fatalf("Do #%d = %q, replayed %v, %v; want %q", i, v, replayed, err, want)
			}
		}
		if n := p.charged(idem.RecordKey(scope, key)); runs != 1 || n != 1 {
			t.Fatalf("%d runs, %d charges; want 1, 1", runs, n)
		}
	})
}
