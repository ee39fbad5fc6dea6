package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/idemkit/idem/idemgrpc"

	paymentsv1 "github.com/idemkit/idem/examples/grpc-payments/proto/payments/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// started is a running command.
type started struct {
	addr   string
	stop   func() error // cancels run and returns its error
	stderr *bytes.Buffer
}

// start runs the command with args (plus -addr 127.0.0.1:0) until the
// returned stop is called.
func start(t *testing.T, args ...string) started {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	stderr := &bytes.Buffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), pw, stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("reading the address: %v (run: %v, stderr %q)", err, <-done, stderr)
	}
	go io.Copy(io.Discard, pr)
	addr, _, _ := strings.Cut(strings.TrimPrefix(line, "listening on "), " ")
	var stopped bool
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return started{addr: addr, stop: stop, stderr: stderr}
}

// client dials addr with the retry policy of the example client.
func client(t *testing.T, addr string) paymentsv1.PaymentsServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"methodConfig": [{
			"name": [{"service": "payments.v1.PaymentsService"}],
			"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
				"backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`),
		grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor()),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return paymentsv1.NewPaymentsServiceClient(conn)
}

func pay(t *testing.T, c paymentsv1.PaymentsServiceClient, requestID string) (*paymentsv1.Payment, bool) {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer alice")
	var tr metadata.MD
	p, err := c.CreatePayment(ctx, &paymentsv1.CreatePaymentRequest{RequestId: requestID, AmountCents: 4200, Currency: "EUR"}, grpc.Trailer(&tr))
	if err != nil {
		t.Fatalf("CreatePayment(%s): %v", requestID, err)
	}
	v := tr.Get(idemgrpc.ReplayedTrailer)
	return p, len(v) == 1 && v[0] == "true"
}

const reqA = "5b0f8a3e-2c4d-4e6f-8a1b-3c5d7e9f0a2b"

// TestRunMemory: the default store, a random scope secret, and lost
// answers: the retry replays, one charge.
func TestRunMemory(t *testing.T) {
	t.Setenv("PAYMENTS_SCOPE_SECRET", "")
	s := start(t, "-lose-answers", "1", "-sweep", "1ms")
	c := client(t, s.addr)
	p, replayed := pay(t, c, reqA)
	if !replayed {
		t.Fatalf("first payment %v not replayed: its first answer should have been lost", p)
	}
	got, err := c.GetPayment(t.Context(), &paymentsv1.GetPaymentRequest{Id: p.GetId()})
	if err != nil || !proto.Equal(got, p) {
		t.Fatalf("GetPayment = %v, %v; want %v", got, err, p)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("run: %v (stderr %q)", err, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "random scope secret") {
		t.Errorf("stderr %q does not mention the random scope secret", s.stderr)
	}
}

// TestRunFile: with file: the records survive a restart: the retry after
// the restart replays the payment made before it.
func TestRunFile(t *testing.T) {
	t.Setenv("PAYMENTS_SCOPE_SECRET", "grpc-payments-file-test-secret")
	spec := "file:" + filepath.Join(t.TempDir(), "idem.db")
	s := start(t, "-store", spec)
	first, replayed := pay(t, client(t, s.addr), reqA)
	if replayed {
		t.Fatalf("first payment %v replayed", first)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("run: %v (stderr %q)", err, s.stderr)
	}
	s = start(t, "-store", spec)
	c := client(t, s.addr)
	again, replayed := pay(t, c, reqA)
	if !replayed || !proto.Equal(again, first) {
		t.Fatalf("after the restart: %v (replayed %v), want %v replayed", again, replayed, first)
	}
	// The ledger is in memory: the payment itself is gone with the process.
	if _, err := c.GetPayment(t.Context(), &paymentsv1.GetPaymentRequest{Id: first.GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetPayment after the restart: %v, want NOT_FOUND (in-memory ledger)", err)
	}
	if err := s.stop(); err != nil {
		t.Fatalf("run: %v (stderr %q)", err, s.stderr)
	}
}

// TestRunRefuses: bad flags and a missing or short secret stop the command
// before it listens.
func TestRunRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		secret string
		args   []string
	}{
		{"", []string{"-store", "file:" + filepath.Join(dir, "a.db")}},
		{"short", nil},
		{"", []string{"-store", "redis://127.0.0.1:6379"}},
		{"", []string{"-store", "file:"}},
		{"", []string{"-lose-answers", "2"}},
		{"", []string{"-lose-answers", "-0.5"}},
		{"", []string{"extra"}},
		{"", []string{"-no-such-flag"}},
	} {
		t.Setenv("PAYMENTS_SCOPE_SECRET", tc.secret)
		var stdout bytes.Buffer
		if err := run(t.Context(), append([]string{"-addr", "127.0.0.1:0"}, tc.args...), &stdout, io.Discard); err == nil {
			t.Errorf("run %q with secret %q succeeded", tc.args, tc.secret)
		} else if stdout.Len() > 0 {
			t.Errorf("run %q: printed %q before failing", tc.args, stdout.String())
		}
	}
}
