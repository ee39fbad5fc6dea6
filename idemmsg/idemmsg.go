package idemmsg

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// DefaultMessageRetention is how long a processed id is remembered when
// neither Deduper.Retention nor its Keeper's Retention is set: 30 days
// (SPEC §1).
const DefaultMessageRetention = 30 * 24 * time.Hour

// ErrNotRecorded reports that the handler succeeded but its completion could
// not be stored (the store failed, or the lease was taken over because the
// handler outlived it). The message should still be acknowledged: its side
// effect happened. A redelivery arriving after the lease expires would run
// the handler again, which is why Status.Ack is true for it.
var ErrNotRecorded = errors.New("idemmsg: processed but not recorded")

// ErrNoStore is returned (with NotRun) by a Deduper whose Keeper, or the
// Keeper's Store, is nil.
var ErrNoStore = errors.New("idemmsg: Deduper.Keeper or its Store is nil")

// ErrPoisoned reports a poison message: its handler failed
// Deduper.MaxAttempts times, and OnPoison took it (see Poisoned).
var ErrPoisoned = errors.New("idemmsg: poison message")

// Status is what Once, Batch, OnceTx and BatchTx did with one message.
type Status uint8

const (
	// Executed: the handler ran and returned nil. Acknowledge the message.
	// (With OnceTx and BatchTx: the handler ran inside the transaction;
	// acknowledge after the transaction commits.)
	Executed Status = iota + 1
	// Duplicate: the id was processed before (within retention); the handler
	// did not run. Acknowledge the message.
	Duplicate
	// InFlight: another consumer holds the id right now; the handler did not
	// run. Do not acknowledge: negatively acknowledge with a delay (the lease
	// time left) so that the message comes back once the holder finished
	// (then it is a Duplicate) or died (then it is taken over).
	InFlight
	// Failed: the handler ran and returned an error (or panicked); the record
	// was released. Do not acknowledge: the redelivery runs the handler again.
	Failed
	// NotRun: the store could not be asked (or the id is invalid); the
	// handler did not run. Do not acknowledge: redeliver later.
	NotRun
	// Mismatched: the id was processed (or is being processed) with another
	// payload, and Deduper.FingerprintPayload is set: the producer reused an
	// id for a different message. The handler did not run, and the error
	// matches idem.ErrMismatch. Acknowledge the message (a redelivery would
	// be refused the same way) and report it: every integration passes it
	// to its OnError hook, so it is never silently taken for a duplicate.
	Mismatched
	// Poisoned: the handler failed Deduper.MaxAttempts times and OnPoison
	// (if set) accepted the message; the record is completed, so a
	// redelivery is a Duplicate. The error matches ErrPoisoned and wraps the
	// last handler error. Acknowledge the message, so that it stops blocking
	// its partition or stream.
	Poisoned
)

// String returns the status's lower-case name.
func (s Status) String() string {
	switch s {
	case Executed:
		return "executed"
	case Duplicate:
		return "duplicate"
	case InFlight:
		return "in-flight"
	case Failed:
		return "failed"
	case NotRun:
		return "not-run"
	case Mismatched:
		return "mismatched"
	case Poisoned:
		return "poisoned"
	}
	return "unknown"
}

// Ack reports whether the message may be acknowledged (Kafka: its offset
// committed): true for Executed, Duplicate, Mismatched and Poisoned, false
// otherwise.
func (s Status) Ack() bool {
	return s == Executed || s == Duplicate || s == Mismatched || s == Poisoned
}

// IDFunc returns the id of a message of type M (a Kafka record, a JetStream
// message, a stream entry, an HTTP request). Every broker integration takes
// one to replace its default id extraction. An error means the message has
// no usable id: it is not processed and is reported (NotRun); it stays
// unacknowledged, so an IDFunc should fail only for a transient reason and
// otherwise return a fallback id (for example the broker's own position).
type IDFunc[M any] func(M) (string, error)

// Message is one message for OnceMessage and BatchMessages: its id and its
// payload. The payload is used only for Deduper.FingerprintPayload and given
// to Deduper.OnPoison; it may be nil.
type Message struct {
	ID      string
	Payload []byte
}

// Poison describes a poison message, for Deduper.OnPoison.
type Poison struct {
	// Scope and ID name the message.
	Scope, ID string
	// Payload is the message's payload as given to OnceMessage or
	// BatchMessages (nil through Once and Batch).
	Payload []byte
	// Attempts is the number of failed attempts counted (see MaxAttempts).
	Attempts int
	// Err is the last handler error.
	Err error
}

// Deduper runs message handlers once per (scope, id) through an
// *idem.Keeper, which holds the store, the lease, the observer and the clock.
// Set the fields before first use and do not change them afterwards (nor
// those of the Keeper). The zero value is not usable: Keeper, with its Store,
// must be set. A Deduper is safe for concurrent use.
type Deduper struct {
	// Keeper claims, renews, completes and releases the message records.
	// Required, with its Store set. Its Lease is how long a consumer holds
	// an id before another consumer may take it over; it is renewed while
	// the handler runs (when the store implements idem.Extender; see
	// idem.Lease.StartRenewal). Its Observer, if set, receives every
	// outcome. The same Keeper may serve HTTP handlers and other Dedupers.
	// The Deduper never modifies it: it works on a copy made by
	// Keeper.WithRetention on first use.
	Keeper *idem.Keeper
	// Retention is how long a processed id is remembered; a duplicate older
	// than that is processed again. If zero, Keeper.Retention is used, and if
	// that is zero too, DefaultMessageRetention (30 days), not
	// idem.DefaultRetention: message redeliveries span days.
	Retention time.Duration
	// Parallelism bounds the concurrent store calls Batch makes when the
	// store does not implement idem.BatchBeginner, and when it completes and
	// releases leases. If zero, Keeper.BatchParallelism is used (itself 32
	// when zero). Set it to 1 for an in-process store, where concurrent
	// calls only add scheduling cost.
	Parallelism int

	// MaxAttempts, if positive, bounds the failed attempts at one message:
	// when its handler has failed MaxAttempts times, the message is poison.
	// OnPoison is then called, and once it returns nil the message is
	// reported Poisoned (acknowledge it) and its record completed, so it
	// stops blocking its partition or stream. If OnPoison returns an error,
	// the message stays Failed and the next delivery calls OnPoison again
	// without running the handler.
	//
	// Failures are counted in this Deduper's memory, per (scope, id): a
	// handler error or panic counts one, and so does a takeover of an id
	// whose previous lease ran out unfinished (a consumer crashed or stalled
	// while running it). Counts are not shared between consumer processes
	// and do not survive a restart: with n consumers a message may run up
	// to n×MaxAttempts times, and one that crashes every consumer it runs on
	// is counted once per takeover seen by a live consumer. A count is
	// dropped when the message is processed, found a duplicate or poisoned,
	// and 24 hours after its last failure.
	MaxAttempts int
	// OnPoison, if set, receives a poison message (see MaxAttempts): park it
	// or send it to a dead-letter queue. It must be safe for concurrent use.
	// When it is nil, a poison message is acknowledged without it (dropped)
	// and reported Poisoned.
	OnPoison func(ctx context.Context, p Poison) error
	// FingerprintPayload makes every record carry a SHA-256 of the message
	// payload (OnceMessage, BatchMessages), so that an id reused with a
	// different payload is reported Mismatched instead of Duplicate. Turning
	// it on reports the ids processed before (with no fingerprint) as
	// Mismatched until Retention passes.
	FingerprintPayload bool

	once sync.Once
	k    *idem.Keeper

	tries attempts
}

// fingerprint is the fingerprint of every message record without
// FingerprintPayload: a message id names one message, so any reuse of the id
// is a duplicate, never a mismatch.
var fingerprint = []byte{}

// fp returns the fingerprint of m's record.
func (d *Deduper) fp(m Message) []byte {
	if !d.FingerprintPayload {
		return fingerprint
	}
	h := sha256.Sum256(m.Payload)
	return h[:]
}

// result is the stored result of every processed message.
var result = []byte{}

// keeper returns the Deduper's copy of d.Keeper, with the message
// retention and Parallelism applied, made on first use.
func (d *Deduper) keeper() *idem.Keeper {
	d.once.Do(func() {
		k := d.Keeper.WithRetention(d.retention())
		if d.Parallelism > 0 {
			k.BatchParallelism = d.Parallelism
		}
		d.k = k
	})
	return d.k
}

// usable reports whether d has a Keeper with a Store.
func (d *Deduper) usable() bool { return d.Keeper != nil && d.Keeper.Store != nil }

// EffectiveRetention returns how long d remembers a processed id: Retention,
// else Keeper.Retention, else DefaultMessageRetention.
func (d *Deduper) EffectiveRetention() time.Duration { return d.retention() }

func (d *Deduper) retention() time.Duration {
	if d.Retention > 0 {
		return d.Retention
	}
	if d.Keeper != nil && d.Keeper.Retention > 0 {
		return d.Keeper.Retention
	}
	return DefaultMessageRetention
}

// Once runs fn unless the message id was already processed in scope (SPEC
// §4). It claims (scope, id) with a lease (renewed while fn runs), runs fn
// with a context carrying the lease (idem.LeaseFromContext, and its fence:
// idem.FenceFromContext; the context is canceled with a cause matching
// idem.ErrLeaseLost if the lease is lost), and then:
//
//   - fn returns nil: the record is completed and kept for Retention →
//     Executed, nil. If completing fails, Once returns Executed and an error
//     matching ErrNotRecorded (the message should still be acknowledged).
//   - fn returns an error or panics: the record is released so that the
//     redelivery runs fn again → Failed and fn's error (a panic is
//     re-raised after the release). With MaxAttempts set, the failure that
//     reaches the limit makes the message poison → Poisoned (see
//     MaxAttempts).
//
// Without running fn it returns Duplicate, nil when id was processed within
// Retention; InFlight and an *idem.InFlightError (matching idem.ErrInFlight,
// with the lease time left) when another consumer holds id; NotRun and the
// error when the store fails (matching idem.ErrStoreUnavailable) or id is
// empty (idem.ErrInvalidKey).
//
// The completion and release do not depend on ctx staying alive: a handler
// that finished is recorded even if ctx is canceled meanwhile.
func (d *Deduper) Once(ctx context.Context, scope, id string, fn func(context.Context) error) (Status, error) {
	return d.OnceMessage(ctx, scope, Message{ID: id}, fn)
}

// OnceMessage is Once for a message with its payload, for
// FingerprintPayload (a reused id with another payload is Mismatched) and
// OnPoison (which receives the payload).
func (d *Deduper) OnceMessage(ctx context.Context, scope string, m Message, fn func(context.Context) error) (Status, error) {
	if !d.usable() {
		return NotRun, ErrNoStore
	}
	a, err := d.keeper().Begin(ctx, scope, m.ID, d.fp(m))
	if err != nil {
		o := beginFailed(m.ID, err)
		return o.Status, o.Err
	}
	if a.Replayed() {
		if d.MaxAttempts > 0 {
			d.tries.forget(idem.RecordKey(scope, m.ID))
		}
		return Duplicate, nil
	}
	l := a.Lease
	l.StartRenewal()
	finished := false
	defer func() {
		if !finished { // fn panicked: release so the redelivery runs it, then re-panic
			_ = l.Release(context.WithoutCancel(ctx))
		}
	}()
	st, err := d.execute(ctx, scope, m, l, fn)
	finished = true
	o := d.finish(ctx, l, BatchResult{st, err})
	return o.Status, o.Err
}

// beginFailed is the outcome of a message whose begin returned err.
func beginFailed(id string, err error) BatchResult {
	switch {
	case errors.Is(err, idem.ErrInFlight):
		return BatchResult{InFlight, err}
	case errors.Is(err, idem.ErrMismatch):
		return BatchResult{Mismatched, fmt.Errorf("idemmsg: id %q reused with a different payload: %w", id, err)}
	}
	return BatchResult{NotRun, err}
}

// execute runs fn under l, counts its failures and applies MaxAttempts. It
// returns Executed (complete the lease), Poisoned (complete it too) or
// Failed (release it). A panic of fn is counted and re-raised.
func (d *Deduper) execute(ctx context.Context, scope string, m Message, l *idem.Lease, fn func(context.Context) error) (Status, error) {
	key := l.Key()
	if d.MaxAttempts > 0 {
		if l.Takeover() {
			d.tries.failed(key, errTakenOver)
		}
		if n, last := d.tries.get(key); n >= d.MaxAttempts {
			return d.poison(ctx, scope, m, key, n, last)
		}
	}
	// The lease's context is registered with ctx until canceled: cancel it
	// when fn returns, so a long-lived consumer context does not collect one
	// child per message.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ok := false
	if d.MaxAttempts > 0 {
		defer func() {
			if !ok { // fn panicked: count it; the panic goes on
				d.tries.failed(key, errPanicked)
			}
		}()
	}
	err := fn(l.Context(hctx))
	ok = true
	if err == nil {
		if d.MaxAttempts > 0 {
			d.tries.forget(key)
		}
		return Executed, nil
	}
	if d.MaxAttempts > 0 {
		if n := d.tries.failed(key, err); n >= d.MaxAttempts {
			return d.poison(ctx, scope, m, key, n, err)
		}
	}
	return Failed, err
}

// errPanicked is the failure counted for a handler that panicked.
var errPanicked = errors.New("idemmsg: the handler panicked")

// errTakenOver is the failure counted for an id whose previous lease ran
// out unfinished.
var errTakenOver = errors.New("idemmsg: a previous attempt did not finish (its consumer crashed or stalled)")

// poison hands a message that failed n times to OnPoison.
func (d *Deduper) poison(ctx context.Context, scope string, m Message, key string, n int, last error) (Status, error) {
	if d.OnPoison != nil {
		if err := d.OnPoison(ctx, Poison{Scope: scope, ID: m.ID, Payload: m.Payload, Attempts: n, Err: last}); err != nil {
			return Failed, fmt.Errorf("idemmsg: OnPoison for %q after %d failed attempts: %w (last handler error: %w)", m.ID, n, err, last)
		}
	}
	d.tries.forget(key)
	return Poisoned, fmt.Errorf("%w: %q failed %d times: %w", ErrPoisoned, m.ID, n, last)
}

// finish completes l (Executed, Poisoned) or releases it (otherwise) and
// adds the store's error to o.
func (d *Deduper) finish(ctx context.Context, l *idem.Lease, o BatchResult) BatchResult {
	sctx := context.WithoutCancel(ctx)
	if o.Status == Executed || o.Status == Poisoned {
		if err := l.Complete(sctx, result); err != nil {
			o.Err = errors.Join(o.Err, fmt.Errorf("%w: %w", ErrNotRecorded, err))
		}
		return o
	}
	if err := l.Release(sctx); err != nil {
		o.Err = errors.Join(o.Err, err)
	}
	return o
}

// attempts counts failed attempts per record key (see MaxAttempts).
type attempts struct {
	mu      sync.Mutex
	m       map[string]*tries
	sweepAt int
}

type tries struct {
	n    int
	last error
	at   time.Time
}

// attemptsTTL is how long a failure count is kept after its last failure.
const attemptsTTL = 24 * time.Hour

// failed counts a failure of key and returns the count.
func (a *attempts) failed(key string, err error) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.m == nil {
		a.m, a.sweepAt = map[string]*tries{}, 1024
	}
	t := a.m[key]
	if t == nil || now.Sub(t.at) > attemptsTTL {
		t = &tries{}
		a.m[key] = t
	}
	t.n++
	t.last, t.at = err, now
	if len(a.m) >= a.sweepAt {
		for k, t := range a.m {
			if now.Sub(t.at) > attemptsTTL {
				delete(a.m, k)
			}
		}
		a.sweepAt = max(1024, 2*len(a.m))
	}
	return t.n
}

// get returns key's failure count and last error.
func (a *attempts) get(key string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.m[key]
	if t == nil || time.Since(t.at) > attemptsTTL {
		return 0, nil
	}
	return t.n, t.last
}

// forget drops key's count.
func (a *attempts) forget(key string) {
	a.mu.Lock()
	delete(a.m, key)
	a.mu.Unlock()
}
