package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// Bounds of the start-up store check.
const (
	// storeCheckTimeout bounds reaching the store at start.
	storeCheckTimeout = 5 * time.Second
	// migrateTimeout bounds the PostgreSQL migration at start, once the
	// database answered (an online index build on a large table takes a
	// while).
	migrateTimeout = 30 * time.Second
	// migrateRetry is how long a failed migration attempt is reported to
	// the requests that follow before the next attempt is made.
	migrateRetry = time.Second
)

// checkStore checks once, at start, that the store can be reached and
// used (see openedStore.check). When it can, it logs so. When it cannot be
// reached, it logs a warning and returns nil (requests that need the store
// get 503 store-unavailable until it is back), or, with require, returns
// the error. A store that was reached and refused (bad credentials, no
// permission, a failed migration, a schema newer than this build) returns
// an error either way: that does not mend by waiting.
func checkStore(ctx context.Context, st *openedStore, require bool, log *slog.Logger) error {
	start := time.Now()
	err := st.check(ctx)
	took := time.Since(start).Round(time.Millisecond).String()
	switch {
	case err == nil:
		log.Info("store reachable", "store", st.desc, "took", took)
		return nil
	case ctx.Err() != nil:
		return nil // shutting down: serve notices
	}
	detail := scrubbed(st.raw, err)
	if storeRefused(err) {
		return fmt.Errorf("store %s was reached but refused: %s", st.desc, detail)
	}
	if require {
		return fmt.Errorf("store %s cannot be reached (-require-store is set): %s", st.desc, detail)
	}
	log.Warn("store unreachable: requests that need it get 503 store-unavailable until it is back",
		"store", st.desc, "err", detail, "took", took)
	return nil
}

// storeRefused reports whether err, met while using a store, means that
// the store was reached and refused for a reason that does not mend by
// waiting: an error reply from Redis or PostgreSQL other than those that
// mean "not now" (see redisTransient and pgTransient), or a schema newer
// than this build. Everything else, and a deadline, means it could not be
// reached.
func storeRefused(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, pgxstore.ErrSchemaNewer) {
		return true
	}
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return !pgTransient(pe.Code)
	}
	if re, ok := errors.AsType[redis.Error](err); ok {
		return !redisTransient(re.Error())
	}
	return false
}

// pgTransient reports whether a PostgreSQL error code means the server
// cannot do the work now but may soon: connection exceptions (class 08),
// insufficient resources (53), shutdown and start-up (57P01-57P03), a
// canceled statement (57014), a lock not available (55P03), serialization
// failures and deadlocks (40001, 40P01).
func pgTransient(code string) bool {
	if len(code) == 5 && (code[:2] == "08" || code[:2] == "53") {
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", "57014", "55P03", "40001", "40P01":
		return true
	}
	return false
}

// redisTransient reports whether a Redis error reply means the server
// cannot do the work now but may soon: loading its data, busy with a
// script, a cluster that is down or resharding, a replica or a primary
// without its replicas, out of memory.
func redisTransient(reply string) bool {
	code, _, _ := strings.Cut(reply, " ")
	switch code {
	case "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "READONLY", "NOREPLICAS", "OOM":
		return true
	}
	return false
}

// migratingStore is a pgxstore.Store whose tables are migrated on first
// use: the proxy starts while PostgreSQL is unreachable, and the migration
// runs once the database answers. Until the migration has succeeded every
// call first tries it (one attempt at a time; after a failure the next
// attempt waits migrateRetry, and the calls meanwhile get the failure at
// once), and fails with an error wrapping idem.ErrStoreUnavailable when it
// cannot be done, so that requests get 503 store-unavailable. Once it has
// succeeded, each call costs one atomic load more than the store's own.
type migratingStore struct {
	s       *pgxstore.Store
	migrate func(context.Context) error // s.Migrate; tests replace it
	raw     string                      // the store URL, for scrubbing errors
	log     *slog.Logger
	now     func() time.Time

	done atomic.Bool
	sem  chan struct{} // held during an attempt
	// Under sem:
	lastErr error     // the last attempt's failure, nil after a success
	lastAt  time.Time // when it failed
	logged  string    // the text of the last failure logged at warn or error
}

var (
	_ idem.Store     = (*migratingStore)(nil)
	_ idem.Extender  = (*migratingStore)(nil)
	_ idem.Sweeper   = (*migratingStore)(nil)
	_ idem.Inspector = (*migratingStore)(nil)
)

func newMigratingStore(s *pgxstore.Store, raw string, log *slog.Logger) *migratingStore {
	return &migratingStore{s: s, migrate: s.Migrate, raw: raw, log: log, now: time.Now, sem: make(chan struct{}, 1)}
}

// migrateError is a failed migration. It wraps idem.ErrStoreUnavailable,
// so that requests get 503 store-unavailable, and the migration's error;
// its text is scrubbed of the store URL's secrets.
type migrateError struct {
	msg   string
	cause error
}

func (e *migrateError) Error() string   { return e.msg }
func (e *migrateError) Unwrap() []error { return []error{idem.ErrStoreUnavailable, e.cause} }

// ready migrates the tables unless that was done already (see
// migratingStore), and logs a failure.
func (m *migratingStore) ready(ctx context.Context) error { return m.attempt(ctx, true) }

// attempt is ready; it logs a failure only when logFailure is set (the
// start-up check reports its own).
func (m *migratingStore) attempt(ctx context.Context, logFailure bool) error {
	if m.done.Load() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-m.sem }()
	if m.done.Load() {
		return nil
	}
	if m.lastErr != nil && m.now().Sub(m.lastAt) < migrateRetry {
		return m.lastErr
	}
	err := m.migrate(ctx)
	if err == nil {
		m.done.Store(true)
		if m.lastErr != nil {
			m.log.Info("postgres: tables migrated; the store is available")
		}
		m.lastErr = nil
		return nil
	}
	if ctx.Err() != nil {
		return err // the caller gave up: the next one tries again at once
	}
	err = &migrateError{msg: "postgres: " + scrubbed(m.raw, err), cause: err}
	m.lastErr, m.lastAt = err, m.now()
	if !logFailure {
		return err
	}
	level, msg := slog.LevelWarn, "postgres: cannot migrate the tables yet; requests get 503 store-unavailable until it succeeds"
	if storeRefused(err) {
		level, msg = slog.LevelError, "postgres: the migration failed; requests get 503 store-unavailable until it succeeds"
	}
	if text := err.Error(); text != m.logged {
		m.logged = text
	} else {
		level = slog.LevelDebug
	}
	m.log.Log(ctx, level, msg, "err", err.Error())
	return err
}

func (m *migratingStore) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if err := m.ready(ctx); err != nil {
		return idem.Begun{}, err
	}
	return m.s.Begin(ctx, key, fp, lease)
}

func (m *migratingStore) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	return m.s.Complete(ctx, key, fence, result, retention)
}

func (m *migratingStore) Release(ctx context.Context, key string, fence uint64) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	return m.s.Release(ctx, key, fence)
}

func (m *migratingStore) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	return m.s.Extend(ctx, key, fence, lease)
}

func (m *migratingStore) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	if err := m.ready(ctx); err != nil {
		return idem.Record{}, false, err
	}
	return m.s.Get(ctx, key)
}

func (m *migratingStore) Sweep(ctx context.Context) (int, error) {
	if err := m.ready(ctx); err != nil {
		return 0, err
	}
	return m.s.Sweep(ctx)
}
