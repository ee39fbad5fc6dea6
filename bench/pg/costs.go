package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
)

// counters is a reading of the server's cumulative counters.
type counters struct {
	nextXid  int64 // the next transaction id to be assigned
	walBytes int64 // WAL insert position
	walSyncs int64 // pg_stat_wal.wal_sync (after a flush of the statistics)
}

// read flushes conn's pending statistics, waits for the server's own
// (walwriter) to be reported, and reads the counters on conn.
func read(ctx context.Context, conn *pgx.Conn, wait time.Duration) (counters, error) {
	var c counters
	if _, err := conn.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		return c, err
	}
	time.Sleep(wait) // the walwriter reports its statistics about once a second
	err := conn.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
	pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint,
	(SELECT wal_sync FROM pg_stat_wal)`).
		Scan(&c.nextXid, &c.walBytes, &c.walSyncs)
	return c, err
}

// costs first reports the tables' sizes right after the load (see sizes),
// then, if n > 0, runs n sequential operations of each kind on one
// connection and prints, per operation, the statements sent, the
// transaction ids assigned, the WAL bytes written and the WAL syncs (fsyncs)
// the server made.
func (b *bench) costs(ctx context.Context, out io.Writer, n int) error {
	conn, err := pgx.ConnectConfig(ctx, b.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	s := b.store.With(conn)
	var sc string
	if err := conn.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&sc); err != nil {
		return err
	}
	key := func(kind string, i int) string { return b.run + "/cost/" + kind + "/" + strconv.Itoa(i) }
	other := idem.Fingerprint([]byte("other"))
	type kind struct {
		name  string
		stmts int
		prep  func(i int) error
		op    func(i int) error
	}
	want := func(bg idem.Begun, err error, o idem.BeginOutcome) error {
		if err == nil && bg.Outcome != o {
			err = fmt.Errorf("begin: %v, want %v", bg.Outcome, o)
		}
		return err
	}
	kinds := []kind{
		{name: "first execution (Begin + Complete)", stmts: 2, op: func(i int) error {
			bg, err := s.Begin(ctx, key("fresh", i), b.fp, time.Minute)
			if err = want(bg, err, idem.Acquired); err != nil {
				return err
			}
			return s.Complete(ctx, key("fresh", i), bg.Fence, b.result, time.Hour)
		}},
		{name: "replay", stmts: 1, op: func(i int) error {
			bg, err := s.Begin(ctx, key("fresh", i), b.fp, time.Minute)
			return want(bg, err, idem.Replay)
		}},
		{name: "conflict: in flight", stmts: 1, prep: func(i int) error {
			bg, err := s.Begin(ctx, key("busy", i), b.fp, time.Hour)
			return want(bg, err, idem.Acquired)
		}, op: func(i int) error {
			bg, err := s.Begin(ctx, key("busy", i), b.fp, time.Minute)
			return want(bg, err, idem.InFlight)
		}},
		{name: "conflict: other fingerprint", stmts: 1, op: func(i int) error {
			bg, err := s.Begin(ctx, key("fresh", i), other, time.Minute)
			return want(bg, err, idem.Mismatch)
		}},
		{name: "takeover (lease expired)", stmts: 1, prep: func(i int) error {
			bg, err := s.Begin(ctx, key("lapsed", i), b.fp, time.Microsecond)
			return want(bg, err, idem.Acquired)
		}, op: func(i int) error {
			bg, err := s.Begin(ctx, key("lapsed", i), b.fp, time.Minute)
			if err == nil && !bg.Takeover {
				err = fmt.Errorf("begin: %+v, want a takeover", bg)
			}
			return want(bg, err, idem.Acquired)
		}},
	}
	if err := b.sizes(ctx, out, conn); err != nil {
		return err
	}
	if n <= 0 {
		return nil
	}
	fmt.Fprintf(out, "\nPer operation: %d sequential operations of each kind on one connection, synchronous_commit %s, %d-byte result.\n\n", n, sc, len(b.result))
	fmt.Fprintln(out, "| operation | statements | transaction ids | WAL bytes | WAL syncs |")
	fmt.Fprintln(out, "| --- | ---: | ---: | ---: | ---: |")
	for _, k := range kinds {
		if k.prep != nil {
			for i := range n {
				if err := k.prep(i); err != nil {
					return fmt.Errorf("%s: %w", k.name, err)
				}
			}
		}
		c0, err := read(ctx, conn, b.statsWait)
		if err != nil {
			return err
		}
		for i := range n {
			if err := k.op(i); err != nil {
				return fmt.Errorf("%s: %w", k.name, err)
			}
		}
		c1, err := read(ctx, conn, b.statsWait)
		if err != nil {
			return err
		}
		f := func(a, z int64) string { return strconv.FormatFloat(float64(z-a)/float64(n), 'f', 2, 64) }
		fmt.Fprintf(out, "| %s | %d | %s | %s | %s |\n", k.name, k.stmts, f(c0.nextXid, c1.nextXid), f(c0.walBytes, c1.walBytes),
			f(c0.walSyncs, c1.walSyncs))
	}
	return nil
}

// sizes prints bytes per row of the records and claims tables (table and
// indexes) and the share of HOT updates, right after the load and after
// VACUUM FULL.
func (b *bench) sizes(ctx context.Context, out io.Writer, conn *pgx.Conn) error {
	o := b.store.Options()
	tables := []string{pgx.Identifier{o.Schema, o.Table}.Sanitize()}
	if b.claims {
		tables = append(tables, pgx.Identifier{o.Schema, o.ClaimTable}.Sanitize())
	}
	// Flush every pooled backend's statistics.
	for _, c := range b.pool.AcquireAllIdle(ctx) {
		_, _ = c.Exec(ctx, `SELECT pg_stat_force_next_flush()`)
		c.Release()
	}
	time.Sleep(b.statsWait)
	fmt.Fprintln(out, "\n| table | rows | heap bytes/row | index bytes/row | total bytes/row | updates | HOT | total bytes/row after VACUUM FULL |")
	fmt.Fprintln(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, t := range tables {
		var rows, heap, idx, upd, hot int64
		err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+t+`), pg_relation_size($1::regclass), pg_indexes_size($1::regclass),
	coalesce((SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = $1::regclass), 0),
	coalesce((SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = $1::regclass), 0)`, t).Scan(&rows, &heap, &idx, &upd, &hot)
		if err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, `VACUUM FULL `+t); err != nil {
			return err
		}
		var after int64
		if err := conn.QueryRow(ctx, `SELECT pg_total_relation_size($1::regclass)`, t).Scan(&after); err != nil {
			return err
		}
		per := func(x int64) string { return strconv.FormatInt(x/max(rows, 1), 10) }
		share := "–"
		if upd > 0 {
			share = fmt.Sprintf("%.0f%%", 100*float64(hot)/float64(upd))
		}
		fmt.Fprintf(out, "| %s | %d | %s | %s | %s | %d | %s | %s |\n", t, rows, per(heap), per(idx), per(heap+idx), upd, share, per(after))
	}
	return nil
}
