package idemclient

import (
	"errors"
	"fmt"
	"strings"
)

// Errors a caller can branch on with errors.Is, through the *url.Error that
// http.Client wraps around them. They are reasons to stop retrying: they
// appear as Error.Stop, and the first three also as AttemptInfo.GiveUp when
// the Transport returns a response it would otherwise have retried.
//
// A key that cannot be sent fails the request with an error matching
// idem.ErrInvalidKey, before anything is sent: an empty key from
// Transport.KeyFunc, or a key (from KeyFunc or the caller) containing a
// control character, which net/http refuses in a header value. The Transport
// does not otherwise judge keys: the server does.
var (
	// ErrBodyNotReplayable reports that a retryable outcome was not retried
	// because the request body cannot be sent again: it has no GetBody and is
	// larger than Transport.BodyLimit (or BodyLimit is negative).
	ErrBodyNotReplayable = errors.New("idemclient: request body cannot be replayed")

	// ErrAttemptsExhausted reports that Transport.MaxAttempts attempts were
	// made.
	ErrAttemptsExhausted = errors.New("idemclient: attempts exhausted")

	// ErrBudgetExhausted reports that the next attempt could not start within
	// the time budget: Transport.MaxElapsed, the key age limit
	// (Transport.KeyMaxAge) or the request context's deadline. It is also the
	// reason when a Retry-After asks for a wait longer than the time left.
	ErrBudgetExhausted = errors.New("idemclient: retry time budget exhausted")

	// ErrKeyExpired reports that a caller-provided key, first used at the
	// time given to WithKeyTime, is older than Transport.KeyMaxAge: the
	// server may have forgotten it, so sending it again could execute the
	// operation twice. Nothing was sent.
	ErrKeyExpired = errors.New("idemclient: idempotency key older than KeyMaxAge")
)

// Error is the error RoundTrip returns when it ends without a response from
// a request it manages (one that carries a key, or uses an idempotent
// method). It matches both Stop and Err with errors.Is and errors.As.
//
// Key is the idempotency key that was sent: a caller that gives up can
// persist it and retry later with the same key, which is safe as long as the
// server still retains it.
type Error struct {
	// Method and URL identify the request.
	Method, URL string
	// Key is the Idempotency-Key sent with every attempt; empty for a request
	// sent without one.
	Key string
	// Attempts is the number of attempts made (0 when nothing was sent).
	Attempts int
	// Stop says why no further attempt was made: ErrBodyNotReplayable,
	// ErrAttemptsExhausted, ErrBudgetExhausted, ErrKeyExpired or the
	// context's error. It is nil when Err itself is not retryable (a
	// certificate error, a failing GetBody or KeyFunc, an invalid key, an
	// error reading the body to buffer it).
	Stop error
	// Err is the last attempt's error (or the error that prevented the
	// first attempt).
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("idemclient: ")
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.URL)
	if e.Key != "" {
		fmt.Fprintf(&b, " (key %q)", e.Key)
	}
	fmt.Fprintf(&b, ": %d attempt", e.Attempts)
	if e.Attempts != 1 {
		b.WriteByte('s')
	}
	if e.Stop != nil && e.Stop != e.Err {
		b.WriteString(", stopped: ")
		b.WriteString(strings.TrimPrefix(e.Stop.Error(), "idemclient: "))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns Stop and Err (whichever are set), so that errors.Is finds
// both the reason for stopping and the underlying failure.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Stop != nil {
		errs = append(errs, e.Stop)
	}
	if e.Err != nil && e.Err != e.Stop {
		errs = append(errs, e.Err)
	}
	return errs
}
