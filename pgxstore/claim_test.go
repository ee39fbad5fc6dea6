package pgxstore_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// claimIn runs Claim in a fresh transaction and commits it (or rolls it back
// when rollback is set).
func claimIn(t testing.TB, s *pgxstore.Store, scope, id string, rollback bool) bool {
	t.Helper()
	ctx := context.Background()
	tx, err := sharedPool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	first, err := s.Claim(ctx, tx, scope, id)
	if err != nil {
		t.Fatalf("Claim(%q, %q): %v", scope, id, err)
	}
	if !rollback {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return first
}

// TestClaimConcurrent: 32 transactions claim one id at once and write an
// effect when first; exactly one proceeds and exactly one effect commits.
func TestClaimConcurrent(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	effects := pgx.Identifier{s.Options().Schema, "effects"}.Sanitize()
	exec(t, `CREATE TABLE `+effects+` (id text NOT NULL)`)
	ctx := context.Background()
	var (
		wg     sync.WaitGroup
		firsts atomic.Int32
	)
	start := make(chan struct{})
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := pgx.BeginFunc(ctx, sharedPool(t), func(tx pgx.Tx) error {
				first, err := s.Claim(ctx, tx, "orders", "evt-1")
				if err != nil || !first {
					return err
				}
				firsts.Add(1)
				_, err = tx.Exec(ctx, `INSERT INTO `+effects+` VALUES ('evt-1')`)
				return err
			})
			if err != nil {
				t.Errorf("consumer: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := firsts.Load(); n != 1 {
		t.Fatalf("%d transactions proceeded, want 1", n)
	}
	if n := count(t, `SELECT count(*) FROM `+effects); n != 1 {
		t.Fatalf("%d effects committed, want 1", n)
	}
}

func TestClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RollbackLeavesUnclaimed", func(t *testing.T) {
		t.Parallel()
		s := newStore(t, pgxstore.Options{})
		if !claimIn(t, s, "sc", "id", true) {
			t.Fatal("first claim (rolled back) not first")
		}
		if !claimIn(t, s, "sc", "id", false) {
			t.Fatal("claim after a rolled-back claim not first")
		}
		if claimIn(t, s, "sc", "id", false) {
			t.Fatal("claim after a committed claim is first")
		}
	})

	t.Run("DuplicateKeepsTransactionUsable", func(t *testing.T) {
		t.Parallel()
		s := newStore(t, pgxstore.Options{})
		claimIn(t, s, "sc", "id", false)
		err := pgx.BeginFunc(ctx, sharedPool(t), func(tx pgx.Tx) error {
			first, err := s.Claim(ctx, tx, "sc", "id")
			if err != nil || first {
				t.Fatalf("duplicate Claim = %v, %v", first, err)
			}
			fresh, err := s.ClaimBatch(ctx, tx, "sc", []string{"id", "id2"})
			if err != nil || !slices.Equal(fresh, []string{"id2"}) {
				t.Fatalf("ClaimBatch = %q, %v", fresh, err)
			}
			var one int
			return tx.QueryRow(ctx, `SELECT 1`).Scan(&one) // the tx is not aborted
		})
		if err != nil {
			t.Fatalf("transaction after duplicates: %v", err)
		}
	})

	t.Run("ScopesAndBytes", func(t *testing.T) {
		t.Parallel()
		s := newStore(t, pgxstore.Options{})
		ids := []string{"a", "A", "a\x00b", "\xff\xfe", "é", string(make([]byte, 300))}
		for _, id := range ids {
			if !claimIn(t, s, "one", id, false) {
				t.Fatalf("Claim(one, %q) not first", id)
			}
		}
		for _, id := range ids {
			if claimIn(t, s, "one", id, false) {
				t.Fatalf("Claim(one, %q) again is first", id)
			}
			if !claimIn(t, s, "two", id, false) {
				t.Fatalf("Claim(two, %q) not first: scopes must not share claims", id)
			}
		}
	})

	t.Run("Batch", func(t *testing.T) {
		t.Parallel()
		s := newStore(t, pgxstore.Options{})
		p := sharedPool(t)
		if fresh, err := s.ClaimBatch(ctx, p, "sc", []string{"a", "b"}); err != nil || !slices.Equal(fresh, []string{"a", "b"}) {
			t.Fatalf("ClaimBatch(a, b) = %q, %v", fresh, err)
		}
		fresh, err := s.ClaimBatch(ctx, p, "sc", []string{"c", "a", "d\x00", "c", "b", "e"})
		if err != nil || !slices.Equal(fresh, []string{"c", "d\x00", "e"}) {
			t.Fatalf("ClaimBatch = %q, %v; want [c d\\x00 e] in input order", fresh, err)
		}
		if fresh, err := s.ClaimBatch(ctx, p, "sc", nil); err != nil || fresh != nil {
			t.Fatalf("ClaimBatch(nil) = %q, %v", fresh, err)
		}
		if _, err := s.ClaimBatch(ctx, p, "sc", []string{"f", ""}); !errors.Is(err, idem.ErrInvalidKey) {
			t.Fatalf("ClaimBatch with an empty id = %v, want ErrInvalidKey", err)
		}
		if first, err := s.Claim(ctx, p, "sc", "f"); err != nil || !first {
			t.Fatalf("f after the refused batch = %v, %v; want first (nothing claimed)", first, err)
		}
		if _, err := s.Claim(ctx, p, "sc", ""); !errors.Is(err, idem.ErrInvalidKey) {
			t.Fatalf("Claim(\"\") = %v, want ErrInvalidKey", err)
		}
		// A batch in a rolled-back transaction claims nothing.
		tx, err := p.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if fresh, err := s.ClaimBatch(ctx, tx, "sc", []string{"g", "h"}); err != nil || len(fresh) != 2 {
			t.Fatalf("ClaimBatch in tx = %q, %v", fresh, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if fresh, err := s.ClaimBatch(ctx, p, "sc", []string{"g", "h", "a"}); err != nil || !slices.Equal(fresh, []string{"g", "h"}) {
			t.Fatalf("ClaimBatch after rollback = %q, %v", fresh, err)
		}
	})

	t.Run("Retention", func(t *testing.T) {
		t.Parallel()
		// Long enough that no check below races the expiry on a loaded
		// machine, short enough to sleep through twice.
		const retention = 500 * time.Millisecond
		s := newStore(t, pgxstore.Options{ClaimRetention: retention})
		p := sharedPool(t)
		if !claimIn(t, s, "sc", "x", false) || claimIn(t, s, "sc", "x", false) {
			t.Fatal("claim, duplicate: want first, then not")
		}
		if fresh, _ := s.ClaimBatch(ctx, p, "sc", []string{"y"}); len(fresh) != 1 {
			t.Fatal("batch claim of y not fresh")
		}
		time.Sleep(retention + 100*time.Millisecond)
		// Past retention the id counts as new, before any sweep.
		if !claimIn(t, s, "sc", "x", false) {
			t.Fatal("claim past retention is not first")
		}
		if fresh, err := s.ClaimBatch(ctx, p, "sc", []string{"y", "x"}); err != nil || !slices.Equal(fresh, []string{"y"}) {
			t.Fatalf("batch past retention = %q, %v; want [y]", fresh, err)
		}
		time.Sleep(retention + 100*time.Millisecond)
		n, err := s.Sweep(ctx)
		if err != nil || n != 2 {
			t.Fatalf("Sweep = %d, %v; want the 2 expired claims", n, err)
		}
		claims := pgx.Identifier{s.Options().Schema, s.Options().ClaimTable}.Sanitize()
		if n := count(t, `SELECT count(*) FROM `+claims); n != 0 {
			t.Fatalf("%d claims left after sweep", n)
		}
	})
}
