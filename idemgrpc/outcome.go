package idemgrpc

import "google.golang.org/grpc/codes"

// OutcomeKind names what the interceptor did with a call.
type OutcomeKind uint8

// Outcome kinds. String returns the name in parentheses.
const (
	// OutcomeExecuted (executed): the handler ran under a lease. See
	// Outcome.Stored and Outcome.Err for what became of the record.
	OutcomeExecuted OutcomeKind = iota + 1
	// OutcomeReplayed (replayed): a stored result was replayed.
	OutcomeReplayed
	// OutcomeConflict (conflict): the key was in flight; ABORTED.
	OutcomeConflict
	// OutcomeMismatch (mismatch): the key was used for a different
	// request; FAILED_PRECONDITION.
	OutcomeMismatch
	// OutcomeKeyMissing (key_missing): no key and RequireKey is set;
	// INVALID_ARGUMENT.
	OutcomeKeyMissing
	// OutcomeKeyInvalid (key_invalid): a malformed key, two keys in the
	// metadata, or different keys in the metadata and the request;
	// INVALID_ARGUMENT.
	OutcomeKeyInvalid
	// OutcomeScopeRefused (scope_refused): Scope failed, or the call has no
	// credential and anonymous callers are not allowed; UNAUTHENTICATED
	// (or the status Scope returned).
	OutcomeScopeRefused
	// OutcomeBadRequest (bad_request): the request could not be
	// fingerprinted (not a protobuf message, or Fingerprint failed);
	// INVALID_ARGUMENT.
	OutcomeBadRequest
	// OutcomeStoreUnavailable (store_unavailable): the store failed (or is
	// full) and the handler did not run; UNAVAILABLE (RESOURCE_EXHAUSTED).
	OutcomeStoreUnavailable
	// OutcomePassthrough (passthrough): the method is not protected, or
	// the call has no key and keys are optional; the handler ran
	// unprotected.
	OutcomePassthrough
	// OutcomeCanceled (canceled): the call was canceled (or its deadline
	// passed) while its key was claimed or waited for; the handler did not
	// run.
	OutcomeCanceled
	// OutcomeReplayInvalid (replay_invalid): the stored result could not be
	// decoded; INTERNAL. The handler did not run.
	OutcomeReplayInvalid
	// OutcomePanic (panic): the handler panicked; the record was released
	// and the panic continued.
	OutcomePanic
)

var outcomeNames = [...]string{
	OutcomeExecuted:         "executed",
	OutcomeReplayed:         "replayed",
	OutcomeConflict:         "conflict",
	OutcomeMismatch:         "mismatch",
	OutcomeKeyMissing:       "key_missing",
	OutcomeKeyInvalid:       "key_invalid",
	OutcomeScopeRefused:     "scope_refused",
	OutcomeBadRequest:       "bad_request",
	OutcomeStoreUnavailable: "store_unavailable",
	OutcomePassthrough:      "passthrough",
	OutcomeCanceled:         "canceled",
	OutcomeReplayInvalid:    "replay_invalid",
	OutcomePanic:            "panic",
}

// String returns the kind's name, as used in metrics labels.
func (k OutcomeKind) String() string {
	if int(k) < len(outcomeNames) && outcomeNames[k] != "" {
		return outcomeNames[k]
	}
	return "unknown"
}

// Outcome describes what the interceptor did with one call.
type Outcome struct {
	Kind OutcomeKind
	// Method is the call's full method name.
	Method string
	// Code is the status code answered (for executed, replayed and
	// passthrough, the handler's or the stored one; for executed it may be
	// UNAVAILABLE when the result could not be recorded). Zero (OK) for
	// panic.
	Code codes.Code
	// Fence is the lease's fence when the handler ran under a lease.
	Fence uint64
	// Takeover reports that the lease was taken over from an executor whose
	// lease had expired.
	Takeover bool
	// Stored reports, for executed, that the record was completed (the
	// result is replayed to retries). Otherwise it was released (a status
	// that Server.Stored does not keep), or the store refused or failed.
	Stored bool
	// Replaced reports, for executed and stored, that a stand-in status
	// (ReasonResultTooLarge or ReasonResultNotReplayable) was stored and
	// answered in place of the handler's result.
	Replaced bool
	// Err is the error behind the refusals (key, scope, store, canceled,
	// replay_invalid), and, for executed and panic, the error of the
	// completing or releasing store call (for example wrapping
	// idem.ErrLeaseLost when a takeover happened while the handler ran).
	Err error
}
