package filestore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
)

// op is one queued write: apply runs inside the batch's commit, reading and
// staging records through the wtx.
//
// apply must either change nothing and return an error (the error is the
// op's own result and the rest of the batch commits), or stage its changes
// and return nil.
type op struct {
	ctx   context.Context
	apply func(w *wtx) error
	err   error
	ch    chan bool // receives true: lead the next batch; false: done
	state opState   // guarded by Store.qmu
}

// opState is where a write stands in the group commit. Every op receives at
// most one message on its ch: true when it becomes opLeading through a
// hand-over, false when the batch that took it (opTaken) has committed or
// failed; a leader never sends to itself.
type opState uint8

const (
	// opQueued: in Store.queue, waiting; no batch holds it yet, so it may
	// leave the queue and change nothing.
	opQueued opState = iota
	// opLeading: chosen to lead the next batch (it is queue[0]) but that
	// batch has not started; it may still pass the leadership on and leave.
	opLeading
	// opTaken: a leader took it into a batch; only the commit's outcome
	// tells whether it changed anything, so its writer must wait for it.
	opTaken
)

// write queues apply and returns once the commit that carried it is synced
// (or failed). Writers form a group commit: the writer that finds no commit
// running leads; it takes everything queued (up to MaxBatchSize) into one
// transaction and one sync, then hands leadership to the oldest writer that
// queued meanwhile. No goroutine is started and no timer runs unless
// MaxBatchDelay is set.
//
// A writer whose ctx ends while it is still queued (no batch has taken it,
// however long the commits ahead of it take) leaves the queue at once,
// changes nothing and gets ctx.Err(); a queued writer chosen to lead the
// next batch passes the leadership on instead. Once a leader has taken the
// write into a batch, write waits for that batch's commit: at most one
// transaction and one sync, plus the wait for the leader's MaxBatchDelay.
// Its result then says whether the change is durable (a write whose ctx
// ended before the transaction applied it still changes nothing and gets
// ctx.Err()), so the caller never loses track of a durable change.
func (s *Store) write(ctx context.Context, apply func(w *wtx) error) error {
	o := &op{ctx: ctx, apply: apply, ch: make(chan bool, 1)}
	leader, err := s.enqueue(o)
	if err != nil {
		return err
	}
	if !leader {
		if !s.await(o) {
			return o.err
		}
	}
	s.lead(o)
	return o.err
}

// enqueue appends o to the queue and reports whether o leads the next batch
// at once (no commit is running).
func (s *Store) enqueue(o *op) (leader bool, err error) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	s.queue = append(s.queue, o)
	if s.busy {
		return false, nil
	}
	s.busy = true
	o.state = opLeading
	return true, nil
}

// await waits while queued op o is carried by a batch led by another writer,
// and reports whether o must now lead the next batch. When it returns false,
// o.err is o's result: the batch's, or o.ctx's error when o left the queue
// (or passed the leadership on) because its context ended first.
func (s *Store) await(o *op) (lead bool) {
	select {
	case lead = <-o.ch:
		if !lead || o.ctx.Err() == nil || !s.dequeue(o) {
			return lead
		}
	case <-o.ctx.Done():
		if !s.dequeue(o) {
			// Already in a batch: wait for its commit.
			return <-o.ch
		}
	}
	o.err = o.ctx.Err()
	return false
}

// dequeue takes o out of the queue if no batch has taken it, passing the
// leadership on when o was chosen to lead, and reports whether it did.
func (s *Store) dequeue(o *op) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	switch o.state {
	case opQueued, opLeading:
		i := slices.Index(s.queue, o)
		if i < 0 {
			panic("filestore: queued write missing from the queue")
		}
		s.queue = slices.Delete(s.queue, i, i+1)
		if o.state == opLeading {
			s.handOff()
		}
		return true
	}
	return false
}

// handOff, with qmu held and no batch running, makes the oldest queued write
// the next leader, or records that no commit runs when the queue is empty.
// The send cannot block: ch has room for the one message an op receives.
func (s *Store) handOff() {
	if len(s.queue) == 0 {
		s.busy = false
		return
	}
	next := s.queue[0]
	next.state = opLeading
	next.ch <- true
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
	// self is queue[0]: the queue is empty whenever no leader runs, a
	// leader hands over to queue[0], and only writers behind the leader
	// (or a chosen leader that passes the leadership on) leave the queue.
	n := min(len(s.queue), s.maxBatch)
	batch := make([]*op, n)
	copy(batch, s.queue)
	for _, o := range batch {
		o.state = opTaken
	}
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
	s.handOff()
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

// commit applies batch and makes its changes durable before it returns:
// the ops run against a read snapshot of the database and the overlay, their
// changes are staged, and the staged changes go to the write-ahead log as
// one frame with one sync (see wal.go), then into the overlay. A failure to
// read the snapshot or to write the log fails every op of the batch.
func (s *Store) commit(batch []*op) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	fail := func(err error) {
		for _, o := range batch {
			if o.ctx.Err() == nil || !errors.Is(o.err, o.ctx.Err()) {
				o.err = err
			}
		}
	}
	if s.walErr != nil {
		fail(s.walErr)
		return
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		fail(err)
		return
	}
	defer tx.Rollback() // also when an op panics (safeCommit recovers)
	w := &wtx{s: s, b: tx.Bucket(recordsBucket), staged: make(map[string][]byte, len(batch)), count: s.count.Load(), fence: s.fence, bytes: s.bytes.Load()}
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			continue
		}
		o.err = o.apply(w)
	}
	// The snapshot must be closed before any bbolt write transaction of
	// this goroutine (a checkpoint), which may have to remap the file.
	_ = tx.Rollback()
	if len(w.staged) > 0 || w.count != s.count.Load() || w.fence != s.fence {
		if err := s.logBatch(w); err != nil {
			fail(err)
			return
		}
	}
	s.commits.Add(1)
	s.count.Store(w.count)
	s.fence = w.fence
	s.bytes.Store(w.bytes)
	for scope, d := range w.scopes {
		u := s.scopes[scope]
		if u == nil {
			u = new(usage)
			s.scopes[scope] = u
		}
		u.n += d.n
		u.bytes += d.bytes
		if u.n <= 0 {
			delete(s.scopes, scope)
		}
	}
	if w.checkpoint || len(s.overlay) >= walCheckpointRecords || s.w.off >= walCheckpointBytes {
		// A failed checkpoint keeps the overlay and the log as they are;
		// the next commit tries again.
		_ = s.checkpoint()
	}
	if len(w.wake) > 0 {
		s.notify(w.wake)
	}
}

// logBatch makes w's staged changes durable: as one frame of the log, after
// a checkpoint when the log has no room left for it, or, for a batch larger
// than the whole log, written into the database with the overlay.
func (s *Store) logBatch(w *wtx) error {
	buf := encodeFrame(s.w.buf[:0], s.w.epoch, s.w.lsn+1, w.count, w.fence, w.staged)
	if cap(buf) <= 1<<20 {
		s.w.buf = buf
	}
	if int64(len(buf)) > walSize {
		return s.flush(w.staged, w.count, w.fence)
	}
	if s.w.off+int64(len(buf)) > walSize {
		if err := s.checkpoint(); err != nil {
			return err
		}
	}
	if err := s.w.append(buf); err != nil {
		// Whether the frame reached the disk is unknown, and so is the
		// state of the file's pages after a failed sync: stop writing.
		s.walErr = fmt.Errorf("filestore: write-ahead log: %w: %w", idem.ErrStoreUnavailable, err)
		return s.walErr
	}
	s.w.lsn++
	s.omu.Lock()
	for k, v := range w.staged {
		s.overlay[k] = v
	}
	s.omu.Unlock()
	return nil
}

// checkpoint writes the overlay into the database and empties it, so that
// the log can be written from its start again.
func (s *Store) checkpoint() error {
	if len(s.overlay) == 0 && s.w.off == 0 {
		return nil // the database holds everything already
	}
	return s.flush(nil, s.count.Load(), s.fence)
}

// flush writes the overlay and then staged (changes not in the log) into
// the database in one transaction, with the meta count and fence and the
// sequence number of the last frame written, empties the overlay and
// rewinds the log. The leader calls it (or Open and Close, with no leader).
func (s *Store) flush(staged map[string][]byte, count, fence uint64) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, m := tx.Bucket(recordsBucket), tx.Bucket(metaBucket)
		for _, ch := range [2]map[string][]byte{s.overlay, staged} {
			keys := make([]string, 0, len(ch))
			for k := range ch {
				keys = append(keys, k)
			}
			slices.Sort(keys) // B+tree pages are filled in order
			for _, k := range keys {
				var err error
				if v := ch[k]; v == nil {
					err = b.Delete([]byte(k))
				} else {
					err = b.Put([]byte(k), v)
				}
				if err != nil {
					return err
				}
			}
		}
		for _, kv := range [...]struct {
			k []byte
			v uint64
		}{{metaCount, count}, {metaFence, fence}, {metaLSN, s.w.lsn}} {
			if err := m.Put(kv.k, u64(kv.v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.omu.Lock()
	clear(s.overlay)
	s.omu.Unlock()
	s.w.off = 0
	s.checkpoints.Add(1)
	return nil
}

// wtx is the view of a commit that ops read and change records through.
type wtx struct {
	s *Store
	b *bolt.Bucket // records: a read-only snapshot
	// staged holds this batch's changes (nil value: deleted), written to
	// the log when the batch commits.
	staged map[string][]byte
	// checkpoint asks for a checkpoint after this batch (Sweep's first
	// step, so that it scans every record in the database).
	checkpoint bool
	count      uint64   // records held after this transaction
	fence      uint64   // highest fence issued after this transaction
	wake       []string // keys whose Waits to wake after the commit
	bytes      int64    // bytes charged after this transaction (when acct)
	// scopes holds this transaction's changes to the per-scope usage
	// (when scoped), applied to Store.scopes once it commits.
	scopes map[string]*usage
}

// fits reports whether adding dn records and db bytes under key (a new
// record, or a record growing) stays within the store's limits and the
// key's scope's quotas, counting this transaction's earlier changes.
func (w *wtx) fits(k []byte, dn, db int64) bool {
	s := w.s
	if dn > 0 && s.maxRecords > 0 && w.count+uint64(dn) > s.maxRecords {
		return false
	}
	if db > 0 && s.maxBytes > 0 && w.bytes+db > s.maxBytes {
		return false
	}
	if !s.scoped || dn <= 0 && db <= 0 {
		return true
	}
	scope := scopeOf(k)
	var n, b int64
	if u := s.scopes[scope]; u != nil {
		n, b = u.n, u.bytes
	}
	if d := w.scopes[scope]; d != nil {
		n, b = n+d.n, b+d.bytes
	}
	return !(dn > 0 && s.maxScopeRecs > 0 && n+dn > s.maxScopeRecs ||
		db > 0 && s.maxScopeBytes > 0 && b+db > s.maxScopeBytes)
}

// account counts dn records and db bytes under key in this transaction.
func (w *wtx) account(k []byte, dn, db int64) {
	if w.s.acct {
		w.bytes += db
	}
	if !w.s.scoped {
		return
	}
	scope := scopeOf(k)
	d := w.scopes[scope]
	if d == nil {
		if w.scopes == nil {
			w.scopes = make(map[string]*usage)
		}
		d = new(usage)
		w.scopes[scope] = d
	}
	d.n += dn
	d.bytes += db
}

// get returns key's record, or nil when there is none. A record that does
// not decode is an op error (nothing was changed yet).
func (w *wtx) get(k []byte) (*record, error) {
	v, ok := w.staged[string(k)]
	if !ok {
		// The leader is the only writer of the overlay: no lock needed.
		v, ok = w.s.overlay[string(k)]
	}
	if !ok {
		v = w.b.Get(k)
	}
	if v == nil {
		return nil, nil
	}
	r, err := decodeRecord(v)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// put stores r under k, replacing old (nil when k holds no record), and
// counts the change. A record too large to store is refused before anything
// changes, as the op's own error.
func (w *wtx) put(k []byte, r *record, old *record) error {
	v := encodeRecord(r)
	if len(v) > bolt.MaxValueSize {
		return fmt.Errorf("filestore: record of %d bytes is larger than %d", len(v), bolt.MaxValueSize)
	}
	w.staged[string(k)] = v
	var dn int64
	if old == nil {
		w.count++
		dn = 1
	}
	w.account(k, dn, charge(k, r)-charge(k, old))
	w.s.noteDeath(r)
	return nil
}

// del removes k, which holds old.
func (w *wtx) del(k []byte, old *record) error {
	w.staged[string(k)] = nil
	if w.count > 0 {
		w.count--
	}
	w.account(k, -1, -charge(k, old))
	return nil
}

// notify wakes key's Waits once the transaction commits.
func (w *wtx) notify(key string) { w.wake = append(w.wake, key) }
