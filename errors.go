package idem

import (
	"errors"
	"fmt"
	"time"
)

// Errors a library user can branch on with errors.Is (SPEC §5). Stores wrap
// their own failures with ErrStoreUnavailable so that callers fail closed.
var (
	// ErrInFlight reports that another executor holds a live lease on the key.
	// The concrete error is an *InFlightError carrying the lease time left.
	ErrInFlight = errors.New("idem: request in flight")

	// ErrMismatch reports that the key was used before with a different
	// fingerprint. The stored record is left unchanged.
	ErrMismatch = errors.New("idem: key reused with a different request")

	// ErrLeaseLost reports that a Complete, Release or Extend carried a fence
	// that no longer holds the record: the lease expired and another executor
	// took over, or the record is gone. The store changed nothing.
	ErrLeaseLost = errors.New("idem: lease lost")

	// ErrStoreUnavailable reports that the store could not be reached or did
	// not answer in time. Callers fail closed: the operation is not run.
	ErrStoreUnavailable = errors.New("idem: store unavailable")

	// ErrStoreFull reports that a store with a record limit is full. It wraps
	// ErrStoreUnavailable, so errors.Is(err, ErrStoreUnavailable) holds and
	// callers fail closed instead of evicting live records.
	ErrStoreFull = fmt.Errorf("idem: store full: %w", ErrStoreUnavailable)

	// ErrInvalidKey reports a key that is empty, too long or contains bytes
	// outside visible ASCII.
	ErrInvalidKey = errors.New("idem: invalid key")
)

// InFlightError is the error returned when a key is held by a live lease. It
// matches ErrInFlight with errors.Is.
type InFlightError struct {
	// LeaseLeft is the time left on the holder's lease, judged by the store's
	// clock. It is the earliest moment a retry could take the key over.
	LeaseLeft time.Duration
}

// Error implements error.
func (e *InFlightError) Error() string {
	return fmt.Sprintf("%v (lease left %v)", ErrInFlight, e.LeaseLeft)
}

// Is reports whether target is ErrInFlight.
func (e *InFlightError) Is(target error) bool { return target == ErrInFlight }

// RetryAfter returns the whole seconds a client should wait before retrying:
// the lease time left rounded up, and never less than one.
func (e *InFlightError) RetryAfter() int {
	s := int((e.LeaseLeft + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}
