package pgxstore_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/pgxstore"
)

// failTracer counts the statements that failed on a pool's connections.
type failTracer struct{ failed atomic.Int64 }

func (t *failTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (t *failTracer) TraceQueryEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if d.Err != nil && !errors.Is(d.Err, pgx.ErrNoRows) {
		t.failed.Add(1)
	}
}

// ownPool opens a pool of n connections on IDEM_POSTGRES_DSN that is used
// by this test only (the test kills its connections), never pings a
// connection before handing it out (so a dead connection is handed out as
// it would be right after its last use), and traces failed statements.
func ownPool(t *testing.T, n int32) (*pgxpool.Pool, *failTracer) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.Need(t, "IDEM_POSTGRES_DSN"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = n, 0
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	tr := &failTracer{}
	cfg.ConnConfig.Tracer = tr
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, tr
}

// killPooled opens every connection of p, then terminates their server
// backends and waits until they are gone: p then holds n dead idle
// connections.
func killPooled(t *testing.T, p *pgxpool.Pool, n int) {
	t.Helper()
	ctx := context.Background()
	conns := make([]*pgxpool.Conn, n)
	pids := make([]uint32, n)
	for i := range conns {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i], pids[i] = c, c.Conn().PgConn().PID()
	}
	for _, c := range conns {
		c.Release()
	}
	if got := p.Stat().IdleConns(); got != int32(n) {
		t.Fatalf("%d idle connections, want %d", got, n)
	}
	exec(t, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
	deadline := time.Now().Add(10 * time.Second)
	for count(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the terminated backends did not exit")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGetRetriesOnFreshConnection checks that Get, the Inspector the
// Keeper asks whether a completion whose reply was lost was applied,
// answers although every pooled connection was killed by the server, where
// the completing statement itself is reported as unavailable and not run
// again.
func TestGetRetriesOnFreshConnection(t *testing.T) {
	t.Parallel()
	const n = 4
	base := newStore(t, pgxstore.Options{})
	p, tr := ownPool(t, n)
	s := pgxstore.New(p, base.Options())
	ctx := context.Background()

	b := mustBegin(t, s, "k", fpA, time.Minute)
	if err := s.Complete(ctx, "k", b.Fence, []byte("done"), time.Hour); err != nil {
		t.Fatal(err)
	}
	killPooled(t, p, n)
	rec, ok, err := s.Get(ctx, "k")
	if err != nil || !ok {
		t.Fatalf("Get after the pooled connections were killed = %+v, %v, %v; want the record", rec, ok, err)
	}
	if rec.State != idem.StateCompleted || rec.Fence != b.Fence || string(rec.Result) != "done" {
		t.Fatalf("Get = %+v, want completed under fence %d with the result", rec, b.Fence)
	}
	if tr.failed.Load() == 0 {
		t.Fatal("no attempt failed: the test did not hand Get a dead connection")
	}
	t.Logf("%d attempts failed on dead connections before Get answered", tr.failed.Load())

	// A change is not retried: on a dead connection it fails closed, even
	// though another connection would have worked.
	b2 := mustBegin(t, s, "k2", fpA, time.Minute)
	killPooled(t, p, n)
	before := tr.failed.Load()
	err = s.Complete(ctx, "k2", b2.Fence, []byte("x"), time.Hour)
	if !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Complete on a dead connection = %v, want ErrStoreUnavailable", err)
	}
	if got := tr.failed.Load() - before; got != 1 {
		t.Fatalf("Complete ran %d failing statements, want exactly 1 (no retry)", got)
	}
	if rec, ok, err := s.Get(ctx, "k2"); err != nil || !ok || rec.State != idem.StateInProgress {
		t.Fatalf("Get after the failed Complete = %+v, %v, %v; want in progress", rec, ok, err)
	}
}

// TestGetConcurrentAfterKill checks Get from many goroutines at once right
// after every pooled connection died: each one answers.
func TestGetConcurrentAfterKill(t *testing.T) {
	t.Parallel()
	const n = 6
	base := newStore(t, pgxstore.Options{})
	p, _ := ownPool(t, n)
	s := pgxstore.New(p, base.Options())
	b := mustBegin(t, s, "k", fpA, time.Minute)
	killPooled(t, p, n)
	var wg sync.WaitGroup
	for range 2 * n {
		wg.Go(func() {
			rec, ok, err := s.Get(context.Background(), "k")
			if err != nil || !ok || rec.Fence != b.Fence {
				t.Errorf("Get = %+v, %v, %v", rec, ok, err)
			}
		})
	}
	wg.Wait()
}

// TestGetServerDown checks that Get does not keep retrying when no
// connection can be made: it fails closed after one connection attempt.
func TestGetServerDown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg, err := pgxpool.ParseConfig("postgres://idem@" + addr + "/idem?sslmode=disable&connect_timeout=5")
	if err != nil {
		t.Fatal(err)
	}
	var connects atomic.Int64
	cfg.BeforeConnect = func(context.Context, *pgx.ConnConfig) error { connects.Add(1); return nil }
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s := pgxstore.New(p, pgxstore.Options{})
	if _, _, err := s.Get(context.Background(), "k"); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Get with the server down = %v, want ErrStoreUnavailable", err)
	}
	if got := connects.Load(); got != 1 {
		t.Fatalf("Get made %d connection attempts with the server down, want 1", got)
	}
}
