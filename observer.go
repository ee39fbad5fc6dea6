package idem

import (
	"context"
	"time"
)

// EventKind names an outcome reported to an Observer.
type EventKind uint8

const (
	// EventExecuted: the caller acquired the key and ran the operation
	// (reported once the record is completed or released).
	EventExecuted EventKind = iota + 1
	// EventReplayed: a stored result was returned instead of executing.
	EventReplayed
	// EventConflict: the key was in flight elsewhere (HTTP 409).
	EventConflict
	// EventMismatch: the key was reused with a different fingerprint (422).
	EventMismatch
	// EventTakeover: the caller acquired a key whose previous lease expired.
	EventTakeover
	// EventLeaseLost: a Complete, Release or Extend was refused by fencing.
	EventLeaseLost
	// EventStoreError: a store call failed.
	EventStoreError
	// EventAcquired: the caller acquired a key that held no record (a first
	// execution starts). A key acquired from an expired lease is reported as
	// EventTakeover instead. Each Begin is reported as exactly one of
	// EventAcquired, EventTakeover, EventReplayed, EventConflict,
	// EventMismatch or EventStoreError.
	EventAcquired
)

// String returns the event kind's name as used in metrics labels.
func (k EventKind) String() string {
	switch k {
	case EventExecuted:
		return "executed"
	case EventReplayed:
		return "replayed"
	case EventConflict:
		return "conflict"
	case EventMismatch:
		return "mismatch"
	case EventTakeover:
		return "takeover"
	case EventLeaseLost:
		return "lease_lost"
	case EventStoreError:
		return "store_error"
	case EventAcquired:
		return "acquired"
	}
	return "unknown"
}

// Event describes one outcome.
type Event struct {
	Kind EventKind
	// Key is the store key (see RecordKey).
	Key string
	// Fence is the fence involved, if any.
	Fence uint64
	// Op is the store step involved: "begin", "complete", "release" or
	// "extend".
	Op string
	// Duration is the latency of the store call for store events, and the
	// time the operation ran for EventExecuted.
	Duration time.Duration
	// StoreLatency is how long the store took to answer the step reported:
	// the Begin for EventAcquired, EventTakeover, EventReplayed,
	// EventConflict and EventMismatch; the completing or releasing call,
	// retries included, for EventExecuted; the failed call for
	// EventLeaseLost and EventStoreError (there it equals Duration, except
	// for a Retrying event, where it is the failed attempt's alone).
	StoreLatency time.Duration
	// Err is the error for EventLeaseLost and EventStoreError.
	Err error
	// Retrying marks an EventStoreError of a completing or releasing step
	// that the Keeper will try again (its StoreLatency is that one
	// attempt's; Duration is the time since the step's first attempt). The
	// step's outcome is reported later, once: EventExecuted, or a final
	// EventStoreError or EventLeaseLost without Retrying.
	Retrying bool
}

// Observer receives every outcome of a Keeper. Observe is called
// synchronously on the request path and must be fast and safe for concurrent
// use.
type Observer interface {
	Observe(ctx context.Context, e Event)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(ctx context.Context, e Event)

// Observe calls f(ctx, e).
func (f ObserverFunc) Observe(ctx context.Context, e Event) { f(ctx, e) }

// fenceKey is the context key for the executing fence.
type fenceKey struct{}

// withFence returns a copy of ctx carrying fence, for the code that executes
// under a lease (Lease.Context).
func withFence(ctx context.Context, fence uint64) context.Context {
	return context.WithValue(ctx, fenceKey{}, fence)
}

// FenceFromContext returns the fence of the lease the caller executes under,
// as put in ctx by Lease.Context.
// Downstream writes can be made conditional on it ("… WHERE fence < $1").
func FenceFromContext(ctx context.Context) (uint64, bool) {
	f, ok := ctx.Value(fenceKey{}).(uint64)
	return f, ok
}
