package filestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/idemkit/idem"
)

// Compile-time checks that *Store implements the store interfaces.
var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Extender  = (*Store)(nil)
	_ idem.Sweeper   = (*Store)(nil)
	_ idem.Waiter    = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)

// Errors returned by Open and by a closed Store.
var (
	// ErrLocked reports that Open could not take the file's exclusive lock
	// within Options.LockTimeout: another Store, in this process or another,
	// has the file open.
	ErrLocked = errors.New("filestore: file is locked by another store")

	// ErrClosed reports a call on a Store after Close. It wraps
	// idem.ErrStoreUnavailable, so callers fail closed.
	ErrClosed = fmt.Errorf("filestore: store closed: %w", idem.ErrStoreUnavailable)
)

// Defaults applied by Open to zero Options fields.
const (
	// DefaultLockTimeout is how long Open waits for the file's lock.
	DefaultLockTimeout = time.Second
	// DefaultMaxBatchSize is the most writes one commit carries.
	DefaultMaxBatchSize = 256
	// DefaultSweepBatch is the most records one Sweep step removes.
	DefaultSweepBatch = 1000
)

// Options configures a Store. The zero value is ready for production use:
// the wall clock, fsync on every commit, no added batching delay.
type Options struct {
	// Now is the store's clock: lease and retention deadlines, fences and
	// record ages are judged by it. If nil, time.Now is used. Deadlines are
	// stored as wall-clock instants, so they keep their meaning across a
	// restart; the clock should not step back (a step back lengthens live
	// leases and retentions by as much).
	Now func() time.Time

	// MaxBatchDelay is how long a commit leader waits for more writes to
	// join its batch before committing. If zero, it does not wait: writes
	// that arrive while a commit is being synced to disk queue up and share
	// the next commit (group commit), which already amortises the sync under
	// load without delaying a lone writer.
	MaxBatchDelay time.Duration

	// MaxBatchSize is the most writes one commit carries. If zero,
	// DefaultMaxBatchSize (256) is used.
	MaxBatchSize int

	// MaxRecords caps the records the file holds; 0 means no limit. When the
	// store is full, Begin of a new key first removes dead records, and if
	// none is dead returns idem.ErrStoreFull (which wraps
	// idem.ErrStoreUnavailable). Live records are never evicted, and keys
	// that already have a record are never refused.
	MaxRecords int

	// MaxBytes caps the bytes the records take: for each record its key and
	// its encoded form (fingerprint, result and 30 bytes of header and
	// checksum), plus CompletionReserve bytes while it is in progress (room
	// for its result). 0 means no limit. The file itself is larger (bbolt
	// pages are partly filled, and the file never shrinks: freed pages are
	// reused), typically by up to about two times. It is enforced like
	// MaxRecords at Begin of a new key, and at Complete: a result whose
	// bytes beyond the reserve do not fit, even after dead records are
	// removed, is refused with idem.ErrStoreFull and the record stays in
	// progress, held by the caller (who may complete it with a smaller
	// result, or release it). A result of at most CompletionReserve bytes
	// always fits.
	MaxBytes int64

	// MaxRecordsPerScope and MaxBytesPerScope are per-scope quotas, so that
	// one caller cannot fill the store for all: the records (and bytes, as
	// for MaxBytes) whose keys share one scope (see idem.SplitRecordKey;
	// keys not made by idem.RecordKey count against the empty scope) are
	// capped, and Begin of a new key (or a Complete) beyond its scope's
	// quota returns idem.ErrStoreFull while other scopes still insert. 0
	// means no quota. With any byte limit or quota set, Open reads every
	// key and value length once to rebuild the counts, so they are right
	// after any crash.
	MaxRecordsPerScope int
	MaxBytesPerScope   int64

	// Abandon is how long an in-progress record is kept after its lease ended
	// without a takeover, completion or release (its executor died and
	// nobody retried). Until then it still fences and still refuses other
	// fingerprints; after it the record is dead and behaves as absent. If
	// zero, idem.DefaultRetention (24 h) is used.
	Abandon time.Duration

	// LockTimeout is how long Open waits for another store to release the
	// file's exclusive lock before returning ErrLocked. If zero,
	// DefaultLockTimeout (1 s) is used.
	LockTimeout time.Duration

	// SweepBatch is the most records Sweep removes in one commit, so a large
	// sweep never holds the writer for long. If zero, DefaultSweepBatch
	// (1000) is used.
	SweepBatch int

	// NoSync skips fsync on commit. UNSAFE: a crash of the machine (not only
	// of the process) can then lose or corrupt records, and an operation may
	// run twice. For tests and benchmarks only.
	NoSync bool
}

// Bucket and meta key names inside the bbolt file.
var (
	recordsBucket = []byte("records")
	metaBucket    = []byte("meta")
	metaFormat    = []byte("format") // file format version, uint64 big-endian
	metaCount     = []byte("count")  // records held, uint64 big-endian
	metaFence     = []byte("fence")  // highest fence issued, uint64 big-endian
)

// CompletionReserve is what an in-progress record reserves for its result
// under a byte limit: a Complete whose result is at most this size never
// fails for lack of room.
const CompletionReserve = 4096

// usage is what one scope holds.
type usage struct{ n, bytes int64 }

// scopeOf returns the scope of a record key, "" for keys not made by
// idem.RecordKey.
func scopeOf(k []byte) string {
	scope, _, _ := idem.SplitRecordKey(string(k))
	return scope
}

// charge is what r, stored under k, counts against the byte limits; a nil
// record counts nothing.
func charge(k []byte, r *record) int64 {
	if r == nil {
		return 0
	}
	c := int64(len(k) + headerLen + uvarintLen(uint64(len(r.fp))) + len(r.fp) +
		uvarintLen(uint64(len(r.result))) + len(r.result) + trailerLen)
	if r.state == idem.StateInProgress {
		c += CompletionReserve
	}
	return c
}

// fileFormat is the layout version of the whole file (buckets and meta).
const fileFormat = 1

// Store is a durable idem.Store kept in a local file (a bbolt B+tree) and its
// write-ahead log (the file's path with "-wal" appended; see the package
// documentation). It
// implements idem.Store, idem.Extender, idem.Sweeper, idem.Waiter and
// idem.Inspector, and is safe for concurrent use by many goroutines of one
// process. The file is locked while open, so a second Store (in this or
// another process) cannot open it.
//
// Every call that changes a record returns only after the change is synced
// to disk, so a record whose call returned survives kill -9 and power loss.
// Concurrent changes share one commit: one log frame and one sync (group
// commit). Calls that
// change nothing (replays, in-flight conflicts, mismatches, refused fences)
// read a snapshot and never wait for a sync.
//
// The store starts no goroutines: expired records behave as absent at once
// and are removed by a later Begin of their key or by Sweep, which the owner
// schedules.
type Store struct {
	db         *bolt.DB
	path       string
	now        func() time.Time
	maxDelay   time.Duration
	maxBatch   int
	maxRecords uint64
	abandon    int64

	// Byte limits and scope quotas; acct when any byte limit is set,
	// scoped when any quota is. bytes and scopes are owned by the commit
	// leader like count, and rebuilt by Open.
	maxBytes      int64
	maxScopeRecs  int64
	maxScopeBytes int64
	acct, scoped  bool
	bytes         atomic.Int64
	scopes        map[string]*usage

	sweepBatch int

	// Group commit queue. busy is true while a leader runs; every queued
	// write is then guaranteed a leader.
	qmu    sync.Mutex
	queue  []*op
	busy   bool
	closed bool

	// Owned by the current leader (mutations run only inside commits,
	// which run one at a time); read elsewhere through the atomics.
	count atomic.Uint64 // records held, including dead ones not yet removed
	fence uint64        // highest fence issued; only the leader touches it

	// minDeath is a lower bound of the wall-clock ns at which the first
	// record becomes dead; Begin on a full store sweeps only past it.
	minDeath atomic.Int64
	sweepMu  sync.Mutex // serialises Sweep and reclaim

	commits     atomic.Uint64 // batches committed (tests, benchmarks)
	checkpoints atomic.Uint64 // overlays written into the database

	// The write-ahead log (wal.go). w and walErr belong to the leader,
	// which holds commitMu while it commits (Close takes it to wait for the
	// commit in progress). overlay holds the records the log has and the
	// database may lack (nil value: deleted); the leader changes it under
	// omu, and readers hold omu.RLock across their lookup in the overlay
	// and their database snapshot, so a checkpoint cannot pass between the
	// two.
	commitMu sync.Mutex
	w        *wal
	walErr   error
	omu      sync.RWMutex
	overlay  map[string][]byte

	wmu   sync.Mutex
	waits map[string]*waitq

	closeOnce sync.Once
	closeErr  error
}

// Open opens the store file at path, creating it (and syncing its directory)
// when it does not exist, and takes the file's exclusive lock. It waits up
// to o.LockTimeout for the lock and then returns an error wrapping ErrLocked.
// The caller must Close the Store. Open starts no goroutines.
func Open(path string, o Options) (*Store, error) {
	timeout := o.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	if created {
		// A log without its database (the database was deleted, or never
		// created) belongs to nothing.
		if err := os.Remove(walPath(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("filestore: open %s: %w", path, err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        timeout,
		NoSync:         o.NoSync,
		NoFreelistSync: true, // the freelist is rebuilt on open: fewer pages per commit
		FreelistType:   bolt.FreelistMapType,
		NoStatistics:   true,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("filestore: open %s: %w (waited %v)", path, ErrLocked, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", path, err)
	}
	if created && !o.NoSync {
		// A new file's directory entry must reach the disk too, or a power
		// loss could lose the whole file and every record in it.
		if err := syncDir(filepath.Dir(path)); err != nil {
			db.Close()
			return nil, fmt.Errorf("filestore: open %s: sync directory: %w", path, err)
		}
	}
	s := &Store{
		db:         db,
		path:       path,
		now:        o.Now,
		maxDelay:   o.MaxBatchDelay,
		maxBatch:   o.MaxBatchSize,
		maxRecords: uint64(max(o.MaxRecords, 0)),
		abandon:    int64(o.Abandon),

		maxBytes:      max(o.MaxBytes, 0),
		maxScopeRecs:  int64(max(o.MaxRecordsPerScope, 0)),
		maxScopeBytes: max(o.MaxBytesPerScope, 0),
		scopes:        make(map[string]*usage),
		sweepBatch:    o.SweepBatch,
		waits:         make(map[string]*waitq),
		overlay:       make(map[string][]byte),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxBatch <= 0 {
		s.maxBatch = DefaultMaxBatchSize
	}
	if s.abandon <= 0 {
		s.abandon = int64(idem.DefaultRetention)
	}
	if s.sweepBatch <= 0 {
		s.sweepBatch = DefaultSweepBatch
	}
	s.minDeath.Store(math.MinInt64) // unknown until the first full sweep
	var (
		count, fence, lsn, epoch uint64
		dirty                    bool // the last run did not close cleanly: the log counts
	)
	err = db.Update(func(tx *bolt.Tx) error {
		rb, err := tx.CreateBucketIfNotExists(recordsBucket)
		if err != nil {
			return err
		}
		mb, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		if v := mb.Get(metaFormat); v == nil {
			if k, _ := rb.Cursor().First(); k != nil {
				return fmt.Errorf("%w: records without a format version", ErrCorrupt)
			}
		} else if len(v) != 8 || binary.BigEndian.Uint64(v) != fileFormat && binary.BigEndian.Uint64(v) != fileFormatWAL {
			return fmt.Errorf("filestore: unsupported file format %x", v)
		} else {
			dirty = binary.BigEndian.Uint64(v) == fileFormatWAL
		}
		// From here until a clean Close, the log may hold records the
		// database lacks: a version that does not read the log must refuse
		// the file.
		if err := mb.Put(metaFormat, u64(fileFormatWAL)); err != nil {
			return err
		}
		var ok bool
		if count, ok = getU64(mb, metaCount); !ok {
			return fmt.Errorf("%w: bad record count", ErrCorrupt)
		}
		if fence, ok = getU64(mb, metaFence); !ok {
			return fmt.Errorf("%w: bad fence mark", ErrCorrupt)
		}
		if lsn, ok = getU64(mb, metaLSN); !ok {
			return fmt.Errorf("%w: bad log sequence number", ErrCorrupt)
		}
		if epoch, ok = getU64(mb, metaEpoch); !ok {
			return fmt.Errorf("%w: bad log epoch", ErrCorrupt)
		}
		if epoch == 0 {
			// The first log of this file: frames of any other file's log
			// must never be read into it.
			epoch = randomEpoch()
			return mb.Put(metaEpoch, u64(epoch))
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("filestore: open %s: %w", path, err)
	}
	s.count.Store(count)
	s.fence = fence
	if err := s.recover(dirty, epoch, lsn, !o.NoSync); err != nil {
		if s.w != nil {
			s.w.f.Close()
		}
		db.Close()
		return nil, fmt.Errorf("filestore: open %s: %w", path, err)
	}
	s.acct = s.maxBytes > 0 || s.maxScopeBytes > 0
	s.scoped = s.maxScopeRecs > 0 || s.maxScopeBytes > 0
	if s.acct || s.scoped {
		if err := s.recount(); err != nil {
			s.w.f.Close()
			db.Close()
			return nil, fmt.Errorf("filestore: open %s: %w", path, err)
		}
	}
	return s, nil
}

// recover opens the log and, when the last run did not close cleanly
// (dirty), writes the frames of epoch that follow the checkpoint at lsn
// into the database, with the count and fence of the last one. After a
// clean Close the database holds every record, the log is not read, and a
// missing log is simply created.
func (s *Store) recover(dirty bool, epoch, lsn uint64, sync bool) error {
	w, err := openWAL(walPath(s.path), dirty, sync)
	if err != nil {
		return err
	}
	s.w = w
	w.lsn, w.epoch = lsn, epoch
	if !dirty {
		return nil // a clean Close left every record in the database
	}
	frames, err := w.readFrames(lsn)
	if err != nil {
		return fmt.Errorf("read the write-ahead log: %w", err)
	}
	if len(frames) == 0 {
		return nil
	}
	for _, f := range frames {
		for _, c := range f.changes {
			s.overlay[string(c.key)] = c.val
		}
	}
	last := frames[len(frames)-1]
	w.lsn = last.lsn
	if err := s.flush(nil, last.count, last.fence); err != nil {
		return fmt.Errorf("write the write-ahead log into the database: %w", err)
	}
	s.count.Store(last.count)
	s.fence = last.fence
	return nil
}

// recount rebuilds the byte and per-scope counts from the file, so that
// they hold whatever happened before (a crash, a run without limits). Only
// key and value lengths are read: large values are not paged in. A value
// too short to be a record counts its length.
func (s *Store) recount() error {
	return s.db.View(func(tx *bolt.Tx) error {
		var total int64
		c := tx.Bucket(recordsBucket).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			n := int64(len(k) + len(v))
			if len(v) > 1 && idem.State(v[1]) == idem.StateInProgress {
				n += CompletionReserve
			}
			total += n
			if s.scoped {
				scope := scopeOf(k)
				u := s.scopes[scope]
				if u == nil {
					u = new(usage)
					s.scopes[strings.Clone(scope)] = u
				}
				u.n++
				u.bytes += n
			}
		}
		s.bytes.Store(total)
		return nil
	})
}

// syncDir fsyncs a directory so that entries created in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// randomEpoch returns a random non-zero log epoch.
func randomEpoch() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		if v := binary.BigEndian.Uint64(b[:]); v != 0 {
			return v
		}
	}
}

// getU64 reads a uint64 meta value; a missing value is zero.
func getU64(b *bolt.Bucket, k []byte) (uint64, bool) {
	v := b.Get(k)
	if v == nil {
		return 0, true
	}
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// Path returns the file the store was opened with. Its write-ahead log is
// Path()+"-wal".
func (s *Store) Path() string { return s.path }

// Len returns the number of records in the file. It counts records that died
// (completed past retention, abandoned) but were not yet removed by Sweep or
// by a later Begin of their key, so it is an upper bound of the live records.
func (s *Store) Len() int { return int(s.count.Load()) }

// Close waits for the commit in progress, if any, closes the file and
// releases its lock. Calls queued behind it, and calls made after Close,
// return an error wrapping ErrClosed; blocked Waits return at once. Close is
// safe to call more than once; later calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.qmu.Lock()
		s.closed = true
		s.qmu.Unlock()
		s.wmu.Lock()
		for _, q := range s.waits {
			close(q.ch)
		}
		s.waits = nil // later Waits return ErrClosed
		s.wmu.Unlock()
		// Wait for the commit in progress; no other starts (closed is set).
		s.commitMu.Lock()
		defer s.commitMu.Unlock()
		var err error
		if s.walErr == nil {
			// A clean close: everything into the database, and the format
			// back to the one a version without the log reads.
			if err = s.checkpoint(); err == nil {
				err = s.db.Update(func(tx *bolt.Tx) error {
					return tx.Bucket(metaBucket).Put(metaFormat, u64(fileFormat))
				})
			}
		}
		s.closeErr = errors.Join(err, s.w.f.Close(), s.db.Close())
	})
	return s.closeErr
}

// clock returns the store clock in Unix nanoseconds.
func (s *Store) clock() int64 { return s.now().UnixNano() }

// add returns t+d, saturating instead of overflowing.
func add(t int64, d time.Duration) int64 {
	if d > 0 && t > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	if d < 0 && t < math.MinInt64-int64(d) {
		return math.MinInt64
	}
	return t + int64(d)
}

// death returns the instant r becomes dead and behaves as absent.
func (s *Store) death(r *record) int64 {
	if r.state == idem.StateCompleted {
		return r.deadline
	}
	return add(r.deadline, time.Duration(s.abandon))
}

// noteDeath lowers minDeath to r's death if it is earlier.
func (s *Store) noteDeath(r *record) {
	d := s.death(r)
	for {
		cur := s.minDeath.Load()
		if d >= cur || s.minDeath.CompareAndSwap(cur, d) {
			return
		}
	}
}

// unavailable wraps a failure of the file or the database.
func unavailable(op, key string, err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) || errors.Is(err, ErrClosed) {
		return fmt.Errorf("filestore: %s %q: %w", op, key, ErrClosed)
	}
	if errors.Is(err, idem.ErrStoreUnavailable) {
		return fmt.Errorf("filestore: %s %q: %w", op, key, err)
	}
	return fmt.Errorf("filestore: %s %q: %w: %w", op, key, idem.ErrStoreUnavailable, err)
}

// checkKey refuses keys bbolt cannot store.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("filestore: %w: empty", idem.ErrInvalidKey)
	}
	if len(key) > bolt.MaxKeySize {
		return fmt.Errorf("filestore: %w: %d bytes, longer than %d", idem.ErrInvalidKey, len(key), bolt.MaxKeySize)
	}
	return nil
}

// maxValue is the largest result or fingerprint accepted on its own; put
// also refuses an encoded record over bbolt's value limit.
const maxValue = bolt.MaxValueSize - 64

// readRecord returns the record stored under key, or nil when there is
// none: from the overlay, else from the read transaction. Call it only
// inside view, which holds the overlay's read lock.
func (s *Store) readRecord(tx *bolt.Tx, key []byte) (*record, error) {
	v, ok := s.overlay[string(key)]
	if !ok {
		v = tx.Bucket(recordsBucket).Get(key)
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

// view runs fn in a read-only snapshot of the database, holding the
// overlay's read lock (see Store.omu), so that readRecord sees the overlay
// and the snapshot as of one instant.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	s.omu.RLock()
	defer s.omu.RUnlock()
	return s.viewDatabase(fn)
}

// viewDatabase runs fn in a read-only snapshot of the database alone,
// without the records still only in the overlay (Sweep's scans).
func (s *Store) viewDatabase(fn func(tx *bolt.Tx) error) error {
	s.qmu.Lock()
	closed := s.closed
	s.qmu.Unlock()
	if closed {
		return ErrClosed
	}
	return s.db.View(fn)
}

// decision is what begin decided for one record.
type decision struct {
	b     idem.Begun
	write *record // the record to store, or nil when nothing changes
	fresh bool    // write creates a record (absent or dead before)
	dead  bool    // a dead record was found (and is replaced or ignored)
}

// decide applies the begin step to r (nil when absent) at now. A fresh
// record's fence is filled in by the caller, which owns the fence mark.
func (s *Store) decide(r *record, fp []byte, lease time.Duration, now int64) decision {
	var d decision
	if r != nil && now >= s.death(r) {
		r, d.dead = nil, true
	}
	switch {
	case r == nil:
		d.fresh = true
		d.write = &record{state: idem.StateInProgress, start: now, deadline: add(now, lease), fp: bytes.Clone(fp), result: []byte{}}
		d.b = idem.Begun{Outcome: idem.Acquired}
	case !bytes.Equal(r.fp, fp):
		d.b = idem.Begun{Outcome: idem.Mismatch}
	case r.state == idem.StateCompleted:
		res := r.result
		if res == nil {
			res = []byte{}
		}
		d.b = idem.Begun{Outcome: idem.Replay, Result: res}
	case now < r.deadline:
		d.b = idem.Begun{Outcome: idem.InFlight, Fence: r.fence, LeaseLeft: time.Duration(r.deadline - now)}
	default: // in progress, lease ended: take over
		d.write = &record{state: idem.StateInProgress, fence: r.fence + 1, start: now, deadline: add(now, lease), fp: r.fp, result: []byte{}}
		d.b = idem.Begun{Outcome: idem.Acquired, Fence: r.fence + 1, Takeover: true}
	}
	return d
}

// Begin applies the begin step of the record state machine (see idem.Store).
// A fresh record's fence exceeds every fence the file has issued and is at
// least the store clock in Unix microseconds; a takeover's fence is the
// previous fence plus one. A dead record (completed past retention, or
// abandoned past Options.Abandon) counts as none. Fingerprints are compared
// byte for byte, so nil and empty are equal.
//
// Begin first reads a snapshot: a replay, an in-flight conflict or a
// mismatch returns from it without writing or syncing. Only an acquisition
// is written, and it is decided again inside the commit, so the
// step stays atomic. Begin of a new key on a full store returns
// idem.ErrStoreFull. fp is copied; a Replay's Result is a fresh copy.
func (s *Store) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if err := ctx.Err(); err != nil {
		return idem.Begun{}, err
	}
	if err := checkKey(key); err != nil {
		return idem.Begun{}, err
	}
	if len(fp) > maxValue {
		return idem.Begun{}, fmt.Errorf("filestore: begin %q: fingerprint of %d bytes is too large", key, len(fp))
	}
	k := []byte(key)
	var d decision
	err := s.view(func(tx *bolt.Tx) error {
		r, err := s.readRecord(tx, k)
		if err != nil {
			return err
		}
		d = s.decide(r, fp, lease, s.clock())
		return nil
	})
	if err != nil {
		return idem.Begun{}, unavailable("begin", key, err)
	}
	if d.write == nil {
		return d.b, nil
	}
	for reclaimed := false; ; reclaimed = true {
		err = s.write(ctx, func(w *wtx) error {
			r, err := w.get(k)
			if err != nil {
				return err
			}
			now := s.clock()
			d = s.decide(r, fp, lease, now)
			if d.write == nil {
				return nil // decided otherwise since the snapshot
			}
			if d.fresh {
				var dn int64
				if r == nil {
					dn = 1
				}
				if !w.fits(k, dn, charge(k, d.write)-charge(k, r)) {
					return idem.ErrStoreFull
				}
				f := max(w.fence+1, uint64(max(now/1000, 0)))
				if r != nil {
					f = max(f, r.fence+1)
				}
				d.write.fence, d.b.Fence = f, f
			}
			w.fence = max(w.fence, d.write.fence)
			if d.dead {
				w.notify(key) // the dead record is gone
			}
			return w.put(k, d.write, r)
		})
		if errors.Is(err, idem.ErrStoreFull) && !reclaimed && s.reclaim(ctx) {
			continue
		}
		break
	}
	if err != nil {
		if errors.Is(err, idem.ErrStoreFull) || ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return idem.Begun{}, err
		}
		return idem.Begun{}, unavailable("begin", key, err)
	}
	return d.b, nil
}

// held reports whether fence holds r (in progress with that fence, and not
// dead). A record whose lease ended
// but which nobody took over is still held by its fence.
func (s *Store) held(r *record, fence uint64, now int64) bool {
	return r != nil && r.state == idem.StateInProgress && r.fence == fence && now < s.death(r)
}

// change runs a fenced change: a snapshot read refuses a fence that does
// not hold the record without writing; otherwise fn runs on the record in a
// commit, after the fence is checked again there.
func (s *Store) change(ctx context.Context, op, key string, fence uint64, fn func(w *wtx, k []byte, r *record, now int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	k := []byte(key)
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		r, err := s.readRecord(tx, k)
		ok = err == nil && s.held(r, fence, s.clock())
		return err
	})
	if err != nil {
		return unavailable(op, key, err)
	}
	if !ok {
		return idem.ErrLeaseLost
	}
	err = s.write(ctx, func(w *wtx) error {
		r, err := w.get(k)
		if err != nil {
			return err
		}
		now := s.clock()
		if !s.held(r, fence, now) {
			return idem.ErrLeaseLost
		}
		return fn(w, k, r, now)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, idem.ErrLeaseLost):
		return idem.ErrLeaseLost
	case errors.Is(err, idem.ErrStoreFull):
		return fmt.Errorf("filestore: %s %q: %w", op, key, idem.ErrStoreFull)
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return err
	}
	return unavailable(op, key, err)
}

// Complete stores a copy of result for the in-progress record held by fence,
// marks it completed and keeps it for retention. Otherwise it returns
// idem.ErrLeaseLost and changes nothing. The lease need not be live: the
// fence alone decides, so an executor whose lease ended but was not taken
// over may still complete. Complete returns once the result is synced to
// disk, and wakes the Waits blocked on key.
func (s *Store) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if len(result) > maxValue {
		return fmt.Errorf("filestore: complete %q: result of %d bytes is too large", key, len(result))
	}
	res := bytes.Clone(result)
	if res == nil {
		res = []byte{}
	}
	complete := func(w *wtx, k []byte, r *record, now int64) error {
		c := *r
		c.state = idem.StateCompleted
		c.result = res
		c.deadline = add(now, retention)
		if !w.fits(k, 0, charge(k, &c)-charge(k, r)) {
			return idem.ErrStoreFull
		}
		w.notify(key)
		return w.put(k, &c, r)
	}
	err := s.change(ctx, "complete", key, fence, complete)
	if errors.Is(err, idem.ErrStoreFull) && s.reclaim(ctx) {
		err = s.change(ctx, "complete", key, fence, complete)
	}
	return err
}

// Release removes the in-progress record held by fence so that the next
// Begin executes. Otherwise it returns idem.ErrLeaseLost and changes nothing.
// Release wakes the Waits blocked on key.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	return s.change(ctx, "release", key, fence, func(w *wtx, k []byte, r *record, now int64) error {
		w.notify(key)
		return w.del(k, r)
	})
}

// Extend sets the lease of the in-progress record held by fence to end lease
// from now. Otherwise it returns idem.ErrLeaseLost and changes nothing. A
// lease that ended without a takeover may be extended again.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	return s.change(ctx, "extend", key, fence, func(w *wtx, k []byte, r *record, now int64) error {
		c := *r
		c.deadline = add(now, lease)
		return w.put(k, &c, r)
	})
}

// Get returns a copy of key's live record, or ok == false when there is none
// (never created, released, or dead). An in-progress record whose lease
// ended is live, with Remaining zero. Get reads a snapshot and changes
// nothing.
func (s *Store) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return idem.Record{}, false, err
	}
	if err := checkKey(key); err != nil {
		return idem.Record{}, false, err
	}
	var (
		rec idem.Record
		ok  bool
	)
	err := s.view(func(tx *bolt.Tx) error {
		r, err := s.readRecord(tx, []byte(key))
		if err != nil || r == nil {
			return err
		}
		now := s.clock()
		if now >= s.death(r) {
			return nil
		}
		ok = true
		rec = idem.Record{
			State:       r.state,
			Fingerprint: r.fp,
			Fence:       r.fence,
			Age:         time.Duration(now - r.start),
			Remaining:   time.Duration(max(r.deadline-now, 0)),
		}
		if r.state == idem.StateCompleted {
			rec.Result = r.result
		}
		return nil
	})
	if err != nil {
		return idem.Record{}, false, unavailable("get", key, err)
	}
	return rec, ok, nil
}
