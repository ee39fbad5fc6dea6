package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// server is a redis-server process owned by one test, on its own loopback
// port, with persistence off.
type server struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	args []string
	proc *redisProc // nil while the server is down
}

// redisBinary returns the redis-server executable; it skips the test when
// there is none, or fails it under CI=true.
func redisBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found and CI=true: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	return bin
}

// freePort returns a loopback port that was free a moment ago, below the
// machine's ephemeral range (testenv.PickPort), so that nothing else takes
// it while a restarted server is down.
func freePort(t *testing.T) int { return testenv.FreePort(t) }

// startServer starts a dedicated redis-server; it is killed at cleanup.
// A port taken between the check and the bind costs another pick.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	s := &server{t: t, bin: redisBinary(t), dir: t.TempDir(), args: args}
	t.Cleanup(s.kill)
	var err error
	for range 5 {
		s.port = freePort(t)
		if err = s.tryStart(); err == nil {
			return s
		}
	}
	t.Fatal(err)
	return nil
}

func (s *server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// start (re)starts the process on the server's port and waits until it
// answers PING.
func (s *server) start() {
	s.t.Helper()
	if err := s.tryStart(); err != nil {
		s.t.Fatal(err)
	}
}

func (s *server) tryStart() error {
	args := append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir}, s.args...)
	p, err := startRedisProc(s.bin, s.addr(), filepath.Join(s.dir, "redis.log"), 5*time.Second, args...)
	s.proc = p
	return err
}

// kill stops the process with SIGKILL (a crash, not a shutdown).
func (s *server) kill() {
	if s.proc == nil {
		return
	}
	s.proc.kill()
	s.proc = nil
}

// redisProc is a redis-server process started by a test.
type redisProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and is reaped
}

// startRedisProc starts bin with args, which must name addr's port, with
// its output appended to logPath, and waits until addr answers PING. It
// fails, with the log, when the process exits first (a port taken since it
// was picked, say) or does not answer within d; the process is then gone.
func startRedisProc(bin, addr, logPath string, d time.Duration, args ...string) (*redisProc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	err = cmd.Start()
	log.Close()
	if err != nil {
		return nil, err
	}
	p := &redisProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	fail := func(what string) (*redisProc, error) {
		p.kill()
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("redis-server on %s %s:\n%s", addr, what, b)
	}
	deadline := time.Now().Add(d)
	for {
		select {
		case <-p.done:
			return fail("exited: " + cmd.ProcessState.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			_, err = io.ReadFull(c, buf)
			c.Close()
			if err == nil && string(buf) == "+PONG\r\n" {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return fail(fmt.Sprintf("did not answer PING within %v (%v)", d, err))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal sends sig to the process.
func (p *redisProc) signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// kill stops the process with SIGKILL and waits until it is reaped.
func (p *redisProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// client returns a client for the server with short timeouts, closed at
// cleanup.
func (s *server) client() *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:         s.addr(),
		DialTimeout:  200 * time.Millisecond,
		ReadTimeout:  time.Second,
		WriteTimeout: time.Second,
		MaxRetries:   1,
		// Fail fast while the server is down (the default is 5 dial
		// attempts with backoff).
		DialerRetries: 1,
	})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestServerKilledAndRestarted(t *testing.T) {
	srv := startServer(t)
	c := srv.client()
	st := newStore(t, c, redisstore.Options{})
	k := &idem.Keeper{Store: st, Lease: 5 * time.Second}
	ctx := context.Background()
	fp := []byte("fp")

	var ran atomic.Int64
	mw := &idemhttp.Middleware{Keeper: k, CompleteTimeout: 300 * time.Millisecond,
		ScopeSecret: []byte("redisstore-test-scope-secret"), AllowAnonymous: true}
	ts := httptest.NewServer(mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "ok")
	})))
	defer ts.Close()
	post := func(key string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, ts.URL, strings.NewReader("{}"))
		req.Header.Set("Idempotency-Key", key)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, _ := post("before"); code != http.StatusCreated {
		t.Fatalf("before the kill: status %d, want 201", code)
	}
	a, err := k.Begin(ctx, "s", "held", fp)
	if err != nil {
		t.Fatal(err)
	}

	// Kill the server while requests run: every request either executed
	// and was acknowledged (201), was refused without running the handler
	// (503 store-unavailable), or ran but could not be recorded, and so was
	// not acknowledged (503 outcome-unknown).
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		created atomic.Int64
		refused atomic.Int64
		unknown atomic.Int64
		other   atomic.Int64
	)
	ran.Store(0)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				req, _ := http.NewRequest(http.MethodPost, ts.URL, strings.NewReader("{}"))
				req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%d-%d", w, i))
				resp, err := ts.Client().Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusCreated:
					created.Add(1)
				case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), idemhttp.CodeStoreUnavailable):
					refused.Add(1)
				case resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), idemhttp.CodeOutcomeUnknown):
					unknown.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	srv.kill()
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if ran.Load() != created.Load()+unknown.Load() || refused.Load() == 0 || created.Load() == 0 || other.Load() != 0 {
		t.Errorf("under load: handler ran %d times, %d answers 201, %d answers 503 store-unavailable, %d answers 503 outcome-unknown, %d others; want runs = 201s + outcome-unknown, some of each, no others",
			ran.Load(), created.Load(), refused.Load(), unknown.Load(), other.Load())
	}

	ran.Store(0)
	start := time.Now()
	for _, tc := range []struct {
		name string
		f    func() error
	}{
		{"Begin", func() error { _, err := st.Begin(ctx, "k", fp, time.Second); return err }},
		{"Complete", func() error { return st.Complete(ctx, a.Lease.Key(), a.Lease.Fence(), []byte("r"), time.Minute) }},
		{"Lease.Complete", func() error {
			// The Keeper retries a final step until its context ends.
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			return a.Lease.Complete(ctx, []byte("r"))
		}},
		{"Release", func() error { return st.Release(ctx, "k", 1) }},
		{"Extend", func() error { return st.Extend(ctx, "k", 1, time.Second) }},
		{"Get", func() error { _, _, err := st.Get(ctx, "k"); return err }},
	} {
		t0 := time.Now()
		if err := tc.f(); !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Errorf("%s while the server is down: %v, want ErrStoreUnavailable", tc.name, err)
		}
		t.Logf("%s failed in %v", tc.name, time.Since(t0))
	}
	if code, body := post("during"); code != http.StatusServiceUnavailable {
		t.Errorf("request while the server is down: status %d (%s), want 503", code, body)
	}
	if n := ran.Load(); n != 0 {
		t.Errorf("handler ran %d times while the store was down, want 0 (fail closed)", n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing took %v; want fast failures", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.Begin(cctx, "k", fp, time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Begin with a canceled context while down: %v, want context.Canceled", err)
	}

	// Same port, empty server (no persistence, no script cache): service
	// resumes without any manual step.
	srv.start()
	var code int
	for deadline := time.Now().Add(3 * time.Second); ; {
		if code, _ = post("after"); code == http.StatusCreated || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != http.StatusCreated {
		t.Fatalf("after the restart: status %d, want 201", code)
	}
	if code, body := post("after"); code != http.StatusCreated || body != "ok" {
		t.Errorf("replay after the restart: %d %q", code, body)
	}
	if n := ran.Load(); n != 1 {
		t.Errorf("handler ran %d times after the restart, want 1", n)
	}
}

func TestUnreachable(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 100 * time.Millisecond, MaxRetries: -1, DialerRetries: 1})
	defer c.Close()
	st := redisstore.New(c, redisstore.Options{PollInterval: 10 * time.Millisecond})
	defer st.Close()
	ctx := context.Background()
	if _, err := st.Begin(ctx, "k", nil, time.Second); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Errorf("Begin: %v, want ErrStoreUnavailable", err)
	}
	if err := st.Complete(ctx, "k", 1, nil, time.Second); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Errorf("Complete: %v, want ErrStoreUnavailable", err)
	}
	// Wait cannot subscribe: it falls back to polling and returns after
	// PollInterval, not after d.
	start := time.Now()
	if err := st.Wait(ctx, "k", 5*time.Second); err != nil {
		t.Errorf("Wait: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Wait without a server took %v, want about PollInterval", d)
	}
}

// replicated starts a primary and a replica and waits for the link.
func replicated(t *testing.T) (primary, replica *server) {
	primary = startServer(t, "--repl-diskless-sync-delay", "0")
	replica = startServer(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.port))
	c := primary.client()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, _ := c.Info(context.Background(), "replication").Result()
		if strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online") {
			return primary, replica
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica did not come online:\n%s", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWaitReplicas(t *testing.T) {
	primary, replica := replicated(t)
	c := redis.NewClient(&redis.Options{Addr: primary.addr(), ReadTimeout: 3 * time.Second})
	defer c.Close()
	h := &counter{}
	c.AddHook(h)
	st := newStore(t, c, redisstore.Options{Prefix: "wr:", WaitReplicas: 1, WaitTimeout: time.Second})
	ctx := context.Background()
	fp := []byte("fp")

	// Warm the script cache, then: acknowledged by the replica, one round
	// trip (script and WAIT pipelined) per step.
	if b, err := st.Begin(ctx, "warm", fp, time.Minute); err != nil {
		t.Fatal(err)
	} else if err := st.Complete(ctx, "warm", b.Fence, nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	var b idem.Begun
	var err error
	if n := h.trips(func() { b, err = st.Begin(ctx, "k", fp, time.Minute) }); err != nil || n != 1 {
		t.Fatalf("Begin = %v, %d round trips; want nil, 1", err, n)
	}
	if n := h.trips(func() { err = st.Complete(ctx, "k", b.Fence, []byte("r"), time.Minute) }); err != nil || n != 1 {
		t.Fatalf("Complete = %v, %d round trips; want nil, 1", err, n)
	}
	onReplica := redisstore.New(replica.client(), redisstore.Options{Prefix: "wr:"})
	if rec, ok, err := onReplica.Get(ctx, "k"); err != nil || !ok || rec.State != idem.StateCompleted || string(rec.Result) != "r" {
		t.Errorf("the replica has %+v, %v, %v; want the completed record", rec, ok, err)
	}

	held, err := st.Begin(ctx, "held", fp, time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	// Without the replica: fail closed, and give acquired keys back.
	replica.kill()
	start := time.Now()
	if _, err := st.Begin(ctx, "lost", fp, time.Minute); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Errorf("Begin without replica: %v, want ErrStoreUnavailable", err)
	}
	if _, ok, err := st.Get(ctx, "lost"); err != nil || ok {
		t.Errorf("after a refused Begin the record exists (%v, %v); want it released", ok, err)
	}
	if err := st.Complete(ctx, "held", held.Fence, []byte("r"), time.Minute); !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Errorf("Complete without replica: %v, want ErrStoreUnavailable", err)
	}
	// Reads need no acknowledgement.
	if b, err := st.Begin(ctx, "k", fp, time.Minute); err != nil || b.Outcome != idem.Replay {
		t.Errorf("replay without replica: %+v, %v", b, err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("took %v; each refusal should take about WaitTimeout", d)
	}
}

func TestWaitReplicasCluster(t *testing.T) {
	// The test cluster has no replicas, so WAIT 1 never succeeds: this
	// checks that the pipelined WAIT reaches the key's primary and that a
	// refusal fails closed and releases the key.
	c := cluster(t)
	st := newStore(t, c, redisstore.Options{WaitReplicas: 1, WaitTimeout: 50 * time.Millisecond})
	ctx := context.Background()
	for i := range 6 {
		key := fmt.Sprintf("k%d", i)
		if _, err := st.Begin(ctx, key, []byte("fp"), time.Minute); !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Errorf("Begin(%s): %v, want ErrStoreUnavailable", key, err)
		}
		if _, ok, err := st.Get(ctx, key); err != nil || ok {
			t.Errorf("Get(%s) = %v, %v; want released", key, ok, err)
		}
	}
}
