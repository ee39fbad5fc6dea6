package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/leakcheck"
)

// bin is the idemproxy binary built once by TestMain for the end-to-end
// tests, which run it as a real process.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idemproxy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "idemproxy")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building idemproxy:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		// leakcheck.VerifyTestMain, but with the temp dir removed afterwards:
		// the in-process tests of run() must leave no goroutine behind.
		if err := leakcheck.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "leakcheck:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// workDir, if set, is the working directory of the next proxy started.
var workDir string

// jsonUnmarshal is json.Unmarshal (e2e_test.go names a variable json).
var jsonUnmarshal = json.Unmarshal

// syncBuffer is a goroutine-safe bytes.Buffer for captured output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a running idemproxy process.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // http://host:port
	admin  string // http://host:port or ""
	log    *syncBuffer
	exited chan struct{}
	err    error
}

// startProxy runs the binary with args plus -listen 127.0.0.1:0 and JSON
// logs, and waits for its "listening" log line. The process is stopped with
// SIGTERM at cleanup, and must exit 0.
func startProxy(t *testing.T, args ...string) *proc {
	t.Helper()
	p, err := tryStartProxy(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop() })
	return p
}

func tryStartProxy(t *testing.T, args ...string) (*proc, error) {
	t.Helper()
	full := append([]string{"-listen", "127.0.0.1:0", "-log-format", "json", "-log-level", "debug"}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Env = cleanEnv()
	cmd.Dir = workDir
	dieWithParent(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &proc{t: t, cmd: cmd, log: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = p.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.log.Write(append(line, '\n'))
			var m map[string]any
			if json.Unmarshal(line, &m) == nil && m["msg"] == "listening" {
				select {
				case ready <- m:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	select {
	case m := <-ready:
		p.addr = "http://" + m["addr"].(string)
		if a, ok := m["admin"].(string); ok {
			p.admin = "http://" + a
		}
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("idemproxy exited before listening (%v):\n%s", p.err, p.log)
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-p.exited
		return nil, fmt.Errorf("idemproxy did not listen within 20s:\n%s", p.log)
	}
}

// cleanEnv is the environment of the proxies the tests run: the test's,
// without IDEMPROXY_* variables, and with the race detector's one-second
// sleep at exit (GORACE atexit_sleep_ms) turned off, so that stopping a
// proxy built with -race takes milliseconds.
func cleanEnv() []string {
	var env []string
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
			gorace = strings.TrimSpace(v + " " + gorace)
			continue
		}
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return append(env, "GORACE="+gorace)
}

// stop sends SIGTERM and checks a clean exit (status 0).
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			p.t.Errorf("idemproxy exited with %v after SIGTERM; log:\n%s", p.err, p.log)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("idemproxy did not exit within 20s of SIGTERM; log:\n%s", p.log)
	}
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// client is an HTTP client with its own transport, closed at cleanup so
// that no connection goroutine outlives the test.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 256, Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// resp is a read response.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string, body string) resp {
	t.Helper()
	r, err := doErr(c, method, url, hdr, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// defaultAuth is the credential doErr sends when the test gives none.
const defaultAuth = "Bearer e2e-client"

func doErr(c *http.Client, method, url string, hdr map[string]string, body string) (resp, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return resp{}, err
	}
	// Requests are credentialed (the proxy refuses anonymous callers by
	// default) unless hdr gives Authorization or Cookie itself; an empty
	// value there sends no such header (an anonymous request).
	_, auth := hdr["Authorization"]
	_, cookie := hdr["Cookie"]
	if !auth && !cookie {
		req.Header.Set("Authorization", defaultAuth)
	}
	for k, v := range hdr {
		switch {
		case k == "Host":
			req.Host = v // the scope covers it: restarts on another port keep it
			continue
		case v == "" && (k == "Authorization" || k == "Cookie"):
			continue
		}
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return resp{}, err
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}, nil
}

func problemCode(t *testing.T, r resp) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("status %d Content-Type %q, want problem+json; body %s", r.status, ct, r.body)
	}
	var p struct {
		Type, Title, Detail, Code string
		Status                    int
	}
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("problem body %q: %v", r.body, err)
	}
	if p.Status != r.status || p.Type == "" || p.Title == "" || p.Detail == "" || p.Code == "" {
		t.Fatalf("incomplete problem %+v for status %d", p, r.status)
	}
	return p.Code
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond every 5 ms for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
