package pgxstore

import (
	"context"

	"github.com/jackc/pgx/v5/pgtype"
)

// DeleteExpired runs one bounded batch of retention: it deletes at most
// Options.SweepBatch records (completed and past retention, or in progress
// with a lease expired more than Options.Abandon ago) and at most
// Options.SweepBatch claims older than Options.ClaimRetention, each in one
// short DELETE that skips rows locked by live traffic. It reports how many
// rows it deleted in all; a total below SweepBatch means both tables are
// drained (of rows not locked at the time).
//
// Records are visited oldest acquired first, through the index on
// acquired_at (see Sweep).
func (s *Store) DeleteExpired(ctx context.Context) (int, error) {
	n, _, err := s.deleteExpired(ctx, pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}, true)
	return n, err
}

// deleteExpired runs one batch of records from acquired_at from on and,
// if claims is set, one batch of claims. It returns the rows deleted and
// the acquired_at the next records batch starts from.
func (s *Store) deleteExpired(ctx context.Context, from pgtype.Timestamptz, claims bool) (int, pgtype.Timestamptz, error) {
	if err := ctx.Err(); err != nil {
		return 0, from, opErr("sweep", err)
	}
	var (
		n    int
		last pgtype.Timestamptz
	)
	err := s.db.QueryRow(ctx, s.q.sweepRecords, s.opts.SweepBatch, micros(s.opts.Abandon), from).Scan(&n, &last)
	if err != nil {
		return 0, from, s.fail(ctx, "sweep", err)
	}
	if last.Valid {
		from = last
	}
	if !claims {
		return n, from, nil
	}
	tag, err := s.db.Exec(ctx, s.q.sweepClaims, s.opts.SweepBatch, micros(s.opts.ClaimRetention))
	if err != nil {
		return n, from, s.fail(ctx, "sweep", err)
	}
	return n + int(tag.RowsAffected()), from, nil
}

// Sweep implements idem.Sweeper: it deletes expired records and claims in
// batches of at most Options.SweepBatch rows per table until a batch comes
// back short or ctx is done, and reports the total deleted. Every batch is
// its own statement (its own transaction on a pool), so a large backlog is
// removed in many short transactions, never one huge delete. Bound a sweep
// with a context deadline; Store starts no goroutine, so schedule it (for
// example every minute, from one replica, or from all: concurrent sweeps
// skip each other's rows).
//
// Records are found through an index on acquired_at, oldest first, and each
// batch starts where the previous one of the same Sweep ended, so one Sweep
// reads each record at most once. With one retention for all records (the
// usual case) the expired records are the oldest ones and a batch reads
// little more than it deletes; records kept much longer than others (mixed
// retentions) are read again by every Sweep until they expire.
//
// On a Store bound to a transaction (With), each batch runs in that
// transaction.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	total := 0
	from := pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	records, claims := true, true
	for records || claims {
		if err := ctx.Err(); err != nil {
			return total, opErr("sweep", err)
		}
		if records {
			n, next, err := s.deleteExpired(ctx, from, false)
			total += n
			if err != nil {
				return total, err
			}
			from, records = next, n >= s.opts.SweepBatch
		}
		if claims {
			tag, err := s.db.Exec(ctx, s.q.sweepClaims, s.opts.SweepBatch, micros(s.opts.ClaimRetention))
			if err != nil {
				return total, s.fail(ctx, "sweep", err)
			}
			n := int(tag.RowsAffected())
			total += n
			claims = n >= s.opts.SweepBatch
		}
	}
	return total, nil
}
