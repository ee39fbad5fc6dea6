// Command chi is a runnable example: a payments API on a chi router with the
// idemhttp middleware in front of its unsafe routes.
//
//	go run ./examples/chi -addr 127.0.0.1:8080
//	curl -si -X POST -H 'Authorization: Bearer alice' -H 'Idempotency-Key: order-1' -d '{"amount":100}' localhost:8080/charges
//	curl -si -X POST -H 'Authorization: Bearer alice' -H 'Idempotency-Key: order-1' -d '{"amount":100}' localhost:8080/charges   # replayed
//
// Keys are scoped to the caller: an HMAC of the Host and the credentials
// (Authorization, Cookie) under a scope secret; a request without
// credentials is refused (400 credentials-required).
//
// The store is in memory (memstore): records do not survive a restart and
// are not shared between processes, so a random scope secret per process is
// enough here. Use redisstore or pgxstore, and one secret shared by every
// instance and kept across restarts, for that.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("chi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	store := memstore.New(memstore.Options{MaxRecords: 1_000_000})
	srv := &http.Server{Addr: *addr, Handler: newRouter(store, log.New(stderr, "", log.LstdFlags)), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	tick := time.NewTicker(time.Minute) // the owner schedules expiry sweeps
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-tick.C:
			_, _ = store.Sweep(ctx)
		case <-ctx.Done():
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(shutdownCtx); err != nil {
				return err
			}
			if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}
	}
}

// newRouter returns the API: GET /charges/{id} is safe and unprotected;
// POST /charges runs once per Idempotency-Key.
func newRouter(store idem.Store, logger *log.Logger) http.Handler {
	// A random secret is fine only because the store is in memory: the
	// records die with the secret.
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	mw := &idemhttp.Middleware{
		Keeper:      &idem.Keeper{Store: store},
		ScopeSecret: secret,
		Fingerprint: idemhttp.CanonicalFingerprint,
		OnOutcome: func(r *http.Request, o idemhttp.Outcome) {
			if o.Err != nil {
				logger.Printf("%s %s: %s (%d): %v", r.Method, r.URL.Path, o.Kind, o.Status, o.Err)
			}
		},
	}
	var charges atomic.Int64
	r := chi.NewRouter()
	r.Get("/charges/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"id\":%q}\n", chi.URLParam(r, "id"))
	})
	r.Group(func(r chi.Router) {
		r.Use(mw.Handler)
		r.Post("/charges", func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
			fence, _ := idem.FenceFromContext(r.Context())
			id := "ch_" + strconv.FormatInt(charges.Add(1), 10)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Location", "/charges/"+id)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, "{\"id\":%q,\"request\":%s,\"fence\":%d}\n", id, body, fence)
		})
	})
	return r
}
