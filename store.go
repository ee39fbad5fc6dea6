package idem

import (
	"context"
	"time"
)

// BeginOutcome is what Store.Begin found and did (SPEC §2).
type BeginOutcome uint8

const (
	// Acquired: the caller now holds the record's lease and must execute,
	// then Complete or Release with Begun.Fence.
	Acquired BeginOutcome = iota + 1
	// InFlight: another executor holds a live lease; nothing changed.
	InFlight
	// Replay: the record is completed with the same fingerprint; Begun.Result
	// holds the stored result. Nothing changed.
	Replay
	// Mismatch: the record (in any state) has a different fingerprint.
	// Nothing changed.
	Mismatch
)

// String returns the outcome's lower-case name.
func (o BeginOutcome) String() string {
	switch o {
	case Acquired:
		return "acquired"
	case InFlight:
		return "in-flight"
	case Replay:
		return "replay"
	case Mismatch:
		return "mismatch"
	}
	return "unknown"
}

// Begun is the result of Store.Begin.
type Begun struct {
	Outcome BeginOutcome
	// Fence is the new fence when Acquired, and the holder's fence when
	// InFlight. Zero otherwise.
	Fence uint64
	// Takeover is true when Acquired took over a record whose lease expired.
	Takeover bool
	// LeaseLeft is the time left on the holder's lease when InFlight.
	LeaseLeft time.Duration
	// Result is the stored result when Replay. It may be empty but is never
	// nil for a Replay. A Store must not retain it after returning.
	Result []byte
}

// Store persists idempotency records. Every method is atomic with respect to
// the others for the same key and safe for concurrent use. Keys are opaque
// non-empty strings of any bytes (see RecordKey); fingerprints and results are
// opaque bytes that the store returns byte for byte.
//
// Durations, not instants, are passed in: a Store judges lease and retention
// deadlines by its own single clock (Redis server time, the database's now(),
// the process clock for embedded stores), so callers on different hosts need
// not agree on time.
//
// Fences: a fresh record (no record, one past retention, or one released)
// gets a fence greater than every fence the key had before, even when the
// previous record is gone and the clock has not moved; a takeover uses
// previous+1. Stores in this module take max(clock in microseconds, highest
// fence issued so far + 1), keeping the "highest issued" per shard (memstore,
// filestore), in a tombstone (redisstore) or in the row (pgxstore), so fences
// keep growing across deletions and downstream writes can be made
// conditional on them.
//
// The fence alone decides Complete, Release and Extend: an executor whose
// lease ran out but was not taken over may still complete, release or
// extend. An in-progress record whose lease ran out is therefore kept (it
// still fences and still answers Mismatch to other fingerprints) until it is
// taken over or at least a long abandonment period has passed (24 h by
// default in this module's stores). Fingerprints are compared byte for
// byte; nil and empty are equal.
//
// A Store must not retain the fp or result slices it is given, nor expect
// callers to keep the slices it returns unchanged: it copies as needed.
//
// A Store returns ctx.Err() (possibly wrapped) and changes nothing when ctx is
// already done, and wraps transport failures with ErrStoreUnavailable.
type Store interface {
	// Begin atomically applies SPEC §2's begin step:
	//   - no record, or a completed record past retention: create an
	//     in-progress record with fp and a new fence, lease for lease → Acquired;
	//   - any live record with a different fingerprint → Mismatch, unchanged;
	//   - in progress, lease live → InFlight with LeaseLeft, unchanged;
	//   - in progress, lease expired → fence+1, lease renewed → Acquired with
	//     Takeover;
	//   - completed → Replay with the stored result.
	Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (Begun, error)

	// Complete stores result for an in-progress record held by fence, marks it
	// completed and keeps it for retention. Otherwise it returns ErrLeaseLost
	// and changes nothing.
	Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error

	// Release removes an in-progress record held by fence so that the next
	// Begin executes. Otherwise it returns ErrLeaseLost and changes nothing.
	Release(ctx context.Context, key string, fence uint64) error
}

// Extender is implemented by stores that can push out a live lease, so long
// handlers are not taken over while they still run.
type Extender interface {
	// Extend sets the lease of an in-progress record held by fence to end
	// lease from now (store clock). Otherwise it returns ErrLeaseLost and
	// changes nothing.
	Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error
}

// BatchBeginner is implemented by stores that can apply Begin to many keys in
// one round trip (a pipeline, a multi-key script, one SQL statement).
// Keeper.BeginBatch uses it when the store implements it, and otherwise calls
// Begin for each key.
type BatchBeginner interface {
	// BeginBatch applies Begin to keys[i] with fingerprint fps[i] (len(fps)
	// == len(keys)) and the same lease, and returns the results in the order
	// of keys. Each key is atomic on its own; the batch as a whole need not
	// be. A key that occurs twice is begun twice, in order (the second is
	// then InFlight against the first). An error means that none of the
	// results are known; the store then gives back (best effort) any record
	// the batch acquired.
	BeginBatch(ctx context.Context, keys []string, fps [][]byte, lease time.Duration) ([]Begun, error)
}

// Sweeper is implemented by stores that keep expired records until asked to
// remove them. Stores start no goroutines; the owner schedules Sweep.
type Sweeper interface {
	// Sweep deletes completed records past retention (and any other dead
	// state) and reports how many records it removed.
	Sweep(ctx context.Context) (int, error)
}

// Waiter is implemented by stores that can notify a waiting duplicate when a
// record leaves the in-progress state, so wait mode need not poll.
type Waiter interface {
	// Wait blocks until the record for key may have changed (completed,
	// released, or removed), ctx is done, or d elapses, whichever is first.
	// Spurious wake-ups are allowed; callers call Begin again.
	Wait(ctx context.Context, key string, d time.Duration) error
}

// State is the lifecycle state of a record.
type State uint8

const (
	// StateInProgress: a lease is held; the operation may be running.
	StateInProgress State = iota + 1
	// StateCompleted: the result is final and is replayed.
	StateCompleted
)

// String returns the state's lower-case name.
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in-progress"
	case StateCompleted:
		return "completed"
	}
	return "unknown"
}

// Record is a read-only view of one stored record, for inspection.
type Record struct {
	State       State
	Fingerprint []byte
	Fence       uint64
	// Age is the time since the current fence acquired the record.
	Age time.Duration
	// Remaining is the lease time left (in progress) or the retention left
	// (completed), judged by the store's clock.
	Remaining time.Duration
	// Result is the stored result when completed.
	Result []byte
}

// Inspector is implemented by stores that can return a record without
// changing it (admin endpoints, tests).
type Inspector interface {
	// Get returns the live record for key, or ok == false when there is none
	// (never created, released, or past retention). A missing record is not an
	// error.
	Get(ctx context.Context, key string) (rec Record, ok bool, err error)
}
