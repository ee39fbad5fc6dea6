package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/pgxstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "payments-pg:", err)
		os.Exit(1)
	}
}

// run serves the payments API until ctx is done. It prints the listening
// address on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments-pg", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	dsn := fs.String("dsn", os.Getenv("IDEM_POSTGRES_DSN"), "PostgreSQL connection string (default $IDEM_POSTGRES_DSN)")
	schema := fs.String("schema", "public", "schema for the idempotency tables and the charges table")
	sweepEvery := fs.Duration("sweep", time.Minute, "how often expired idempotency records are swept (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" {
		return errors.New("no -dsn and IDEM_POSTGRES_DSN is unset")
	}
	secret := []byte(os.Getenv("PAYMENTS_SCOPE_SECRET"))
	if len(secret) < 16 {
		return errors.New("PAYMENTS_SCOPE_SECRET must hold the idempotency scope secret (at least 16 bytes, the same on every replica), e.g. export PAYMENTS_SCOPE_SECRET=$(openssl rand -hex 32)")
	}
	cfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = *schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := pgxstore.New(pool, pgxstore.Options{Schema: *schema})
	if err := setup(ctx, pool, store); err != nil {
		return err
	}
	svc := newService(pool, store, secret)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: svc.handler(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "listening on http://%s\n", ln.Addr())

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
			if n, err := store.Sweep(sctx); err != nil {
				fmt.Fprintf(stderr, "sweep: %v (removed %d)\n", err, n)
			}
			cancel()
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				return err
			}
			if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}
	}
}
