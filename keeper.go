package idem

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
// the operation and key.
func (k *Keeper) storeErr(ctx context.Context, op, key string, fence uint64, d time.Duration, err error) error {
	kind := EventStoreError
	if errors.Is(err, ErrLeaseLost) {
		kind = EventLeaseLost
	}
	k.observe(ctx, Event{Kind: kind, Key: key, Fence: fence, Op: op, Duration: d, Err: err})
	return fmt.Errorf("idem: %s %q: %w", op, key, err)
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
// wrapped with the step and key. Begin does not apply ValidateKey: message
// ids may be any non-empty string; HTTP callers validate the header first.
func (k *Keeper) Begin(ctx context.Context, scope, key string, fp []byte) (Attempt, error) {
	if key == "" {
		return Attempt{}, fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	rk := RecordKey(scope, key)
	start := time.Now()
	b, err := k.Store.Begin(ctx, rk, fp, k.lease())
	if err != nil {
		return Attempt{}, k.storeErr(ctx, "begin", rk, 0, time.Since(start), err)
	}
	switch b.Outcome {
	case Acquired:
		if b.Takeover {
			k.observe(ctx, Event{Kind: EventTakeover, Key: rk, Fence: b.Fence, Op: "begin"})
		}
		return Attempt{Lease: &Lease{k: k, key: rk, fence: b.Fence, takeover: b.Takeover, start: time.Now()}}, nil
	case Replay:
		k.observe(ctx, Event{Kind: EventReplayed, Key: rk, Op: "begin"})
		res := b.Result
		if res == nil {
			res = []byte{}
		}
		return Attempt{Result: res}, nil
	case InFlight:
		k.observe(ctx, Event{Kind: EventConflict, Key: rk, Fence: b.Fence, Op: "begin"})
		return Attempt{}, &InFlightError{LeaseLeft: b.LeaseLeft}
	case Mismatch:
		k.observe(ctx, Event{Kind: EventMismatch, Key: rk, Op: "begin"})
		return Attempt{}, ErrMismatch
	}
	return Attempt{}, fmt.Errorf("idem: begin %q: store returned unknown outcome %d", rk, b.Outcome)
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
	deadline := time.Now().Add(maxWait)
	poll := 5 * time.Millisecond
	for {
		a, err := k.Begin(ctx, scope, key, fp)
		var inflight *InFlightError
		if !errors.As(err, &inflight) {
			return a, err
		}
		left := time.Until(deadline)
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
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return Attempt{}, ctx.Err()
		case <-t.C:
		}
	}
}

// Lease is the right to execute one operation, held until Complete or
// Release. Its methods are safe for concurrent use.
type Lease struct {
	k        *Keeper
	key      string
	fence    uint64
	takeover bool
	start    time.Time

	mu       sync.Mutex
	finished bool           // Complete, Release or MarkCompleted was called
	external bool           // MarkCompleted: the caller completed the record
	timer    *time.Timer    // renewal timer; nil until StartRenewal
	every    time.Duration  // renewal period
	extends  sync.WaitGroup // renewal extensions in progress
	lost     chan struct{}  // closed when renewal found the lease lost
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
// example pgxstore's CompleteTx) pass it to the store.
func (l *Lease) Retention() time.Duration { return l.k.retention() }

// Context returns ctx carrying the lease (see LeaseFromContext) and its
// fence (see FenceFromContext).
func (l *Lease) Context(ctx context.Context) context.Context {
	return context.WithValue(WithFence(ctx, l.fence), leaseKey{}, l)
}

// leaseKey is the context key for the executing lease.
type leaseKey struct{}

// LeaseFromContext returns the lease the caller executes under, as put in
// ctx by Lease.Context (idemhttp and Do do that for the code they run).
func LeaseFromContext(ctx context.Context) (*Lease, bool) {
	l, ok := ctx.Value(leaseKey{}).(*Lease)
	return l, ok
}

// MarkCompleted records that the caller completed the record itself, in the
// same database transaction as its business writes (pgxstore's CompleteTx),
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
	l.k.observe(context.Background(), Event{Kind: EventExecuted, Key: l.key, Fence: l.fence, Op: "complete", Duration: time.Since(l.start)})
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
	return l.end(ctx, "complete", func(ctx context.Context) error {
		return l.k.Store.Complete(ctx, l.key, l.fence, result, l.k.retention())
	})
}

// Release removes the record so that the next Begin executes, and ends the
// lease. It returns ErrLeaseLost (wrapped) when the lease was taken over.
// After MarkCompleted it does nothing and returns nil. Transient store
// failures are retried as for Complete.
func (l *Lease) Release(ctx context.Context) error {
	return l.end(ctx, "release", func(ctx context.Context) error {
		return l.k.Store.Release(ctx, l.key, l.fence)
	})
}

// end runs the final store step op of the lease, retrying transient
// failures, and reports the execution once the step's outcome is known.
func (l *Lease) end(ctx context.Context, op string, call func(context.Context) error) error {
	if err := l.finish(); err != nil {
		return l.ignoreIfMarked(err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.k.lease())
		defer cancel()
	}
	start := time.Now()
	backoff := 10 * time.Millisecond
	unknown := false // an earlier attempt may have applied
	for {
		err := call(ctx)
		if err != nil && unknown && errors.Is(err, ErrLeaseLost) && l.appliedEarlier(ctx, op) {
			err = nil
		}
		if err == nil || errors.Is(err, ErrLeaseLost) || !l.transient(ctx, err) {
			l.k.observe(ctx, Event{Kind: EventExecuted, Key: l.key, Fence: l.fence, Op: op, Duration: time.Since(l.start)})
			if err != nil {
				if !errors.Is(err, ErrLeaseLost) {
					l.unfinish() // the caller may try again
				}
				return l.k.storeErr(ctx, op, l.key, l.fence, time.Since(start), err)
			}
			return nil
		}
		unknown = true
		l.k.observe(ctx, Event{Kind: EventStoreError, Key: l.key, Fence: l.fence, Op: op, Duration: time.Since(start), Err: err})
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			l.unfinish()
			return l.k.storeErr(ctx, op, l.key, l.fence, time.Since(start), errors.Join(err, ctx.Err()))
		case <-t.C:
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

// transient reports whether a failed final step is worth another attempt:
// the store was unreachable or one attempt timed out, and ctx is still live.
func (l *Lease) transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	return errors.Is(err, ErrStoreUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// appliedEarlier reports whether an earlier attempt of op, whose answer was
// lost, did apply: the record is completed under this fence (complete), or
// is no longer held by this fence (release). Without an Inspector it reports
// false for complete, and true for release, whose only aim (the record is no
// longer ours) holds whenever the store refuses our fence.
func (l *Lease) appliedEarlier(ctx context.Context, op string) bool {
	if op == "release" {
		return true
	}
	in, ok := l.k.Store.(Inspector)
	if !ok {
		return false
	}
	rec, found, err := in.Get(ctx, l.key)
	return err == nil && found && rec.State == StateCompleted && rec.Fence == l.fence
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
	start := time.Now()
	if err := x.Extend(ctx, l.key, l.fence, l.k.lease()); err != nil {
		return l.k.storeErr(ctx, "extend", l.key, l.fence, time.Since(start), err)
	}
	return nil
}

// StartRenewal extends the lease every third of the lease duration until
// Complete or Release, so an operation that runs longer than the lease is not
// taken over. If the store refuses an extension with ErrLeaseLost, renewal
// stops and Lost is closed. Transient store errors are retried at the next
// tick. Calling StartRenewal more than once, or after Complete or Release, or
// on a store that is not an Extender, does nothing.
//
// Renewal runs on a timer: no goroutine exists until the first third of the
// lease has passed, so short operations pay for one timer only, and none is
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
	l.every = max(l.k.lease()/3, time.Millisecond)
	l.timer = time.AfterFunc(l.every, l.tick)
}

// tick extends the lease once and schedules the next tick.
func (l *Lease) tick() {
	l.mu.Lock()
	if l.finished {
		l.mu.Unlock()
		return
	}
	l.extends.Add(1) // under mu, before finish can Wait
	l.mu.Unlock()
	defer l.extends.Done()

	ctx, cancel := context.WithTimeout(context.Background(), l.every)
	err := l.Extend(ctx)
	cancel()
	if errors.Is(err, ErrLeaseLost) {
		l.markLost()
		return
	}
	l.mu.Lock()
	if !l.finished {
		l.timer.Reset(l.every)
	}
	l.mu.Unlock()
}

func (l *Lease) lostChan() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil {
		l.lost = make(chan struct{})
	}
	return l.lost
}

func (l *Lease) markLost() { l.lostOnce.Do(func() { close(l.lostChan()) }) }

// Lost returns a channel closed when renewal found that the lease was taken
// over. The operation may then be running twice; its completion will be
// refused.
func (l *Lease) Lost() <-chan struct{} { return l.lostChan() }
