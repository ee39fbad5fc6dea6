package filestore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

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
	DefaultLockTimeout  = time.Second
	DefaultMaxBatchSize = 256
	DefaultSweepBatch   = 1000
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

// The schema. Records are kept as encoded blobs (see encodeRecord) keyed by
// the store key's bytes; meta holds the file format, the record count and
// the highest fence issued.
const schema = `
CREATE TABLE IF NOT EXISTS idem_records (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idem_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
`

// Statements.
const (
	sqlGet     = `SELECT v FROM idem_records WHERE k = ?`
	sqlPut     = `INSERT INTO idem_records (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`
	sqlDel     = `DELETE FROM idem_records WHERE k = ?`
	sqlScan    = `SELECT k, v FROM idem_records WHERE k > ? ORDER BY k LIMIT ?`
	sqlMetaGet = `SELECT value FROM idem_meta WHERE name = ?`
	sqlMetaPut = `INSERT INTO idem_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`
)

// Meta names.
const (
	metaFormat = "format" // file format version
	metaCount  = "count"  // records held
	metaFence  = "fence"  // highest fence issued (as int64 bits)
)

// fileFormat is the layout version of the whole file (schema and meta).
const fileFormat = 1

// maxKeyLen is the longest key accepted, in bytes.
const maxKeyLen = 1 << 15

// maxValue is the largest result or fingerprint accepted: the encoded record
// must stay below SQLite's default blob limit of 10^9 bytes.
const maxValue = 1_000_000_000 - maxKeyLen - 1024

// Store is a durable idem.Store kept in one local SQLite file (pure Go, no
// cgo). It implements idem.Store, idem.Extender, idem.Sweeper, idem.Waiter
// and idem.Inspector, and is safe for concurrent use by many goroutines of
// one process. The file is locked while open, so a second Store (in this or
// another process) cannot open it.
//
// Every call that changes a record returns only after the change is synced
// to disk, so a record whose call returned survives kill -9 and power loss.
// Concurrent changes share one transaction and one sync (group commit).
// Calls that change nothing (replays, in-flight conflicts, mismatches,
// refused fences) read a snapshot and never wait for a sync.
//
// The store starts no goroutines of its own: expired records behave as
// absent at once and are removed by a later Begin of their key or by Sweep,
// which the owner schedules.
type Store struct {
	lock       *os.File // holds the flock; closed last
	wdb        *sql.DB  // one connection: the writer
	wconn      *sql.Conn
	rdb        *sql.DB // readers (query_only)
	rget       *sql.Stmt
	rscan      *sql.Stmt
	wget       *sql.Stmt
	wput       *sql.Stmt
	wdel       *sql.Stmt
	wmeta      *sql.Stmt
	path       string
	now        func() time.Time
	maxDelay   time.Duration
	maxBatch   int
	maxRecords uint64
	abandon    int64
	sweepBatch int

	// Group commit queue. busy is true while a leader runs; every queued
	// write is then guaranteed a leader.
	qmu    sync.Mutex
	queue  []*op
	busy   bool
	closed bool

	// Changed only by the current leader (commits run one at a time).
	count atomic.Uint64 // records held, including dead ones not yet removed
	fence uint64        // highest fence issued

	// minDeath is a lower bound of the wall-clock ns at which the first
	// record becomes dead; Begin on a full store sweeps only past it.
	minDeath atomic.Int64
	sweepMu  sync.Mutex // serialises Sweep and reclaim

	commits atomic.Uint64 // write transactions committed (tests, benchmarks)

	wmu   sync.Mutex
	waits map[string]*waitq

	closeOnce sync.Once
	closeErr  error
}

// Open opens the store file at path, creating it when it does not exist,
// and takes the file's exclusive lock. It waits up to o.LockTimeout for the
// lock and then returns an error wrapping ErrLocked. The caller must Close
// the Store. Open starts no goroutines.
//
// The file is an SQLite database in WAL mode (so PATH-wal and PATH-shm sit
// beside it while it is open) with synchronous=FULL: each commit is synced
// before the calls in it return.
func Open(path string, o Options) (_ *Store, err error) {
	timeout := o.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", path, err)
	}
	lock, created, err := lockFile(abs, timeout)
	if err != nil {
		return nil, fmt.Errorf("filestore: open %s: %w", path, err)
	}
	s := &Store{
		lock:       lock,
		path:       path,
		now:        o.Now,
		maxDelay:   o.MaxBatchDelay,
		maxBatch:   o.MaxBatchSize,
		maxRecords: uint64(max(o.MaxRecords, 0)),
		abandon:    int64(o.Abandon),
		sweepBatch: o.SweepBatch,
		waits:      make(map[string]*waitq),
	}
	defer func() {
		if err != nil {
			s.closeAll()
			err = fmt.Errorf("filestore: open %s: %w", path, err)
		}
	}()
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

	sync := "FULL"
	if o.NoSync {
		sync = "OFF"
	}
	// A file: URI, so that any byte in the path is escaped; the query
	// holds the driver's settings for every connection.
	uri := (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String()
	params := "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + sync + ")"
	ctx := context.Background()

	if s.wdb, err = sql.Open("sqlite", uri+params); err != nil {
		return nil, err
	}
	s.wdb.SetMaxOpenConns(1)
	if s.wconn, err = s.wdb.Conn(ctx); err != nil {
		return nil, err
	}
	count, fence, err := s.setup(ctx)
	if err != nil {
		return nil, err
	}
	s.count.Store(count)
	s.fence = fence
	for _, p := range []struct {
		st **sql.Stmt
		q  string
	}{{&s.wget, sqlGet}, {&s.wput, sqlPut}, {&s.wdel, sqlDel}, {&s.wmeta, sqlMetaPut}} {
		if *p.st, err = s.wconn.PrepareContext(ctx, p.q); err != nil {
			return nil, err
		}
	}
	if created && !o.NoSync {
		// The new file's directory entry (and the WAL's) must reach the
		// disk too, or a power loss could lose every record in it.
		if err := syncDir(filepath.Dir(abs)); err != nil {
			return nil, fmt.Errorf("sync directory: %w", err)
		}
	}
	if s.rdb, err = sql.Open("sqlite", uri+params+"&_pragma=query_only(1)"); err != nil {
		return nil, err
	}
	s.rdb.SetMaxIdleConns(4)
	if s.rget, err = s.rdb.PrepareContext(ctx, sqlGet); err != nil {
		return nil, err
	}
	if s.rscan, err = s.rdb.PrepareContext(ctx, sqlScan); err != nil {
		return nil, err
	}
	return s, nil
}

// setup creates the schema on a new file, checks the format of an existing
// one, and reads the record count and the fence mark.
func (s *Store) setup(ctx context.Context) (count, fence uint64, err error) {
	c := s.wconn
	if _, err := c.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return 0, 0, err
	}
	defer func() {
		if err != nil {
			c.ExecContext(ctx, "ROLLBACK")
		}
	}()
	if _, err := c.ExecContext(ctx, schema); err != nil {
		return 0, 0, err
	}
	meta := func(name string) (int64, bool, error) {
		var v int64
		err := c.QueryRowContext(ctx, sqlMetaGet, name).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, false, nil
		}
		return v, err == nil, err
	}
	format, ok, err := meta(metaFormat)
	if err != nil {
		return 0, 0, err
	}
	if !ok {
		var n int
		if err := c.QueryRowContext(ctx, `SELECT count(*) FROM idem_records`).Scan(&n); err != nil {
			return 0, 0, err
		}
		if n != 0 {
			return 0, 0, fmt.Errorf("%w: records without a format version", ErrCorrupt)
		}
		if _, err := c.ExecContext(ctx, sqlMetaPut, metaFormat, fileFormat); err != nil {
			return 0, 0, err
		}
	} else if format != fileFormat {
		return 0, 0, fmt.Errorf("filestore: unsupported file format %d", format)
	}
	n, _, err := meta(metaCount)
	if err != nil {
		return 0, 0, err
	}
	f, _, err := meta(metaFence)
	if err != nil {
		return 0, 0, err
	}
	if n < 0 {
		return 0, 0, fmt.Errorf("%w: record count %d", ErrCorrupt, n)
	}
	if _, err := c.ExecContext(ctx, "COMMIT"); err != nil {
		return 0, 0, err
	}
	return uint64(n), uint64(f), nil
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

// Path returns the file the store was opened with.
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
		s.closeErr = s.closeAll()
	})
	return s.closeErr
}

// closeAll closes whatever Open opened, the lock last. Closing the writer
// waits for a commit in progress.
func (s *Store) closeAll() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.rget, s.rscan, s.wget, s.wput, s.wdel, s.wmeta} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.wconn != nil {
		errs = append(errs, s.wconn.Close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
	}
	return errors.Join(errs...)
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
	if errors.Is(err, sql.ErrConnDone) || errors.Is(err, ErrClosed) || err != nil && strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("filestore: %s %q: %w", op, key, ErrClosed)
	}
	if errors.Is(err, idem.ErrStoreUnavailable) {
		return fmt.Errorf("filestore: %s %q: %w", op, key, err)
	}
	return fmt.Errorf("filestore: %s %q: %w: %w", op, key, idem.ErrStoreUnavailable, err)
}

// checkKey refuses keys that are empty or unreasonably long.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("filestore: %w: empty", idem.ErrInvalidKey)
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("filestore: %w: %d bytes, longer than %d", idem.ErrInvalidKey, len(key), maxKeyLen)
	}
	return nil
}

// read returns key's record from the latest committed snapshot, or nil when
// there is none. It never waits for a commit.
func (s *Store) read(ctx context.Context, k []byte) (*record, error) {
	s.qmu.Lock()
	closed := s.closed
	s.qmu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	var v []byte
	err := s.rget.QueryRowContext(context.WithoutCancel(ctx), k).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := decodeRecord(v)
	if err != nil {
		return nil, err
	}
	return &r, nil
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
// is written, and it is decided again inside the write transaction, so the
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
	r, err := s.read(ctx, k)
	if err != nil {
		return idem.Begun{}, unavailable("begin", key, err)
	}
	d := s.decide(r, fp, lease, s.clock())
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
				if r == nil && s.maxRecords > 0 && w.count >= s.maxRecords {
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
			return w.put(k, d.write, r == nil)
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
// write transaction, after the fence is checked again there.
func (s *Store) change(ctx context.Context, op, key string, fence uint64, fn func(w *wtx, k []byte, r *record, now int64) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	k := []byte(key)
	r, err := s.read(ctx, k)
	if err != nil {
		return unavailable(op, key, err)
	}
	if !s.held(r, fence, s.clock()) {
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
	return s.change(ctx, "complete", key, fence, func(w *wtx, k []byte, r *record, now int64) error {
		c := *r
		c.state = idem.StateCompleted
		c.result = res
		c.deadline = add(now, retention)
		w.notify(key)
		return w.put(k, &c, false)
	})
}

// Release removes the in-progress record held by fence so that the next
// Begin executes. Otherwise it returns idem.ErrLeaseLost and changes nothing.
// Release wakes the Waits blocked on key.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	return s.change(ctx, "release", key, fence, func(w *wtx, k []byte, r *record, now int64) error {
		w.notify(key)
		return w.del(k)
	})
}

// Extend sets the lease of the in-progress record held by fence to end lease
// from now. Otherwise it returns idem.ErrLeaseLost and changes nothing. A
// lease that ended without a takeover may be extended again.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	return s.change(ctx, "extend", key, fence, func(w *wtx, k []byte, r *record, now int64) error {
		c := *r
		c.deadline = add(now, lease)
		return w.put(k, &c, false)
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
	r, err := s.read(ctx, []byte(key))
	if err != nil {
		return idem.Record{}, false, unavailable("get", key, err)
	}
	now := s.clock()
	if r == nil || now >= s.death(r) {
		return idem.Record{}, false, nil
	}
	rec := idem.Record{
		State:       r.state,
		Fingerprint: r.fp,
		Fence:       r.fence,
		Age:         time.Duration(now - r.start),
		Remaining:   time.Duration(max(r.deadline-now, 0)),
	}
	if r.state == idem.StateCompleted {
		rec.Result = r.result
	}
	return rec, true, nil
}
