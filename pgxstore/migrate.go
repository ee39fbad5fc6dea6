package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// migrationLock is the key of the transaction-scoped advisory lock that
// serializes concurrent Migrate calls on one database ("idem" in ASCII).
const migrationLock int64 = 0x6964656d

// migrations are applied in order; entry i brings the tables to version
// i+1. They are append-only: a released migration is never edited.
var migrations = []string{
	// 1: records and claims.
	`CREATE TABLE IF NOT EXISTS @records (
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
COMMENT ON TABLE @claims IS 'idem processed-events claims (pgxstore)'`,
}

// SchemaVersion is the schema version Migrate brings the tables to.
var SchemaVersion = len(migrations)

// ErrSchemaNewer is returned (wrapped) by Migrate when the database records a
// schema version newer than SchemaVersion: a newer release of this package
// migrated it. Migrate never downgrades.
var ErrSchemaNewer = errors.New("pgxstore: database schema is newer than this package")

// Migrate creates the schema and tables, or brings them up to
// SchemaVersion. It is idempotent and safe to run from several processes at
// once: it runs in one transaction that first takes a transaction-scoped
// advisory lock, and records each applied version in the schema's
// idem_migrations table (keyed by the records table name).
//
// The Store's DBTX must be able to begin a transaction (*pgxpool.Pool,
// *pgx.Conn and pgx.Tx can; inside a pgx.Tx Migrate uses a savepoint).
func (s *Store) Migrate(ctx context.Context) error {
	b, ok := s.db.(interface {
		Begin(context.Context) (pgx.Tx, error)
	})
	if !ok {
		return opErr("migrate", errors.New("the DBTX cannot begin a transaction; pass a *pgxpool.Pool, *pgx.Conn or pgx.Tx"))
	}
	if err := ctx.Err(); err != nil {
		return opErr("migrate", err)
	}
	err := pgx.BeginFunc(ctx, b, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, s.opts.Schema).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{s.opts.Schema}.Sanitize()); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+s.migrations+` (
	table_name text        NOT NULL,
	version    int         NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	PRIMARY KEY (table_name, version)
)`); err != nil {
			return err
		}
		var have int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+s.migrations+` WHERE table_name = $1`, s.opts.Table).Scan(&have); err != nil {
			return err
		}
		if have > len(migrations) {
			return fmt.Errorf("%w: table %s is at version %d, this package knows %d", ErrSchemaNewer, s.records, have, len(migrations))
		}
		for v := have + 1; v <= len(migrations); v++ {
			if _, err := tx.Exec(ctx, s.migrationSQL(migrations[v-1])); err != nil {
				return fmt.Errorf("version %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+s.migrations+` (table_name, version) VALUES ($1, $2)`, s.opts.Table, v); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrSchemaNewer) {
		return opErr("migrate", err)
	}
	if err != nil {
		return s.fail(ctx, "migrate", err)
	}
	return nil
}

// migrationSQL substitutes the quoted table and index names into m.
func (s *Store) migrationSQL(m string) string {
	id := func(parts ...string) string { return pgx.Identifier(parts).Sanitize() }
	return strings.NewReplacer(
		"@records_expires", id(s.opts.Table+"_expires"),
		"@claims_claimed", id(s.opts.ClaimTable+"_claimed"),
		"@records", s.records,
		"@claims", s.claims,
	).Replace(m)
}
