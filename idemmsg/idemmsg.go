package idemmsg

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// DefaultRetention is how long a processed id is remembered when
// Deduper.Retention is zero: 30 days (SPEC §1).
const DefaultRetention = 30 * 24 * time.Hour

// ErrNotRecorded reports that the handler succeeded but its completion could
// not be stored (the store failed, or the lease was taken over because the
// handler outlived it). The message should still be acknowledged: its side
// effect happened. A redelivery arriving after the lease expires would run
// the handler again, which is why Status.Ack is true for it.
var ErrNotRecorded = errors.New("idemmsg: processed but not recorded")

// ErrNoStore is returned (with NotRun) by a Deduper whose Store is nil.
var ErrNoStore = errors.New("idemmsg: Deduper.Store is nil")

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
	}
	return "unknown"
}

// Ack reports whether the message may be acknowledged (Kafka: its offset
// committed): true for Executed and Duplicate, false otherwise.
func (s Status) Ack() bool { return s == Executed || s == Duplicate }

// Deduper runs message handlers once per (scope, id) on an idem.Store.
// Set the fields before first use and do not change them afterwards. The zero
// value is not usable: Store must be set. A Deduper is safe for concurrent
// use.
type Deduper struct {
	// Store holds the records. Required.
	Store idem.Store
	// Lease is how long a consumer holds an id before another consumer may
	// take it over; it is renewed every third of itself while the handler
	// runs (when the store implements idem.Extender). If zero,
	// idem.DefaultLease (30 s) is used.
	Lease time.Duration
	// Retention is how long a processed id is remembered; a duplicate older
	// than that is processed again. If zero, DefaultRetention (30 days) is
	// used.
	Retention time.Duration
	// Observer, if set, receives every outcome (see idem.Observer).
	Observer idem.Observer
	// Parallelism bounds the concurrent store calls Batch makes when the
	// store does not implement BatchBeginner, and when it completes and
	// releases claims. If zero, 32 is used. Set it to 1 for an in-process
	// store (memstore), where concurrent calls only add scheduling cost.
	Parallelism int

	once sync.Once
	k    *idem.Keeper
}

// fingerprint is the fingerprint of every message record: a message id names
// one message, so any reuse of the id is a duplicate, never a mismatch.
var fingerprint = []byte{}

// result is the stored result of every processed message.
var result = []byte{}

func (d *Deduper) keeper() *idem.Keeper {
	d.once.Do(func() {
		d.k = &idem.Keeper{Store: d.Store, Lease: d.lease(), Retention: d.retention(), Observer: d.Observer}
	})
	return d.k
}

func (d *Deduper) lease() time.Duration {
	if d.Lease > 0 {
		return d.Lease
	}
	return idem.DefaultLease
}

func (d *Deduper) retention() time.Duration {
	if d.Retention > 0 {
		return d.Retention
	}
	return DefaultRetention
}

// Once runs fn unless the message id was already processed in scope (SPEC
// §4). It claims (scope, id) with a lease, runs fn with a context carrying
// the fence (idem.FenceFromContext), and then:
//
//   - fn returns nil: the record is completed and kept for Retention →
//     Executed, nil. If completing fails, Once returns Executed and an error
//     matching ErrNotRecorded (the message should still be acknowledged).
//   - fn returns an error or panics: the record is released so that the
//     redelivery runs fn again → Failed and fn's error (a panic is
//     re-raised after the release).
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
	if d.Store == nil {
		return NotRun, ErrNoStore
	}
	a, err := d.keeper().Begin(ctx, scope, id, fingerprint)
	if err != nil {
		if errors.Is(err, idem.ErrInFlight) {
			return InFlight, err
		}
		return NotRun, err
	}
	if a.Replayed() {
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
	ferr := fn(l.Context(ctx))
	finished = true
	if ferr != nil {
		if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil {
			return Failed, errors.Join(ferr, rerr)
		}
		return Failed, ferr
	}
	if err := l.Complete(context.WithoutCancel(ctx), result); err != nil {
		return Executed, fmt.Errorf("%w: %w", ErrNotRecorded, err)
	}
	return Executed, nil
}
