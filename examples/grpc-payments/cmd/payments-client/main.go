// Command payments-client creates one payment through PaymentsService and
// prints it, with how many attempts it took and whether the answer was a
// replay of an earlier charge.
//
//	go run ./cmd/payments-client -amount 4200 -currency EUR            # from examples/grpc-payments
//	go run ./cmd/payments-client -request-id 7d1c1c52-7bb4-4f1f-a3c0-6f6a0c2a4d0e   # run twice: the second replays
//
// Retries are grpc-go's own: a service config gives CreatePayment a retry
// policy (up to -attempts attempts on UNAVAILABLE and ABORTED, with
// backoff). A retry resends the same message, so the same request_id, and
// the server answers it with the payment the first attempt charged (trailer
// idempotency-replayed: true). Without the request_id such a retry would
// charge twice.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"github.com/idemkit/idem/idemgrpc"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "payments-client:", err)
		os.Exit(1)
	}
}

// run creates one payment and prints it on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments-client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:50051", "server address")
	token := fs.String("token", "demo-alice", "bearer token sent as authorization metadata (the caller's identity)")
	amount := fs.Int64("amount", 4200, "amount in cents")
	currency := fs.String("currency", "EUR", "ISO 4217 currency code")
	description := fs.String("description", "", "statement description")
	requestID := fs.String("request-id", "", "the AIP-155 request_id (default: a new UUID); repeat one to see a replay")
	attempts := fs.Int("attempts", 5, "most attempts of grpc-go's retry policy (2 to 5)")
	timeout := fs.Duration("timeout", 30*time.Second, "deadline of the call, all attempts included")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *attempts < 2 || *attempts > 5 {
		return fmt.Errorf("-attempts %d: want 2 to 5 (grpc-go caps a retry policy at 5)", *attempts)
	}
	if *requestID == "" {
		*requestID = idemgrpc.NewKey() // a random UUID
	}
	var counter attemptCounter
	conn, err := grpc.NewClient(*addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(serviceConfig(*attempts)),
		// Sends the request_id as the idempotency-key metadata too (the
		// server checks that they agree).
		grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor()),
		grpc.WithStatsHandler(&counter),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := paymentsv1.NewPaymentsServiceClient(conn)

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token)
	var trailer metadata.MD
	p, err := client.CreatePayment(ctx, &paymentsv1.CreatePaymentRequest{
		RequestId:   *requestID,
		AmountCents: *amount,
		Currency:    *currency,
		Description: *description,
	}, grpc.Trailer(&trailer))
	n := counter.attempts.Load()
	if err != nil {
		return fmt.Errorf("CreatePayment (request_id %s, %d attempts): %w", *requestID, n, err)
	}
	replayed := slices.Equal(trailer.Get(idemgrpc.ReplayedTrailer), []string{"true"})
	fmt.Fprintf(stdout, "payment %s: %d %s at %s\n", p.GetId(), p.GetAmountCents(), p.GetCurrency(), p.GetCreateTime().AsTime().Format(time.RFC3339Nano))
	fmt.Fprintf(stdout, "request_id %s, attempts %d, replayed %t\n", *requestID, n, replayed)
	return nil
}

// serviceConfig is the client's gRPC service config: CreatePayment is
// retried by grpc-go itself on UNAVAILABLE (the server or the network
// failed; the charge may or may not have happened) and ABORTED (an earlier
// attempt with this request_id is still running: the server's
// grpc-retry-pushback-ms trailer then sets the delay, the time left on that
// attempt's lease), up to attempts attempts. Retrying a charge is safe only
// because every attempt carries the same request_id.
func serviceConfig(attempts int) string {
	return fmt.Sprintf(`{
  "methodConfig": [{
    "name": [{"service": "payments.v1.PaymentsService", "method": "CreatePayment"}],
    "retryPolicy": {
      "maxAttempts": %d,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"]
    }
  }]
}`, attempts)
}

// attemptCounter is a stats.Handler that counts the attempts of the
// client's calls (grpc-go reports a Begin for each, retries included).
type attemptCounter struct{ attempts atomic.Int64 }

// TagRPC implements stats.Handler.
func (c *attemptCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC counts the client's attempts.
func (c *attemptCounter) HandleRPC(_ context.Context, s stats.RPCStats) {
	if b, ok := s.(*stats.Begin); ok && b.IsClient() {
		c.attempts.Add(1)
	}
}

// TagConn implements stats.Handler.
func (c *attemptCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

// HandleConn implements stats.Handler.
func (c *attemptCounter) HandleConn(context.Context, stats.ConnStats) {}
