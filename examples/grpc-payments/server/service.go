package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

// Service implements paymentsv1.PaymentsServiceServer on a Ledger. It knows
// nothing about idempotency: the interceptors New installs make its
// CreatePayment run once per (caller, request_id).
type Service struct {
	paymentsv1.UnimplementedPaymentsServiceServer

	// Ledger holds the payments. Required.
	Ledger *Ledger

	// BeforeCharge, if set, is called by CreatePayment after validation,
	// before the charge (tests hold executions here).
	BeforeCharge func(ctx context.Context, req *paymentsv1.CreatePaymentRequest)
}

// CreatePayment charges the request's amount. It validates the amount and
// the currency (INVALID_ARGUMENT, an answer the idempotency layer stores
// like any other: a retry gets the same error) and charges the ledger.
func (s *Service) CreatePayment(ctx context.Context, req *paymentsv1.CreatePaymentRequest) (*paymentsv1.Payment, error) {
	if req.GetAmountCents() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "amount_cents must be positive")
	}
	if !validCurrency(req.GetCurrency()) {
		return nil, status.Error(codes.InvalidArgument, "currency must be an ISO 4217 code: three upper-case letters")
	}
	if s.BeforeCharge != nil {
		s.BeforeCharge(ctx, req)
	}
	return s.Ledger.Charge(req.GetAmountCents(), req.GetCurrency(), req.GetDescription()), nil
}

// GetPayment returns the payment named by req.Id, or NOT_FOUND.
func (s *Service) GetPayment(_ context.Context, req *paymentsv1.GetPaymentRequest) (*paymentsv1.Payment, error) {
	p, ok := s.Ledger.Get(req.GetId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no payment %q", req.GetId())
	}
	return p, nil
}

// WatchPayments sends every payment charged so far, then each new one as it
// is charged, until the client goes away. A watcher that falls more than 64
// payments behind gets RESOURCE_EXHAUSTED (it never misses one silently).
func (s *Service) WatchPayments(_ *paymentsv1.WatchPaymentsRequest, stream grpc.ServerStreamingServer[paymentsv1.Payment]) error {
	past, w := s.Ledger.watch()
	defer s.Ledger.unwatch(w)
	for _, p := range past {
		if err := stream.Send(p); err != nil {
			return err
		}
	}
	for {
		select {
		case p := <-w.ch:
			if err := stream.Send(p); err != nil {
				return err
			}
		case <-w.overflow:
			// Send what was buffered before the overflow first.
			for {
				select {
				case p := <-w.ch:
					if err := stream.Send(p); err != nil {
						return err
					}
					continue
				default:
				}
				return status.Error(codes.ResourceExhausted, "watcher fell too far behind; watch again")
			}
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// validCurrency reports whether c is three ASCII upper-case letters.
func validCurrency(c string) bool {
	if len(c) != 3 {
		return false
	}
	for i := range len(c) {
		if c[i] < 'A' || c[i] > 'Z' {
			return false
		}
	}
	return true
}
