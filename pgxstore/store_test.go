package pgxstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

var (
	fpA = idem.Fingerprint([]byte("A"))
	fpB = idem.Fingerprint([]byte("B"))
)

func mustBegin(t testing.TB, s *pgxstore.Store, key string, fp []byte, lease time.Duration) idem.Begun {
	t.Helper()
	b, err := s.Begin(context.Background(), key, fp, lease)
	if err != nil {
		t.Fatalf("Begin(%q): %v", key, err)
	}
	return b
}

// TestBeginRules checks the PostgreSQL-specific fence and clock rules of
// Begin that the shared suite leaves to each store.
func TestBeginRules(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	ctx := context.Background()
	const short = 40 * time.Millisecond

	t.Run("FreshFenceIsDatabaseClockMicros", func(t *testing.T) {
		t.Parallel()
		before := time.Now().UnixMicro()
		b := mustBegin(t, s, "fresh", fpA, time.Minute)
		after := time.Now().UnixMicro()
		// Same host: the database clock and ours agree within a second.
		if b.Outcome != idem.Acquired || int64(b.Fence) < before-1e6 || int64(b.Fence) > after+1e6 {
			t.Fatalf("Begin = %+v, want acquired with fence in [%d, %d] ± 1 s", b, before, after)
		}
	})
	t.Run("ExpiredLeaseDifferentFingerprintIsMismatch", func(t *testing.T) {
		t.Parallel()
		b := mustBegin(t, s, "lapsed", fpA, short)
		time.Sleep(2 * short)
		if got := mustBegin(t, s, "lapsed", fpB, time.Minute); got.Outcome != idem.Mismatch || got.Fence != 0 {
			t.Fatalf("Begin(other fp, lease expired) = %+v, want mismatch", got)
		}
		got := mustBegin(t, s, "lapsed", fpA, time.Minute)
		if got.Outcome != idem.Acquired || !got.Takeover || got.Fence != b.Fence+1 {
			t.Fatalf("Begin(same fp, lease expired) = %+v, want takeover with fence %d", got, b.Fence+1)
		}
	})
	t.Run("CompletedPastRetentionIsFreshForAnyFingerprint", func(t *testing.T) {
		t.Parallel()
		b := mustBegin(t, s, "retained", fpA, time.Minute)
		if err := s.Complete(ctx, "retained", b.Fence, []byte("r"), short); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * short)
		got := mustBegin(t, s, "retained", fpB, time.Minute)
		if got.Outcome != idem.Acquired || got.Takeover || got.Fence <= b.Fence {
			t.Fatalf("Begin(other fp, past retention) = %+v, want fresh acquire with fence > %d", got, b.Fence)
		}
	})
	t.Run("TakeoverBeyondClock", func(t *testing.T) {
		t.Parallel()
		// A fence far above the clock (many takeovers) keeps growing by one
		// after the record completes and expires: max(prev+1, clock µs).
		b := mustBegin(t, s, "high", fpA, time.Minute)
		high := b.Fence + 1<<40
		exec(t, fmt.Sprintf(`UPDATE %s SET fence = $1 WHERE key = $2`, pgx.Identifier{s.Options().Schema, s.Options().Table}.Sanitize()), int64(high), []byte("high"))
		if err := s.Complete(ctx, "high", high, nil, time.Microsecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
		got := mustBegin(t, s, "high", fpA, time.Minute)
		if got.Outcome != idem.Acquired || got.Fence != high+1 {
			t.Fatalf("Begin after expiry = %+v, want fence %d", got, high+1)
		}
	})
	t.Run("CompleteTwiceIsLeaseLost", func(t *testing.T) {
		t.Parallel()
		b := mustBegin(t, s, "twice", fpA, time.Minute)
		if err := s.Complete(ctx, "twice", b.Fence, []byte("1"), time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "twice", b.Fence, []byte("2"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("second Complete = %v, want ErrLeaseLost", err)
		}
		if err := s.Release(ctx, "twice", b.Fence); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Release(completed) = %v, want ErrLeaseLost", err)
		}
		if got := mustBegin(t, s, "twice", fpA, time.Minute); got.Outcome != idem.Replay || !bytes.Equal(got.Result, []byte("1")) {
			t.Fatalf("Begin = %+v, want replay of the first result", got)
		}
	})
	t.Run("EmptyKey", func(t *testing.T) {
		t.Parallel()
		if _, err := s.Begin(ctx, "", fpA, time.Minute); !errors.Is(err, idem.ErrInvalidKey) {
			t.Fatalf("Begin(\"\") = %v, want ErrInvalidKey", err)
		}
	})
}

// TestConcurrentBeginOnExpired races many Begins against records in every
// acquirable state, which exercises the statement's re-run after a snapshot
// race: exactly one acquires each key, and nobody gets an error.
func TestConcurrentBeginOnExpired(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	ctx := context.Background()
	const n = 24
	keys := []string{"new", "lapsed", "expired", "released"}
	var prev [4]uint64
	b := mustBegin(t, s, "lapsed", fpA, time.Millisecond)
	prev[1] = b.Fence
	b = mustBegin(t, s, "expired", fpA, time.Minute)
	prev[2] = b.Fence
	if err := s.Complete(ctx, "expired", b.Fence, []byte("x"), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	b = mustBegin(t, s, "released", fpA, time.Minute)
	prev[3] = b.Fence
	if err := s.Release(ctx, "released", b.Fence); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	for i, k := range keys {
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			acquired []idem.Begun
		)
		start := make(chan struct{})
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				b, err := s.Begin(ctx, k, fpA, time.Minute)
				if err != nil {
					t.Errorf("Begin(%s): %v", k, err)
					return
				}
				if b.Outcome == idem.Acquired {
					mu.Lock()
					acquired = append(acquired, b)
					mu.Unlock()
				} else if b.Outcome != idem.InFlight {
					t.Errorf("Begin(%s) = %v, want acquired or in-flight", k, b.Outcome)
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(acquired) != 1 {
			t.Fatalf("%s: %d acquired, want exactly 1", k, len(acquired))
		}
		if acquired[0].Fence <= prev[i] || acquired[0].Takeover != (k == "lapsed") {
			t.Fatalf("%s: acquired %+v after fence %d", k, acquired[0], prev[i])
		}
	}
}

// TestMigrate checks that Migrate is idempotent, safe to run concurrently,
// records its version, and quotes odd names.
func TestMigrate(t *testing.T) {
	t.Parallel()
	p := sharedPool(t)
	ctx := context.Background()
	schema := schemaName(t) + ` "odd" name`
	dropSchema(t, p, schema)
	o := pgxstore.Options{Schema: schema, Table: `records; DROP TABLE x`, ClaimTable: `claims "q"`}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pgxstore.New(p, o).Migrate(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	s := pgxstore.New(p, o)
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if n := count(t, `SELECT count(*) FROM `+pgx.Identifier{schema, "idem_migrations"}.Sanitize()); n != pgxstore.SchemaVersion {
		t.Fatalf("%d migration rows, want %d", n, pgxstore.SchemaVersion)
	}
	b := mustBegin(t, s, "k", fpA, time.Minute)
	if b.Outcome != idem.Acquired {
		t.Fatalf("Begin on odd names = %+v", b)
	}
	// A second table set in the same schema migrates independently.
	o2 := o
	o2.Table, o2.ClaimTable = "second", "second_claims"
	if err := pgxstore.New(p, o2).Migrate(ctx); err != nil {
		t.Fatalf("Migrate second table set: %v", err)
	}
	// Two record tables may share one claims table.
	o4 := o
	o4.Table = "third"
	if err := pgxstore.New(p, o4).Migrate(ctx); err != nil {
		t.Fatalf("Migrate with a shared claims table: %v", err)
	}
	// A database ahead of this package is refused, not downgraded.
	exec(t, `INSERT INTO `+pgx.Identifier{schema, "idem_migrations"}.Sanitize()+` (table_name, version) VALUES ($1, 999)`, o.Table)
	if err := s.Migrate(ctx); !errors.Is(err, pgxstore.ErrSchemaNewer) || errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Migrate on a newer schema version = %v, want ErrSchemaNewer", err)
	}
	// Migrate inside a caller's transaction uses a savepoint.
	tx, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	o3 := pgxstore.Options{Schema: schema, Table: "in_tx", ClaimTable: "in_tx_claims"}
	if err := pgxstore.New(tx, o3).Migrate(ctx); err != nil {
		t.Fatalf("Migrate in tx: %v", err)
	}
}

// TestMigrateNeedsBegin checks the error for a DBTX that cannot begin.
func TestMigrateNeedsBegin(t *testing.T) {
	t.Parallel()
	var db onlyDBTX
	if err := pgxstore.New(db, pgxstore.Options{}).Migrate(context.Background()); err == nil {
		t.Fatal("Migrate on a DBTX without Begin succeeded")
	}
}

type onlyDBTX struct{ pgxstore.DBTX }

// TestUnavailable checks that a store that cannot reach its server fails
// closed with ErrStoreUnavailable on every step, and that a done context
// returns its own error without a round trip.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig("postgres://idem@127.0.0.1:1/idem?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s := pgxstore.New(p, pgxstore.Options{})
	ctx := context.Background()
	steps := map[string]func(context.Context) error{
		"Begin": func(ctx context.Context) error {
			_, err := s.Begin(ctx, "k", fpA, time.Second)
			return err
		},
		"Complete": func(ctx context.Context) error { return s.Complete(ctx, "k", 1, nil, time.Second) },
		"Release":  func(ctx context.Context) error { return s.Release(ctx, "k", 1) },
		"Extend":   func(ctx context.Context) error { return s.Extend(ctx, "k", 1, time.Second) },
		"Get": func(ctx context.Context) error {
			_, _, err := s.Get(ctx, "k")
			return err
		},
		"Sweep": func(ctx context.Context) error {
			_, err := s.Sweep(ctx)
			return err
		},
		"Claim": func(ctx context.Context) error {
			_, err := s.Claim(ctx, p, "scope", "id")
			return err
		},
		"ClaimBatch": func(ctx context.Context) error {
			_, err := s.ClaimBatch(ctx, p, "scope", []string{"a"})
			return err
		},
		"Migrate": s.Migrate,
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for name, step := range steps {
		t.Run(name, func(t *testing.T) {
			if err := step(ctx); !errors.Is(err, idem.ErrStoreUnavailable) {
				t.Fatalf("%s on an unreachable server = %v, want ErrStoreUnavailable", name, err)
			}
			if err := step(canceled); !errors.Is(err, context.Canceled) {
				t.Fatalf("%s with a canceled context = %v, want context.Canceled", name, err)
			}
		})
	}
}

// TestServerErrorsAreNotUnavailable checks that a schema fault (no tables)
// surfaces as the server error, not as a transient outage.
func TestServerErrorsAreNotUnavailable(t *testing.T) {
	t.Parallel()
	s := pgxstore.New(sharedPool(t), pgxstore.Options{Schema: schemaName(t)}) // never migrated
	_, err := s.Begin(context.Background(), "k", fpA, time.Second)
	if err == nil || errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin on a missing table = %v, want a non-transient server error", err)
	}
}

// TestSweepIsBounded checks that one DeleteExpired removes at most
// SweepBatch rows per table, that Sweep drains the rest in batches, and that
// live records, lapsed leases younger than Abandon and fresh claims
// stay.
func TestSweepIsBounded(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{SweepBatch: 100, Abandon: time.Hour, ClaimRetention: time.Hour})
	o := s.Options()
	records := pgx.Identifier{o.Schema, o.Table}.Sanitize()
	claims := pgx.Identifier{o.Schema, o.ClaimTable}.Sanitize()
	ctx := context.Background()
	// 250 completed and expired, 30 abandoned two hours ago, 20 lapsed a
	// minute ago, 10 live, 10 completed and retained.
	exec(t, `INSERT INTO `+records+` (key, fingerprint, fence, state, result, acquired_at, expires_at)
SELECT convert_to('done' || g, 'UTF8'), ''::bytea, g, 2, ''::bytea, now() - interval '2 days', now() - interval '1 day' FROM generate_series(1, 250) g
UNION ALL SELECT convert_to('abandoned' || g, 'UTF8'), ''::bytea, g, 1, NULL::bytea, now() - interval '3 hours', now() - interval '2 hours' FROM generate_series(1, 30) g
UNION ALL SELECT convert_to('lapsed' || g, 'UTF8'), ''::bytea, g, 1, NULL::bytea, now() - interval '2 minutes', now() - interval '1 minute' FROM generate_series(1, 20) g
UNION ALL SELECT convert_to('live' || g, 'UTF8'), ''::bytea, g, 1, NULL::bytea, now(), now() + interval '1 hour' FROM generate_series(1, 10) g
UNION ALL SELECT convert_to('kept' || g, 'UTF8'), ''::bytea, g, 2, ''::bytea, now(), now() + interval '1 hour' FROM generate_series(1, 10) g`)
	exec(t, `INSERT INTO `+claims+` (scope, id, claimed_at)
SELECT ''::bytea, convert_to('old' || g, 'UTF8'), now() - interval '2 hours' FROM generate_series(1, 150) g
UNION ALL SELECT ''::bytea, convert_to('new' || g, 'UTF8'), now() FROM generate_series(1, 5) g`)

	n, err := s.DeleteExpired(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 200 {
		t.Fatalf("DeleteExpired = %d, want 100 records + 100 claims", n)
	}
	n, err = s.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 250+30-100+150-100 {
		t.Fatalf("Sweep = %d, want %d", n, 250+30-100+150-100)
	}
	if got := count(t, `SELECT count(*) FROM `+records); got != 40 {
		t.Fatalf("%d records left, want 40 (lapsed, live, kept)", got)
	}
	if got := count(t, `SELECT count(*) FROM `+claims); got != 5 {
		t.Fatalf("%d claims left, want 5", got)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("Sweep again = %d, %v; want 0", n, err)
	}
}

// TestBeginRaceReruns forces the two races the begin statement detects and
// re-runs: the conflicting row committed after the statement's snapshot (no
// row in the snapshot), and a takeover committed after it (the snapshot row
// looks acquirable). Either way the waiting Begin must answer in-flight with
// the new holder's fence, not fail and not acquire.
func TestBeginRaceReruns(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	p := sharedPool(t)
	ctx := context.Background()
	lapsed := mustBegin(t, s, "lapsed", fpA, time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	for _, tc := range []struct {
		key      string
		takeover bool
	}{
		{"new", false},
		{"lapsed", true},
	} {
		t.Run(tc.key, func(t *testing.T) {
			tx, err := p.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			held, err := s.With(tx).Begin(ctx, tc.key, fpA, time.Minute)
			if err != nil || held.Outcome != idem.Acquired || held.Takeover != tc.takeover {
				t.Fatalf("Begin in tx = %+v, %v", held, err)
			}
			if tc.takeover && held.Fence != lapsed.Fence+1 {
				t.Fatalf("takeover fence %d, want %d", held.Fence, lapsed.Fence+1)
			}
			type answer struct {
				b   idem.Begun
				err error
			}
			got := make(chan answer, 1)
			go func() {
				b, err := s.Begin(ctx, tc.key, fpA, time.Minute)
				got <- answer{b, err}
			}()
			// Let the second Begin take its snapshot and block on the row.
			deadline := time.Now().Add(5 * time.Second)
			for count(t, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0`, s.Options().Schema) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the second Begin never waited on the row lock")
				}
				time.Sleep(2 * time.Millisecond)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			a := <-got
			if a.err != nil || a.b.Outcome != idem.InFlight || a.b.Fence != held.Fence {
				t.Fatalf("racing Begin = %+v, %v; want in-flight with fence %d", a.b, a.err, held.Fence)
			}
		})
	}
}
