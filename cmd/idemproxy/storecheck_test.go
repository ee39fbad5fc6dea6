package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/pgxstore"
)

// rawProc is an idemproxy process run with exactly the given arguments,
// its standard output and error kept apart.
type rawProc struct {
	t              *testing.T
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan struct{}
	err            error
}

func startRaw(t *testing.T, args ...string) *rawProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv()
	dieWithParent(cmd)
	p := &rawProc{t: t, cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// listening waits for the "listening" line and returns http://addr, or
// fails the test if the process exits first.
func (p *rawProc) listening() string {
	p.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		for _, m := range jsonLines(p.stderr.String()) {
			if m["msg"] == "listening" {
				return "http://" + m["addr"].(string)
			}
		}
		select {
		case <-p.exited:
			p.t.Fatalf("idemproxy exited (%v) before listening:\n%s%s", p.err, p.stdout, p.stderr)
		case <-deadline:
			p.t.Fatalf("idemproxy did not listen within 20s:\n%s%s", p.stdout, p.stderr)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// exitCode waits for the process to exit and returns its status.
func (p *rawProc) exitCode() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("idemproxy did not exit within 20s:\n%s%s", p.stdout, p.stderr)
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

// terminate sends SIGTERM and checks a clean exit.
func (p *rawProc) terminate() {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exitCode(); code != 0 {
		p.t.Fatalf("exit status %d after SIGTERM:\n%s%s", code, p.stdout, p.stderr)
	}
}

// jsonLines returns the lines of s that are JSON objects.
func jsonLines(s string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(s, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// checkAllJSON fails the test unless every line of out is a JSON object.
func checkAllJSON(t *testing.T, name, out string) {
	t.Helper()
	for i, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" && out == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("%s line %d is not JSON (%v): %q", name, i+1, err, l)
		}
	}
}

// hasLine reports whether a JSON line of s has every given field value.
func hasLine(s string, kv ...string) bool {
	for _, m := range jsonLines(s) {
		ok := true
		for i := 0; i < len(kv); i += 2 {
			if v, _ := m[kv[i]].(string); !strings.Contains(v, kv[i+1]) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestLogsStayJSON runs the binary with -log-format json on a Redis store
// nothing listens at, and sends a request so that go-redis dials (and
// would print its own "redis: … failed to dial" line): every line of
// stdout and stderr is JSON, go-redis's lines among them.
func TestLogsStayJSON(t *testing.T) {
	u := newUpstream(t)
	p := startRaw(t, "-store", "redis://"+closedAddr(t), "-log-format", "json", "-listen", "127.0.0.1:0",
		"-upstream", u.srv.URL, "-scope-secret-file", writeSecret(t), "-admin", "127.0.0.1:0")
	addr := p.listening()
	c := client(t)
	if r := do(t, c, "POST", addr+"/ok", map[string]string{"Idempotency-Key": newKey()}, "{}"); r.status != 503 {
		t.Fatalf("store down: %d %s", r.status, r.body)
	}
	p.terminate()
	checkAllJSON(t, "stdout", p.stdout.String())
	checkAllJSON(t, "stderr", p.stderr.String())
	if !hasLine(p.stderr.String(), "lib", "go-redis", "msg", "failed to dial") {
		t.Errorf("no go-redis line in the logs (the test shows nothing then):\n%s", p.stderr)
	}
	if !hasLine(p.stderr.String(), "level", "WARN", "msg", "store unreachable") {
		t.Errorf("no start-up warning:\n%s", p.stderr)
	}
}

// TestStoreUnreachableAtStart: for every server store, nothing listening
// at start means a warning and a proxy that answers 503 store-unavailable;
// with -require-store (flag or config file) it means exit 1 with a clear
// error, in JSON like every other line.
func TestStoreUnreachableAtStart(t *testing.T) {
	cases := map[string]func(addr string) string{
		"redis":         func(a string) string { return "redis://" + a + "/0" },
		"redis-cluster": func(a string) string { return "redis+cluster://" + a },
		"postgres":      func(a string) string { return "postgres://idem:Pg-pw-X1@" + a + "/idem?sslmode=disable" },
	}
	for name, store := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			base := []string{"-store", store(closedAddr(t)), "-log-format", "json", "-listen", "127.0.0.1:0",
				"-upstream", u.srv.URL, "-scope-secret-file", writeSecret(t)}

			p := startRaw(t, base...)
			addr := p.listening()
			if !hasLine(p.stderr.String(), "level", "WARN", "msg", "store unreachable", "msg", "503 store-unavailable") {
				t.Fatalf("no warning before listening:\n%s", p.stderr)
			}
			r := do(t, client(t), "POST", addr+"/ok", map[string]string{"Idempotency-Key": newKey()}, "{}")
			if r.status != 503 || problemCode(t, r) != "store-unavailable" {
				t.Fatalf("store down: %d %s", r.status, r.body)
			}
			p.terminate()

			for _, req := range [][]string{{"-require-store"}, {"-config", writeFile(t, "c.yaml", "require_store: true\n")}} {
				p := startRaw(t, append(base, req...)...)
				if code := p.exitCode(); code != 1 {
					t.Fatalf("%v: exit status %d, want 1:\n%s", req, code, p.stderr)
				}
				out := p.stderr.String()
				if !hasLine(out, "level", "ERROR", "err", "cannot be reached (-require-store is set)") || strings.Contains(out, "listening") {
					t.Fatalf("%v: want a clear error and no listening:\n%s", req, out)
				}
				if strings.Contains(out, "Pg-pw-X1") {
					t.Fatalf("the password shows:\n%s", out)
				}
				checkAllJSON(t, "stderr", out)
				checkAllJSON(t, "stdout", p.stdout.String())
			}
		})
	}
}

// TestStoreReachableAtStart: every store that can be reached is checked
// and said so at start, also with -require-store; PostgreSQL's tables are
// created then, before any request.
func TestStoreReachableAtStart(t *testing.T) {
	for _, sc := range storeCases() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			store := sc.url(t)
			var dsn string
			if sc.name == "postgres" {
				dsn = freshDatabase(t)
				store = dsn
			}
			u := newUpstream(t)
			p := startProxy(t, append(storeArgs(t, store), "-upstream", u.srv.URL, "-require-store")...)
			if !hasLine(p.log.String(), "level", "INFO", "msg", "store reachable") {
				t.Fatalf("no store check logged:\n%s", p.log)
			}
			if dsn != "" && !tablesExist(t, dsn) {
				t.Fatalf("the tables were not created at start")
			}
			r := do(t, client(t), "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": newKey()}, "{}")
			if r.status != 201 {
				t.Fatalf("%d %s", r.status, r.body)
			}
		})
	}
}

// TestStoreRefusedAtStart: a store that answers but refuses (a password
// Redis does not take, a PostgreSQL database that does not exist, a role
// without the right to create the tables) makes the proxy exit 1 at start,
// -require-store or not.
func TestStoreRefusedAtStart(t *testing.T) {
	t.Run("redis password", func(t *testing.T) {
		t.Parallel()
		store := "redis://:Wrong-pw-R7@" + startPasswordRedis(t, "right-pw-R7") + "/0"
		p := startRaw(t, "-store", store, "-log-format", "json", "-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1",
			"-scope-secret-file", writeSecret(t))
		if code := p.exitCode(); code != 1 {
			t.Fatalf("exit status %d, want 1:\n%s", code, p.stderr)
		}
		if out := p.stderr.String(); !hasLine(out, "level", "ERROR", "err", "was reached but refused") || strings.Contains(out, "Wrong-pw-R7") {
			t.Fatalf("want a clear error without the password:\n%s", out)
		}
	})
	t.Run("postgres unknown database", func(t *testing.T) {
		t.Parallel()
		u, err := url.Parse(testenv.Need(t, "IDEM_POSTGRES_DSN"))
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/idemproxy_no_such_database"
		p := startRaw(t, "-store", u.String(), "-log-format", "json", "-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1",
			"-scope-secret-file", writeSecret(t))
		if code := p.exitCode(); code != 1 {
			t.Fatalf("exit status %d, want 1:\n%s", code, p.stderr)
		}
		if out := p.stderr.String(); !hasLine(out, "level", "ERROR", "err", "was reached but refused") || !strings.Contains(out, "does not exist") {
			t.Fatalf("want a clear error:\n%s", out)
		}
	})
	t.Run("postgres permission", func(t *testing.T) {
		t.Parallel()
		dsn := freshDatabase(t)
		role := "idemproxy_noperm_" + strings.TrimPrefix(newKey(), "k-")
		adminExec(t, dsn, "CREATE ROLE "+role+" LOGIN")
		t.Cleanup(func() { adminExec(t, testenv.Need(t, "IDEM_POSTGRES_DSN"), "DROP ROLE IF EXISTS "+role) })
		u, _ := url.Parse(dsn)
		u.User = url.User(role)
		p := startRaw(t, "-store", u.String(), "-log-format", "json", "-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1",
			"-scope-secret-file", writeSecret(t))
		if code := p.exitCode(); code != 1 {
			t.Fatalf("exit status %d, want 1:\n%s", code, p.stderr)
		}
		if out := p.stderr.String(); !hasLine(out, "level", "ERROR", "err", "permission denied") {
			t.Fatalf("want the migration's error:\n%s", out)
		}
	})
}

// TestPostgresComesUpLater: the proxy starts while PostgreSQL is down
// (connections dropped at once), warns, answers 503; once the database is
// up, the tables are migrated on the next request, which works, and so do
// the replays.
func TestPostgresComesUpLater(t *testing.T) {
	dsn := freshDatabase(t)
	target, _ := url.Parse(dsn)
	fw := newFlakyForwarder(t, target.Host)
	viaFW := *target
	viaFW.Host = fw.addr()
	u := newUpstream(t)
	p := startProxy(t, "-store", viaFW.String(), "-scope-secret-file", writeSecret(t), "-upstream", u.srv.URL,
		"-admin", "127.0.0.1:0")
	if !hasLine(p.log.String(), "level", "WARN", "msg", "store unreachable") {
		t.Fatalf("no warning:\n%s", p.log)
	}
	c := client(t)
	k := newKey()
	hdr := map[string]string{"Idempotency-Key": k}
	if r := do(t, c, "POST", p.addr+"/ok", hdr, "{}"); r.status != 503 || problemCode(t, r) != "store-unavailable" {
		t.Fatalf("store down: %d %s", r.status, r.body)
	}
	if r := do(t, c, "GET", p.admin+"/readyz", nil, ""); r.status != 503 {
		t.Fatalf("readyz with the store down: %d", r.status)
	}
	if tablesExist(t, dsn) {
		t.Fatal("tables exist before the database was reachable")
	}
	fw.up.Store(true)
	var first resp
	waitFor(t, 10*time.Second, "a request to succeed once the database is up", func() bool {
		first = do(t, c, "POST", p.addr+"/ok", hdr, "{}")
		return first.status == 201
	})
	if r := do(t, c, "POST", p.addr+"/ok", hdr, "{}"); r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r.body, first.body) {
		t.Fatalf("replay: %d %v %s", r.status, r.header, r.body)
	}
	if n := u.n("/ok", k); n != 1 {
		t.Fatalf("upstream ran %d times", n)
	}
	if !tablesExist(t, dsn) {
		t.Fatal("no tables after the first request")
	}
	if r := do(t, c, "GET", p.admin+"/readyz", nil, ""); r.status != 200 {
		t.Fatalf("readyz with the store up: %d %s", r.status, r.body)
	}
	if !hasLine(p.log.String(), "msg", "tables migrated") {
		t.Fatalf("the migration was not logged:\n%s", p.log)
	}
}

// freshDatabase creates a database of the test's own on the test server
// (dropped at cleanup) and returns its URL.
func freshDatabase(t *testing.T) string {
	t.Helper()
	base := testenv.Need(t, "IDEM_POSTGRES_DSN")
	name := "idemproxy_" + strings.TrimPrefix(newKey(), "k-")
	adminExec(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { adminExec(t, base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// adminExec runs one statement on the database at dsn.
func adminExec(t *testing.T, dsn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// tablesExist reports whether the records table exists in dsn's database.
func tablesExist(t *testing.T, dsn string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('public.idem_records') IS NOT NULL`).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// flakyForwarder is a TCP forwarder to target that drops every connection
// at once until up is set (a server that is down), then forwards.
type flakyForwarder struct {
	ln     net.Listener
	target string
	up     atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFlakyForwarder(t *testing.T, target string) *flakyForwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyForwarder{ln: ln, target: target}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *flakyForwarder) addr() string { return f.ln.Addr().String() }

func (f *flakyForwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		if !f.up.Load() {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, s)
		f.mu.Unlock()
		f.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer f.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(c, s)
		go pipe(s, c)
	}
}

// redisReply is an error reply from Redis, as go-redis returns them.
type redisReply string

func (e redisReply) Error() string { return string(e) }
func (redisReply) RedisError()     {}

// TestStoreRefused checks which errors count as a refusal (exit at start)
// and which as an unreachable store (a warning).
func TestStoreRefused(t *testing.T) {
	unavailable := func(err error) error { return fmt.Errorf("store: %w: %w", idem.ErrStoreUnavailable, err) }
	cases := []struct {
		err     error
		refused bool
	}{
		{unavailable(&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), false},
		{errors.New("dial tcp: lookup nowhere: no such host"), false},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{fmt.Errorf("%w: %w", context.DeadlineExceeded, &pgconn.PgError{Code: "57014"}), false},
		{unavailable(redisReply("WRONGPASS invalid username-password pair or user is disabled.")), true},
		{unavailable(redisReply("NOAUTH Authentication required.")), true},
		{unavailable(redisReply("ERR DB index is out of range")), true},
		{unavailable(redisReply("LOADING Redis is loading the dataset in memory")), false},
		{unavailable(redisReply("CLUSTERDOWN The cluster is down")), false},
		{unavailable(redisReply("MASTERDOWN Link with MASTER is down")), false},
		{&pgconn.PgError{Code: "42501", Message: "permission denied for schema public"}, true},
		{&pgconn.ConnectError{}, false},
		{fmt.Errorf("connect: %w", &pgconn.PgError{Code: "28P01"}), true},
		{fmt.Errorf("connect: %w", &pgconn.PgError{Code: "3D000"}), true},
		{unavailable(&pgconn.PgError{Code: "57P03"}), false},
		{unavailable(&pgconn.PgError{Code: "08006"}), false},
		{unavailable(&pgconn.PgError{Code: "53300"}), false},
		{fmt.Errorf("migrate: %w", pgxstore.ErrSchemaNewer), true},
	}
	for _, tc := range cases {
		if got := storeRefused(tc.err); got != tc.refused {
			t.Errorf("storeRefused(%v) = %v, want %v", tc.err, got, tc.refused)
		}
	}
}

// TestMigratingStore checks the migration on first use: one attempt at a
// time however many callers, each failure reported to the callers of the
// next migrateRetry without a new attempt (the clock is the test's), a
// caller that gives up does not count as a failure, failures wrap
// ErrStoreUnavailable (503), and after a success no more attempts.
func TestMigratingStore(t *testing.T) {
	var logs syncBuffer
	m := newMigratingStore(pgxstore.New(nil, pgxstore.Options{}), "postgres://u:Secret-pw-9@h/db",
		slog.New(slog.NewJSONHandler(&logs, nil)))
	now := time.Unix(1000, 0)
	var clockMu sync.Mutex
	m.now = func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }

	var calls atomic.Int32
	var running, maxRunning atomic.Int32
	fail := atomic.Bool{}
	fail.Store(true)
	release := make(chan struct{})
	m.migrate = func(ctx context.Context) error {
		calls.Add(1)
		if n := running.Add(1); n > maxRunning.Load() {
			maxRunning.Store(n)
		}
		defer running.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		if fail.Load() {
			return &pgconn.PgError{Code: "42501", Message: "permission denied for schema public (Secret-pw-9)"}
		}
		return nil
	}
	ctx := context.Background()

	// 8 callers, one attempt, failing: all get the failure.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { _, err := m.Begin(ctx, "k", nil, time.Second); errs <- err })
	}
	waitFor(t, 5*time.Second, "the first attempt", func() bool { return calls.Load() == 1 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, idem.ErrStoreUnavailable) || !storeRefused(err) || strings.Contains(err.Error(), "Secret-pw-9") {
			t.Fatalf("Begin during a failing migration = %v; want ErrStoreUnavailable, the cause, no secret", err)
		}
	}
	if n := calls.Load(); n != 1 || maxRunning.Load() != 1 {
		t.Fatalf("%d attempts (%d at once) for 8 callers within migrateRetry, want 1", n, maxRunning.Load())
	}
	if !strings.Contains(logs.String(), `"level":"ERROR"`) || strings.Contains(logs.String(), "Secret-pw-9") {
		t.Fatalf("failure not logged once at error, or with the secret:\n%s", logs.String())
	}

	// A caller that gives up does not start an attempt nor count.
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Complete(canceled, "k", 1, nil, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Complete with a canceled context = %v", err)
	}

	// After migrateRetry, a new attempt; it succeeds; no more attempts.
	advance(migrateRetry)
	fail.Store(false)
	if err := m.ready(ctx); err != nil {
		t.Fatalf("ready after the database came right: %v", err)
	}
	if err := m.ready(ctx); err != nil || calls.Load() != 2 {
		t.Fatalf("ready = %v after %d attempts, want nil after 2", err, calls.Load())
	}
	if !strings.Contains(logs.String(), "tables migrated") {
		t.Fatalf("the success after a failure was not logged:\n%s", logs.String())
	}
}

// TestMigratingStoreDeadline: an attempt cut short by its caller's
// deadline is not remembered as a failure.
func TestMigratingStoreDeadline(t *testing.T) {
	m := newMigratingStore(pgxstore.New(nil, pgxstore.Options{}), "", slog.New(slog.DiscardHandler))
	var calls atomic.Int32
	m.migrate = func(ctx context.Context) error {
		if calls.Add(1) == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := m.ready(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first attempt = %v", err)
	}
	if err := m.ready(context.Background()); err != nil || calls.Load() != 2 {
		t.Fatalf("second attempt = %v after %d calls; want an immediate new attempt", err, calls.Load())
	}
}

// TestRouteLibraryLogs: the log package, slog.Default, go-redis's logger
// and OpenTelemetry's error handler and logger write JSON lines through the
// proxy's handler (warn level, but slog's own), with the store URL's
// secrets masked, and restore puts the previous state back.
func TestRouteLibraryLogs(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	prevOut, prevFlags, prevDefault := log.Writer(), log.Flags(), slog.Default()
	restore := routeLibraryLogs(logger, secrets("redis://:Hidden-pw-3@h:1/0"))
	log.Printf("from the log package, with Hidden-pw-3")
	slog.Info("from slog.Default")
	goRedisLogger{}.Printf(context.Background(), "redis: %s: dial failed (%s)", "pool.go", "Hidden-pw-3")
	otel.Handle(errors.New("traces export: connection refused"))
	ol := logr.New(otelSink{}).WithName("otlp").WithValues("k", "v")
	ol.V(1).Info("a warning") // otel's Warn
	ol.V(4).Info("an info")   // otel's Info: debug level, not shown at info
	ol.Error(errors.New("boom"), "an error")
	restore()
	goRedisLogger{}.Printf(context.Background(), "after restore")
	if log.Writer() != prevOut || log.Flags() != prevFlags || slog.Default() != prevDefault {
		t.Fatal("restore did not put the log package and slog.Default back")
	}

	out := buf.String()
	checkAllJSON(t, "log", out)
	if n := len(jsonLines(out)); n != 6 {
		t.Fatalf("%d lines, want 6:\n%s", n, out)
	}
	if !hasLine(out, "level", "WARN", "msg", "from the log package, with xxxxx") ||
		!hasLine(out, "level", "INFO", "msg", "from slog.Default") ||
		!hasLine(out, "level", "WARN", "msg", "pool.go: dial failed (xxxxx)", "lib", "go-redis") ||
		!hasLine(out, "level", "WARN", "msg", "traces export: connection refused", "lib", "opentelemetry") ||
		!hasLine(out, "level", "WARN", "msg", "otlp: a warning k=v", "lib", "opentelemetry") ||
		!hasLine(out, "level", "WARN", "msg", "otlp: an error: boom k=v", "lib", "opentelemetry") {
		t.Fatalf("lines:\n%s", out)
	}
	if strings.Contains(out, "Hidden-pw-3") || strings.Contains(out, `"msg":"redis: `) {
		t.Fatalf("secret or prefix shows:\n%s", out)
	}
}
