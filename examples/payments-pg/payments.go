package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/pgxstore"
)

// schemaSQL creates the business table.
const schemaSQL = `CREATE TABLE IF NOT EXISTS charges (
	id           bigserial   PRIMARY KEY,
	amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
	currency     text        NOT NULL,
	fence        bigint      NOT NULL,
	created_at   timestamptz NOT NULL DEFAULT now()
)`

// service is the payments API.
type service struct {
	pool   *pgxpool.Pool
	store  *pgxstore.Store
	keeper *idem.Keeper
	// scopeSecret keys the idempotency scope (see handler).
	scopeSecret []byte

	// beforeCommit, if set, runs in the transaction after the charge and
	// the completion, before the commit (tests inject failures here).
	beforeCommit func(ctx context.Context, tx pgx.Tx) error
	// executed, if set, is called once per charge attempt that got a lease.
	executed func()
	// outcome, if set, receives the middleware's outcome of every request.
	outcome func(r *http.Request, o idemhttp.Outcome)
}

// newService returns the service on pool, keeping its idempotency records
// in store. scopeSecret keys the idempotency scope: every replica must use
// the same one (at least 16 bytes).
func newService(pool *pgxpool.Pool, store *pgxstore.Store, scopeSecret []byte) *service {
	return &service{
		pool:        pool,
		store:       store,
		keeper:      &idem.Keeper{Store: store, Lease: 10 * time.Second, Retention: idem.DefaultRetention},
		scopeSecret: scopeSecret,
	}
}

// setup creates the tables: the store's and the business table.
func setup(ctx context.Context, pool *pgxpool.Pool, store *pgxstore.Store) error {
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, schemaSQL)
	return err
}

// handler returns the HTTP API: POST /payments behind the idempotency
// middleware.
func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /payments", s.pay)
	// Keys are scoped to the caller (an HMAC of the Host and the
	// Authorization header under the shared secret), so one tenant never
	// reads another's stored payment. A service with real authentication
	// would rather set Scope to the authenticated tenant id.
	mw := &idemhttp.Middleware{Keeper: s.keeper, ScopeSecret: s.scopeSecret, OnOutcome: func(r *http.Request, o idemhttp.Outcome) {
		if s.outcome != nil {
			s.outcome(r, o)
		}
	}}
	return mw.Handler(mux)
}

type payment struct {
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

type charge struct {
	ID          int64  `json:"id"`
	AmountCents int64  `json:"amount_cents"`
	Currency    string `json:"currency"`
}

// pay charges once: the charge row and the idempotency record's completion
// commit in one transaction, and the lease is then marked completed so that
// the middleware does not complete the record again.
func (s *service) pay(w http.ResponseWriter, r *http.Request) {
	var p payment
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.AmountCents <= 0 || len(p.Currency) != 3 {
		// A 4xx is stored and replayed by the middleware itself.
		http.Error(w, "want {\"amount_cents\": > 0, \"currency\": \"XYZ\"}", http.StatusBadRequest)
		return
	}
	// The lease the middleware executes this request under: its record key,
	// fence and retention are what the completion needs.
	lease, ok := idem.LeaseFromContext(r.Context())
	if !ok {
		http.Error(w, "not behind the idempotency middleware", http.StatusInternalServerError)
		return
	}
	if s.executed != nil {
		s.executed()
	}
	// The work finishes even if the client goes away (SPEC §3).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()

	var resp idemhttp.Response
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		c := charge{AmountCents: p.AmountCents, Currency: p.Currency}
		if err := tx.QueryRow(ctx,
			`INSERT INTO charges (amount_cents, currency, fence) VALUES ($1, $2, $3) RETURNING id`,
			p.AmountCents, p.Currency, int64(lease.Fence())).Scan(&c.ID); err != nil {
			return err
		}
		body, err := json.Marshal(c)
		if err != nil {
			return err
		}
		resp = idemhttp.Response{
			Status: http.StatusCreated,
			Header: http.Header{
				"Content-Type": {"application/json"},
				"Location":     {"/payments/" + strconv.FormatInt(c.ID, 10)},
			},
			Body: body,
		}
		result, err := resp.MarshalBinary()
		if err != nil {
			return err
		}
		if err := s.store.CompleteIn(ctx, tx, lease, result); err != nil {
			return err // ErrLeaseLost: a newer executor holds the key
		}
		if s.beforeCommit != nil {
			return s.beforeCommit(ctx, tx)
		}
		return nil
	})
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		// A newer attempt holds the key. Answer a status the middleware does
		// not store: its release is refused, and the retry replays the newer
		// attempt's answer.
		w.Header().Set("Retry-After", "1")
		http.Error(w, "a newer attempt with this key is running", http.StatusServiceUnavailable)
		return
	case err != nil:
		// No MarkCompleted: the commit may not have happened. On this 5xx
		// the middleware releases the record (or, if the commit did land,
		// its release is refused and the retry replays the charge).
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("charge not recorded: %v", err), http.StatusServiceUnavailable)
		return
	}
	// Committed: the record holds resp. The middleware's own Complete (or
	// Release) is now a no-op that reports success; without this mark the
	// store would refuse it, having completed the record already.
	lease.MarkCompleted()
	writeResponse(w, resp)
}

// writeResponse writes exactly the stored response.
func writeResponse(w http.ResponseWriter, resp idemhttp.Response) {
	for name, vs := range resp.Header {
		w.Header()[name] = vs
	}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}
