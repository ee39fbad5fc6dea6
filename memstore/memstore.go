package memstore

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// Options configures a Store. The zero value is valid: no record limit, the
// process clock, and a shard count derived from GOMAXPROCS.
type Options struct {
	// MaxRecords caps the records the store holds; 0 means no limit. When
	// the store is full, Begin of a NEW key returns idem.ErrStoreFull, which
	// wraps idem.ErrStoreUnavailable (HTTP 503). Live records are never
	// evicted; dead ones (completed past retention, abandoned in progress
	// past Abandon) are reclaimed to make room. Keys that already have a
	// record are never refused. Making room sweeps the whole store, and
	// only when some record may have died since the last sweep; a large
	// store under steady churn should also be swept on a schedule.
	MaxRecords int

	// MaxBytes caps the memory the records take, as estimated by the store:
	// for each record its key, fingerprint and result plus RecordOverhead
	// bytes, plus CompletionReserve bytes while it is in progress (room for
	// its result). 0 means no limit. It is enforced like MaxRecords at
	// Begin of a new key, and also at Complete: a result whose bytes beyond
	// the reserve do not fit is refused with idem.ErrStoreFull and the
	// record stays in progress, held by the caller (who may complete it
	// with a smaller result, or release it). A result of at most
	// CompletionReserve bytes always fits.
	MaxBytes int64

	// MaxRecordsPerScope and MaxBytesPerScope are per-scope quotas, so that
	// one caller cannot fill the store for all: the records (and estimated
	// bytes, as for MaxBytes) whose keys share one scope (see
	// idem.SplitRecordKey; keys not made by idem.RecordKey count against
	// the empty scope) are capped, and Begin of a new key (or a Complete)
	// beyond its scope's quota returns idem.ErrStoreFull while other scopes
	// still insert. 0 means no quota.
	MaxRecordsPerScope int
	MaxBytesPerScope   int64

	// Now is the store clock. If nil, the process clock is used: time.Now
	// at New, then the monotonic time elapsed since, so wall-clock steps do
	// not move deadlines. Tests inject a fake clock, which must not step
	// back: deadlines and fences are derived from it.
	Now func() time.Time

	// Shards is the number of lock shards. If zero, a power of two near
	// 4*GOMAXPROCS, at least 16, is used. Other values are rounded up to a
	// power of two, and capped at 65536.
	Shards int

	// Abandon is how long an in-progress record is kept after its lease
	// ended without a takeover, completion or release (its executor
	// crashed and nobody retried). Until then the record still fences,
	// still refuses other fingerprints with idem.Mismatch and can be taken
	// over; after it, the record is dead and Sweep or a later Begin removes
	// it. If zero, idem.DefaultRetention (24 h) is used.
	Abandon time.Duration
}

// Estimates used by Options.MaxBytes and Options.MaxBytesPerScope.
const (
	// RecordOverhead is the memory a record is estimated to take besides
	// its key, fingerprint and result (map entry, record struct, headers).
	RecordOverhead = 128
	// CompletionReserve is what an in-progress record reserves for its
	// result: a Complete whose result is at most this size never fails for
	// lack of room.
	CompletionReserve = 4096
)

// Store is an in-memory idem.Store for single-process services and tests.
// It implements idem.Store, idem.Extender, idem.Sweeper, idem.Waiter and
// idem.Inspector, and is safe for concurrent use.
//
// Records live in a fixed number of shards, each a map guarded by its own
// mutex, so operations on different keys rarely contend. Expired records are
// removed lazily when a mutating call touches them, and in bulk by Sweep,
// which the owner schedules: the store starts no goroutines.
//
// Records are lost when the process exits: a Store gives at-most-once
// execution only within one process lifetime.
type Store struct {
	now     func() time.Time // Options.Now; nil for the process clock
	epoch   time.Time        // store clock at New; clock() is time since epoch
	epochUS int64            // epoch in Unix microseconds: the fence base
	max     int64            // MaxRecords, 0 for no limit
	abandon int64            // Options.Abandon in nanoseconds
	seed    maphash.Seed
	mask    uint64
	shards  []shard

	// Byte and per-scope budgets (0: none); acct is true when any is set,
	// and records then carry their charge.
	maxBytes      int64
	maxScopeRecs  int64
	maxScopeBytes int64
	acct          bool
	scoped        bool
	used          atomic.Int64 // estimated bytes held, kept when maxBytes > 0
	stripes       []scopeStripe

	// count is the number of records held (live or dead but not yet
	// removed), kept only when max > 0 to enforce the limit. Each shard
	// also counts its own, for Len, without a contended global counter.
	count atomic.Int64

	// minDeath is a lower bound of the store-clock instant at which the
	// first record held becomes dead. Begin on a full store sweeps only
	// when it has passed, so a full store of live records costs no scans.
	minDeath atomic.Int64
	sweepMu  sync.Mutex // serialises sweeps (Sweep and reclaim)
}

// scopeStripe holds the usage of the scopes that hash to it. Its lock is
// taken after a shard lock, never before one.
type scopeStripe struct {
	mu sync.Mutex
	m  map[string]*usage
	_  [64]byte
}

// usage is what one scope holds.
type usage struct{ n, bytes int64 }

type shard struct {
	mu sync.Mutex
	m  map[string]*record
	// hwm is the highest fence the shard has issued. Fresh fences exceed
	// it, so a key's fences keep growing after its record is deleted, even
	// within one microsecond.
	hwm uint64
	n   atomic.Int64 // records in m; written under mu, read by Len
	_   [64]byte     // keep neighbouring shards' locks off one cache line
}

// record is one key's state. Times are store-clock nanoseconds since epoch.
type record struct {
	state    idem.State
	fence    uint64
	start    int64  // when the current fence acquired the record
	deadline int64  // lease end (in progress) or retention end (completed)
	fp       []byte // points into fpBuf when it fits
	result   []byte
	wait     *waitq // nil unless a Wait is blocked on the record
	charge   int64  // estimated bytes counted for the record (when acct)
	fpBuf    [32]byte
}

// waitq is the wake-up channel of the Waits blocked on one record.
type waitq struct {
	ch chan struct{}
	n  int // waiters not yet woken
}

// maxShards caps Options.Shards.
const maxShards = 1 << 16

// New returns an empty Store configured by o. It starts no goroutines.
func New(o Options) *Store {
	now := o.Now // nil means time.Now; clock then reads only the monotonic clock
	n := o.Shards
	if n <= 0 {
		n = max(16, 4*runtime.GOMAXPROCS(0))
	}
	n = 1 << bits.Len(uint(min(n, maxShards)-1)) // round up to a power of two
	abandon := o.Abandon
	if abandon <= 0 {
		abandon = idem.DefaultRetention
	}
	epoch := time.Now()
	if now != nil {
		epoch = now()
	}
	s := &Store{
		now:     now,
		epoch:   epoch,
		epochUS: epoch.UnixMicro(),
		max:     int64(max(o.MaxRecords, 0)),

		abandon: int64(abandon),
		seed:    maphash.MakeSeed(),
		mask:    uint64(n - 1),
		shards:  make([]shard, n),

		maxBytes:      max(o.MaxBytes, 0),
		maxScopeRecs:  int64(max(o.MaxRecordsPerScope, 0)),
		maxScopeBytes: max(o.MaxBytesPerScope, 0),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*record)
	}
	s.scoped = s.maxScopeRecs > 0 || s.maxScopeBytes > 0
	s.acct = s.maxBytes > 0 || s.maxScopeBytes > 0
	if s.scoped {
		s.stripes = make([]scopeStripe, n)
		for i := range s.stripes {
			s.stripes[i].m = make(map[string]*usage)
		}
	}
	s.minDeath.Store(math.MaxInt64)
	return s
}

// Len returns the number of records held. It counts records that have died
// (completed past retention, abandoned) but were not yet removed by Sweep or
// by a later call on their key, so at rest it is an upper bound of the live
// records. It sums the shards one at a time without locking them, so while
// other calls add and remove records it is approximate.
func (s *Store) Len() int {
	n := int64(0)
	for i := range s.shards {
		n += s.shards[i].n.Load()
	}
	return int(n)
}

// clock returns the store clock as nanoseconds since epoch.
func (s *Store) clock() int64 {
	if s.now == nil {
		return int64(time.Since(s.epoch)) // monotonic, and cheaper than time.Now
	}
	return int64(s.now().Sub(s.epoch))
}

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)&s.mask]
}

// add returns t+d, saturating instead of overflowing.
func add(t int64, d time.Duration) int64 {
	if d > 0 && t > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return t + int64(d)
}

// death returns the instant r becomes dead.
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

// wake releases the Waits blocked on r. The shard lock must be held.
func (r *record) wake() {
	if r.wait != nil {
		close(r.wait.ch)
		r.wait = nil
	}
}

// lookup returns key's live record, or nil. A dead record is removed. The
// shard lock must be held.
func (s *Store) lookup(sh *shard, key string, now int64) *record {
	r := sh.m[key]
	if r != nil && now >= s.death(r) {
		delete(sh.m, key)
		s.removed(sh, key, r)
		r.wake()
		return nil
	}
	return r
}

// nextFence returns a fresh fence for sh: above every fence the shard has
// issued, and at least the store clock in Unix microseconds. The shard lock
// must be held.
func (s *Store) nextFence(sh *shard, now int64) uint64 {
	f := sh.hwm + 1
	if c := s.epochUS + now/1000; c > 0 && uint64(c) > f {
		f = uint64(c)
	}
	sh.hwm = f
	return f
}

// charge is the estimated memory of a record with key, fp and result in
// state st (see Options.MaxBytes).
func charge(key string, fp, result []byte, st idem.State) int64 {
	c := int64(len(key)+len(fp)+len(result)) + RecordOverhead
	if st == idem.StateInProgress {
		c += CompletionReserve
	}
	return c
}

// account adds dn records and db bytes to the store's and key's scope's
// usage. When check is set, growth beyond a limit is refused: nothing is
// counted and account reports false. Shrinking is never refused. The shard
// lock of key must be held.
func (s *Store) account(key string, dn, db int64, check bool) bool {
	if dn != 0 && s.max > 0 {
		if c := s.count.Add(dn); check && dn > 0 && c > s.max {
			s.count.Add(-dn)
			return false
		}
	}
	if db != 0 && s.maxBytes > 0 {
		if u := s.used.Add(db); check && db > 0 && u > s.maxBytes {
			s.used.Add(-db)
			if dn != 0 && s.max > 0 {
				s.count.Add(-dn)
			}
			return false
		}
	}
	if !s.scoped || dn == 0 && db == 0 {
		return true
	}
	scope, _, _ := idem.SplitRecordKey(key)
	st := &s.stripes[maphash.String(s.seed, scope)&s.mask]
	st.mu.Lock()
	u := st.m[scope]
	if u == nil {
		u = new(usage)
	}
	if check && (dn > 0 && s.maxScopeRecs > 0 && u.n+dn > s.maxScopeRecs ||
		db > 0 && s.maxScopeBytes > 0 && u.bytes+db > s.maxScopeBytes) {
		st.mu.Unlock()
		if dn != 0 && s.max > 0 {
			s.count.Add(-dn)
		}
		if db != 0 && s.maxBytes > 0 {
			s.used.Add(-db)
		}
		return false
	}
	u.n += dn
	u.bytes += db
	switch {
	case u.n <= 0:
		delete(st.m, scope)
	case st.m[scope] == nil:
		st.m[strings.Clone(scope)] = u // do not pin the caller's key
	}
	st.mu.Unlock()
	return true
}

// reserve counts one more record in sh, of c bytes, or reports false when
// the store (or key's scope) is full. The shard lock must be held.
func (s *Store) reserve(sh *shard, key string, c int64) bool {
	if !s.acct {
		c = 0
	}
	if !s.account(key, 1, c, true) {
		return false
	}
	sh.n.Add(1)
	return true
}

// removed uncounts r, removed from sh. The shard lock must be held.
func (s *Store) removed(sh *shard, key string, r *record) {
	sh.n.Add(-1)
	s.account(key, -1, -r.charge, false)
}

// Begin applies the begin step of the record state machine (see idem.Store).
// A fresh record's fence exceeds every fence the key had before; a takeover's
// fence is the previous fence plus one. Fingerprints are compared byte for
// byte, so a nil and an empty fingerprint are equal. Begin of a new key on a
// full store returns idem.ErrStoreFull. fp is copied; the Result of a Replay
// is a fresh copy owned by the caller.
func (s *Store) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if err := ctx.Err(); err != nil {
		return idem.Begun{}, err
	}
	now := s.clock()
	for reclaimed := false; ; reclaimed = true {
		b, full := s.begin(key, fp, lease, now)
		if !full {
			return b, nil
		}
		if reclaimed || !s.reclaim(now) {
			return idem.Begun{}, idem.ErrStoreFull
		}
	}
}

// begin is Begin under the shard lock; full reports a new key refused for
// lack of room.
func (s *Store) begin(key string, fp []byte, lease time.Duration, now int64) (b idem.Begun, full bool) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := sh.m[key]
	if r != nil && now < s.death(r) {
		switch {
		case !bytes.Equal(r.fp, fp):
			return idem.Begun{Outcome: idem.Mismatch}, false
		case r.state == idem.StateCompleted:
			res := make([]byte, len(r.result)) // never nil
			copy(res, r.result)
			return idem.Begun{Outcome: idem.Replay, Result: res}, false
		case now < r.deadline:
			return idem.Begun{Outcome: idem.InFlight, Fence: r.fence, LeaseLeft: time.Duration(r.deadline - now)}, false
		}
		// In progress, lease ended: take over.
		r.fence++
		sh.hwm = max(sh.hwm, r.fence)
		r.start = now
		r.deadline = add(now, lease)
		s.noteDeath(r)
		return idem.Begun{Outcome: idem.Acquired, Fence: r.fence, Takeover: true}, false
	}
	var c int64
	if s.acct {
		c = charge(key, fp, nil, idem.StateInProgress)
	}
	if r != nil {
		// A dead record: uncount it; it is recycled below when the fresh
		// one fits.
		s.removed(sh, key, r)
		r.charge = 0
	}
	if !s.reserve(sh, key, c) {
		if r != nil {
			delete(sh.m, key)
			r.wake()
		}
		return idem.Begun{}, true
	}
	if r == nil {
		r = new(record)
		sh.m[key] = r
	} else {
		// Recycle the dead record in place for the fresh one (it was
		// never shared), and wake whoever waited on the old one.
		r.wake()
		r.result = r.result[:0]
		if cap(r.result) > 4096 {
			r.result = nil // do not hold a large dead result while in progress
		}
	}
	r.charge = c
	r.state, r.start, r.deadline = idem.StateInProgress, now, add(now, lease)
	if len(fp) <= len(r.fpBuf) {
		r.fp = r.fpBuf[:copy(r.fpBuf[:], fp)]
	} else {
		r.fp = bytes.Clone(fp)
	}
	r.fence = s.nextFence(sh, now)
	s.noteDeath(r)
	return idem.Begun{Outcome: idem.Acquired, Fence: r.fence}, false
}

// BeginBatch applies Begin to keys[i] with fps[i] and returns the results in
// the order of keys (idem.BatchBeginner), so idem.Keeper.BeginBatch makes no
// goroutine per key. Each key is atomic on its own. On an error (ctx done,
// or ErrStoreFull for one of the keys) the keys the batch acquired are
// released again and no result is returned.
func (s *Store) BeginBatch(ctx context.Context, keys []string, fps [][]byte, lease time.Duration) ([]idem.Begun, error) {
	if len(fps) != len(keys) {
		return nil, fmt.Errorf("memstore: begin batch: %d keys and %d fingerprints", len(keys), len(fps))
	}
	out := make([]idem.Begun, len(keys))
	for i, key := range keys {
		b, err := s.Begin(ctx, key, fps[i], lease)
		if err != nil {
			for j, b := range out[:i] {
				if b.Outcome == idem.Acquired {
					_ = s.Release(context.WithoutCancel(ctx), keys[j], b.Fence)
				}
			}
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// held returns key's in-progress record if fence holds it, or nil. The shard
// lock must be held. A record whose lease ended but which nobody took over is
// still held by its fence.
func (s *Store) held(sh *shard, key string, fence uint64, now int64) *record {
	r := s.lookup(sh, key, now)
	if r == nil || r.state != idem.StateInProgress || r.fence != fence {
		return nil
	}
	return r
}

// Complete stores a copy of result for the in-progress record held by fence,
// marks it completed and keeps it for retention. Otherwise it returns
// idem.ErrLeaseLost and changes nothing. The lease need not be live: fence
// alone decides, so an executor whose lease ended but was not taken over may
// still complete. Complete wakes the Waits blocked on key.
//
// With a byte budget (Options.MaxBytes, MaxBytesPerScope), a result whose
// bytes beyond CompletionReserve do not fit, even after dead records are
// reclaimed, is refused with idem.ErrStoreFull: the record is unchanged and
// still held by fence.
func (s *Store) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock()
	for reclaimed := false; ; reclaimed = true {
		err := s.complete(key, fence, result, retention, now)
		if err != idem.ErrStoreFull || reclaimed || !s.reclaim(now) {
			return err
		}
	}
}

func (s *Store) complete(key string, fence uint64, result []byte, retention time.Duration, now int64) error {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := s.held(sh, key, fence, now)
	if r == nil {
		return idem.ErrLeaseLost
	}
	if s.acct {
		c := charge(key, r.fp, result, idem.StateCompleted)
		if !s.account(key, 0, c-r.charge, true) {
			return idem.ErrStoreFull
		}
		r.charge = c
	}
	r.state = idem.StateCompleted
	if c := cap(r.result); c >= len(result) && c <= 2*len(result)+64 {
		r.result = append(r.result[:0], result...) // a recycled record's buffer
	} else {
		r.result = bytes.Clone(result)
	}
	r.deadline = add(now, retention)
	s.noteDeath(r)
	r.wake()
	return nil
}

// Release removes the in-progress record held by fence so that the next
// Begin executes. Otherwise it returns idem.ErrLeaseLost and changes nothing.
// Release wakes the Waits blocked on key.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := s.held(sh, key, fence, now)
	if r == nil {
		return idem.ErrLeaseLost
	}
	delete(sh.m, key)
	s.removed(sh, key, r)
	r.wake()
	return nil
}

// Extend sets the lease of the in-progress record held by fence to end lease
// from now. Otherwise it returns idem.ErrLeaseLost and changes nothing. A
// lease that ended without a takeover may be extended again.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := s.held(sh, key, fence, now)
	if r == nil {
		return idem.ErrLeaseLost
	}
	r.deadline = add(now, lease)
	s.noteDeath(r)
	return nil
}

// Wait blocks until key's record leaves the in-progress state (completed,
// released or removed), ctx is done, or d elapses, whichever is first. It
// returns nil at once when key has no in-progress record. It returns ctx.Err()
// when ctx is done, and nil otherwise. d is measured by a real timer, not by
// Options.Now. A Wait that ends leaves nothing behind.
func (s *Store) Wait(ctx context.Context, key string, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	now := s.clock()
	sh := s.shard(key)
	sh.mu.Lock()
	r := s.lookup(sh, key, now)
	if r == nil || r.state != idem.StateInProgress {
		sh.mu.Unlock()
		return nil
	}
	q := r.wait
	if q == nil {
		q = &waitq{ch: make(chan struct{})}
		r.wait = q
	}
	q.n++
	sh.mu.Unlock()

	t := time.NewTimer(d)
	defer t.Stop()
	var err error
	select {
	case <-q.ch:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
	}
	// Timed out or canceled: leave the queue, and drop it when it is empty
	// and was not already closed.
	sh.mu.Lock()
	q.n--
	if q.n == 0 {
		if r := sh.m[key]; r != nil && r.wait == q {
			r.wait = nil
		}
	}
	sh.mu.Unlock()
	return err
}

// Sweep removes the dead records: completed records past retention and
// in-progress records abandoned for longer than Options.Abandon. It reports
// how many it removed. A ctx done before Sweep starts returns ctx.Err() and
// removes nothing; one done during the sweep stops it and returns the count
// so far with ctx.Err(). Sweep never changes the outcome of a later call:
// dead records already behave as absent.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return s.sweep(ctx, s.clock())
}

// reclaim sweeps to make room for a new record, if any record may have died
// since the last sweep. It reports whether it removed any.
func (s *Store) reclaim(now int64) bool {
	if now < s.minDeath.Load() {
		return false
	}
	n, _ := s.sweep(context.Background(), now)
	return n > 0
}

func (s *Store) sweep(ctx context.Context, now int64) (int, error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	// Recompute minDeath: every record is folded in either below or by
	// the call that changes it concurrently.
	s.minDeath.Store(math.MaxInt64)
	n := 0
	for i := range s.shards {
		if err := ctx.Err(); err != nil {
			s.minDeath.Store(math.MinInt64) // unknown: let reclaim sweep
			return n, err
		}
		sh := &s.shards[i]
		low, removed := int64(math.MaxInt64), 0
		sh.mu.Lock()
		for k, r := range sh.m {
			d := s.death(r)
			if now >= d {
				delete(sh.m, k)
				s.removed(sh, k, r)
				r.wake()
				removed++
			} else if d < low {
				low = d
			}
		}
		sh.mu.Unlock()
		n += removed
		for {
			cur := s.minDeath.Load()
			if low >= cur || s.minDeath.CompareAndSwap(cur, low) {
				break
			}
		}
	}
	return n, nil
}

// Get returns a copy of key's live record, or ok == false when there is none
// (never created, released, or dead). An in-progress record whose lease ended
// is live, with Remaining zero. Get changes nothing and never fails except
// for a done ctx.
func (s *Store) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return idem.Record{}, false, err
	}
	now := s.clock()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r := sh.m[key]
	if r == nil || now >= s.death(r) {
		return idem.Record{}, false, nil
	}
	rec := idem.Record{
		State:       r.state,
		Fingerprint: bytes.Clone(r.fp),
		Fence:       r.fence,
		Age:         time.Duration(now - r.start),
		Remaining:   time.Duration(max(r.deadline-now, 0)),
	}
	if r.state == idem.StateCompleted {
		rec.Result = make([]byte, len(r.result))
		copy(rec.Result, r.result)
	}
	return rec, true, nil
}
