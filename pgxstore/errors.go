package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/idemkit/idem"
)

// opErr wraps err with the package and operation name.
func opErr(op string, err error) error {
	return fmt.Errorf("pgxstore: %s: %w", op, err)
}

// fail classifies an error from the database:
//
//   - ctx done: the context's error (errors.Is(err, context.Canceled) or
//     context.DeadlineExceeded holds), also wrapped with ErrStoreUnavailable
//     when the round trip may have failed half-way;
//   - a server error meaning the server or connection is going away or is
//     overloaded (SQLSTATE classes 08, 53, 57P0x), a serialization failure or
//     deadlock (40001, 40P01), or any non-server error (network, closed
//     connection, closed transaction): wrapped with idem.ErrStoreUnavailable,
//     so callers fail closed and a retry may succeed;
//   - any other server error (missing table, permission denied, aborted
//     transaction): wrapped as is; errors.As finds the *pgconn.PgError.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return opErr(op, fmt.Errorf("%w: %w", cerr, err))
	}
	if unavailable(err) {
		return opErr(op, fmt.Errorf("%w: %w", idem.ErrStoreUnavailable, err))
	}
	return opErr(op, err)
}

// unavailable reports whether err means the store could not do the work
// now (as opposed to a fault in the request or the schema).
func unavailable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return true // transport, closed connection, closed tx, context
	}
	switch {
	case len(pe.Code) == 5 && (pe.Code[:2] == "08" || pe.Code[:2] == "53"):
		return true // connection exception, insufficient resources
	case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
		return true // admin shutdown, crash shutdown, cannot connect now
	case pe.Code == "40001", pe.Code == "40P01":
		return true // serialization failure, deadlock
	}
	return false
}

// brokenConn reports whether err means the connection the statement ran on
// is broken (so the same statement may succeed on another connection), as
// opposed to a fault of the statement, or a server that cannot be reached
// at all (a new connection failed).
func brokenConn(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return false // no connection could be made: the server is down
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return len(pe.Code) == 5 && pe.Code[:2] == "08" ||
			pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.As(err, &ne) || pgconn.SafeToRetry(err)
}
