// Package pgxstore is an idem.Store on PostgreSQL (github.com/jackc/pgx/v5),
// plus the processed-events claim that gives message consumers
// effectively-once effects inside one database.
//
// # Store
//
// New takes a DBTX, the narrow Exec/Query/QueryRow interface that
// *pgxpool.Pool, *pgx.Conn and pgx.Tx all satisfy, and an Options struct
// whose zero value is valid. Migrate creates the tables (idempotent,
// versioned, safe to run concurrently: an advisory lock serializes it).
//
// Every step of the record state machine (SPEC §2) is one SQL statement:
// Begin reads the key's row and, only when no live row answers the call,
// runs an INSERT … ON CONFLICT (key) DO UPDATE … WHERE <lease or retention
// over> … RETURNING in the same statement, whose conflict check (never the
// read) decides races; it reports the outcome, fence, takeover flag, lease
// left and stored result in that one round trip. A replay, an in-flight
// answer and a mismatch only read: no transaction id, no WAL, no flush. Complete, Release and Extend are one UPDATE or DELETE that
// matches the fence; zero rows affected is idem.ErrLeaseLost. A different
// fingerprint never takes over a record, not even one whose lease expired.
// Fences follow the idem.Store rules: a fresh record gets
// max(previous+1, database clock in µs), a takeover previous+1.
//
// Deadlines are judged by the database clock only: each statement reads
// clock_timestamp() once. now() would be the start of the surrounding
// transaction, which inside a caller's long transaction would shorten new
// leases and judge expiry in the past; clock_timestamp() is the same single
// server clock, read when the statement runs.
//
// # Same-transaction completion
//
// CompleteIn runs the store's statements in the caller's
// transaction, so a handler can write its business rows and complete its
// idempotency record atomically: both commit, or neither does. Begin runs on
// the pool (autocommit) so that the lease is visible to other executors at
// once; Complete runs in the business transaction. If that transaction
// rolls back or its connection dies, the record stays in progress and is
// released by its executor or taken over when the lease expires, and the
// retry executes once. If Complete reports ErrLeaseLost, a newer executor
// holds the key: roll the business transaction back.
//
// After the commit, call idem.Lease.MarkCompleted on the executing lease
// (idem.LeaseFromContext finds it in the context idemhttp and idem.Do give
// the handler; CompleteIn takes it whole). The wrapper's own later Complete or Release then does
// nothing and returns nil. Without it, that second Complete is refused with
// idem.ErrLeaseLost: the store never completes a record twice (SPEC §2).
// If the transaction did not commit, do not call MarkCompleted; the lease is
// released as usual. examples/payments-pg shows the whole shape with
// idemhttp, and docs/postgres.md discusses it.
//
// # Processed-events claims
//
// Claim and ClaimBatch implement the transactional consumer form (SPEC §4):
// an INSERT … ON CONFLICT into the claims table inside the caller's own
// transaction, together with the handler's writes; the broker ack or offset
// commit happens after that transaction commits. This gives effectively-once
// effects in this database. Stores outside the database (Redis, memory, a
// file) give at-least-once effects guarded by lease and fence.
//
// Retention is a correctness parameter: a duplicate older than
// Options.ClaimRetention (default 30 days) is processed again.
//
// # Retention and sweeping
//
// Store starts no goroutines. Sweep (idem.Sweeper) deletes expired records
// and claims in bounded batches (DeleteExpired runs one batch), skipping rows
// locked by live traffic; schedule it. Records are found through an index on
// acquired_at, which Complete and Extend never change, so that completions
// are HOT updates and the table stays compact without VACUUM. docs/postgres.md covers partitioning
// the claims table by time for high event rates.
//
// # Errors
//
// A done context returns its error and changes nothing. Connection loss,
// server shutdown, overload, serialization failures and deadlocks wrap
// idem.ErrStoreUnavailable (callers fail closed); other server errors (a
// missing table, a permission) are wrapped as they are. A duplicate never
// raises a unique violation, so it never aborts the caller's transaction.
//
// No statement that changes a record is ever sent twice: pgx does not
// retry statements (it only retries acquiring or dialling a connection,
// before anything is sent) and neither does the store. A Begin, Complete,
// Release or Extend whose reply is lost (the connection broke after the
// statement was sent) therefore returns ErrStoreUnavailable with an
// unknown outcome, and the caller settles it with Get (idem.Inspector).
// Get, which only reads, runs again on another connection when an attempt
// fails on a broken one, so that a pool full of connections the server has
// closed (a restart, a failover, pg_terminate_backend) does not hide the
// answer; see Store.Get for the bound.
//
// Waiter is not implemented: LISTEN/NOTIFY needs a dedicated connection per
// store, which a DBTX cannot provide; Keeper.BeginWait polls with backoff.
package pgxstore
