package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// walLSN returns the cluster's current WAL insert position in bytes.
func walLSN(t testing.TB) int64 {
	t.Helper()
	var n int64
	if err := sharedPool(t).QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReplayWritesNothing checks that a Begin answered from a live row (a
// replay, an in-flight lease, a mismatch) locks, inserts and updates
// nothing: it takes no transaction id, leaves the row's xmin, xmax and ctid
// as they were, and 1,000 of them write no WAL; a Begin on a fresh key does
// all of those. Not parallel: the WAL position is the cluster's. On a
// cluster shared with other test processes the WAL check is repeated until
// one window of 1,000 replays saw no WAL from anyone.
func TestReplayWritesNothing(t *testing.T) {
	s := newStore(t, pgxstore.Options{})
	p := sharedPool(t)
	ctx := context.Background()
	o := s.Options()
	records := pgx.Identifier{o.Schema, o.Table}.Sanitize()
	b := mustBegin(t, s, "done", fpA, time.Minute)
	if err := s.Complete(ctx, "done", b.Fence, []byte("stored result"), time.Hour); err != nil {
		t.Fatal(err)
	}
	busy := mustBegin(t, s, "busy", fpA, time.Hour)
	type probe struct {
		key  string
		fp   []byte
		want idem.BeginOutcome
	}
	probes := []probe{{"done", fpA, idem.Replay}, {"busy", fpA, idem.InFlight}, {"done", fpB, idem.Mismatch}, {"busy", fpB, idem.Mismatch}}
	check := func(db pgxstore.DBTX) {
		t.Helper()
		for _, pr := range probes {
			got, err := s.With(db).Begin(ctx, pr.key, pr.fp, time.Minute)
			if err != nil || got.Outcome != pr.want {
				t.Fatalf("Begin(%s) = %+v, %v; want %v", pr.key, got, err, pr.want)
			}
			if pr.want == idem.Replay && string(got.Result) != "stored result" {
				t.Fatalf("replay result %q", got.Result)
			}
			if pr.want == idem.InFlight && pr.fp != nil && string(pr.fp) == string(fpA) && (got.Fence != busy.Fence || got.LeaseLeft <= 0) {
				t.Fatalf("in-flight answer %+v, want fence %d and time left", got, busy.Fence)
			}
		}
	}
	// Warm up: the first reads of fresh rows may set hint bits or prune the
	// page, which is not the statement's doing.
	for range 5 {
		check(p)
	}

	rowState := func() string {
		var st string
		if err := p.QueryRow(ctx, `SELECT string_agg(key::text || ' ' || xmin::text || ' ' || xmax::text || ' ' || ctid::text, '; ' ORDER BY key) FROM `+records).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := rowState()

	// No transaction id: run the probes in one explicit transaction and ask.
	tx, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check(tx)
	var xid *string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if xid != nil {
		t.Fatalf("replay, in-flight and mismatch Begins assigned transaction id %s", *xid)
	}
	if got := mustBegin(t, s.With(tx), "fresh-in-tx", fpA, time.Minute); got.Outcome != idem.Acquired {
		t.Fatalf("fresh Begin in tx = %+v", got)
	}
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id_if_assigned()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if xid == nil {
		t.Fatal("a fresh Begin assigned no transaction id: the probe cannot see writes")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// No WAL: 1,000 answers from live rows.
	var deltas []int64
	for attempt := 0; attempt < 20; attempt++ {
		w0 := walLSN(t)
		for range 250 {
			check(p)
		}
		d := walLSN(t) - w0
		deltas = append(deltas, d)
		if d == 0 {
			break
		}
	}
	if deltas[len(deltas)-1] != 0 {
		t.Fatalf("every window of 1,000 replay/in-flight/mismatch Begins saw WAL written: %v bytes", deltas)
	}
	if after := rowState(); after != before {
		t.Fatalf("rows changed by reads:\n before %s\n after  %s", before, after)
	}
	// The contrast: fresh keys write.
	w0 := walLSN(t)
	for i := range 20 {
		if got := mustBegin(t, s, fmt.Sprintf("fresh%d", i), fpA, time.Minute); got.Outcome != idem.Acquired {
			t.Fatalf("fresh Begin = %+v", got)
		}
	}
	if d := walLSN(t) - w0; d <= 0 {
		t.Fatalf("20 fresh Begins wrote %d bytes of WAL, want > 0", d)
	}
	t.Logf("WAL bytes per window of 1,000 reads, until a quiet one: %v", deltas)
}

// TestConcurrentBeginOneKey races many goroutines on one key, round after
// round, in each state a key can be in: exactly one acquires (and, on an
// expired lease, exactly one takes over with fence+1); every other Begin is
// in-flight or (once the winner completed) a replay, and none fails.
func TestConcurrentBeginOneKey(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	ctx := context.Background()
	const goroutines, rounds = 40, 12
	for round := range rounds {
		key := fmt.Sprintf("k%d", round)
		var prev uint64
		switch round % 3 {
		case 1: // an expired lease: takeover
			prev = mustBegin(t, s, key, fpA, time.Millisecond).Fence
			time.Sleep(3 * time.Millisecond)
		case 2: // completed past retention: fresh
			prev = mustBegin(t, s, key, fpA, time.Minute).Fence
			if err := s.Complete(ctx, key, prev, []byte("old"), time.Millisecond); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Millisecond)
		}
		var (
			wg                          sync.WaitGroup
			acquired, inflight, replays atomic.Int32
			winner                      atomic.Pointer[idem.Begun]
		)
		start := make(chan struct{})
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				b, err := s.Begin(ctx, key, fpA, time.Minute)
				if err != nil {
					t.Errorf("round %d: Begin: %v", round, err)
					return
				}
				switch b.Outcome {
				case idem.Acquired:
					acquired.Add(1)
					winner.Store(&b)
					if err := s.Complete(ctx, key, b.Fence, []byte("new"), time.Hour); err != nil {
						t.Errorf("round %d: Complete: %v", round, err)
					}
				case idem.InFlight:
					inflight.Add(1)
				case idem.Replay:
					replays.Add(1)
					if string(b.Result) != "new" {
						t.Errorf("round %d: replay of %q", round, b.Result)
					}
				default:
					t.Errorf("round %d: Begin = %v", round, b.Outcome)
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := acquired.Load(); n != 1 {
			t.Fatalf("round %d: %d acquired, want exactly 1 (in-flight %d, replays %d)", round, n, inflight.Load(), replays.Load())
		}
		w := winner.Load()
		switch round % 3 {
		case 0:
			if w.Takeover {
				t.Fatalf("round %d: fresh key acquired as takeover", round)
			}
		case 1:
			if !w.Takeover || w.Fence != prev+1 {
				t.Fatalf("round %d: takeover %+v, want fence %d", round, *w, prev+1)
			}
		case 2:
			if w.Takeover || w.Fence <= prev {
				t.Fatalf("round %d: re-acquire %+v, want fresh with fence > %d", round, *w, prev)
			}
		}
	}
}

// TestCompletionsAreHOT checks that Complete updates the record in place: no
// index covers a column it changes, so after a load at least 90% of the
// updates are heap-only (HOT) and the indexes hold one entry per record.
func TestCompletionsAreHOT(t *testing.T) {
	t.Parallel()
	s := newStore(t, pgxstore.Options{})
	o := s.Options()
	p := sharedPool(t)
	ctx := context.Background()
	rel := pgx.Identifier{o.Schema, o.Table}.Sanitize()
	exec(t, `ALTER TABLE `+rel+` SET (autovacuum_enabled = off)`)
	const n, workers = 1000, 4
	result := make([]byte, 256)
	// Dedicated connections, so that their statistics can be flushed on
	// demand (an idle pooled backend flushes them only every 10 s).
	conns := make([]*pgx.Conn, workers)
	for w := range conns {
		c, err := pgx.ConnectConfig(ctx, p.Config().ConnConfig.Copy())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		conns[w] = c
	}
	var wg sync.WaitGroup
	for w, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sw := s.With(c)
			for i := w; i < n; i += workers {
				k := fmt.Sprintf("load/%d", i)
				b, err := sw.Begin(ctx, k, fpA, time.Minute)
				if err == nil {
					err = sw.Complete(ctx, k, b.Fence, result, time.Hour)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		if _, err := c.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			t.Fatal(err)
		}
	}
	var upd, hot int64
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := p.QueryRow(ctx, `SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = $1::regclass`, rel).Scan(&upd, &hot); err != nil {
			t.Fatal(err)
		}
		if upd >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if upd < n {
		t.Fatalf("statistics show %d updates after %d completions", upd, n)
	}
	if float64(hot) < 0.9*float64(upd) {
		t.Fatalf("%d of %d updates were HOT, want ≥ 90%%", hot, upd)
	}
	var idx int64
	if err := p.QueryRow(ctx, `SELECT pg_indexes_size($1::regclass)`, rel).Scan(&idx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d of %d updates HOT; indexes %d bytes per record", hot, upd, idx/n)
}

// v1Schema is the schema of version 1, as released.
const v1Schema = `CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.idem_migrations (
	table_name text NOT NULL, version int NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (table_name, version));
CREATE TABLE %[1]s.idem_records (
	key bytea PRIMARY KEY, fingerprint bytea NOT NULL, fence bigint NOT NULL,
	state smallint NOT NULL CHECK (state IN (1, 2)), takeover boolean NOT NULL DEFAULT false,
	result bytea, acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX idem_records_expires ON %[1]s.idem_records (expires_at);
CREATE TABLE %[1]s.idem_claims (scope bytea NOT NULL, id bytea NOT NULL, claimed_at timestamptz NOT NULL, PRIMARY KEY (scope, id));
CREATE INDEX idem_claims_claimed ON %[1]s.idem_claims USING brin (claimed_at);
INSERT INTO %[1]s.idem_migrations (table_name, version) VALUES ('idem_records', 1);
INSERT INTO %[1]s.idem_records (key, fingerprint, fence, state, result, acquired_at, expires_at)
SELECT convert_to('done' || g, 'UTF8'), $$\x01$$::bytea, g, 2, convert_to('r' || g, 'UTF8'), now() - interval '1 minute', now() + interval '1 hour' FROM generate_series(1, 5000) g
UNION ALL SELECT convert_to('old' || g, 'UTF8'), $$\x01$$::bytea, g, 2, ''::bytea, now() - interval '2 days', now() - interval '1 day' FROM generate_series(1, 300) g`

// indexes returns the valid and invalid index names of the records table.
func indexes(t testing.TB, schema string) string {
	t.Helper()
	var s string
	err := sharedPool(t).QueryRow(context.Background(), `SELECT string_agg(c.relname || CASE WHEN i.indisvalid THEN '' ELSE ' (invalid)' END, ', ' ORDER BY c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND i.indrelid = (quote_ident($1) || '.idem_records')::regclass`, schema).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMigrateOldSchema moves a version-1 table holding data forward while
// requests keep running on it, after a first attempt that was interrupted
// while building its index concurrently (leaving an invalid index behind).
func TestMigrateOldSchema(t *testing.T) {
	p := sharedPool(t)
	ctx := context.Background()
	schema := schemaName(t)
	dropSchema(t, p, schema)
	exec(t, fmt.Sprintf(v1Schema, pgx.Identifier{schema}.Sanitize()))
	s := pgxstore.New(p, pgxstore.Options{Schema: schema})

	// A writer's open transaction makes CREATE INDEX CONCURRENTLY wait; a
	// deadline interrupts it there.
	tx, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if got := mustBegin(t, s.With(tx), "writer", fpA, time.Minute); got.Outcome != idem.Acquired {
		t.Fatalf("Begin in tx = %+v", got)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err = s.Migrate(short)
	cancel()
	if err == nil {
		t.Fatal("Migrate finished while a writer's transaction was open")
	}
	if got := indexes(t, schema); !strings.Contains(got, "idem_records_acquired (invalid)") {
		t.Logf("after the interrupted Migrate: %s (the build was interrupted before it created the index)", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Traffic keeps running during the migration.
	stop := make(chan struct{})
	var (
		wg  sync.WaitGroup
		ops atomic.Int64
	)
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("live/%d/%d", w, i)
				b, err := s.Begin(ctx, k, fpA, time.Minute)
				if err == nil {
					err = s.Complete(ctx, k, b.Fence, []byte("x"), time.Hour)
				}
				if err == nil {
					var r idem.Begun
					r, err = s.Begin(ctx, fmt.Sprintf("done%d", i%5000+1), []byte{1}, time.Minute)
					if err == nil && (r.Outcome != idem.Replay || string(r.Result) != fmt.Sprintf("r%d", i%5000+1)) {
						err = fmt.Errorf("old record answered %+v", r)
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
				ops.Add(1)
			}
		}()
	}
	var wgm sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wgm.Add(1)
		go func() { defer wgm.Done(); errs <- s.Migrate(ctx) }()
	}
	wgm.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Migrate: %v", err)
		}
	}
	if got := indexes(t, schema); got != "idem_records_acquired, idem_records_pkey" {
		t.Fatalf("indexes after Migrate: %s", got)
	}
	if n := count(t, `SELECT max(version) FROM `+pgx.Identifier{schema, "idem_migrations"}.Sanitize()); n != pgxstore.SchemaVersion {
		t.Fatalf("version %d, want %d", n, pgxstore.SchemaVersion)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 300 {
		t.Fatalf("Sweep after Migrate = %d, %v; want the 300 expired records", n, err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	t.Logf("%d begin/complete/replay rounds ran during the migration", ops.Load())
}

// TestMigrateCanceledReleasesLock checks that an online Migrate releases its
// lock when its context ends, so that the next Migrate proceeds.
func TestMigrateCanceledReleasesLock(t *testing.T) {
	t.Parallel()
	p := sharedPool(t)
	ctx := context.Background()
	schema := schemaName(t)
	dropSchema(t, p, schema)
	// Hold the migration lock, make a Migrate wait for it, cancel it.
	conn, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(0x6964656d)); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = pgxstore.New(p, pgxstore.Options{Schema: schema}).Migrate(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate waiting on the lock = %v, want DeadlineExceeded", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(0x6964656d)); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	if err := pgxstore.New(p, pgxstore.Options{Schema: schema}).Migrate(ctx); err != nil {
		t.Fatalf("Migrate after a canceled one: %v", err)
	}
}
