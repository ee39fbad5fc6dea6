package idem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Default durations (SPEC §1).
const (
	DefaultLease     = 30 * time.Second
	DefaultRetention = 24 * time.Hour
)

// Keeper applies the policy of SPEC §2 on top of a Store: it turns Begin
// outcomes into leases, replays and errors, renews leases, and reports every
// outcome to an Observer. The zero value is not usable: Store must be set.
// A Keeper is safe for concurrent use and must not be copied after first use.
type Keeper struct {
	// Store holds the records. Required.
	Store Store
	// Lease is how long an executor holds a key before another may take it
	// over. If zero, DefaultLease (30 s) is used.
	Lease time.Duration
	// Retention is how long a completed record is replayed. If zero,
	// DefaultRetention (24 h) is used.
	Retention time.Duration
	// Observer, if set, receives every outcome.
	Observer Observer
	// BatchParallelism bounds the concurrent Begin calls of BeginBatch on a
	// store that is not a BatchBeginner. If zero, 32 is used. Set it to 1
	// for an in-process store, where concurrent calls only add scheduling
	// cost.
	BatchParallelism int
	// Clock, if set, is the Keeper's time source: lease deadlines, renewal
	// timers, the backoff between completion and inspection retries,
	// BeginWait's polling and the durations reported to the Observer. If
	// nil, the real clock is used. Tests set a fake clock (with the same
	// one given to the store, such as memstore.Options.Now) to drive
	// renewal without sleeping. Context deadlines handed to the store
	// (for example the bound on one extension attempt) stay on the real
	// clock.
	Clock Clock
}

// WithRetention returns a new Keeper with k's settings and Retention d; k is
// not modified. A Keeper holds only its settings (its leases carry all the
// per-operation state), so the copy shares k's Store, Observer and Clock and
// is independent of k otherwise. idemmsg.Deduper uses it to apply its
// message retention to the Keeper it is given.
func (k *Keeper) WithRetention(d time.Duration) *Keeper {
	c := *k
	c.Retention = d
	return &c
}

// Clock is a time source for a Keeper (see Keeper.Clock).
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f, in its own goroutine or (for a fake clock) when
	// time is advanced, once d has elapsed, like time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer made by Clock.AfterFunc. *time.Timer implements it.
type Timer interface {
	// Stop prevents the timer from firing; it reports whether it was active.
	Stop() bool
	// Reset makes the timer fire after d; it reports whether it was active.
	Reset(d time.Duration) bool
}

// realClock is the Clock used when Keeper.Clock is nil.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

func (k *Keeper) clock() Clock {
	if k.Clock != nil {
		return k.Clock
	}
	return realClock{}
}

func (k *Keeper) now() time.Time { return k.clock().Now() }

func (k *Keeper) since(t time.Time) time.Duration { return k.now().Sub(t) }

// sleep waits d on the Keeper's clock, or until ctx is done.
func (k *Keeper) sleep(ctx context.Context, d time.Duration) error {
	done := make(chan struct{})
	t := k.clock().AfterFunc(d, func() { close(done) })
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-done:
		return nil
	}
}

func (k *Keeper) lease() time.Duration {
	if k.Lease > 0 {
		return k.Lease
	}
	return DefaultLease
}

func (k *Keeper) retention() time.Duration {
	if k.Retention > 0 {
		return k.Retention
	}
	return DefaultRetention
}

func (k *Keeper) observe(ctx context.Context, e Event) {
	if k.Observer != nil {
		k.Observer.Observe(ctx, e)
	}
}

// storeErr reports a store error to the observer and returns it wrapped with
// the operation. The record key stays out of the message: it holds the
// caller's scope (an identity, or its digest in raw bytes) and the client's
// key, and errors end up in logs; the Observer gets the key.
func (k *Keeper) storeErr(ctx context.Context, op, key string, fence uint64, d time.Duration, err error) error {
	kind := EventStoreError
	if errors.Is(err, ErrLeaseLost) {
		kind = EventLeaseLost
	}
	k.observe(ctx, Event{Kind: kind, Key: key, Fence: fence, Op: op, Duration: d, StoreLatency: d, Err: err})
	return fmt.Errorf("idem: %s: %w", op, err)
}

// Attempt is the result of Keeper.Begin. Exactly one of these holds:
// Lease != nil (the caller executes), or Lease == nil and Result holds the
// stored result to replay.
type Attempt struct {
	Lease  *Lease
	Result []byte
}

// Replayed reports whether the attempt is a replay of a stored result.
func (a Attempt) Replayed() bool { return a.Lease == nil }

// Begin starts the operation named by (scope, key) with fingerprint fp.
// It returns an Attempt holding a Lease when the caller must execute, or the
// stored result to replay. Otherwise it returns an *InFlightError (matches
// ErrInFlight), ErrMismatch, ErrInvalidKey for an empty key, or a store error
// wrapped with the step. Begin does not apply ValidateKey: message
// ids may be any non-empty string; HTTP callers validate the header first.
func (k *Keeper) Begin(ctx context.Context, scope, key string, fp []byte) (Attempt, error) {
	if key == "" {
		return Attempt{}, fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	rk := RecordKey(scope, key)
	start := k.now()
	b, err := k.Store.Begin(ctx, rk, fp, k.lease())
	if err != nil {
		return Attempt{}, k.storeErr(ctx, "begin", rk, 0, k.since(start), err)
	}
	return k.attempt(ctx, rk, fp, b, start)
}

// attempt turns the store's answer b to a begin of rk, sent at start, into
// Begin's results, and reports the outcome.
func (k *Keeper) attempt(ctx context.Context, rk string, fp []byte, b Begun, start time.Time) (Attempt, error) {
	lat := k.since(start)
	switch b.Outcome {
	case Acquired:
		kind := EventAcquired
		if b.Takeover {
			kind = EventTakeover
		}
		k.observe(ctx, Event{Kind: kind, Key: rk, Fence: b.Fence, Op: "begin", Duration: lat, StoreLatency: lat})
		// The store started the lease after start: it ends no earlier than
		// start+lease on this process's clock.
		return Attempt{Lease: &Lease{k: k, key: rk, fp: fp, fence: b.Fence, takeover: b.Takeover, start: start, deadline: start.Add(k.lease())}}, nil
	case Replay:
		k.observe(ctx, Event{Kind: EventReplayed, Key: rk, Op: "begin", Duration: lat, StoreLatency: lat})
		res := b.Result
		if res == nil {
			res = []byte{}
		}
		return Attempt{Result: res}, nil
	case InFlight:
		k.observe(ctx, Event{Kind: EventConflict, Key: rk, Fence: b.Fence, Op: "begin", Duration: lat, StoreLatency: lat})
		return Attempt{}, &InFlightError{LeaseLeft: b.LeaseLeft}
	case Mismatch:
		k.observe(ctx, Event{Kind: EventMismatch, Key: rk, Op: "begin", Duration: lat, StoreLatency: lat})
		return Attempt{}, ErrMismatch
	}
	return Attempt{}, fmt.Errorf("idem: begin %q: store returned unknown outcome %d", rk, b.Outcome)
}

// BeginBatch is Begin for many keys of one scope: it returns, for each
// keys[i], what Begin(ctx, scope, keys[i], fps[i]) would (fps may be nil:
// every fingerprint is then empty). The leases it returns are ordinary
// leases: start their renewal, and complete or release each of them.
//
// When the store is a BatchBeginner, the keys are begun in one call (one
// round trip); an error of that call is then every key's error. Otherwise
// Begin is called for each key, at most BatchParallelism at a time. An empty
// key gets ErrInvalidKey and is not sent to the store. Keys should be
// distinct: a key that occurs twice is begun twice, and the second is
// answered InFlight (or Replay) against the first. BeginBatch panics if fps
// is neither nil nor as long as keys.
func (k *Keeper) BeginBatch(ctx context.Context, scope string, keys []string, fps [][]byte) ([]Attempt, []error) {
	if fps != nil && len(fps) != len(keys) {
		panic(fmt.Sprintf("idem: BeginBatch with %d keys and %d fingerprints", len(keys), len(fps)))
	}
	out := make([]Attempt, len(keys))
	errs := make([]error, len(keys))
	fp := func(i int) []byte {
		if fps == nil {
			return nil
		}
		return fps[i]
	}
	// Valid keys: idx[j] is the index in keys of rks[j].
	idx := make([]int, 0, len(keys))
	rks := make([]string, 0, len(keys))
	for i, key := range keys {
		if key == "" {
			errs[i] = fmt.Errorf("%w: empty", ErrInvalidKey)
			continue
		}
		idx = append(idx, i)
		rks = append(rks, RecordKey(scope, key))
	}
	if len(idx) == 0 {
		return out, errs
	}
	bb, ok := k.Store.(BatchBeginner)
	if !ok || len(idx) == 1 {
		k.each(len(idx), func(j int) {
			out[idx[j]], errs[idx[j]] = k.Begin(ctx, scope, keys[idx[j]], fp(idx[j]))
		})
		return out, errs
	}
	bfps := make([][]byte, len(idx))
	for j, i := range idx {
		bfps[j] = fp(i)
	}
	start := k.now()
	res, err := bb.BeginBatch(ctx, rks, bfps, k.lease())
	if err == nil && len(res) != len(rks) {
		err = fmt.Errorf("store returned %d results for %d keys", len(res), len(rks))
	}
	for j, i := range idx {
		if err != nil {
			errs[i] = k.storeErr(ctx, "begin", rks[j], 0, k.since(start), err)
			continue
		}
		out[i], errs[i] = k.attempt(ctx, rks[j], bfps[j], res[j], start)
	}
	return out, errs
}

// each calls f(i) for i in [0, n), at most BatchParallelism at a time.
func (k *Keeper) each(n int, f func(i int)) {
	p := k.BatchParallelism
	if p <= 0 {
		p = 32
	}
	if n == 1 || p == 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, p) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		})
	}
	wg.Wait()
}

// BeginWait is Begin, except that while the key is in flight it waits up to
// maxWait for the holder to finish and then answers with the replay (or
// acquires the key if the holder released it or its lease expired). When the
// bound passes it returns the last *InFlightError. Stores that implement
// Waiter wake it on completion; others (and a Waiter whose Wait fails) are
// polled with backoff from 5 ms to 250 ms. Each Begin while waiting is
// reported to the Observer, so a wait shows as conflicts followed by the
// final outcome.
func (k *Keeper) BeginWait(ctx context.Context, scope, key string, fp []byte, maxWait time.Duration) (Attempt, error) {
	deadline := k.now().Add(maxWait)
	poll := 5 * time.Millisecond
	for {
		a, err := k.Begin(ctx, scope, key, fp)
		var inflight *InFlightError
		if !errors.As(err, &inflight) {
			return a, err
		}
		left := deadline.Sub(k.now())
		if left <= 0 {
			return a, err
		}
		d := min(left, inflight.LeaseLeft+time.Millisecond)
		if w, ok := k.Store.(Waiter); ok {
			werr := w.Wait(ctx, RecordKey(scope, key), d)
			if ctx.Err() != nil {
				return Attempt{}, ctx.Err()
			}
			if werr == nil {
				continue
			}
			// The notification path failed: poll instead of spinning.
		}
		d = min(d, poll)
		poll = min(poll*2, 250*time.Millisecond)
		if err := k.sleep(ctx, d); err != nil {
			return Attempt{}, err
		}
	}
}

// Lease is the right to execute one operation, held until Complete or
// Release. Its methods are safe for concurrent use.
type Lease struct {
	k        *Keeper
	key      string
	fp       []byte
	fence    uint64
	takeover bool
	start    time.Time

	mu       sync.Mutex
	finished bool           // Complete, Release or MarkCompleted was called
	external bool           // MarkCompleted: the caller completed the record
	timer    Timer          // renewal timer; nil until StartRenewal
	every    time.Duration  // renewal period after a successful extension
	backoff  time.Duration  // pause before the next attempt after a failed one
	deadline time.Time      // the lease ends no earlier than this (local clock)
	extends  sync.WaitGroup // renewal extensions in progress
	lost     chan struct{}  // closed when the lease was found lost
	isLost   bool           // lost is (or will be) closed
	cancels  []context.CancelCauseFunc
	lostOnce sync.Once
}

// Key returns the store key the lease holds.
func (l *Lease) Key() string { return l.key }

// Fence returns the lease's fence. Pass it to downstream writes so a stale
// executor's write can be refused.
func (l *Lease) Fence() uint64 { return l.fence }

// Takeover reports whether the lease was acquired by taking over an expired
// lease (the previous executor may have run partly or fully).
func (l *Lease) Takeover() bool { return l.takeover }

// Retention returns how long the record is kept once completed: the
// Keeper's retention. Callers that complete the record themselves (for
// example pgxstore's CompleteIn) pass it to the store.
func (l *Lease) Retention() time.Duration { return l.k.retention() }

// Context returns ctx carrying the lease (see LeaseFromContext) and its
// fence (see FenceFromContext). The returned context is canceled, with a
// cause matching ErrLeaseLost, when the lease is found lost (see Lost): the
// work it carries is then running under a newer executor's lease, and should
// stop. Completing or releasing the lease does not cancel it.
func (l *Lease) Context(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancelCause(ctx)
	l.mu.Lock()
	if l.isLost {
		l.mu.Unlock()
		cancel(l.lostErr())
	} else {
		l.cancels = append(l.cancels, cancel)
		l.mu.Unlock()
	}
	return context.WithValue(withFence(ctx, l.fence), leaseKey{}, l)
}

// lostErr is the cancellation cause of a lost lease's contexts.
func (l *Lease) lostErr() error {
	return fmt.Errorf("idem: lease with fence %d: %w", l.fence, ErrLeaseLost)
}

// leaseKey is the context key for the executing lease.
type leaseKey struct{}

// LeaseFromContext returns the lease the caller executes under, as put in
// ctx by Lease.Context (idemhttp, Do, and idemmsg with every broker
// integration do that for the code they run).
func LeaseFromContext(ctx context.Context) (*Lease, bool) {
	l, ok := ctx.Value(leaseKey{}).(*Lease)
	return l, ok
}

// MarkCompleted records that the caller completed the record itself, in the
// same database transaction as its business writes (pgxstore's CompleteIn),
// and that the transaction committed. It stops renewal; a later Complete or
// Release then does nothing and returns nil, so the layer that began the
// lease (idemhttp, Do) does not complete the record a second time. Call it
// only after the commit succeeded: if the transaction rolled back, let the
// lease be released as usual.
func (l *Lease) MarkCompleted() {
	l.mu.Lock()
	if l.finished {
		l.mu.Unlock()
		return
	}
	l.finished, l.external = true, true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	l.extends.Wait()
	l.k.observe(context.Background(), Event{Kind: EventExecuted, Key: l.key, Fence: l.fence, Op: "complete", Duration: l.k.since(l.start)})
}

// Complete stores result and ends the lease. It returns ErrLeaseLost
// (wrapped) when the lease was taken over; the record is then untouched.
// Complete stops renewal first. Calling Complete or Release again returns an
// error and does nothing; after MarkCompleted it returns nil.
//
// A transient store failure (ErrStoreUnavailable, or a timeout of one
// attempt) is retried with capped backoff until ctx is done, or for one
// lease period when ctx has no deadline: giving up would leave the record in
// progress, and a retry would execute again once the lease ran out. When an
// attempt's outcome is unknown and the next is refused, a store that is an
// Inspector is asked whether the record was completed under this fence. If
// every attempt fails, the error is returned and Complete or Release may be
// called again.
func (l *Lease) Complete(ctx context.Context, result []byte) error {
	return l.end(ctx, "complete", result, func(ctx context.Context) error {
		return l.k.Store.Complete(ctx, l.key, l.fence, result, l.k.retention())
	})
}

// Release removes the record so that the next Begin executes, and ends the
// lease. It returns ErrLeaseLost (wrapped) when the lease was taken over.
// After MarkCompleted it does nothing and returns nil. Transient store
// failures are retried as for Complete.
func (l *Lease) Release(ctx context.Context) error {
	return l.end(ctx, "release", nil, func(ctx context.Context) error {
		return l.k.Store.Release(ctx, l.key, l.fence)
	})
}

// end runs the final store step op of the lease, retrying transient
// failures, and reports the execution once the step's outcome is known.
func (l *Lease) end(ctx context.Context, op string, result []byte, call func(context.Context) error) error {
	if err := l.finish(); err != nil {
		return l.ignoreIfMarked(err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.k.lease())
		defer cancel()
	}
	start := l.k.now()
	backoff := 10 * time.Millisecond
	unknown := false // an earlier attempt may have applied
	for {
		attempt := l.k.now()
		err := call(ctx)
		// A refusal may hide an applied earlier attempt: ours, whose answer
		// was lost, or (for complete, which is always checked) one that a
		// client library retried by itself and whose retry was then
		// refused. Ask the store what it holds.
		if err != nil && errors.Is(err, ErrLeaseLost) && (unknown || op == "complete") && l.appliedEarlier(ctx, op, result) {
			err = nil
		}
		if err == nil || errors.Is(err, ErrLeaseLost) || !l.transient(ctx, err) {
			l.k.observe(ctx, Event{Kind: EventExecuted, Key: l.key, Fence: l.fence, Op: op, Duration: l.k.since(l.start), StoreLatency: l.k.since(start)})
			if err != nil {
				if errors.Is(err, ErrLeaseLost) {
					l.markLost()
				} else {
					l.unfinish() // the caller may try again
				}
				return l.k.storeErr(ctx, op, l.key, l.fence, l.k.since(start), err)
			}
			return nil
		}
		unknown = true
		l.k.observe(ctx, Event{Kind: EventStoreError, Key: l.key, Fence: l.fence, Op: op, Duration: l.k.since(start), StoreLatency: l.k.since(attempt), Err: err, Retrying: true})
		if serr := l.k.sleep(ctx, backoff); serr != nil {
			l.unfinish()
			return l.k.storeErr(ctx, op, l.key, l.fence, l.k.since(start), errors.Join(err, serr))
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// transient reports whether a failed final step is worth another attempt:
// the store was unreachable or one attempt timed out, and ctx is still live.
// A store that is full (ErrStoreFull: a budget refused the result) is not
// retried: the caller decides (a smaller result, or a release).
func (l *Lease) transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, ErrStoreFull) {
		return false
	}
	return errors.Is(err, ErrStoreUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// appliedEarlier reports whether an earlier attempt of op, whose answer was
// lost, did apply: the record is completed under this fence with this very
// result (complete; a record completed under this fence with another result
// was completed by someone else, for example in a transaction without
// MarkCompleted, and this result was not stored), or is no longer held by
// this fence (release). Without an Inspector it reports
// false for complete, and true for release, whose only aim (the record is no
// longer ours) holds whenever the store refuses our fence. The Inspector is
// asked again after transient failures while ctx allows.
func (l *Lease) appliedEarlier(ctx context.Context, op string, result []byte) bool {
	if op == "release" {
		return true
	}
	rec, found, err := l.inspect(ctx)
	return err == nil && found && rec.State == StateCompleted && rec.Fence == l.fence && bytes.Equal(rec.Result, result)
}

// inspect reads the lease's record through the store's Inspector, retrying
// transient failures with backoff while ctx allows. It returns
// errNoInspector when the store cannot be inspected.
func (l *Lease) inspect(ctx context.Context) (Record, bool, error) {
	in, ok := l.k.Store.(Inspector)
	if !ok {
		return Record{}, false, errNoInspector
	}
	backoff := 5 * time.Millisecond
	for {
		rec, found, err := in.Get(ctx, l.key)
		if err == nil || !l.transient(ctx, err) {
			return rec, found, err
		}
		if serr := l.k.sleep(ctx, backoff); serr != nil {
			return Record{}, false, errors.Join(err, serr)
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

var errNoInspector = errors.New("idem: the store cannot be inspected")

// Superseded returns the result that another executor stored for the
// lease's record after taking it over: what an executor whose lease was
// lost (Complete or Release returned ErrLeaseLost, or Lost is closed)
// answers instead of its own result, so that every caller of a key sees one
// result. ok is false when no such result exists yet (the newer executor is
// still running, or released the key). It needs a store that is an
// Inspector; with another store it reports ok == false and an error.
func (l *Lease) Superseded(ctx context.Context) (result []byte, ok bool, err error) {
	rec, found, err := l.inspect(ctx)
	if err != nil {
		return nil, false, err
	}
	if !found || rec.State != StateCompleted || rec.Fence <= l.fence || !bytes.Equal(rec.Fingerprint, l.fp) && (len(rec.Fingerprint) > 0 || len(l.fp) > 0) {
		return nil, false, nil
	}
	if rec.Result == nil {
		return []byte{}, true, nil
	}
	return rec.Result, true, nil
}

// unfinish lets Complete or Release be called again after every attempt
// failed.
func (l *Lease) unfinish() {
	l.mu.Lock()
	l.finished = false
	l.mu.Unlock()
}

// errFinished is returned by a second Complete or Release.
var errFinished = errors.New("idem: lease already completed or released")

// ignoreIfMarked turns errFinished into nil after MarkCompleted.
func (l *Lease) ignoreIfMarked(err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.external {
		return nil
	}
	return err
}

func (l *Lease) finish() error {
	l.mu.Lock()
	if l.finished {
		l.mu.Unlock()
		return errFinished
	}
	l.finished = true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.mu.Unlock()
	// An extension already under way finishes before the record changes
	// state, so it can never be mistaken for a lost lease.
	l.extends.Wait()
	return nil
}

// Extend pushes the lease out by the Keeper's lease duration from now. It
// returns ErrLeaseLost (wrapped) when the lease was taken over, nil without
// doing anything when the store cannot extend leases, and an error without
// calling the store once the lease was completed or released.
func (l *Lease) Extend(ctx context.Context) error {
	x, ok := l.k.Store.(Extender)
	if !ok {
		return nil
	}
	l.mu.Lock()
	finished := l.finished
	l.mu.Unlock()
	if finished {
		return errFinished
	}
	start := l.k.now()
	if err := x.Extend(ctx, l.key, l.fence, l.k.lease()); err != nil {
		if errors.Is(err, ErrLeaseLost) {
			l.markLost()
		}
		return l.k.storeErr(ctx, "extend", l.key, l.fence, l.k.since(start), err)
	}
	l.mu.Lock()
	if d := start.Add(l.k.lease()); d.After(l.deadline) {
		l.deadline = d
	}
	l.mu.Unlock()
	return nil
}

// StartRenewal keeps the lease alive until Complete or Release, so an
// operation that runs longer than the lease is not taken over: it extends
// the lease a quarter of the lease duration after the last successful
// extension, and when an extension fails (the store is slow or
// unreachable) it tries again at once with a short backoff (10 ms, doubling
// up to a tenth of the lease), each attempt bounded by the time left on the
// lease, so a store stall shorter than the remaining lease never lets the
// lease lapse (a stall of up to three quarters of the lease always
// survives; one that starts as an attempt is sent survives up to the whole
// lease). If the store refuses an extension with ErrLeaseLost, renewal
// stops, Lost is closed and the lease's contexts are canceled. Calling
// StartRenewal more than once, or after Complete or Release, or on a store
// that is not an Extender, does nothing.
//
// Renewal runs on a timer: no goroutine exists until the first quarter of
// the lease has passed, so short operations pay for one timer only, and none is
// left running once Complete or Release returns.
func (l *Lease) StartRenewal() {
	if _, ok := l.k.Store.(Extender); !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.finished || l.timer != nil {
		return
	}
	l.every = max(l.k.lease()/4, time.Millisecond)
	l.timer = l.k.clock().AfterFunc(max(l.every-l.k.since(l.start), time.Millisecond), l.tick)
}

// tick extends the lease once and schedules the next attempt.
func (l *Lease) tick() {
	l.mu.Lock()
	if l.finished {
		l.mu.Unlock()
		return
	}
	l.extends.Add(1) // under mu, before finish can Wait
	// Each attempt may use the time left on the lease (it is no use
	// later), and at least one renewal period once the lease may have
	// lapsed: the fence alone decides, so a late extension still holds
	// the record when nobody took it over.
	bound := max(l.deadline.Sub(l.k.now()), l.every)
	l.mu.Unlock()
	defer l.extends.Done()

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	err := l.Extend(ctx)
	cancel()
	if errors.Is(err, ErrLeaseLost) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.finished {
		return
	}
	next := l.every
	if err != nil {
		l.backoff = min(max(2*l.backoff, 10*time.Millisecond), max(l.k.lease()/10, time.Millisecond))
		next = l.backoff
	} else {
		l.backoff = 0
	}
	l.timer.Reset(next)
}

func (l *Lease) lostChan() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil {
		l.lost = make(chan struct{})
	}
	return l.lost
}

// markLost closes Lost and cancels the lease's contexts, once.
func (l *Lease) markLost() {
	l.lostOnce.Do(func() {
		ch := l.lostChan()
		l.mu.Lock()
		l.isLost = true
		cancels := l.cancels
		l.cancels = nil
		l.mu.Unlock()
		close(ch)
		err := l.lostErr()
		for _, c := range cancels {
			c(err)
		}
	})
}

// Lost returns a channel closed when the store refused the lease's fence (a
// renewal, Complete or Release returned ErrLeaseLost): another executor
// took the key over. The operation may then be running twice; its
// completion is refused, and the lease's contexts are canceled.
func (l *Lease) Lost() <-chan struct{} { return l.lostChan() }

// IsLost reports whether Lost is closed.
func (l *Lease) IsLost() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.isLost
}
