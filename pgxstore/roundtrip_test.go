package pgxstore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// countingDB counts the statements sent through it.
type countingDB struct {
	db pgxstore.DBTX
	n  atomic.Int32
}

func (c *countingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.n.Add(1)
	return c.db.Exec(ctx, sql, args...)
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n.Add(1)
	return c.db.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n.Add(1)
	return c.db.QueryRow(ctx, sql, args...)
}

// TestOneStatementPerStep checks that every step, in every outcome, is one
// statement (one round trip), and that claims are one statement whatever
// the batch size.
func TestOneStatementPerStep(t *testing.T) {
	t.Parallel()
	base := newStore(t, pgxstore.Options{})
	c := &countingDB{db: sharedPool(t)}
	s := base.With(c)
	ctx := context.Background()
	steps := []struct {
		name string
		do   func() error
	}{
		{"Begin/acquired", func() error { _, err := s.Begin(ctx, "k", fpA, time.Minute); return err }},
		{"Begin/in-flight", func() error { _, err := s.Begin(ctx, "k", fpA, time.Minute); return err }},
		{"Begin/mismatch", func() error { _, err := s.Begin(ctx, "k", fpB, time.Minute); return err }},
		{"Extend", func() error {
			rec, _, _ := base.Get(ctx, "k")
			return s.Extend(ctx, "k", rec.Fence, time.Minute)
		}},
		{"Get", func() error { _, _, err := s.Get(ctx, "k"); return err }},
		{"Complete", func() error {
			rec, _, _ := base.Get(ctx, "k")
			return s.Complete(ctx, "k", rec.Fence, []byte("r"), time.Minute)
		}},
		{"Begin/replay", func() error { _, err := s.Begin(ctx, "k", fpA, time.Minute); return err }},
		{"Complete/lease-lost", func() error { _ = s.Complete(ctx, "k", 1, nil, time.Minute); return nil }},
		{"Release", func() error {
			b, _ := base.Begin(ctx, "k2", fpA, time.Minute)
			return s.Release(ctx, "k2", b.Fence)
		}},
		{"Claim", func() error { _, err := s.Claim(ctx, c, "sc", "id"); return err }},
		{"ClaimBatch/1000", func() error {
			ids := make([]string, 1000)
			for i := range ids {
				ids[i] = "id" + time.Duration(i).String()
			}
			_, err := s.ClaimBatch(ctx, c, "sc", ids)
			return err
		}},
	}
	for _, st := range steps {
		c.n.Store(0)
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if n := c.n.Load(); n != 1 {
			t.Errorf("%s sent %d statements, want 1", st.name, n)
		}
	}
	if b, _ := base.Begin(ctx, "k", fpA, time.Minute); b.Outcome != idem.Replay {
		t.Fatalf("final Begin = %v, want replay", b.Outcome)
	}
}
