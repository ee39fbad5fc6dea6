package main

import (
	"bytes"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/examples/grpc-payments/server"
	"github.com/idemkit/idem/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs the example server on a loopback port until the test ends.
func serve(t *testing.T, o server.Options) (string, *server.Service) {
	t.Helper()
	o.Keeper = &idem.Keeper{Store: memstore.New(memstore.Options{})}
	o.ScopeSecret = []byte("grpc-payments-client-test-secret")
	srv, svc, err := server.New(o)
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

// runClient runs the command and returns its output.
func runClient(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(t.Context(), args, &out, io.Discard)
	return out.String(), err
}

var paymentLine = regexp.MustCompile(`^payment (pay_[0-9a-f]{16}): 4200 EUR at \S+\n`)

// TestClientRetries: the server loses the first answer of every new
// payment; grpc-go's retry policy retries, the retry is a replay, and the
// client says so. Running the client again with the same request_id
// replays at the first attempt; another caller with the same request_id
// gets its own payment.
func TestClientRetries(t *testing.T) {
	addr, svc := serve(t, server.Options{LoseAnswers: 1})
	const id = "2f6c1a9e-8b3d-4c5e-9f70-1a2b3c4d5e6f"
	out, err := runClient(t, "-addr", addr, "-request-id", id)
	if err != nil {
		t.Fatal(err)
	}
	m := paymentLine.FindStringSubmatch(out)
	if m == nil || !strings.HasSuffix(out, "request_id "+id+", attempts 2, replayed true\n") {
		t.Fatalf("output %q, want the payment after 2 attempts, replayed", out)
	}
	again, err := runClient(t, "-addr", addr, "-request-id", id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(again, m[0]) || !strings.HasSuffix(again, "attempts 1, replayed true\n") {
		t.Fatalf("second run %q, want %q replayed at the first attempt", again, m[0])
	}
	bob, err := runClient(t, "-addr", addr, "-request-id", id, "-token", "demo-bob")
	if err != nil {
		t.Fatal(err)
	}
	if mb := paymentLine.FindStringSubmatch(bob); mb == nil || mb[1] == m[1] {
		t.Fatalf("bob's run %q, want a payment other than %s", bob, m[1])
	}
	if n := svc.Ledger.Charges(); n != 2 {
		t.Fatalf("%d charges, want 2 (one per caller)", n)
	}
}

// TestClientFresh: without lost answers a new payment takes one attempt
// and is not a replay; the default request_id is a fresh UUID.
func TestClientFresh(t *testing.T) {
	addr, _ := serve(t, server.Options{})
	out, err := runClient(t, "-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	if !paymentLine.MatchString(out) || !regexp.MustCompile(`request_id [0-9a-f-]{36}, attempts 1, replayed false\n$`).MatchString(out) {
		t.Fatalf("output %q, want a fresh payment in one attempt", out)
	}
}

// TestClientErrors: the server's refusal and bad flags are errors.
func TestClientErrors(t *testing.T) {
	addr, svc := serve(t, server.Options{})
	if out, err := runClient(t, "-addr", addr, "-amount", "0"); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Fatalf("amount 0: %q, %v; want INVALID_ARGUMENT", out, err)
	}
	for _, args := range [][]string{{"-attempts", "1"}, {"-attempts", "6"}, {"extra"}, {"-no-such-flag"}} {
		if _, err := runClient(t, append([]string{"-addr", addr}, args...)...); err == nil {
			t.Errorf("run %q succeeded", args)
		}
	}
	if n := svc.Ledger.Charges(); n != 0 {
		t.Fatalf("%d charges, want 0", n)
	}
}
