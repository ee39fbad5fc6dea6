// Package server is the payments service of the grpc-payments example: an
// in-memory Ledger served as PaymentsService, with idemgrpc's interceptors
// making CreatePayment charge once per (caller, request_id).
//
// The wiring (New):
//
//   - idemgrpc.Server with Key: idemgrpc.RequestIDField("request_id"), so the
//     AIP-155 request_id field of CreatePaymentRequest is the idempotency
//     key, and RequireKey, so a CreatePayment without one is refused;
//   - Scope: idemgrpc.MetadataScope(secret), an HMAC of the caller's
//     authorization metadata, so two callers never share a request_id's
//     record (a service with real authentication would return the
//     authenticated principal instead);
//   - Protect selects CreatePayment only: GetPayment (safe) passes through,
//     and so does the WatchPayments stream (StreamServerInterceptor lets
//     streams through untouched);
//   - wait mode off: a retry that arrives while the first attempt still runs
//     gets ABORTED at once (reason REQUEST_IN_PROGRESS, with a retry
//     pushback of the time left on the first attempt's lease).
//
// LoseAnswers simulates a network that loses answers after the charge, to
// show that a retry then replays the payment instead of charging again.
package server

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

// Options configures New.
type Options struct {
	// Keeper holds the idempotency records. Required.
	Keeper *idem.Keeper

	// ScopeSecret keys the HMAC of the caller's authorization metadata
	// that scopes request ids (idemgrpc.MetadataScope): at least
	// idemgrpc.MinScopeSecret (16) bytes, the same on every replica and
	// across restarts for as long as the Keeper's store keeps records.
	// Required.
	ScopeSecret []byte

	// Ledger holds the payments. If nil, a new empty Ledger is used.
	Ledger *Ledger

	// LoseAnswers is the fraction (0 to 1) of newly created payments
	// whose first answer is replaced by UNAVAILABLE after the payment was
	// charged and its answer stored, as a network that drops the response
	// would. A client that retries (the example client's retry policy
	// does) gets the payment replayed. 0 (the default) loses nothing.
	LoseAnswers float64

	// BeforeCharge, if set, becomes the Service's BeforeCharge.
	BeforeCharge func(ctx context.Context, req *paymentsv1.CreatePaymentRequest)
}

// New returns a gRPC server serving PaymentsService behind the idempotency
// interceptors, and the Service it serves; opts (credentials, limits) are
// passed on to grpc.NewServer. The caller starts the server with Serve and
// ends it with Stop or GracefulStop.
func New(o Options, opts ...grpc.ServerOption) (*grpc.Server, *Service, error) {
	if o.Keeper == nil {
		return nil, nil, errors.New("server: Options.Keeper is required")
	}
	if len(o.ScopeSecret) < idemgrpc.MinScopeSecret {
		return nil, nil, errors.New("server: Options.ScopeSecret must hold at least 16 bytes (idemgrpc.MinScopeSecret)")
	}
	if o.Ledger == nil {
		o.Ledger = NewLedger()
	}
	ig := &idemgrpc.Server{
		Keeper: o.Keeper,
		// Who the request_id belongs to: an HMAC of the authorization
		// metadata. Calls without it are refused (UNAUTHENTICATED).
		Scope: idemgrpc.MetadataScope(o.ScopeSecret),
		// AIP-155: the key is the request's request_id field, required.
		Key:        idemgrpc.RequestIDField("request_id"),
		RequireKey: true,
		// Only the charge is protected; GetPayment is safe.
		Protect: func(fullMethod string) bool {
			return fullMethod == paymentsv1.PaymentsService_CreatePayment_FullMethodName
		},
		// Wait is zero: a duplicate of a running call gets ABORTED at once.
	}
	unary := []grpc.UnaryServerInterceptor{}
	if o.LoseAnswers > 0 {
		// Outermost: it sees the answer after the idempotency layer
		// stored it, as the network would.
		unary = append(unary, loseAnswers(o.LoseAnswers))
	}
	unary = append(unary, ig.UnaryServerInterceptor())
	opts = append(opts,
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(ig.StreamServerInterceptor()),
	)
	svc := &Service{Ledger: o.Ledger, BeforeCharge: o.BeforeCharge}
	s := grpc.NewServer(opts...)
	paymentsv1.RegisterPaymentsServiceServer(s, svc)
	return s, svc, nil
}

// loseAnswers replaces the first answer for a fraction p of new payments
// with UNAVAILABLE, after the inner interceptors stored it.
func loseAnswers(p float64) grpc.UnaryServerInterceptor {
	var mu sync.Mutex
	// Payment ids whose first answer went out (or was lost): one entry per
	// payment, as many as the ledger holds.
	seen := map[string]bool{}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		pay, ok := resp.(*paymentsv1.Payment)
		if err != nil || !ok || info.FullMethod != paymentsv1.PaymentsService_CreatePayment_FullMethodName {
			return resp, err
		}
		mu.Lock()
		first := !seen[pay.GetId()]
		seen[pay.GetId()] = true
		mu.Unlock()
		if first && rand.Float64() < p {
			return nil, status.Errorf(codes.Unavailable, "simulated network failure: the answer for %s was lost (the payment was charged)", pay.GetId())
		}
		return resp, nil
	}
}
