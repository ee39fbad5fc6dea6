//go:build linux

package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/internal/testenv"
)

const scenariosSupported = true

// need skips the test when err says a program it needs is missing, or fails
// it under CI=true (internal/testenv's rule: CI never passes by skipping;
// scripts/test.sh installs redis-server and PostgreSQL when missing).
func need(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v (CI=true: scripts/test.sh installs it)", what, err)
	}
	t.Skipf("%s: %v; run scripts/test.sh (or install it) to run this scenario", what, err)
}

// logFile collects the output of every process of a scenario, one line per
// log line, prefixed with the process's name. It is a file in the
// scenario's temp dir, grepped for the violating keys on failure.
type logFile struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

func newLogFile(t *testing.T) *logFile {
	path := filepath.Join(t.TempDir(), "processes.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &logFile{f: f, path: path}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.f.Close()
	})
	return l
}

func (l *logFile) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.f, format+"\n", args...)
}

// grep returns up to max lines that contain sub.
func (l *logFile) grep(sub string, max int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.Open(l.path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() && len(out) < max {
		if strings.Contains(sc.Text(), sub) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// proxyStats summarizes the proxy's request log lines (msg "request", one
// per answer at debug level): answers by outcome, takeovers, records whose
// completion failed, and refused lease renewals.
func (l *logFile) proxyStats() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.Open(l.path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	outcomes := map[string]int{}
	var takeovers, notStored, renewals int
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "[proxy#") {
			continue
		}
		_, js, _ := strings.Cut(line, " ")
		var m struct {
			Msg, Outcome, Err string
			Takeover          bool
			Stored            *bool
		}
		if json.Unmarshal([]byte(js), &m) != nil {
			continue
		}
		switch {
		case m.Msg == "request":
			outcomes[m.Outcome]++
			if m.Takeover {
				takeovers++
			}
			if m.Outcome == "executed" && m.Stored != nil && !*m.Stored && m.Err != "" {
				notStored++
			}
		case strings.HasPrefix(m.Msg, "lease lost") || strings.HasPrefix(m.Msg, "lease renewal failed"):
			renewals++
		}
	}
	keys := make([]string, 0, len(outcomes))
	for k := range outcomes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, outcomes[k]))
	}
	return fmt.Sprintf("%s; takeovers %d, executions not stored (store error or lease lost) %d, failed lease renewals %d",
		strings.Join(parts, ", "), takeovers, notStored, renewals)
}

// lineWriter splits a process's output into lines for the log file and an
// optional callback.
type lineWriter struct {
	mu     sync.Mutex
	buf    []byte
	prefix string
	log    *logFile
	onLine func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		w.log.printf("%s %s", w.prefix, line)
		if w.onLine != nil {
			w.onLine(line)
		}
	}
	return len(p), nil
}

// process is a child process that dies with the test process (Pdeathsig)
// and is killed at the end of its test.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startProcess starts path with args. Its output goes to out (or to the
// file outFile when out is nil). cred, if set, runs it as another user.
func startProcess(t *testing.T, name string, out io.Writer, cred *syscall.Credential, path string, args ...string) (*process, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	// A server's children may hold the output pipe after it died: do not
	// wait for them longer than this.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.kill() })
	return p, nil
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (after SIGCONT, in case it was stopped) and waits.
func (p *process) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	<-p.exited
}

func (p *process) signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// wait waits up to d for the process to exit and returns its exit error.
func (p *process) wait(d time.Duration) error {
	select {
	case <-p.exited:
		return p.err
	case <-time.After(d):
		p.kill()
		return fmt.Errorf("%s did not exit within %v; killed", p.name, d)
	}
}

// cleanEnv is the environment without IDEMPROXY_* variables (the proxy reads
// its flags from them).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IDEMPROXY_") {
			env = append(env, kv)
		}
	}
	return env
}

// freePort returns a loopback port that was free a moment ago, for a
// server that must come back on the same port after a crash: below the
// machine's ephemeral range (testenv.PickPort), so that nothing else takes
// it while the server is down.
func freePort() (int, error) { return testenv.PickPort() }

// ---- idemproxy ----

// proxyProc is a running idemproxy.
type proxyProc struct {
	*process
	addr string // http://host:port
}

// startProxy runs the binary with args plus -listen 127.0.0.1:0 and JSON
// logs at debug level, and waits for its "listening" line.
func startProxy(t *testing.T, log *logFile, gen int, args ...string) (*proxyProc, error) {
	ready := make(chan string, 1)
	w := &lineWriter{prefix: fmt.Sprintf("[proxy#%d]", gen), log: log, onLine: func(line string) {
		var m struct{ Msg, Addr string }
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "listening" {
			select {
			case ready <- m.Addr:
			default:
			}
		}
	}}
	full := append([]string{"-listen", "127.0.0.1:0", "-log-format", "json", "-log-level", "debug"}, args...)
	p, err := startProcess(t, fmt.Sprintf("idemproxy#%d", gen), w, nil, proxyBin, full...)
	if err != nil {
		return nil, err
	}
	select {
	case addr := <-ready:
		return &proxyProc{process: p, addr: "http://" + addr}, nil
	case <-p.exited:
		return nil, fmt.Errorf("idemproxy exited before listening: %v", p.err)
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, errors.New("idemproxy did not listen within 30s")
	}
}

// terminate sends SIGTERM and waits up to d for a clean exit.
func (p *proxyProc) terminate(d time.Duration) error {
	if !p.running() {
		return p.err
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}
	return p.wait(d)
}

// ---- redis-server ----

// redisServer is a dedicated redis-server: its own port and data dir.
type redisServer struct {
	t    *testing.T
	log  *logFile
	bin  string
	name string // log prefix: "redis", "redis:PORT"
	port int
	dir  string
	conf string // a config file, the first argument (a sentinel's), or ""
	args []string
	proc *process
	gen  int
}

func newRedis(t *testing.T, log *logFile, aof bool) *redisServer {
	persistence := []string{"--appendonly", "no"}
	if aof {
		persistence = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	return newRedisWith(t, log, "redis", freePort, func(string) (string, []string) { return "", persistence })
}

// newRedisWith starts a redis-server with the suite's base flags plus the
// flags extra(dir) returns (dir is its data dir), after the config file it
// returns if any, on a port picked by free, logging as name (":PORT" is
// appended when name is not "redis").
func newRedisWith(t *testing.T, log *logFile, name string, free func() (int, error), extra func(dir string) (conf string, args []string)) *redisServer {
	bin, err := exec.LookPath("redis-server")
	need(t, "redis-server", err)
	r := &redisServer{t: t, log: log, bin: bin, dir: t.TempDir()}
	conf, args := extra(r.dir)
	r.conf = conf
	r.args = append([]string{"--bind", "127.0.0.1", "--dir", r.dir, "--save", "", "--daemonize", "no", "--logfile", ""}, args...)
	var lastErr error
	for range 5 { // a port picked free may be taken by the time the server binds
		if r.port, err = free(); err != nil {
			t.Fatal(err)
		}
		r.name = name
		if name != "redis" {
			r.name = name + ":" + strconv.Itoa(r.port)
		}
		if lastErr = r.start(); lastErr == nil {
			return r
		}
	}
	t.Fatalf("redis-server: %v", lastErr)
	return nil
}

func (r *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// start starts the server on its port and dir and waits until it answers
// PING (an AOF is loaded first).
func (r *redisServer) start() error {
	r.gen++
	w := &lineWriter{prefix: fmt.Sprintf("[%s#%d]", r.name, r.gen), log: r.log}
	args := append([]string{"--port", strconv.Itoa(r.port)}, r.args...)
	if r.conf != "" {
		args = append([]string{r.conf}, args...)
	}
	p, err := startProcess(r.t, "redis-server", w, nil, r.bin, args...)
	if err != nil {
		return err
	}
	r.proc = p
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if !p.running() {
			return fmt.Errorf("redis-server exited: %v", p.err)
		}
		if redisPing(r.addr()) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.kill()
	return errors.New("redis-server did not answer PING within 20s")
}

// redisPing sends PING over a fresh connection.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: %q", line)
	}
	return nil
}

// ---- PostgreSQL ----

// pgServer is a dedicated PostgreSQL cluster: its own port and data dir,
// the postmaster a child of the test (Pdeathsig), run as the "postgres"
// user when the test runs as root (PostgreSQL refuses root).
type pgServer struct {
	t       *testing.T
	log     *logFile
	bin     string
	data    string
	port    int
	cred    *syscall.Credential
	proc    *process
	gen     int
	logPath string
}

// pgBinDir finds initdb, postgres and pg_ctl as scripts/postgres.sh does:
// on PATH, else the newest /usr/lib/postgresql/*/bin.
func pgBinDir() (string, error) {
	ok := func(d string) bool {
		for _, b := range []string{"initdb", "postgres", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(d, b)); err != nil || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil && ok(filepath.Dir(r)) {
			return filepath.Dir(r), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return pgMajor(b) - pgMajor(a) })
	for _, d := range dirs {
		if ok(d) {
			return d, nil
		}
	}
	return "", errors.New("no initdb/postgres/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func newPostgres(t *testing.T, log *logFile) *pgServer {
	bin, err := pgBinDir()
	need(t, "PostgreSQL server binaries", err)
	p := &pgServer{t: t, log: log, bin: bin}
	base := t.TempDir()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		need(t, `the "postgres" user (PostgreSQL refuses to run as root; scripts/postgres.sh creates it)`, err)
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
		// The cluster owner must reach the data dir: t.TempDir and its
		// parent are 0700.
		for _, d := range []string{filepath.Dir(base), base} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	p.data = filepath.Join(base, "data")
	p.logPath = filepath.Join(base, "server.log")
	if err := os.Mkdir(p.data, 0o700); err != nil {
		t.Fatal(err)
	}
	if p.cred != nil {
		if err := os.Chown(p.data, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	out, err := p.run(60*time.Second, "initdb", "-D", p.data, "-U", "idem", "--auth=trust", "--no-sync", "--no-instructions",
		"-E", "UTF8", "--locale=C")
	if err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	var lastErr error
	for range 5 {
		if p.port, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if lastErr = p.start(); lastErr == nil {
			return p
		}
	}
	t.Fatalf("postgres: %v\n%s", lastErr, p.serverLog())
	return nil
}

// run runs one of the server's tools as the cluster owner, bounded by d.
func (p *pgServer) run(d time.Duration, tool string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, tool), args...)
	cmd.Dir = "/"
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: p.cred}
	cmd.WaitDelay = 2 * time.Second
	return cmd.CombinedOutput()
}

func (p *pgServer) dsn() string {
	return fmt.Sprintf("postgres://idem@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// start runs the postmaster on the cluster's port and waits until it
// accepts connections (after crash recovery, if any). fsync is off: the
// suite simulates process crashes, not power loss, and the kernel keeps
// what was written; synchronous_commit stays on, so a commit is in the WAL
// (in the kernel) before it is acknowledged.
func (p *pgServer) start() error {
	p.gen++
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close() // the child has its own descriptor
	proc, err := startProcess(p.t, "postgres", f, p.cred, filepath.Join(p.bin, "postgres"), "-D", p.data,
		"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(p.port), "-c", "unix_socket_directories=",
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=60", "-c", "shared_buffers=32MB")
	if err != nil {
		return err
	}
	p.proc = proc
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if !proc.running() {
			return fmt.Errorf("postgres exited: %v", proc.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, p.dsn())
		if err == nil {
			_, err = c.Exec(ctx, "SELECT 1")
			c.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	proc.kill()
	return errors.New("postgres did not accept connections within 60s")
}

// restartImmediate is `pg_ctl restart -m immediate`, done as a stop and a
// start so that the new postmaster is again a child of the test (it dies
// with it): pg_ctl stop -m immediate (SIGQUIT: every server process exits
// at once, no checkpoint), then the postmaster is started on the same data
// dir and port and runs crash recovery.
func (p *pgServer) restartImmediate() error {
	out, err := p.run(60*time.Second, "pg_ctl", "stop", "-D", p.data, "-m", "immediate", "-w", "-t", "30")
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m immediate: %v: %s", err, out)
	}
	select { // an immediate stop exits non-zero: only the exit matters
	case <-p.proc.exited:
	case <-time.After(30 * time.Second):
		return errors.New("the postmaster did not exit within 30s of pg_ctl stop -m immediate")
	}
	return p.start()
}

func (p *pgServer) serverLog() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
