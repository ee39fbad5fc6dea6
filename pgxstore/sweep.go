package pgxstore

import "context"

// DeleteExpired runs one bounded batch of retention: it deletes at most
// Options.SweepBatch records (completed and past retention, or in progress
// with a lease expired more than Options.AbandonAfter ago) and at most
// Options.SweepBatch claims older than Options.ClaimRetention, each in one
// short DELETE that skips rows locked by live traffic. It reports how many
// rows it deleted in all; a total below SweepBatch means both tables are
// drained (of rows not locked at the time).
func (s *Store) DeleteExpired(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, opErr("sweep", err)
	}
	tag, err := s.db.Exec(ctx, s.q.sweepRecords, s.opts.SweepBatch, micros(s.opts.AbandonAfter))
	if err != nil {
		return 0, s.fail(ctx, "sweep", err)
	}
	n := int(tag.RowsAffected())
	tag, err = s.db.Exec(ctx, s.q.sweepClaims, s.opts.SweepBatch, micros(s.opts.ClaimRetention))
	if err != nil {
		return n, s.fail(ctx, "sweep", err)
	}
	return n + int(tag.RowsAffected()), nil
}

// Sweep implements idem.Sweeper: it calls DeleteExpired until a batch comes
// back short or ctx is done, and reports the total deleted. Every batch is
// its own statement (its own transaction on a pool), so a large backlog is
// removed in many short transactions, never one huge delete. Bound a sweep
// with a context deadline; Store starts no goroutine, so schedule it (for
// example every minute, from one replica, or from all: concurrent sweeps
// skip each other's rows).
//
// On a Store bound to a transaction (With), each batch runs in that
// transaction.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := s.DeleteExpired(ctx)
		total += n
		if err != nil {
			return total, err
		}
		if n < s.opts.SweepBatch {
			return total, nil
		}
	}
}
