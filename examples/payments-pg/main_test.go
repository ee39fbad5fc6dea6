package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/pgxstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testDSN returns IDEM_POSTGRES_DSN with search_path set to a fresh schema,
// dropped when t ends.
func testDSN(t *testing.T) (dsn, schema string) {
	t.Helper()
	base := testenv.Need(t, "IDEM_POSTGRES_DSN")
	schema = fmt.Sprintf("pay_%08x", rand.Uint32())
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+schema+` CASCADE`); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return u.String(), schema
}

// instance is one replica of the service: its own pool, store, keeper and
// middleware, on an httptest server.
type instance struct {
	svc  *service
	pool *pgxpool.Pool
	srv  *httptest.Server
}

func newInstance(t *testing.T, dsn, schema string) *instance {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := pgxstore.New(pool, pgxstore.Options{Schema: schema})
	if err := setup(ctx, pool, store); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	svc := newService(pool, store, []byte("payments-test-scope-secret"))
	in := &instance{svc: svc, pool: pool, srv: httptest.NewServer(svc.handler())}
	t.Cleanup(func() {
		in.srv.Close()
		pool.Close()
	})
	return in
}

func (in *instance) charges(t *testing.T) int {
	t.Helper()
	var n int
	if err := in.pool.QueryRow(context.Background(), `SELECT count(*) FROM charges`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

type answer struct {
	status  int
	header  http.Header
	body    string
	replay  bool
	elapsed time.Duration
}

func post(t *testing.T, base, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/payments", strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return answer{}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer tenant-1")
	req.Header.Set("Idempotency-Key", key)
	// Replicas behind one public name: the Host is part of the scope, and
	// each test server has its own port.
	req.Host = "payments.test"
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return answer{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Error(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b), replay: resp.Header.Get("Idempotency-Replayed") == "true", elapsed: time.Since(start)}
}

const eur42 = `{"amount_cents":4200,"currency":"EUR"}`

func TestPayOnce(t *testing.T) {
	dsn, schema := testDSN(t)
	in := newInstance(t, dsn, schema)
	outcomes := make(chan idemhttp.Outcome, 16)
	in.svc.outcome = func(_ *http.Request, o idemhttp.Outcome) { outcomes <- o }
	first := post(t, in.srv.URL, "order-1", eur42)
	if first.status != http.StatusCreated || first.replay || !strings.Contains(first.body, `"amount_cents":4200`) {
		t.Fatalf("first = %d %q (replay %v), want a fresh 201", first.status, first.body, first.replay)
	}
	// The handler completed the record in its transaction and marked the
	// lease, so the middleware's own completion did nothing and succeeded.
	if o := <-outcomes; o.Kind != idemhttp.OutcomeExecuted || !o.Stored || o.Err != nil {
		t.Fatalf("first outcome = %+v, want executed and stored without error", o)
	}
	for range 3 {
		again := post(t, in.srv.URL, "order-1", eur42)
		if again.status != http.StatusCreated || !again.replay || again.body != first.body ||
			again.header.Get("Location") != first.header.Get("Location") {
			t.Fatalf("retry = %d %q %v (replay %v), want the first answer replayed", again.status, again.body, again.header, again.replay)
		}
	}
	if got := post(t, in.srv.URL, "order-1", `{"amount_cents":1,"currency":"EUR"}`); got.status != http.StatusUnprocessableEntity {
		t.Fatalf("same key, other body = %d, want 422", got.status)
	}
	if got := post(t, in.srv.URL, "order-bad", `{"amount_cents":-1}`); got.status != http.StatusBadRequest {
		t.Fatalf("bad request = %d, want 400", got.status)
	}
	if n := in.charges(t); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
}

// TestTwoInstances: two replicas share the database; 200 concurrent
// requests with one key, spread over both, charge exactly once.
func TestTwoInstances(t *testing.T) {
	dsn, schema := testDSN(t)
	a, b := newInstance(t, dsn, schema), newInstance(t, dsn, schema)
	var executions atomic.Int32
	a.svc.executed = func() {
		executions.Add(1)
		time.Sleep(50 * time.Millisecond) // keep the key in flight while the others arrive
	}
	b.svc.executed = a.svc.executed

	const n = 200
	answers := make([]answer, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			base := a.srv.URL
			if i%2 == 1 {
				base = b.srv.URL
			}
			answers[i] = post(t, base, "order-race", eur42)
		}()
	}
	close(start)
	wg.Wait()

	created, conflicts := 0, 0
	var body string
	for _, ans := range answers {
		switch ans.status {
		case http.StatusCreated:
			created++
			if body == "" {
				body = ans.body
			} else if ans.body != body {
				t.Fatalf("two different 201 bodies: %q and %q", body, ans.body)
			}
		case http.StatusConflict:
			conflicts++
		default:
			t.Fatalf("answer %d %q, want 201 or 409", ans.status, ans.body)
		}
	}
	if executions.Load() != 1 || a.charges(t) != 1 {
		t.Fatalf("%d executions, %d charges; want exactly 1 of each", executions.Load(), a.charges(t))
	}
	if created < 1 {
		t.Fatal("no 201 at all")
	}
	t.Logf("%d × 201, %d × 409", created, conflicts)
	if got := post(t, b.srv.URL, "order-race", eur42); got.status != http.StatusCreated || !got.replay || got.body != body {
		t.Fatalf("after the race = %d %q (replay %v), want the replay", got.status, got.body, got.replay)
	}
}

// TestKilledCommit: the database connection dies between the charge and the
// commit. The client gets 503, nothing is charged, and the retry charges
// once.
func TestKilledCommit(t *testing.T) {
	dsn, schema := testDSN(t)
	in := newInstance(t, dsn, schema)
	var killed atomic.Bool
	in.svc.beforeCommit = func(ctx context.Context, tx pgx.Tx) error {
		if killed.Swap(true) {
			return nil
		}
		var pid int
		if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return err
		}
		_, err := in.pool.Exec(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid)
		return err
	}
	outcomes := make(chan idemhttp.Outcome, 16)
	in.svc.outcome = func(_ *http.Request, o idemhttp.Outcome) { outcomes <- o }
	got := post(t, in.srv.URL, "order-k", eur42)
	if got.status != http.StatusServiceUnavailable {
		t.Fatalf("killed commit = %d %q, want 503", got.status, got.body)
	}
	// Not committed, so not marked: the middleware released the record.
	if o := <-outcomes; o.Kind != idemhttp.OutcomeExecuted || o.Stored || o.Err != nil {
		t.Fatalf("killed commit outcome = %+v, want executed, released without error", o)
	}
	if n := in.charges(t); n != 0 {
		t.Fatalf("%d charges after the killed commit, want 0", n)
	}
	retry := post(t, in.srv.URL, "order-k", eur42)
	if retry.status != http.StatusCreated || retry.replay {
		t.Fatalf("retry = %d %q (replay %v), want a fresh 201", retry.status, retry.body, retry.replay)
	}
	if o := <-outcomes; o.Kind != idemhttp.OutcomeExecuted || !o.Stored || o.Err != nil {
		t.Fatalf("retry outcome = %+v, want executed and stored without error", o)
	}
	again := post(t, in.srv.URL, "order-k", eur42)
	if again.status != http.StatusCreated || !again.replay || again.body != retry.body {
		t.Fatalf("second retry = %d (replay %v), want the replay", again.status, again.replay)
	}
	if n := in.charges(t); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
}

// TestRun starts the command, charges through it and shuts it down.
func TestRun(t *testing.T) {
	dsn, schema := testDSN(t)
	t.Setenv("PAYMENTS_SCOPE_SECRET", "payments-run-test-scope-secret")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-dsn", dsn, "-schema", schema, "-sweep", "50ms"}, pw, &stderr)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the address: %v (stderr %q, run: %v)", err, stderr.String(), <-done)
	}
	go io.Copy(io.Discard, pr)
	base := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
	if got := post(t, base, "order-run", eur42); got.status != http.StatusCreated {
		t.Fatalf("POST = %d %q", got.status, got.body)
	}
	time.Sleep(120 * time.Millisecond) // let a sweep tick run
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v (stderr %q)", err, stderr.String())
	}
	if err := run(context.Background(), []string{"-dsn", ""}, io.Discard, io.Discard); err == nil {
		t.Fatal("run without a DSN succeeded")
	}
}
