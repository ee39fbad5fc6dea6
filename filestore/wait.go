package filestore

import (
	"context"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
)

// waitq is the wake-up channel of the Waits blocked on one key.
type waitq struct {
	ch chan struct{}
	n  int // Waits registered and not yet left
}

// Wait blocks until key's record leaves the in-progress state (completed,
// released or removed by this Store), ctx is done, or d elapses, whichever is
// first. It returns nil at once when key has no live in-progress record or
// its lease has already ended (the caller may take it over). It returns
// ctx.Err() when ctx is done, and nil otherwise; spurious wake-ups are
// allowed. d is measured by a real timer, not by Options.Now, and is capped
// at the lease time left. Notification is in-process: a change made by
// another process is seen when d elapses. A Wait that ends leaves nothing
// behind.
func (s *Store) Wait(ctx context.Context, key string, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	s.wmu.Lock()
	if s.waits == nil { // closed
		s.wmu.Unlock()
		return ErrClosed
	}
	q := s.waits[key]
	if q == nil {
		q = &waitq{ch: make(chan struct{})}
		s.waits[key] = q
	}
	q.n++
	s.wmu.Unlock()
	defer s.leave(key, q)

	// Registered first, checked second: a change committed after this
	// snapshot finds q and closes it.
	var left time.Duration
	err := s.view(func(tx *bolt.Tx) error {
		r, err := s.readRecord(tx, []byte(key))
		if err != nil || r == nil || r.state != idem.StateInProgress {
			return err
		}
		if now := s.clock(); now < s.death(r) {
			left = time.Duration(r.deadline - now)
		}
		return nil
	})
	if err != nil {
		return unavailable("wait", key, err)
	}
	if left <= 0 {
		return nil
	}
	t := time.NewTimer(min(d, left+time.Millisecond))
	defer t.Stop()
	select {
	case <-q.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// leave unregisters one Wait from q, dropping q when it is empty and was not
// already woken.
func (s *Store) leave(key string, q *waitq) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if q.n--; q.n == 0 && s.waits != nil && s.waits[key] == q {
		delete(s.waits, key)
	}
}

// notify wakes the Waits blocked on keys.
func (s *Store) notify(keys []string) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, k := range keys {
		if q := s.waits[k]; q != nil {
			close(q.ch)
			delete(s.waits, k)
		}
	}
}
