package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationLock is the key of the advisory lock that serializes concurrent
// Migrate calls on one database ("idem" in ASCII). Migrate takes it at
// session level on a connection of its own, or at transaction level inside a
// caller's transaction; the two conflict, so either form excludes the other.
const migrationLock int64 = 0x6964656d

// migration is one schema version.
type migration struct {
	// sql runs inside Migrate's transaction. It is what runs on a table
	// created in the same Migrate call, and on any table when Migrate runs
	// inside a caller's transaction.
	sql string
	// online, if set, replaces sql on a table that existed before this
	// Migrate call, when Migrate holds a connection of its own: each
	// statement runs alone, outside any transaction, so that it can use
	// CREATE INDEX CONCURRENTLY and DROP INDEX CONCURRENTLY and never block
	// the traffic on a live table.
	online []string
	// built is the name suffix (after the records table name) of the index
	// that online builds concurrently. A failed or cancelled CREATE INDEX
	// CONCURRENTLY leaves an invalid index behind; Migrate drops such an
	// index before running online again.
	built string
}

// migrations are applied in order; entry i brings the tables to version
// i+1. They are append-only: a released migration is never edited.
var migrations = []migration{
	// 1: records and claims.
	{sql: `CREATE TABLE IF NOT EXISTS @records (
	key         bytea       PRIMARY KEY,
	fingerprint bytea       NOT NULL,
	fence       bigint      NOT NULL,
	state       smallint    NOT NULL CHECK (state IN (1, 2)),
	takeover    boolean     NOT NULL DEFAULT false,
	result      bytea,
	acquired_at timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS @records_expires ON @records (expires_at);
COMMENT ON TABLE @records IS 'idem idempotency records (pgxstore); state 1 = in progress, 2 = completed';
CREATE TABLE IF NOT EXISTS @claims (
	scope      bytea       NOT NULL,
	id         bytea       NOT NULL,
	claimed_at timestamptz NOT NULL,
	PRIMARY KEY (scope, id)
);
CREATE INDEX IF NOT EXISTS @claims_claimed ON @claims USING brin (claimed_at);
COMMENT ON TABLE @claims IS 'idem processed-events claims (pgxstore)'`},
	// 2: the sweep reads records through an index on acquired_at, which
	// Complete and Extend never change, instead of expires_at, which they
	// do: completions and extensions become HOT updates (no new index
	// entries, dead versions pruned on the page without VACUUM).
	{
		sql: `CREATE INDEX IF NOT EXISTS @records_acquired ON @records (acquired_at);
DROP INDEX IF EXISTS @q_records_expires`,
		online: []string{
			`CREATE INDEX CONCURRENTLY IF NOT EXISTS @records_acquired ON @records (acquired_at)`,
			`DROP INDEX CONCURRENTLY IF EXISTS @q_records_expires`,
		},
		built: "_acquired",
	},
}

// SchemaVersion is the schema version Migrate brings the tables to: the
// number of migrations this package carries (a test checks they agree).
const SchemaVersion = 2

// ErrSchemaNewer is returned (wrapped) by Migrate when the database records a
// schema version newer than SchemaVersion: a newer release of this package
// migrated it. Migrate never downgrades.
var ErrSchemaNewer = errors.New("pgxstore: database schema is newer than this package")

// Migrate creates the schema and tables, or brings them up to
// SchemaVersion. It is idempotent and safe to run from several processes at
// once: an advisory lock serializes it, and each applied version is recorded
// in the schema's idem_migrations table (keyed by the records table name).
//
// On a *pgxpool.Pool (one connection taken from it) or a *pgx.Conn, Migrate
// holds a session-level advisory lock for its whole run (polling for it
// while another Migrate holds it). New tables are
// created in one transaction. A table that already exists is moved forward
// online: index changes run as CREATE INDEX CONCURRENTLY and DROP INDEX
// CONCURRENTLY, outside any transaction, so requests keep reading and
// writing the table meanwhile (a concurrent index build waits for
// transactions already running on the database to finish). If such a step
// fails or is cancelled, Migrate can simply be run again: the version is
// recorded only after all its steps, and an invalid index left behind by
// an interrupted build is dropped and built again.
//
// Inside a pgx.Tx (or on another DBTX that can begin a transaction) all of
// Migrate runs in that transaction, under a savepoint and a transaction-level
// advisory lock; index changes on an existing table then block writes to it
// until the transaction ends.
func (s *Store) Migrate(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return opErr("migrate", err)
	}
	var err error
	switch db := s.db.(type) {
	case *pgxpool.Pool:
		var c *pgxpool.Conn
		if c, err = db.Acquire(ctx); err == nil {
			err = s.migrateOnline(ctx, c.Conn())
			c.Release() // a connection closed by migrateOnline is discarded
		}
	case *pgx.Conn:
		err = s.migrateOnline(ctx, db)
	case interface {
		Begin(context.Context) (pgx.Tx, error)
	}:
		err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
				return err
			}
			have, err := s.prepareMigrations(ctx, tx)
			if err != nil {
				return err
			}
			for v := have + 1; v <= len(migrations); v++ {
				if err := s.applyInTx(ctx, tx, v); err != nil {
					return err
				}
			}
			return nil
		})
	default:
		return opErr("migrate", errors.New("the DBTX cannot begin a transaction; pass a *pgxpool.Pool, *pgx.Conn or pgx.Tx"))
	}
	if errors.Is(err, ErrSchemaNewer) {
		return opErr("migrate", err)
	}
	if err != nil {
		return s.fail(ctx, "migrate", err)
	}
	return nil
}

// migrateOnline runs Migrate on a connection of its own (see Migrate).
func (s *Store) migrateOnline(ctx context.Context, conn *pgx.Conn) error {
	// Poll for the lock rather than wait in pg_advisory_lock: a statement
	// waiting for the lock holds a snapshot, and the holder's CREATE INDEX
	// CONCURRENTLY waits for every such snapshot to go away (a deadlock).
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 250*time.Millisecond) {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, migrationLock).Scan(&ok); err != nil {
			return err
		}
		if ok {
			break
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	defer func() {
		// If the unlock cannot be sent (the context ended mid-statement and
		// pgx closed the connection, or the server went away), closing the
		// session is what releases the lock.
		uctx := context.WithoutCancel(ctx)
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, migrationLock); err != nil {
			_ = conn.Close(uctx)
		}
	}()
	// New tables, and every version up to the first online one on an
	// existing table, in one transaction.
	have, next := 0, 0
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var err error
		if have, err = s.prepareMigrations(ctx, tx); err != nil {
			return err
		}
		for next = have + 1; next <= len(migrations); next++ {
			if have > 0 && migrations[next-1].online != nil {
				break
			}
			if err := s.applyInTx(ctx, tx, next); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for v := next; v <= len(migrations); v++ {
		m := migrations[v-1]
		if m.online == nil {
			if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return s.applyInTx(ctx, tx, v) }); err != nil {
				return err
			}
			continue
		}
		if m.built != "" {
			if err := s.dropInvalidIndex(ctx, conn, s.opts.Table+m.built); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
		}
		for _, stmt := range m.online {
			if _, err := conn.Exec(ctx, s.migrationSQL(stmt)); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
		}
		if _, err := conn.Exec(ctx, `INSERT INTO `+s.migrations+` (table_name, version) VALUES ($1, $2)`, s.opts.Table, v); err != nil {
			return err
		}
	}
	return nil
}

// prepareMigrations creates the schema and the migrations table if needed
// and returns the version the tables are at, or ErrSchemaNewer.
func (s *Store) prepareMigrations(ctx context.Context, tx pgx.Tx) (int, error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, s.opts.Schema).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{s.opts.Schema}.Sanitize()); err != nil {
			return 0, err
		}
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.migrations+` (
	table_name text        NOT NULL,
	version    int         NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (table_name, version)
)`); err != nil {
		return 0, err
	}
	var have int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+s.migrations+` WHERE table_name = $1`, s.opts.Table).Scan(&have); err != nil {
		return 0, err
	}
	if have > len(migrations) {
		return 0, fmt.Errorf("%w: table %s is at version %d, this package knows %d", ErrSchemaNewer, s.records, have, len(migrations))
	}
	return have, nil
}

// applyInTx applies version v's in-transaction form and records it.
func (s *Store) applyInTx(ctx context.Context, tx pgx.Tx, v int) error {
	if _, err := tx.Exec(ctx, s.migrationSQL(migrations[v-1].sql)); err != nil {
		return fmt.Errorf("version %d: %w", v, err)
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+s.migrations+` (table_name, version) VALUES ($1, $2)`, s.opts.Table, v)
	return err
}

// dropInvalidIndex drops the index named name (unquoted) in the
// store's schema if it exists and is invalid: what an interrupted CREATE
// INDEX CONCURRENTLY leaves behind, and what CREATE INDEX … IF NOT EXISTS
// would otherwise keep.
func (s *Store) dropInvalidIndex(ctx context.Context, conn *pgx.Conn, name string) error {
	var invalid bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i
	JOIN pg_class c ON c.oid = i.indexrelid
	JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND NOT i.indisvalid)`, s.opts.Schema, name).Scan(&invalid)
	if err != nil || !invalid {
		return err
	}
	_, err = conn.Exec(ctx, `DROP INDEX CONCURRENTLY IF EXISTS `+pgx.Identifier{s.opts.Schema, name}.Sanitize())
	return err
}

// migrationSQL substitutes the quoted table and index names into m.
func (s *Store) migrationSQL(m string) string {
	id := func(parts ...string) string { return pgx.Identifier(parts).Sanitize() }
	return strings.NewReplacer(
		"@q_records_expires", id(s.opts.Schema, s.opts.Table+"_expires"),
		"@records_expires", id(s.opts.Table+"_expires"),
		"@records_acquired", id(s.opts.Table+"_acquired"),
		"@claims_claimed", id(s.opts.ClaimTable+"_claimed"),
		"@records", s.records,
		"@claims", s.claims,
	).Replace(m)
}
