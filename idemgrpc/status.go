package idemgrpc

import (
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail that every
// status the interceptor makes itself carries, next to one of the Reason
// constants. Clients branch on (ErrorDomain, reason), not on messages.
const ErrorDomain = "idemgrpc"

// Reasons of the statuses the interceptor makes (google.rpc.ErrorInfo.reason,
// with domain ErrorDomain). They are the gRPC counterparts of idemhttp's
// problem codes.
const (
	// ReasonKeyMissing: INVALID_ARGUMENT; the method requires a key
	// (Server.RequireKey) and the call had none.
	ReasonKeyMissing = "IDEMPOTENCY_KEY_MISSING"
	// ReasonKeyInvalid: INVALID_ARGUMENT; the key is empty, longer than
	// 255 bytes or not visible ASCII, was sent twice in the metadata, or
	// the metadata and the request message carry different keys.
	ReasonKeyInvalid = "IDEMPOTENCY_KEY_INVALID"
	// ReasonCredentialsRequired: UNAUTHENTICATED; the call carries no
	// credential to scope its key and anonymous callers are not allowed
	// (Server.AllowAnonymous).
	ReasonCredentialsRequired = "CREDENTIALS_REQUIRED"
	// ReasonInProgress: ABORTED; a call with the same key is executing.
	// A google.rpc.RetryInfo detail and the grpc-retry-pushback-ms trailer
	// carry the time left on its lease.
	ReasonInProgress = "REQUEST_IN_PROGRESS"
	// ReasonKeyReused: FAILED_PRECONDITION; the key was used before for a
	// different request (another method or another message). Nothing
	// changed; do not retry this call with this key.
	ReasonKeyReused = "IDEMPOTENCY_KEY_REUSED"
	// ReasonStoreUnavailable: UNAVAILABLE; the store could not be reached
	// and the handler did not run. A retry is safe.
	ReasonStoreUnavailable = "STORE_UNAVAILABLE"
	// ReasonStoreFull: RESOURCE_EXHAUSTED; the store's budget or the
	// caller's quota refused a new key; the handler did not run.
	ReasonStoreFull = "STORE_FULL"
	// ReasonOutcomeUnknown: UNAVAILABLE; the handler ran but its result
	// could not be recorded. A retry with the same key is safe: it gets
	// the result if the recording did happen, or runs again once the
	// lease ends.
	ReasonOutcomeUnknown = "OUTCOME_UNKNOWN"
	// ReasonLeaseLost: UNAVAILABLE; another executor took the key over
	// while the handler ran (this process stalled past the lease) and has
	// no result yet. A retry gets the surviving result.
	ReasonLeaseLost = "LEASE_LOST"
	// ReasonResultTooLarge: INTERNAL, stored; the handler ran but its
	// result was larger than Server.MaxResult (or the store's budget), so
	// this status was stored in its place: every call with the key gets
	// it, and the handler does not run again.
	ReasonResultTooLarge = "RESULT_TOO_LARGE"
	// ReasonResultNotReplayable: INTERNAL, stored; the handler ran but its
	// response was not a protobuf message of a type that Server.Types
	// resolves, so it could not be replayed; this status was stored in its
	// place.
	ReasonResultNotReplayable = "RESULT_NOT_REPLAYABLE"
	// ReasonStoredResultInvalid: INTERNAL; the stored result cannot be
	// decoded (for example its response type is no longer registered).
	// The handler does not run.
	ReasonStoredResultInvalid = "STORED_RESULT_INVALID"
)

// PushbackTrailer is the trailer grpc-go's client retry policy reads for
// the delay before its next attempt (gRFC A6).
const PushbackTrailer = "grpc-retry-pushback-ms"

// errStatus returns the error of a status with code, msg and an ErrorInfo
// detail for reason, followed by a RetryInfo detail when retry > 0.
func errStatus(code codes.Code, reason, msg string, retry time.Duration) error {
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}
	var err error
	if retry > 0 {
		st, err = st.WithDetails(info, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	} else {
		st, err = st.WithDetails(info)
	}
	if err != nil { // the details always marshal
		return status.Error(code, msg)
	}
	return st.Err()
}

// setPushback sets the grpc-retry-pushback-ms trailer on stream to d in
// whole milliseconds, rounded up, at least 1.
func setPushback(stream grpc.ServerTransportStream, d time.Duration) {
	if stream == nil {
		return
	}
	ms := max(int64((d+time.Millisecond-1)/time.Millisecond), 1)
	_ = stream.SetTrailer(metadata.MD{PushbackTrailer: {strconv.FormatInt(ms, 10)}})
}

// retryLater is the delay a client is asked to wait after a failure of the
// store or of the recording (as idemhttp's Retry-After: 1).
const retryLater = time.Second
