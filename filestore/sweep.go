package filestore

import (
	"bytes"
	"context"
	"math"

	bolt "go.etcd.io/bbolt"
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
	// First a checkpoint, so that the scans below, which read the database
	// only, see every record written so far; records written later fold
	// into minDeath as they are written.
	if err := s.write(ctx, func(w *wtx) error { w.checkpoint = true; return nil }); err != nil {
		s.minDeath.Store(math.MinInt64)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, unavailable("sweep", "", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			s.minDeath.Store(math.MinInt64) // unknown: let reclaim sweep
			return total, err
		}
		var (
			dead [][]byte
			done bool
		)
		// A stale read here is harmless: each record is checked again
		// below, in the commit that removes it.
		err := s.viewDatabase(func(tx *bolt.Tx) error {
			c := tx.Bucket(recordsBucket).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for scanned := 0; k != nil; k, v = c.Next() {
				if r, err := decodeRecord(v); err == nil {
					if d := s.death(&r); now >= d {
						dead = append(dead, bytes.Clone(k))
					} else {
						low = min(low, d)
					}
				}
				if scanned++; len(dead) >= s.sweepBatch || scanned >= 16*s.sweepBatch {
					after = bytes.Clone(k)
					return nil
				}
			}
			done = true
			return nil
		})
		if err != nil {
			s.minDeath.Store(math.MinInt64)
			return total, unavailable("sweep", "", err)
		}
		if len(dead) > 0 {
			n := 0
			err := s.write(ctx, func(w *wtx) error {
				n = 0
				now := s.clock()
				for _, k := range dead {
					r, err := w.get(k)
					if err != nil || r == nil || now < s.death(r) {
						continue // changed since the snapshot
					}
					if err := w.del(k, r); err != nil {
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
