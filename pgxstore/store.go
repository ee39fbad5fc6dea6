package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
)

// DBTX is the narrow query interface the store runs its statements on. It is
// satisfied by *pgxpool.Pool, *pgx.Conn and pgx.Tx, so the same Store code
// runs in autocommit mode on a pool or inside a caller's transaction (see
// Store.With and Store.Claim).
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Defaults for Options.
const (
	// DefaultSchema is the schema used when Options.Schema is empty.
	DefaultSchema = "public"
	// DefaultTable is the records table used when Options.Table is empty.
	DefaultTable = "idem_records"
	// DefaultClaimTable is the processed-events table used when
	// Options.ClaimTable is empty.
	DefaultClaimTable = "idem_claims"
	// DefaultClaimRetention is how long a claim is kept when
	// Options.ClaimRetention is zero (SPEC §4: 30 days).
	DefaultClaimRetention = 30 * 24 * time.Hour
	// DefaultAbandon is used when Options.Abandon is zero.
	DefaultAbandon = 24 * time.Hour
	// DefaultSweepBatch is used when Options.SweepBatch is zero.
	DefaultSweepBatch = 1000
)

// Options configures a Store. The zero value is valid: every empty field
// takes the documented default.
type Options struct {
	// Schema holds the tables. If empty, DefaultSchema ("public") is used.
	// Migrate creates it when it does not exist.
	Schema string
	// Table is the idempotency records table. If empty, DefaultTable
	// ("idem_records") is used.
	Table string
	// ClaimTable is the processed-events table used by Claim and
	// ClaimBatch. If empty, DefaultClaimTable ("idem_claims") is used.
	ClaimTable string
	// ClaimRetention is how long a claim keeps a message id from being
	// processed again. A duplicate older than this is processed again, so it
	// must exceed the broker's redelivery horizon. If zero,
	// DefaultClaimRetention (30 days) is used.
	ClaimRetention time.Duration
	// Abandon is how long an in-progress record whose lease expired is
	// kept before Sweep removes it. Until then a late Complete by its holder
	// still succeeds and the next Begin takes it over with fence+1. If zero,
	// DefaultAbandon (24 h) is used.
	Abandon time.Duration
	// SweepBatch bounds the rows one DeleteExpired statement removes from
	// each table, so retention never runs as one huge delete. If zero,
	// DefaultSweepBatch (1000) is used.
	SweepBatch int
}

// Store is an idem.Store on PostgreSQL. Every step of SPEC §2 is one SQL
// statement judged by the database clock, so any number of processes may
// share one table. Store starts no goroutines; schedule Sweep yourself.
//
// A Store is safe for concurrent use when its DBTX is (a *pgxpool.Pool is;
// a *pgx.Conn or pgx.Tx is not).
type Store struct {
	db   DBTX
	opts Options
	// qualified, quoted names
	records, claims, migrations string
	// SQL text, built once from the names
	q queries
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Extender  = (*Store)(nil)
	_ idem.Sweeper   = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)

// New returns a Store that runs its statements on db with the names and
// limits in o. It does not touch the database; call Migrate once (at
// start-up, or from a deploy step) to create the tables.
func New(db DBTX, o Options) *Store {
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.ClaimTable == "" {
		o.ClaimTable = DefaultClaimTable
	}
	if o.ClaimRetention <= 0 {
		o.ClaimRetention = DefaultClaimRetention
	}
	if o.Abandon <= 0 {
		o.Abandon = DefaultAbandon
	}
	if o.SweepBatch <= 0 {
		o.SweepBatch = DefaultSweepBatch
	}
	s := &Store{
		db:         db,
		opts:       o,
		records:    pgx.Identifier{o.Schema, o.Table}.Sanitize(),
		claims:     pgx.Identifier{o.Schema, o.ClaimTable}.Sanitize(),
		migrations: pgx.Identifier{o.Schema, "idem_migrations"}.Sanitize(),
	}
	s.q = buildQueries(s.records, s.claims)
	return s
}

// Options returns the options in force, with defaults applied.
func (s *Store) Options() Options { return s.opts }

// With returns a Store that shares s's tables and options but runs its
// statements on db, typically the caller's pgx.Tx (for example to Begin or
// Claim inside a transaction). To complete a lease's record in the caller's
// transaction, use CompleteIn. The returned Store is as safe for concurrent
// use as db is.
func (s *Store) With(db DBTX) *Store {
	c := *s
	c.db = db
	return &c
}

// CompleteIn completes the record held by lease with result inside tx, the
// caller's transaction, so that the completion commits or rolls back with
// the caller's business writes: the one way to complete a record in the
// same transaction. It takes the record key, fence and retention from the
// lease. Once tx has committed, call lease.MarkCompleted, so that the layer
// that began the lease (idemhttp, idem.Do, idemmsg) does not complete the
// record a second time (the store would refuse that with ErrLeaseLost, as
// SPEC §2 requires); if tx rolled back, do not, and the lease is released
// as usual:
//
//	lease, _ := idem.LeaseFromContext(ctx) // or Keeper.Begin's Attempt.Lease
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, "INSERT INTO charges …"); err != nil {
//			return err
//		}
//		return store.CompleteIn(ctx, tx, lease, result) // ErrLeaseLost: a newer executor holds the key; roll back
//	})
//	if err == nil {
//		lease.MarkCompleted()
//	}
//
// For idemhttp, result is the idemhttp.Response's MarshalBinary, and the
// handler then writes exactly that response.
func (s *Store) CompleteIn(ctx context.Context, tx DBTX, lease *idem.Lease, result []byte) error {
	if lease == nil {
		return errors.New("pgxstore: CompleteIn: nil lease")
	}
	return s.With(tx).Complete(ctx, lease.Key(), lease.Fence(), result, lease.Retention())
}

// Outcome codes returned by the begin statement; 0 means the statement's
// snapshot raced with a concurrent writer and must be run again.
const (
	codeRetry    = 0
	codeAcquired = 1
	codeInFlight = 2
	codeReplay   = 3
	codeMismatch = 4
)

// maxBeginAttempts bounds the re-runs of the begin statement after a race
// with a concurrent writer (see Begin). Each re-run takes a fresh snapshot
// and, under READ COMMITTED, sees the row the race was about.
const maxBeginAttempts = 8

// Begin applies SPEC §2's begin step in one statement judged by the
// database clock (see the package documentation). It first reads the key's
// row without locking it; when that row answers the call (a replay, a lease
// in flight, a different fingerprint) nothing is locked or written, so a
// replay takes no transaction id, writes no WAL and waits for no commit
// flush. Otherwise the same statement's INSERT … ON CONFLICT … DO UPDATE …
// WHERE creates the record or takes it over: a completed record past
// retention is replaced as fresh with fence max(previous+1, clock µs); an
// in-progress record whose lease expired is taken over with fence+1, but
// only with the same fingerprint. Two concurrent Begins of one key are
// resolved by the conflict check, never by the read: exactly one acquires.
//
// In the rare case that the row changed between the statement's snapshot
// and its conflict check (a concurrent Begin, Complete or Release on the
// same key), the statement is run again.
func (s *Store) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if err := check(ctx, key); err != nil {
		return idem.Begun{}, opErr("begin", err)
	}
	if fp == nil {
		fp = []byte{}
	}
	for range maxBeginAttempts {
		var (
			code             int16
			fence, leftMicro int64
			takeover         bool
			result           []byte
		)
		err := s.db.QueryRow(ctx, s.q.begin, []byte(key), fp, micros(lease)).
			Scan(&code, &fence, &takeover, &leftMicro, &result)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // the row we conflicted with was not in our snapshot
		}
		if err != nil {
			return idem.Begun{}, s.fail(ctx, "begin", err)
		}
		switch code {
		case codeAcquired:
			return idem.Begun{Outcome: idem.Acquired, Fence: uint64(fence), Takeover: takeover}, nil
		case codeInFlight:
			return idem.Begun{Outcome: idem.InFlight, Fence: uint64(fence), LeaseLeft: max(0, time.Duration(leftMicro)*time.Microsecond)}, nil
		case codeReplay:
			if result == nil {
				result = []byte{}
			}
			return idem.Begun{Outcome: idem.Replay, Result: result}, nil
		case codeMismatch:
			return idem.Begun{Outcome: idem.Mismatch}, nil
		}
	}
	return idem.Begun{}, opErr("begin", fmt.Errorf("%w: key kept changing during %d attempts", idem.ErrStoreUnavailable, maxBeginAttempts))
}

// Complete stores result for the in-progress record held by fence, marks it
// completed and keeps it for retention from now (database clock), in one
// UPDATE. Otherwise it returns ErrLeaseLost and changes nothing; this
// includes a record already completed, even under the same fence (SPEC §2:
// complete after complete is refused).
func (s *Store) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if err := check(ctx, key); err != nil {
		return opErr("complete", err)
	}
	if result == nil {
		result = []byte{}
	}
	tag, err := s.db.Exec(ctx, s.q.complete, []byte(key), int64(fence), result, micros(retention))
	if err != nil {
		return s.fail(ctx, "complete", err)
	}
	if tag.RowsAffected() == 0 {
		return opErr("complete", idem.ErrLeaseLost)
	}
	return nil
}

// Release deletes the in-progress record held by fence, in one DELETE, so
// that the next Begin executes. Otherwise it returns ErrLeaseLost and
// changes nothing.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	if err := check(ctx, key); err != nil {
		return opErr("release", err)
	}
	tag, err := s.db.Exec(ctx, s.q.release, []byte(key), int64(fence))
	if err != nil {
		return s.fail(ctx, "release", err)
	}
	if tag.RowsAffected() == 0 {
		return opErr("release", idem.ErrLeaseLost)
	}
	return nil
}

// Extend sets the lease of the in-progress record held by fence to end lease
// from now (database clock), in one UPDATE. Otherwise it returns
// ErrLeaseLost and changes nothing.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if err := check(ctx, key); err != nil {
		return opErr("extend", err)
	}
	tag, err := s.db.Exec(ctx, s.q.extend, []byte(key), int64(fence), micros(lease))
	if err != nil {
		return s.fail(ctx, "extend", err)
	}
	if tag.RowsAffected() == 0 {
		return opErr("extend", idem.ErrLeaseLost)
	}
	return nil
}

// Get returns the record for key without changing it, or ok == false when
// there is none (never created, released, swept, or completed and past
// retention). An in-progress record whose lease expired is returned with
// Remaining == 0 until it is taken over or swept.
//
// Get is how a caller learns whether a change whose reply was lost was
// applied (idem.Inspector), which is exactly when pooled connections are
// likely to be dead: a restarted or failed-over server, a terminated
// backend, a dropped TCP connection. Because Get only reads, it runs its
// statement again when an attempt fails on a broken connection (a network
// error, a closed connection, SQLSTATE class 08, or 57P01–57P03). On a
// *pgxpool.Pool each attempt takes another connection and the broken one is
// discarded, so it tries at most once per pooled connection plus once; on
// any other DBTX at most twice, and never inside a pgx.Tx (a broken
// transaction stays broken). It stops at once when ctx ends, when a new
// connection cannot be made (the server is down), or on any other error.
// No statement that changes a record is ever run twice, neither by the
// store nor by pgx: their unknown outcomes reach the caller as
// ErrStoreUnavailable, to be settled with Get.
func (s *Store) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	if err := check(ctx, key); err != nil {
		return idem.Record{}, false, opErr("get", err)
	}
	retries := -1 // unknown until the first attempt fails
	for {
		rec, ok, err := s.get(ctx, key)
		if err == nil {
			return rec, ok, nil
		}
		if retries < 0 {
			retries = s.getRetries()
		}
		if retries == 0 || ctx.Err() != nil || !brokenConn(err) {
			return idem.Record{}, false, s.fail(ctx, "get", err)
		}
		retries--
	}
}

// getRetries is how many more times Get may run its statement after a first
// attempt failed (see Get).
func (s *Store) getRetries() int {
	switch db := s.db.(type) {
	case *pgxpool.Pool:
		// Every failed attempt discards its broken connection, so this
		// many more attempts reach a new one even if every connection the
		// pool holds now is broken.
		return int(db.Stat().TotalConns()) + 1
	case pgx.Tx:
		return 0
	}
	return 1
}

// get runs the get statement once.
func (s *Store) get(ctx context.Context, key string) (idem.Record, bool, error) {
	var (
		state      int16
		fence      int64
		age, left  int64
		fp, result []byte
		rec        idem.Record
	)
	err := s.db.QueryRow(ctx, s.q.get, []byte(key)).Scan(&state, &fp, &fence, &age, &left, &result)
	if errors.Is(err, pgx.ErrNoRows) {
		return idem.Record{}, false, nil
	}
	if err != nil {
		return idem.Record{}, false, err
	}
	rec.State = idem.State(state)
	rec.Fingerprint = fp
	if rec.Fingerprint == nil {
		rec.Fingerprint = []byte{}
	}
	rec.Fence = uint64(fence)
	rec.Age = max(0, time.Duration(age)*time.Microsecond)
	rec.Remaining = max(0, time.Duration(left)*time.Microsecond)
	if rec.State == idem.StateCompleted {
		rec.Result = result
		if rec.Result == nil {
			rec.Result = []byte{}
		}
	}
	return rec, true, nil
}

// micros converts d to whole microseconds, rounding up so that a positive
// duration never becomes zero. Non-positive durations become zero.
func micros(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

// check refuses a done context and an empty key before any round trip, so
// that neither changes anything.
func check(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("%w: empty", idem.ErrInvalidKey)
	}
	return nil
}
