// Command payments-server serves the PaymentsService of the grpc-payments
// example: CreatePayment charges an in-memory ledger at most once per
// (caller, request_id), however often the client retries.
//
//	go run ./cmd/payments-server                          # from examples/grpc-payments
//	go run ./cmd/payments-server -lose-answers 0.5        # lose half the answers after the charge
//	PAYMENTS_SCOPE_SECRET=$(openssl rand -hex 32) go run ./cmd/payments-server -store file:payments-idem.db
//
// Flags:
//
//	-addr ADDR           listen address (default 127.0.0.1:50051)
//	-store SPEC          where idempotency records live: memory: (default) or file:PATH
//	                     (filestore: embedded, durable, survives a restart)
//	-lose-answers P      replace the first answer of a fraction P of new payments
//	                     with UNAVAILABLE after the charge, as a lossy network would
//	-sweep D             how often expired records are removed (default 1m, 0: never)
//
// The scope secret (PAYMENTS_SCOPE_SECRET, at least 16 bytes) keys the HMAC
// of the caller's authorization metadata that scopes request ids. With the
// memory store it may be left unset: a random one is made, since the
// records die with the process anyway. With file: it is required, because
// records outlive the process and must keep their scope after a restart.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/examples/grpc-payments/server"
	"github.com/idemkit/idem/filestore"
	"github.com/idemkit/idem/idemgrpc"
	"github.com/idemkit/idem/memstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "payments-server:", err)
		os.Exit(1)
	}
}

// run serves until ctx is done. It prints the listening address on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:50051", "listen address")
	storeSpec := fs.String("store", "memory:", "idempotency store: memory: or file:PATH")
	lose := fs.Float64("lose-answers", 0, "fraction (0 to 1) of new payments whose first answer is lost after the charge")
	sweepEvery := fs.Duration("sweep", time.Minute, "how often expired idempotency records are removed (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *lose < 0 || *lose > 1 {
		return fmt.Errorf("-lose-answers %v: want a fraction from 0 to 1", *lose)
	}
	store, closeStore, durable, err := openStore(*storeSpec)
	if err != nil {
		return err
	}
	defer closeStore()
	secret, err := scopeSecret(durable, stderr)
	if err != nil {
		return err
	}
	srv, _, err := server.New(server.Options{
		// A 10 s lease (renewed while a charge runs) keeps the wait short
		// for a retry that finds the first attempt still running: its
		// ABORTED answer asks the client to come back when the lease ends.
		Keeper:      &idem.Keeper{Store: store, Lease: 10 * time.Second},
		ScopeSecret: secret,
		LoseAnswers: *lose,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "listening on %s (store %s)\n", ln.Addr(), *storeSpec)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var tick <-chan time.Time
	if *sweepEvery > 0 {
		t := time.NewTicker(*sweepEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case err := <-errc:
			return err
		case <-tick:
			sctx, cancel := context.WithTimeout(ctx, *sweepEvery)
			if n, err := store.(idem.Sweeper).Sweep(sctx); err != nil {
				fmt.Fprintf(stderr, "sweep: %v (removed %d)\n", err, n)
			}
			cancel()
		case <-ctx.Done():
			// Let running calls finish (and complete their records), then
			// stop; a stream that does not end by itself is cut after 10 s.
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				srv.Stop()
				<-stopped
			}
			return <-errc
		}
	}
}

// store is what the server needs of an idempotency store.
type store interface {
	idem.Store
	idem.Sweeper
}

// openStore opens the store named by spec: "memory:" or "file:PATH". durable
// reports whether its records outlive the process.
func openStore(spec string) (s store, closeFn func() error, durable bool, err error) {
	switch {
	case spec == "memory:" || spec == "memory":
		return memstore.New(memstore.Options{}), func() error { return nil }, false, nil
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		fst, err := filestore.Open(strings.TrimPrefix(spec, "file:"), filestore.Options{})
		if err != nil {
			return nil, nil, false, err
		}
		return fst, fst.Close, true, nil
	}
	return nil, nil, false, fmt.Errorf("-store %q: want memory: or file:PATH", spec)
}

// scopeSecret returns PAYMENTS_SCOPE_SECRET, or for a store whose records
// die with the process, a random secret when it is unset.
func scopeSecret(durable bool, stderr io.Writer) ([]byte, error) {
	secret := []byte(os.Getenv("PAYMENTS_SCOPE_SECRET"))
	switch {
	case len(secret) >= idemgrpc.MinScopeSecret:
		return secret, nil
	case len(secret) > 0:
		return nil, fmt.Errorf("PAYMENTS_SCOPE_SECRET holds %d bytes, want at least %d", len(secret), idemgrpc.MinScopeSecret)
	case durable:
		return nil, errors.New("PAYMENTS_SCOPE_SECRET must hold the idempotency scope secret (at least 16 bytes, the same across restarts and on every replica), e.g. export PAYMENTS_SCOPE_SECRET=$(openssl rand -hex 32)")
	}
	fmt.Fprintln(stderr, "payments-server: PAYMENTS_SCOPE_SECRET unset; using a random scope secret (fine for the memory store, whose records die with the process)")
	return []byte(rand.Text()), nil
}
