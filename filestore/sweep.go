package filestore

import (
	"context"
	"errors"
	"math"
)

// Sweep removes the dead records: completed records past retention and
// in-progress records abandoned for longer than Options.Abandon. It reports
// how many it removed. It works in steps: each step reads a snapshot to find
// up to Options.SweepBatch dead records, then removes them in one commit,
// checking each again, so concurrent calls are delayed by at most one small
// commit. A ctx done before Sweep starts returns ctx.Err() and removes
// nothing; one done during the sweep stops it after the current step and
// returns the count so far with ctx.Err(). Records that do not decode are
// left in place. Sweep never changes the outcome of a later call: dead
// records already behave as absent.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	return s.sweep(ctx)
}

// reclaim sweeps to make room for a new record on a full store, if any
// record may have died since the last sweep. It reports whether it removed
// any.
func (s *Store) reclaim(ctx context.Context) bool {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	if s.clock() < s.minDeath.Load() {
		return false
	}
	n, _ := s.sweep(ctx)
	return n > 0
}

// sweep does Sweep's work; sweepMu must be held.
func (s *Store) sweep(ctx context.Context) (int, error) {
	// Recompute minDeath: every record is folded in either by the scan
	// below or by the write that changes it concurrently.
	s.minDeath.Store(math.MaxInt64)
	low := int64(math.MaxInt64)
	now := s.clock()
	var after []byte
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			s.minDeath.Store(math.MinInt64) // unknown: let reclaim sweep
			return total, err
		}
		dead, last, done, err := s.scan(ctx, after, now, &low)
		if err != nil {
			s.minDeath.Store(math.MinInt64)
			return total, unavailable("sweep", "", err)
		}
		after = last
		if len(dead) > 0 {
			n := 0
			err := s.write(ctx, func(w *wtx) error {
				n = 0
				now := s.clock()
				for _, k := range dead {
					r, err := w.get(k)
					var f *fatalError
					if errors.As(err, &f) {
						return err
					}
					if err != nil || r == nil || now < s.death(r) {
						continue // undecodable, or changed since the snapshot
					}
					if err := w.del(k); err != nil {
						return err
					}
					w.notify(string(k))
					n++
				}
				return nil
			})
			if err != nil {
				s.minDeath.Store(math.MinInt64)
				if ctx.Err() != nil {
					return total, ctx.Err()
				}
				return total, unavailable("sweep", "", err)
			}
			total += n
		}
		if done {
			for {
				cur := s.minDeath.Load()
				if low >= cur || s.minDeath.CompareAndSwap(cur, low) {
					break
				}
			}
			return total, nil
		}
	}
}

// scan reads up to 16×SweepBatch records after key after (all records when
// after is empty) from a snapshot, and returns the keys of those dead at now
// (at most SweepBatch), the last key read, and whether the scan reached the
// end. It lowers *low to the death of every live record it reads.
func (s *Store) scan(ctx context.Context, after []byte, now int64, low *int64) (dead [][]byte, last []byte, done bool, err error) {
	s.qmu.Lock()
	closed := s.closed
	s.qmu.Unlock()
	if closed {
		return nil, nil, false, ErrClosed
	}
	if after == nil {
		after = []byte{}
	}
	limit := 16 * s.sweepBatch
	rows, err := s.rscan.QueryContext(context.WithoutCancel(ctx), after, limit)
	if err != nil {
		return nil, nil, false, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, nil, false, err
		}
		n++
		last = k
		if r, err := decodeRecord(v); err == nil { // undecodable records are left alone
			if d := s.death(&r); now >= d {
				dead = append(dead, k)
			} else {
				*low = min(*low, d)
			}
		}
		if len(dead) >= s.sweepBatch {
			return dead, last, false, rows.Close()
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, false, err
	}
	return dead, last, n < limit, nil
}
