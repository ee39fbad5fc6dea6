package filestore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	bolt "go.etcd.io/bbolt"
)

// op is one queued write: apply runs inside the batch's write transaction.
//
// apply must either change nothing and return an error (the error is the
// op's own result and the rest of the batch commits), or return a
// *fatalError, which aborts and rolls back the whole batch.
type op struct {
	ctx   context.Context
	apply func(w *wtx) error
	err   error
	ch    chan bool // receives true: lead the next batch; false: done
}

// fatalError is a failure of the transaction itself (a bbolt write failed);
// the whole batch is rolled back and every op in it fails.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// write queues apply and returns once the commit that carried it is synced
// (or failed). Writers form a group commit: the writer that finds no commit
// running leads; it takes everything queued (up to MaxBatchSize) into one
// transaction and one sync, then hands leadership to the oldest writer that
// queued meanwhile. No goroutine is started and no timer runs unless
// MaxBatchDelay is set.
//
// A writer whose ctx is done before its batch starts changes nothing and
// gets ctx.Err(); once its batch has started, write waits for the commit
// (at most one sync), so the caller never loses track of a durable change.
func (s *Store) write(ctx context.Context, apply func(w *wtx) error) error {
	o := &op{ctx: ctx, apply: apply, ch: make(chan bool, 1)}
	s.qmu.Lock()
	if s.closed {
		s.qmu.Unlock()
		return ErrClosed
	}
	s.queue = append(s.queue, o)
	if s.busy {
		s.qmu.Unlock()
		if !<-o.ch {
			return o.err
		}
	} else {
		s.busy = true
		s.qmu.Unlock()
	}
	s.lead(o)
	return o.err
}

// lead runs one batch, which holds self, and passes leadership on.
func (s *Store) lead(self *op) {
	if s.maxDelay > 0 {
		s.qmu.Lock()
		n := len(s.queue)
		s.qmu.Unlock()
		if n < s.maxBatch {
			time.Sleep(s.maxDelay)
		}
	} else {
		// Let the writers that the previous commit just released run
		// first: they usually queue their next write at once and so join
		// this batch instead of waiting out a whole commit.
		runtime.Gosched()
	}
	s.qmu.Lock()
	// self is queue[0]: the queue is empty whenever no leader runs, and a
	// leader hands over to queue[0].
	n := min(len(s.queue), s.maxBatch)
	batch := make([]*op, n)
	copy(batch, s.queue)
	if n == len(s.queue) {
		clear(s.queue)
		s.queue = s.queue[:0]
	} else {
		s.queue = append([]*op(nil), s.queue[n:]...)
	}
	closed := s.closed
	s.qmu.Unlock()

	if closed {
		for _, o := range batch {
			o.err = ErrClosed
		}
	} else {
		s.safeCommit(batch)
	}
	for _, o := range batch {
		if o != self {
			o.ch <- false
		}
	}
	s.qmu.Lock()
	if len(s.queue) > 0 {
		next := s.queue[0]
		s.qmu.Unlock()
		next.ch <- true
		return
	}
	s.busy = false
	s.qmu.Unlock()
}

// safeCommit is commit, except that a panic inside it (a bug) fails the
// batch instead of unwinding the leader, which would strand the writers
// queued behind it and stop every later write. bbolt has rolled the
// transaction back by then.
func (s *Store) safeCommit(batch []*op) {
	defer func() {
		if p := recover(); p != nil {
			err := fmt.Errorf("filestore: internal error in commit: %v", p)
			for _, o := range batch {
				o.err = err
			}
		}
	}()
	s.commit(batch)
}

// commit applies batch in one write transaction and syncs it.
func (s *Store) commit(batch []*op) {
	var w *wtx
	err := s.db.Update(func(tx *bolt.Tx) error {
		w = &wtx{s: s, b: tx.Bucket(recordsBucket), meta: tx.Bucket(metaBucket), count: s.count.Load(), fence: s.fence}
		for _, o := range batch {
			if err := o.ctx.Err(); err != nil {
				o.err = err
				continue
			}
			o.err = o.apply(w)
			var f *fatalError
			if errors.As(o.err, &f) {
				return f.err
			}
		}
		return w.flushMeta()
	})
	if err != nil {
		for _, o := range batch {
			if o.ctx.Err() == nil || !errors.Is(o.err, o.ctx.Err()) {
				o.err = err
			}
		}
		return
	}
	s.commits.Add(1)
	s.count.Store(w.count)
	s.fence = w.fence
	if len(w.wake) > 0 {
		s.notify(w.wake)
	}
}

// wtx is the view of a write transaction that ops change records through.
type wtx struct {
	s     *Store
	b     *bolt.Bucket // records
	meta  *bolt.Bucket
	count uint64   // records held after this transaction
	fence uint64   // highest fence issued after this transaction
	wake  []string // keys whose Waits to wake after the commit
}

// get returns key's record, or nil when there is none. A record that does
// not decode is an op error (nothing was changed yet).
func (w *wtx) get(k []byte) (*record, error) {
	v := w.b.Get(k)
	if v == nil {
		return nil, nil
	}
	r, err := decodeRecord(v)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// put stores r under k; isNew counts a record that did not exist. A record
// too large to store is refused before anything changes, as the op's own
// error.
func (w *wtx) put(k []byte, r *record, isNew bool) error {
	v := encodeRecord(r)
	if len(v) > bolt.MaxValueSize {
		return fmt.Errorf("filestore: record of %d bytes is larger than %d", len(v), bolt.MaxValueSize)
	}
	if err := w.b.Put(k, v); err != nil {
		return &fatalError{err}
	}
	if isNew {
		w.count++
	}
	w.s.noteDeath(r)
	return nil
}

// del removes k, which holds a record.
func (w *wtx) del(k []byte) error {
	if err := w.b.Delete(k); err != nil {
		return &fatalError{err}
	}
	if w.count > 0 {
		w.count--
	}
	return nil
}

// notify wakes key's Waits once the transaction commits.
func (w *wtx) notify(key string) { w.wake = append(w.wake, key) }

// flushMeta stores the record count and fence mark when they changed.
func (w *wtx) flushMeta() error {
	if w.count != w.s.count.Load() {
		if err := w.meta.Put(metaCount, u64(w.count)); err != nil {
			return err
		}
	}
	if w.fence != w.s.fence {
		if err := w.meta.Put(metaFence, u64(w.fence)); err != nil {
			return err
		}
	}
	return nil
}
