package server

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"
	"github.com/idemkit/idem/memstore"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start serves New(o) on a loopback TCP port until the test ends and
// returns its address and service.
func start(t *testing.T, o Options) (string, *Service) {
	t.Helper()
	if o.Keeper == nil {
		o.Keeper = &idem.Keeper{Store: memstore.New(memstore.Options{})}
	}
	if o.ScopeSecret == nil {
		o.ScopeSecret = []byte("grpc-payments-test-scope-secret")
	}
	srv, svc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), svc
}

// retryConfig retries CreatePayment on UNAVAILABLE, as the example client
// does (fast, for tests).
const retryConfig = `{"methodConfig": [{
  "name": [{"service": "payments.v1.PaymentsService", "method": "CreatePayment"}],
  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`

// dial connects to addr; with retry, grpc-go retries CreatePayment on
// UNAVAILABLE, else it never retries.
func dial(t *testing.T, addr string, retry bool) paymentsv1.PaymentsServiceClient {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if retry {
		opts = append(opts, grpc.WithDefaultServiceConfig(retryConfig))
	} else {
		opts = append(opts, grpc.WithDisableRetry())
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return paymentsv1.NewPaymentsServiceClient(conn)
}

// as returns ctx carrying token as the caller's authorization metadata.
func as(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// answer is one CreatePayment's outcome.
type answer struct {
	p        *paymentsv1.Payment
	err      error
	replayed bool
}

func create(ctx context.Context, c paymentsv1.PaymentsServiceClient, req *paymentsv1.CreatePaymentRequest) answer {
	var tr metadata.MD
	p, err := c.CreatePayment(ctx, req, grpc.Trailer(&tr))
	v := tr.Get(idemgrpc.ReplayedTrailer)
	return answer{p: p, err: err, replayed: len(v) == 1 && v[0] == "true"}
}

func eur(id string, cents int64) *paymentsv1.CreatePaymentRequest {
	return &paymentsv1.CreatePaymentRequest{RequestId: id, AmountCents: cents, Currency: "EUR", Description: "order 42"}
}

const reqA = "7d1c1c52-7bb4-4f1f-a3c0-6f6a0c2a4d0e"

// TestRetryReplays: the answer of the first attempt is lost after the
// charge; grpc-go's retry resends the same request_id and gets the payment
// replayed, and so does a later retry by the application. One charge.
func TestRetryReplays(t *testing.T) {
	addr, svc := start(t, Options{LoseAnswers: 1})
	c := dial(t, addr, true)
	ctx := as(t.Context(), "alice")

	first := create(ctx, c, eur(reqA, 4200))
	if first.err != nil {
		t.Fatalf("CreatePayment: %v", first.err)
	}
	// The first attempt executed and its answer was lost: what the client
	// got is the retry's replay.
	if !first.replayed || first.p.GetId() == "" || first.p.GetAmountCents() != 4200 {
		t.Fatalf("first = %v (replayed %v), want the payment replayed after the lost answer", first.p, first.replayed)
	}
	again := create(ctx, c, eur(reqA, 4200))
	if again.err != nil || !again.replayed || !proto.Equal(again.p, first.p) {
		t.Fatalf("retry = %v, %v (replayed %v), want %v replayed", again.p, again.err, again.replayed, first.p)
	}
	if n := svc.Ledger.Charges(); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}

	// A new request_id is a new payment, executed (not a replay).
	const reqB = "0b6f1f0e-7f35-4d7c-9a43-2a4c1c6d5e11"
	other := create(ctx, dial(t, addr, false), eur(reqB, 100))
	if status.Code(other.err) != codes.Unavailable {
		t.Fatalf("new payment without retries = %v, %v; want the lost answer (UNAVAILABLE)", other.p, other.err)
	}
	retried := create(ctx, c, eur(reqB, 100))
	if retried.err != nil || !retried.replayed || retried.p.GetId() == first.p.GetId() || retried.p.GetAmountCents() != 100 {
		t.Fatalf("retry of the lost answer = %v, %v (replayed %v), want the second payment replayed", retried.p, retried.err, retried.replayed)
	}
	if n := svc.Ledger.Charges(); n != 2 {
		t.Fatalf("%d charges, want 2", n)
	}

	// GetPayment is not protected: no request_id, no trailer, no record.
	var tr metadata.MD
	got, err := c.GetPayment(ctx, &paymentsv1.GetPaymentRequest{Id: first.p.GetId()}, grpc.Trailer(&tr))
	if err != nil || !proto.Equal(got, first.p) || len(tr.Get(idemgrpc.ReplayedTrailer)) != 0 {
		t.Fatalf("GetPayment = %v, %v, trailer %v; want %v and no replay trailer", got, err, tr, first.p)
	}
	if _, err := c.GetPayment(ctx, &paymentsv1.GetPaymentRequest{Id: "pay_missing"}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetPayment of a missing payment: %v, want NOT_FOUND", err)
	}
}

// TestFreshAnswerNotReplayed: without lost answers the first answer is
// executed (no replay trailer) and the retry is the replay.
func TestFreshAnswerNotReplayed(t *testing.T) {
	addr, svc := start(t, Options{})
	c := dial(t, addr, false)
	ctx := as(t.Context(), "alice")
	first := create(ctx, c, eur(reqA, 4200))
	if first.err != nil || first.replayed {
		t.Fatalf("first = %v, %v (replayed %v), want a fresh payment", first.p, first.err, first.replayed)
	}
	again := create(ctx, c, eur(reqA, 4200))
	if again.err != nil || !again.replayed || !proto.Equal(again.p, first.p) {
		t.Fatalf("retry = %v, %v (replayed %v), want %v replayed", again.p, again.err, again.replayed, first.p)
	}
	if n := svc.Ledger.Charges(); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
}

// TestMismatch: the same request_id with another amount is refused with
// FAILED_PRECONDITION and charges nothing; the original still replays.
func TestMismatch(t *testing.T) {
	addr, svc := start(t, Options{})
	c := dial(t, addr, false)
	ctx := as(t.Context(), "alice")
	first := create(ctx, c, eur(reqA, 4200))
	if first.err != nil {
		t.Fatal(first.err)
	}
	for _, req := range []*paymentsv1.CreatePaymentRequest{
		eur(reqA, 4300),
		{RequestId: reqA, AmountCents: 4200, Currency: "USD", Description: "order 42"},
		{RequestId: reqA, AmountCents: 4200, Currency: "EUR", Description: "order 43"},
	} {
		if got := create(ctx, c, req); status.Code(got.err) != codes.FailedPrecondition {
			t.Fatalf("same request_id, changed request %v: %v, %v; want FAILED_PRECONDITION", req, got.p, got.err)
		}
	}
	again := create(ctx, c, eur(reqA, 4200))
	if again.err != nil || !again.replayed || !proto.Equal(again.p, first.p) {
		t.Fatalf("retry after the mismatches = %v, %v (replayed %v), want %v replayed", again.p, again.err, again.replayed, first.p)
	}
	if n := svc.Ledger.Charges(); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
}

// TestConcurrent: 16 identical calls at once charge once. The first to
// execute is held until the 15 others have their answer: with wait mode
// off they are refused at once as in flight; none executes.
func TestConcurrent(t *testing.T) {
	const n = 16
	gate := make(chan struct{})
	var executions atomic.Int32
	addr, svc := start(t, Options{BeforeCharge: func(context.Context, *paymentsv1.CreatePaymentRequest) {
		if executions.Add(1) == 1 {
			<-gate
		}
	}})
	c := dial(t, addr, false)
	ctx := as(t.Context(), "alice")

	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { answers <- create(ctx, c, eur(reqA, 4200)) })
	}
	var got []answer
	for range n - 1 {
		got = append(got, <-answers)
	}
	close(gate)
	wg.Wait()
	got = append(got, <-answers)

	if e := executions.Load(); e != 1 || svc.Ledger.Charges() != 1 {
		t.Fatalf("%d executions, %d charges; want 1 of each", e, svc.Ledger.Charges())
	}
	var ok []answer
	for _, a := range got {
		switch {
		case a.err == nil:
			ok = append(ok, a)
		case status.Code(a.err) != inFlightCode:
			t.Errorf("duplicate answered %v, want %v (in flight)", a.err, inFlightCode)
		}
	}
	if len(ok) != 1 || ok[0].replayed || ok[0].p.GetAmountCents() != 4200 {
		t.Fatalf("successful answers %v, want one fresh payment", ok)
	}
	again := create(ctx, c, eur(reqA, 4200))
	if again.err != nil || !again.replayed || !proto.Equal(again.p, ok[0].p) {
		t.Fatalf("retry = %v, %v (replayed %v), want %v replayed", again.p, again.err, again.replayed, ok[0].p)
	}
}

// TestCallersIsolated: two callers using the same request_id get their own
// payments; neither ever sees the other's. A caller without authorization
// is refused.
func TestCallersIsolated(t *testing.T) {
	addr, svc := start(t, Options{})
	c := dial(t, addr, false)
	alice, bob := as(t.Context(), "alice"), as(t.Context(), "bob")

	a := create(alice, c, eur(reqA, 4200))
	b := create(bob, c, eur(reqA, 4200))
	if a.err != nil || b.err != nil || a.replayed || b.replayed {
		t.Fatalf("alice %v, %v (replayed %v); bob %v, %v (replayed %v): want two fresh payments", a.p, a.err, a.replayed, b.p, b.err, b.replayed)
	}
	if a.p.GetId() == b.p.GetId() {
		t.Fatalf("alice and bob got the same payment %s", a.p.GetId())
	}
	for i := range 2 {
		ra, rb := create(alice, c, eur(reqA, 4200)), create(bob, c, eur(reqA, 4200))
		if ra.err != nil || !ra.replayed || !proto.Equal(ra.p, a.p) || rb.err != nil || !rb.replayed || !proto.Equal(rb.p, b.p) {
			t.Fatalf("retry %d: alice %v (replayed %v), bob %v (replayed %v); want each their own", i, ra.p, ra.replayed, rb.p, rb.replayed)
		}
	}
	// Bob changing "his" request does not collide with alice's record.
	if got := create(bob, c, eur(reqA, 1)); status.Code(got.err) != codes.FailedPrecondition {
		t.Fatalf("bob, same request_id, other amount: %v, want FAILED_PRECONDITION", got.err)
	}
	if got := create(t.Context(), c, eur(reqA, 4200)); status.Code(got.err) != codes.Unauthenticated {
		t.Fatalf("anonymous caller: %v, %v; want UNAUTHENTICATED", got.p, got.err)
	}
	if n := svc.Ledger.Charges(); n != 2 {
		t.Fatalf("%d charges, want 2", n)
	}
}

// TestInvalid: a call without request_id is refused before the service
// runs; an invalid amount is the service's INVALID_ARGUMENT, stored and
// replayed like a payment.
func TestInvalid(t *testing.T) {
	addr, svc := start(t, Options{})
	c := dial(t, addr, false)
	ctx := as(t.Context(), "alice")
	if got := create(ctx, c, eur("", 4200)); status.Code(got.err) != codes.InvalidArgument {
		t.Fatalf("no request_id: %v, %v; want INVALID_ARGUMENT", got.p, got.err)
	}
	for i, req := range []*paymentsv1.CreatePaymentRequest{
		eur(reqA, 0),
		{RequestId: reqA + "-2", AmountCents: 1, Currency: "eur"},
	} {
		first := create(ctx, c, req)
		again := create(ctx, c, req)
		if status.Code(first.err) != codes.InvalidArgument || first.replayed ||
			status.Code(again.err) != codes.InvalidArgument || !again.replayed ||
			status.Convert(again.err).Message() != status.Convert(first.err).Message() {
			t.Fatalf("invalid request %d: %v then %v (replayed %v, %v); want INVALID_ARGUMENT, then replayed", i, first.err, again.err, first.replayed, again.replayed)
		}
	}
	if n := svc.Ledger.Charges(); n != 0 {
		t.Fatalf("%d charges, want 0", n)
	}
}

// TestWatch: the server stream passes through the stream interceptor: a
// watch gets the payments made so far, then the new ones.
func TestWatch(t *testing.T) {
	addr, _ := start(t, Options{})
	c := dial(t, addr, false)
	ctx, cancel := context.WithCancel(as(t.Context(), "alice"))
	defer cancel()
	first := create(ctx, c, eur(reqA, 4200))
	if first.err != nil {
		t.Fatal(first.err)
	}
	w, err := c.WatchPayments(ctx, &paymentsv1.WatchPaymentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := w.Recv(); err != nil || !proto.Equal(p, first.p) {
		t.Fatalf("watch: %v, %v; want %v", p, err, first.p)
	}
	// Received: the watch is subscribed, so the next charge reaches it.
	second := create(ctx, c, eur("1d3a6a0b-5a5f-4a57-8f7e-0f3f3d0c8b21", 100))
	if second.err != nil {
		t.Fatal(second.err)
	}
	if p, err := w.Recv(); err != nil || !proto.Equal(p, second.p) {
		t.Fatalf("watch: %v, %v; want %v", p, err, second.p)
	}
	cancel()
	if _, err := w.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("watch after cancel: %v, want CANCELED", err)
	}
}

// TestWatcherOverflow: a watcher that falls behind by more than its buffer
// is ended, after the payments it did buffer; it never skips one silently.
func TestWatcherOverflow(t *testing.T) {
	l := NewLedger()
	past, w := l.watch()
	defer l.unwatch(w)
	if len(past) != 0 {
		t.Fatalf("past = %v", past)
	}
	for i := range watchBuffer + 1 {
		l.Charge(int64(i+1), "EUR", "")
	}
	select {
	case <-w.overflow:
	default:
		t.Fatal("no overflow after watchBuffer+1 charges")
	}
	for i := range watchBuffer {
		if p := <-w.ch; p.GetAmountCents() != int64(i+1) {
			t.Fatalf("buffered payment %d = %v", i, p)
		}
	}
	if len(w.ch) != 0 {
		t.Fatalf("%d payments buffered after the overflow", len(w.ch))
	}
}

// TestNewValidates: New refuses a missing keeper and a short secret.
func TestNewValidates(t *testing.T) {
	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}
	for _, o := range []Options{{ScopeSecret: []byte("0123456789abcdef")}, {Keeper: k, ScopeSecret: []byte("short")}} {
		if _, _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// inFlightCode answers a duplicate of a call that is still running (wait
// mode off).
const inFlightCode = codes.Aborted
