package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/testenv"
)

// upstream is the API behind the proxy in the end-to-end tests. It counts
// executions per (path, Idempotency-Key) and records the fences it saw.
type upstream struct {
	srv     *httptest.Server
	mu      sync.Mutex
	calls   map[string]int
	fences  map[string][]string
	entered chan string   // /block: a request arrived (its key)
	release chan struct{} // /block and /stream: let it finish
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{calls: map[string]int{}, fences: map[string][]string{},
		entered: make(chan string, 64), release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		body := readAll(r)
		n := u.count(r)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Custom", "kept")
		w.Header().Set("Set-Cookie", "session=secret")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"n":%d,"body":%q,"fence":%q,"xff":%q,"host":%q,"at":"%s"}`, n, body, r.Header.Get(HeaderFence),
			r.Header.Get("X-Forwarded-For"), r.Host, time.Now().Format(time.RFC3339Nano))
	})
	mux.HandleFunc("/status/", func(w http.ResponseWriter, r *http.Request) {
		n := u.count(r)
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d execution %d", code, n)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		u.count(r)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/32)) // 1.5 MiB
	})
	slow := func(w http.ResponseWriter, r *http.Request) {
		readAll(r)
		n := u.count(r)
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "slow execution %d fence %s", n, r.Header.Get(HeaderFence))
	}
	mux.HandleFunc("/slow", slow)
	mux.HandleFunc("/slow/", slow)
	mux.HandleFunc("/off/", func(w http.ResponseWriter, r *http.Request) { u.count(r) })
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) {
		u.count(r)
		w.Header().Set("Content-Length", "100")
		w.Write([]byte("0123456789"))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the upstream dies mid-body
	})
	mux.HandleFunc("/opt", func(w http.ResponseWriter, r *http.Request) {
		u.count(r)
		fmt.Fprint(w, "optional")
	})
	block := func(w http.ResponseWriter, r *http.Request) {
		readAll(r) // so that net/http notices a client that went away
		n := u.count(r)
		u.entered <- r.Header.Get("Idempotency-Key")
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "blocked execution %d", n)
	}
	mux.HandleFunc("/block", block)
	mux.HandleFunc("/wait/block", block)
	stream := func(w http.ResponseWriter, r *http.Request) {
		u.count(r)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-u.release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, "second")
	}
	mux.HandleFunc("/stream", stream)
	mux.HandleFunc("/held-stream", stream)
	u.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		u.srv.CloseClientConnections()
		u.srv.Close()
	})
	return u
}

func readAll(r *http.Request) string {
	var b bytes.Buffer
	b.ReadFrom(r.Body)
	return b.String()
}

func (u *upstream) count(r *http.Request) int {
	k := r.URL.Path + " " + r.Header.Get("Idempotency-Key")
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls[k]++
	u.fences[k] = append(u.fences[k], r.Header.Get(HeaderFence))
	return u.calls[k]
}

// waitEntered waits until a request reached /block, failing the test after
// 10 s (for instance when the store is down and nothing reaches the
// upstream) instead of hanging.
func (u *upstream) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-u.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the upstream within 10s")
	}
}

// unblock lets one blocked /block or /stream request finish.
func (u *upstream) unblock(t *testing.T) {
	t.Helper()
	select {
	case u.release <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("no upstream request was waiting to be released")
	}
}

func (u *upstream) n(path, key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.calls[path+" "+key]
}

func (u *upstream) fence(path, key string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.fences[path+" "+key]...)
}

func newKey() string {
	var b [8]byte
	rand.Read(b[:])
	return "k-" + hex.EncodeToString(b[:])
}

// storeCase is one backend the end-to-end suite runs on.
type storeCase struct {
	name string
	url  func(t *testing.T) string
}

func storeCases() []storeCase {
	return []storeCase{
		{"memory", func(*testing.T) string { return "memory:" }},
		{"file", func(t *testing.T) string { return "file:" + filepath.Join(t.TempDir(), "idem.db") }},
		{"redis", func(t *testing.T) string { return "redis://" + testenv.Need(t, "IDEM_REDIS_ADDR") + "/0" }},
		{"redis-cluster", func(t *testing.T) string {
			return "redis+cluster://" + testenv.Need(t, "IDEM_REDIS_CLUSTER_ADDRS")
		}},
		{"postgres", func(t *testing.T) string { return testenv.Need(t, "IDEM_POSTGRES_DSN") }},
	}
}

// storeArgs are the flags for a proxy on store: -store, plus for a shared
// store (Redis, PostgreSQL) -scope-secret-file with a fresh secret, which
// such stores require.
func storeArgs(t *testing.T, store string) []string {
	args := []string{"-store", store}
	if !strings.HasPrefix(store, "memory:") && !strings.HasPrefix(store, "file:") {
		args = append(args, "-scope-secret-file", writeSecret(t))
	}
	return args
}

// writeSecret writes a scope secret file and returns its name.
func writeSecret(t *testing.T) string {
	return writeFile(t, "scope-secret", "e2e-scope-secret-"+newKey()+"\n")
}

const specConfig = `
routes:
  - name: timeout
    prefix: /slow/timeout
    upstream_timeout: 300ms
  - name: canonical
    prefix: /canon
    fingerprint: canonical-json
  - name: small
    prefix: /status/413
    max_body: 16
  - name: optional
    prefix: /opt
    key: optional
  - name: off
    prefix: /off
    key: "off"
  - name: wait
    prefix: /wait
    wait: 5s
  - name: stream
    prefix: /stream
    response: stream
`

// TestSpecRows runs every row of SPEC §3 through a real proxy process on
// every store.
func TestSpecRows(t *testing.T) {
	for _, sc := range storeCases() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			cfg := writeFile(t, "idemproxy.yaml", specConfig)
			p := startProxy(t, append(storeArgs(t, sc.url(t)), "-upstream", u.srv.URL, "-config", cfg, "-lease", "2s")...)
			specRows(t, p, u, sc.name == "memory")
		})
	}
}

func specRows(t *testing.T, p *proc, u *upstream, checkDate bool) {
	c := client(t)
	with := func(kv ...string) map[string]string {
		m := map[string]string{"Content-Type": "application/json"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}

	t.Run("first request executes once, fence sent upstream", func(t *testing.T) {
		k := newKey()
		r := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k, HeaderFence, "999", "X-Forwarded-For", "192.0.2.1"), `{"a":1}`)
		if r.status != 201 || r.header.Get("Idempotency-Replayed") != "" || r.header.Get("Set-Cookie") == "" {
			t.Fatalf("first: %d %v %s", r.status, r.header, r.body)
		}
		host := strings.TrimPrefix(p.addr, "http://")
		if !bytes.Contains(r.body, []byte(`"xff":"192.0.2.1, 127.0.0.1"`)) || !bytes.Contains(r.body, []byte(`"host":"`+host+`"`)) {
			t.Fatalf("upstream saw forwarding headers: %s", r.body)
		}
		f := u.fence("/ok", k)
		if len(f) != 1 || f[0] == "" || f[0] == "999" {
			t.Fatalf("upstream saw fences %q, want one proxy-set fence", f)
		}
		if _, err := strconv.ParseUint(f[0], 10, 64); err != nil {
			t.Fatalf("fence %q: %v", f[0], err)
		}

		t.Run("replay", func(t *testing.T) {
			if checkDate {
				time.Sleep(1100 * time.Millisecond) // a new Date second
			}
			r2 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k), `{"a":1}`)
			if r2.status != 201 || !bytes.Equal(r2.body, r.body) {
				t.Fatalf("replay: %d %s, want 201 %s", r2.status, r2.body, r.body)
			}
			for _, h := range []string{"Idempotency-Replayed", "Idempotent-Replayed"} {
				if r2.header.Get(h) != "true" {
					t.Fatalf("replay lacks %s: %v", h, r2.header)
				}
			}
			if r2.header.Get("X-Custom") != "kept" || r2.header.Get("Content-Type") != "application/json" {
				t.Fatalf("replay lost stored headers: %v", r2.header)
			}
			if r2.header.Get("Set-Cookie") != "" {
				t.Fatalf("replay carries Set-Cookie: %v", r2.header)
			}
			if r2.header.Get("Date") == "" || checkDate && r2.header.Get("Date") == r.header.Get("Date") {
				t.Fatalf("replay Date %q, first %q: want a fresh Date", r2.header.Get("Date"), r.header.Get("Date"))
			}
			if n := u.n("/ok", k); n != 1 {
				t.Fatalf("upstream ran %d times", n)
			}
		})
		t.Run("same key, different body: 422", func(t *testing.T) {
			r3 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k), `{"a":2}`)
			if r3.status != 422 || problemCode(t, r3) != "idempotency-key-reused" {
				t.Fatalf("mismatch: %d %s", r3.status, r3.body)
			}
			r4 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k), `{"a":1}`)
			if r4.status != 201 || !bytes.Equal(r4.body, r.body) {
				t.Fatalf("record poisoned by the mismatch: %d %s", r4.status, r4.body)
			}
			if n := u.n("/ok", k); n != 1 {
				t.Fatalf("upstream ran %d times", n)
			}
		})
		t.Run("same key, other scope: executes", func(t *testing.T) {
			r5 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k, "Authorization", "Bearer other"), `{"a":2}`)
			if r5.status != 201 || r5.header.Get("Idempotency-Replayed") != "" {
				t.Fatalf("other scope: %d %s", r5.status, r5.body)
			}
		})
	})

	t.Run("in flight: 409 with Retry-After", func(t *testing.T) {
		k := newKey()
		done := make(chan resp, 1)
		go func() {
			r, _ := doErr(c, "POST", p.addr+"/block", with("Idempotency-Key", k), "{}")
			done <- r
		}()
		u.waitEntered(t)
		r := do(t, c, "POST", p.addr+"/block", with("Idempotency-Key", k), "{}")
		ra, _ := strconv.Atoi(r.header.Get("Retry-After"))
		if r.status != 409 || problemCode(t, r) != "request-in-progress" || ra < 1 {
			t.Fatalf("duplicate: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.body)
		}
		u.unblock(t)
		if first := <-done; first.status != 201 {
			t.Fatalf("first: %d %s", first.status, first.body)
		}
		if r := do(t, c, "POST", p.addr+"/block", with("Idempotency-Key", k), "{}"); r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" {
			t.Fatalf("after: %d %v", r.status, r.header)
		}
		if n := u.n("/block", k); n != 1 {
			t.Fatalf("upstream ran %d times", n)
		}
	})

	t.Run("client disconnect: the upstream finishes and the record completes", func(t *testing.T) {
		k := newKey()
		ctx, cancel := context.WithCancel(context.Background())
		gone := make(chan struct{})
		go func() {
			defer close(gone)
			req, _ := http.NewRequestWithContext(ctx, "POST", p.addr+"/block", strings.NewReader("{}"))
			req.Header.Set("Idempotency-Key", k)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", defaultAuth)
			if res, err := c.Do(req); err == nil {
				res.Body.Close()
			}
		}()
		u.waitEntered(t)
		cancel() // the client gives up while the upstream works
		<-gone
		time.Sleep(50 * time.Millisecond)
		u.unblock(t) // the upstream finishes: its answer must be stored
		var r resp
		waitFor(t, 5*time.Second, "the record to complete", func() bool {
			r = do(t, c, "POST", p.addr+"/block", with("Idempotency-Key", k), "{}")
			return r.status != 409
		})
		if r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" || !strings.HasPrefix(string(r.body), "blocked execution 1") {
			t.Fatalf("retry after the client left: %d %v %s", r.status, r.header, r.body)
		}
		if n := u.n("/block", k); n != 1 {
			t.Fatalf("upstream ran %d times", n)
		}
	})

	t.Run("wait mode answers the duplicate with the replay", func(t *testing.T) {
		k := newKey()
		first, second := make(chan resp, 1), make(chan resp, 1)
		go func() {
			r, _ := doErr(c, "POST", p.addr+"/wait/block", with("Idempotency-Key", k), "{}")
			first <- r
		}()
		u.waitEntered(t)
		go func() {
			r, _ := doErr(c, "POST", p.addr+"/wait/block", with("Idempotency-Key", k), "{}")
			second <- r
		}()
		time.Sleep(150 * time.Millisecond) // the duplicate is waiting
		u.unblock(t)
		r1, r2 := <-first, <-second
		if r1.status != 201 || r2.status != 201 || r2.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r1.body, r2.body) {
			t.Fatalf("wait: first %d %s, second %d %v %s", r1.status, r1.body, r2.status, r2.header, r2.body)
		}
		if n := u.n("/wait/block", k); n != 1 {
			t.Fatalf("upstream ran %d times", n)
		}
	})

	t.Run("key missing and invalid: 400", func(t *testing.T) {
		cases := []struct {
			name string
			hdr  []string
			code string
		}{
			{"missing", nil, "idempotency-key-missing"},
			{"empty", []string{""}, "idempotency-key-invalid"},
			{"too long", []string{strings.Repeat("a", 256)}, "idempotency-key-invalid"},
			{"space", []string{"a b"}, "idempotency-key-invalid"},
			{"twice", []string{"a", "b"}, "idempotency-key-invalid"},
		}
		for _, tc := range cases {
			req, _ := http.NewRequest("POST", p.addr+"/ok", strings.NewReader("{}"))
			for _, v := range tc.hdr {
				req.Header.Add("Idempotency-Key", v)
			}
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			b.ReadFrom(res.Body)
			res.Body.Close()
			r := resp{res.StatusCode, res.Header, b.Bytes()}
			if r.status != 400 || problemCode(t, r) != tc.code {
				t.Errorf("%s: %d %s", tc.name, r.status, r.body)
			}
		}
		if n := u.n("/ok", ""); n != 0 {
			t.Fatalf("upstream ran %d times for keyless requests", n)
		}
		for i := 0; i < 2; i++ {
			if r := do(t, c, "POST", p.addr+"/opt", nil, ""); r.status != 200 {
				t.Fatalf("optional route without key: %d", r.status)
			}
		}
		if n := u.n("/opt", ""); n != 2 {
			t.Fatalf("optional route without key ran %d times, want 2", n)
		}
	})

	t.Run("sf-string key equals bare key", func(t *testing.T) {
		k := newKey()
		r1 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", k), "{}")
		r2 := do(t, c, "POST", p.addr+"/ok", with("Idempotency-Key", `"`+k+`"`), "{}")
		if r2.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r1.body, r2.body) {
			t.Fatalf("quoted key did not replay: %d %v", r2.status, r2.header)
		}
	})

	t.Run("unprotected methods pass through, even with a key", func(t *testing.T) {
		k := newKey()
		for i := 0; i < 2; i++ {
			for _, m := range []string{"GET", "PUT", "DELETE"} {
				do(t, c, m, p.addr+"/status/200", with("Idempotency-Key", k), "")
			}
		}
		if n := u.n("/status/200", k); n != 6 {
			t.Fatalf("upstream ran %d times, want 6", n)
		}
		for i := 0; i < 2; i++ {
			do(t, c, "POST", p.addr+"/off/x", with("Idempotency-Key", k), "")
		}
		if n := u.n("/off/x", k); n != 2 {
			t.Fatalf("key: off route ran %d times, want 2", n)
		}
	})

	t.Run("stored and released statuses", func(t *testing.T) {
		cases := []struct {
			status int
			runs   int
		}{
			{200, 1}, {404, 1}, {400, 1}, {409, 1}, {429, 2}, {500, 2}, {503, 2},
		}
		for _, tc := range cases {
			k := newKey()
			path := fmt.Sprintf("/status/%d", tc.status)
			var bodies []string
			for i := 0; i < 2; i++ {
				r := do(t, c, "PATCH", p.addr+path, with("Idempotency-Key", k), "{}")
				if r.status != tc.status {
					t.Fatalf("%s: status %d", path, r.status)
				}
				bodies = append(bodies, string(r.body))
			}
			if n := u.n(path, k); n != tc.runs {
				t.Errorf("%s: upstream ran %d times, want %d (bodies %q)", path, n, tc.runs, bodies)
			}
		}
	})

	t.Run("response over the stored-result cap", func(t *testing.T) {
		k := newKey()
		r1 := do(t, c, "POST", p.addr+"/big", with("Idempotency-Key", k), "")
		if r1.status != 200 || len(r1.body) != 3<<20/32*16 {
			t.Fatalf("first: %d, %d bytes", r1.status, len(r1.body))
		}
		r2 := do(t, c, "POST", p.addr+"/big", with("Idempotency-Key", k), "")
		if r2.status != 200 || len(r2.body) != 0 || r2.header.Get("Idempotency-Replay") != "omitted" || r2.header.Get("Idempotency-Replayed") != "true" {
			t.Fatalf("replay: %d, %d bytes, %v", r2.status, len(r2.body), r2.header)
		}
		if n := u.n("/big", k); n != 1 {
			t.Fatalf("upstream ran %d times", n)
		}
	})

	t.Run("upstream dies mid-body: client connection aborted, record released", func(t *testing.T) {
		k := newKey()
		// Fresh connections: Go's client would itself resend a request
		// with an Idempotency-Key whose reused connection closed.
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 1; i <= 2; i++ {
			r, err := doErr(c, "POST", p.addr+"/cut", with("Idempotency-Key", k), "{}")
			if err == nil {
				t.Fatalf("attempt %d: a cut response arrived whole: %d %q", i, r.status, r.body)
			}
			waitFor(t, 5*time.Second, "the release", func() bool { return u.n("/cut", k) == i })
		}
		// Both attempts executed: the first one's record was released.
		var last resp
		waitFor(t, 5*time.Second, "a third execution", func() bool {
			last, _ = doErr(c, "POST", p.addr+"/cut", with("Idempotency-Key", k), "{}")
			return u.n("/cut", k) == 3
		})
		if last.header.Get("Idempotency-Replayed") != "" {
			t.Fatalf("a cut response was replayed: %v", last.header)
		}
	})

	t.Run("request body over the fingerprint limit: 413", func(t *testing.T) {
		k := newKey()
		r := do(t, c, "POST", p.addr+"/status/413", with("Idempotency-Key", k), strings.Repeat("x", 17))
		if r.status != 413 || problemCode(t, r) != "request-too-large" || u.n("/status/413", k) != 0 {
			t.Fatalf("413: %d %s", r.status, r.body)
		}
	})

	t.Run("canonical JSON fingerprint", func(t *testing.T) {
		k := newKey()
		r1 := do(t, c, "POST", p.addr+"/canon", with("Idempotency-Key", k), `{"a":1,"b":[1,2]}`)
		r2 := do(t, c, "POST", p.addr+"/canon", with("Idempotency-Key", k), `{ "b": [1, 2], "a": 1.0 }`)
		if r2.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r1.body, r2.body) {
			t.Fatalf("canonical replay: %d %v", r2.status, r2.header)
		}
		r3 := do(t, c, "POST", p.addr+"/canon", with("Idempotency-Key", k), `{"a":2,"b":[1,2]}`)
		if r3.status != 422 {
			t.Fatalf("canonical mismatch: %d", r3.status)
		}
	})

	t.Run("upstream timeout: 504, released", func(t *testing.T) {
		k := newKey()
		for i := 1; i <= 2; i++ {
			r := do(t, c, "POST", p.addr+"/slow/timeout?ms=2000", with("Idempotency-Key", k), "{}")
			if r.status != 504 || problemCode(t, r) != "upstream-timeout" {
				t.Fatalf("attempt %d: %d %s", i, r.status, r.body)
			}
			if n := u.n("/slow/timeout", k); n != i {
				t.Fatalf("upstream ran %d times after attempt %d", n, i)
			}
		}
	})

	t.Run("a flushed response is held until its record is stored", func(t *testing.T) {
		k := newKey()
		type result struct {
			r   resp
			err error
		}
		got := make(chan result, 1)
		go func() {
			r, err := doErr(c, "POST", p.addr+"/held-stream", map[string]string{"Idempotency-Key": k}, "")
			got <- result{r, err}
		}()
		waitFor(t, 5*time.Second, "the upstream to start", func() bool { return u.n("/held-stream", k) == 1 })
		select {
		case res := <-got:
			t.Fatalf("an answer arrived before the upstream finished: %d %q %v", res.r.status, res.r.body, res.err)
		case <-time.After(200 * time.Millisecond):
		}
		u.unblock(t)
		res := <-got
		if res.err != nil || res.r.status != 200 || string(res.r.body) != "first\nsecond\n" {
			t.Fatalf("answer %d %q %v", res.r.status, res.r.body, res.err)
		}
		// Acknowledged, hence replayable at once.
		r2 := do(t, c, "POST", p.addr+"/held-stream", map[string]string{"Idempotency-Key": k}, "")
		if r2.status != 200 || string(r2.body) != "first\nsecond\n" || r2.header.Get("Idempotency-Replayed") != "true" {
			t.Fatalf("replay: %d %q", r2.status, r2.body)
		}
	})

	t.Run("streaming route (response: stream) passes through unbuffered", func(t *testing.T) {
		k := newKey()
		req, _ := http.NewRequest("POST", p.addr+"/stream", nil)
		req.Header.Set("Idempotency-Key", k)
		req.Header.Set("Authorization", defaultAuth)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		br := bufio.NewReader(res.Body)
		line, err := br.ReadString('\n') // arrives while the upstream still blocks
		if err != nil || line != "first\n" {
			t.Fatalf("first chunk %q, %v", line, err)
		}
		u.unblock(t)
		rest, _ := br.ReadString(0)
		if rest != "second\n" {
			t.Fatalf("rest %q", rest)
		}
		res.Body.Close()
		var r2 resp
		waitFor(t, 5*time.Second, "the stream's record to complete", func() bool {
			r2 = do(t, c, "POST", p.addr+"/stream", map[string]string{"Idempotency-Key": k}, "")
			return r2.status != 409
		})
		if string(r2.body) != "first\nsecond\n" || r2.header.Get("Idempotency-Replayed") != "true" {
			t.Fatalf("stream replay: %d %q", r2.status, r2.body)
		}
	})

	t.Run("200 concurrent same-key requests execute once", func(t *testing.T) {
		k := newKey()
		var wg sync.WaitGroup
		var ok, conflict, other atomic.Int32
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := doErr(c, "POST", p.addr+"/slow?ms=150", with("Idempotency-Key", k), "{}")
				switch {
				case err != nil:
					other.Add(1)
				case r.status == 201:
					ok.Add(1)
				case r.status == 409:
					conflict.Add(1)
				default:
					other.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := u.n("/slow", k); n != 1 {
			t.Fatalf("upstream ran %d times; fences %v; log:\n%s", n, u.fence("/slow", k), grepLines(p.log.String(), k))
		}
		if ok.Load() < 1 || other.Load() != 0 || ok.Load()+conflict.Load() != 200 {
			t.Fatalf("201: %d, 409: %d, other: %d", ok.Load(), conflict.Load(), other.Load())
		}
	})
}

// TestUpstreamUnreachable: 502 problem, record released so a retry executes.
func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := startProxy(t, "-upstream", "http://"+addr, "-store", "memory:", "-admin", "127.0.0.1:0", "-admin-token", "tok")
	c := client(t)
	k := newKey()
	for i := 0; i < 2; i++ {
		r := do(t, c, "POST", p.addr+"/x", map[string]string{"Idempotency-Key": k}, "{}")
		if r.status != 502 || problemCode(t, r) != "upstream-unavailable" || r.header.Get("Idempotency-Replayed") != "" {
			t.Fatalf("attempt %d: %d %v %s", i, r.status, r.header, r.body)
		}
	}
	r := do(t, c, "GET", p.admin+"/keys?key="+k+scopeQuery(p), map[string]string{"Authorization": "Bearer tok"}, "")
	if r.status != 404 {
		t.Fatalf("record after 502: %d %s", r.status, r.body)
	}
	m := string(do(t, c, "GET", p.admin+"/metrics", nil, "").body)
	if !strings.Contains(m, `idemproxy_upstream_errors_total{kind="unreachable",route="default"} 2`) {
		t.Fatalf("upstream errors not counted:\n%s", grepLines(m, "upstream_errors"))
	}
}

// TestStoreUnavailable: fail closed (503, upstream not called) and, on a
// fail: open route, pass through.
func TestStoreUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	u := newUpstream(t)
	cfg := writeFile(t, "c.yaml", "routes: [{prefix: /status/201, fail: open}]\n")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "redis://"+dead+"/0?dial_timeout=200ms&max_retries=-1", "-config", cfg,
		"-admin", "127.0.0.1:0", "-scope-secret-file", writeSecret(t))
	c := client(t)
	k := newKey()
	r := do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k}, "{}")
	if r.status != 503 || problemCode(t, r) != "store-unavailable" || r.header.Get("Retry-After") == "" {
		t.Fatalf("fail closed: %d %v %s", r.status, r.header, r.body)
	}
	if n := u.n("/ok", k); n != 0 {
		t.Fatalf("upstream ran %d times with the store down", n)
	}
	if r := do(t, c, "POST", p.addr+"/status/201", map[string]string{"Idempotency-Key": k}, "{}"); r.status != 201 {
		t.Fatalf("fail open: %d %s", r.status, r.body)
	}
	if r := do(t, c, "GET", p.admin+"/readyz", nil, ""); r.status != 503 {
		t.Fatalf("readyz with the store down: %d %s", r.status, r.body)
	}
	if r := do(t, c, "GET", p.admin+"/healthz", nil, ""); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
}

// TestSlowUpstreamRenewsLease: an upstream that takes 3× the lease keeps its
// key (renewal): the duplicate gets 409, no takeover, one execution.
func TestSlowUpstreamRenewsLease(t *testing.T) {
	for _, sc := range storeCases() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			p := startProxy(t, append(storeArgs(t, sc.url(t)), "-upstream", u.srv.URL, "-lease", "600ms", "-admin", "127.0.0.1:0")...)
			c := client(t)
			k := newKey()
			done := make(chan resp, 1)
			go func() {
				r, _ := doErr(c, "POST", p.addr+"/slow?ms=1800", map[string]string{"Idempotency-Key": k}, "{}")
				done <- r
			}()
			waitFor(t, 5*time.Second, "the upstream to start", func() bool { return u.n("/slow", k) == 1 })
			start := time.Now()
			for _, at := range []time.Duration{800 * time.Millisecond, 1400 * time.Millisecond} {
				time.Sleep(time.Until(start.Add(at)))
				r := do(t, c, "POST", p.addr+"/slow?ms=1800", map[string]string{"Idempotency-Key": k}, "{}")
				if r.status != 409 {
					t.Fatalf("duplicate after %v: %d %s (lease not renewed?)", at, r.status, r.body)
				}
			}
			first := <-done
			if first.status != 201 {
				t.Fatalf("first: %d %s", first.status, first.body)
			}
			r := do(t, c, "POST", p.addr+"/slow?ms=1800", map[string]string{"Idempotency-Key": k}, "{}")
			if r.status != 201 || !bytes.Equal(r.body, first.body) {
				t.Fatalf("replay: %d %s", r.status, r.body)
			}
			if n := u.n("/slow", k); n != 1 {
				t.Fatalf("upstream ran %d times", n)
			}
			m := string(do(t, c, "GET", p.admin+"/metrics", nil, "").body)
			if !strings.Contains(m, `idemproxy_events_total{kind="takeover",route="default"} 0`) {
				t.Fatalf("takeover counted:\n%s", grepLines(m, "idemproxy_events_total"))
			}
			if !regexp.MustCompile(`idemproxy_store_duration_seconds_count\{op="extend",result="ok"\} [1-9]`).MatchString(m) {
				t.Fatalf("no lease extension recorded:\n%s", grepLines(m, "extend"))
			}
		})
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestKill9Restart: kill -9 the proxy while a request is in flight, restart
// it on the same file: store. A retry executes exactly once more after the
// lease expires; a key completed before the kill replays byte for byte.
func TestKill9Restart(t *testing.T) {
	u := newUpstream(t)
	store := "file:" + filepath.Join(t.TempDir(), "idem.db")
	args := []string{"-upstream", u.srv.URL, "-store", store, "-lease", "1s"}
	p1, err := tryStartProxy(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	c := client(t)
	done := "k-done-" + newKey()
	before := do(t, c, "POST", p1.addr+"/ok", map[string]string{"Idempotency-Key": done, "Host": "api.test"}, `{"x":1}`)
	if before.status != 201 {
		t.Fatalf("completed key: %d", before.status)
	}
	k := newKey()
	go doErr(c, "POST", p1.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
	u.waitEntered(t)
	killedAt := time.Now()
	p1.kill9()

	p2 := startProxy(t, args...)
	r := do(t, c, "POST", p2.addr+"/ok", map[string]string{"Idempotency-Key": done, "Host": "api.test"}, `{"x":1}`)
	if r.status != 201 || !bytes.Equal(r.body, before.body) || r.header.Get("Idempotency-Replayed") != "true" {
		t.Fatalf("replay after restart: %d %s, want %s", r.status, r.body, before.body)
	}
	// Within the lease the orphaned record still holds the key.
	if time.Since(killedAt) < 700*time.Millisecond {
		r := do(t, c, "POST", p2.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
		if r.status != 409 {
			t.Fatalf("retry within the lease: %d %s", r.status, r.body)
		}
	}
	time.Sleep(time.Until(killedAt.Add(1100 * time.Millisecond)))
	res := make(chan resp, 1)
	errc := make(chan error, 1)
	go func() {
		r, err := doErr(c, "POST", p2.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
		res <- r
		errc <- err
	}()
	u.waitEntered(t)
	u.unblock(t)
	if r := <-res; r.status != 201 {
		t.Fatalf("retry after the lease: %d %s %v\n%s", r.status, r.body, <-errc, p2.log)
	}
	if n := u.n("/block", k); n != 2 {
		t.Fatalf("upstream ran %d times, want 2 (once before the kill, once after)", n)
	}
	f := u.fence("/block", k)
	a, _ := strconv.ParseUint(f[0], 10, 64)
	b, _ := strconv.ParseUint(f[1], 10, 64)
	if b != a+1 {
		t.Fatalf("fences %v: the takeover must carry fence+1", f)
	}
	r = do(t, c, "POST", p2.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
	if r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" {
		t.Fatalf("replay of the retried key: %d", r.status)
	}
	if !strings.Contains(p2.log.String(), `"takeover":true`) {
		t.Fatalf("takeover not logged:\n%s", p2.log)
	}
}

// TestGracefulShutdown: SIGTERM while a request is in flight lets it finish
// and complete its record, then exits 0; a restart on the same file replays.
func TestGracefulShutdown(t *testing.T) {
	u := newUpstream(t)
	store := "file:" + filepath.Join(t.TempDir(), "idem.db")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", store)
	c := client(t)
	k := newKey()
	res := make(chan resp, 1)
	go func() {
		r, _ := doErr(c, "POST", p.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
		res <- r
	}()
	u.waitEntered(t)
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "shutdown to start", func() bool { return strings.Contains(p.log.String(), "shutting down") })
	if _, err := doErr(c, "POST", p.addr+"/ok", nil, ""); err == nil {
		t.Fatal("the proxy still accepts new requests while shutting down")
	}
	u.unblock(t)
	first := <-res
	if first.status != 201 {
		t.Fatalf("in-flight request: %d %s", first.status, first.body)
	}
	<-p.exited
	if p.err != nil {
		t.Fatalf("exit: %v\n%s", p.err, p.log)
	}
	p2 := startProxy(t, "-upstream", u.srv.URL, "-store", store)
	r := do(t, c, "POST", p2.addr+"/block", map[string]string{"Idempotency-Key": k, "Host": "api.test"}, "{}")
	if r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r.body, first.body) {
		t.Fatalf("after restart: %d %s", r.status, r.body)
	}
}

// scopeQuery is the /keys query that derives the scope of a request sent to
// p by do with the given extra "Name:value" headers: the Host, do's default
// credential and the headers.
func scopeQuery(p *proc, headers ...string) string {
	q := "&host=" + url.QueryEscape(strings.TrimPrefix(p.addr, "http://")) + "&header=" + url.QueryEscape("Authorization:"+defaultAuth)
	for _, h := range headers {
		q += "&header=" + url.QueryEscape(h)
	}
	return q
}

// TestAdmin covers /metrics, /readyz and the token-protected /keys.
func TestAdmin(t *testing.T) {
	u := newUpstream(t)
	cfg := writeFile(t, "c.yaml", "default: {scope_headers: [X-Tenant]}\n")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-admin", "127.0.0.1:0", "-admin-token", "s3cret", "-config", cfg)
	c := client(t)
	k := newKey()
	first := do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k, "X-Tenant": "acme"}, `{"a":1}`)
	do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k, "X-Tenant": "acme"}, `{"a":1}`)
	do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k, "X-Tenant": "acme"}, `{"a":2}`)

	if r := do(t, c, "GET", p.admin+"/readyz", nil, ""); r.status != 200 {
		t.Fatalf("readyz: %d %s", r.status, r.body)
	}
	m := string(do(t, c, "GET", p.admin+"/metrics", nil, "").body)
	for _, want := range []string{
		`idemproxy_requests_total{outcome="executed",route="default"} 1`,
		`idemproxy_requests_total{outcome="replayed",route="default"} 1`,
		`idemproxy_requests_total{outcome="mismatch",route="default"} 1`,
		`idemproxy_events_total{kind="executed",route="default"} 1`,
		`idemproxy_inflight_executions 0`,
		`idemproxy_store_duration_seconds_count{op="begin",result="ok"} 3`,
		`idemproxy_store_duration_seconds_count{op="complete",result="ok"} 1`,
		`idemproxy_upstream_duration_seconds_count{route="default"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	auth := map[string]string{"Authorization": "Bearer s3cret"}
	if r := do(t, c, "GET", p.admin+"/keys?key="+k+scopeQuery(p, "X-Tenant:acme"), nil, ""); r.status != 401 {
		t.Fatalf("keys without token: %d", r.status)
	}
	if r := do(t, c, "GET", p.admin+"/keys?key="+k+scopeQuery(p, "X-Tenant:acme"), map[string]string{"Authorization": "Bearer wrong"}, ""); r.status != 401 {
		t.Fatalf("keys with a wrong token: %d", r.status)
	}
	r := do(t, c, "GET", p.admin+"/keys?key="+k+scopeQuery(p, "X-Tenant:acme"), auth, "")
	var info keyInfo
	if err := jsonUnmarshal(r.body, &info); err != nil || r.status != 200 {
		t.Fatalf("keys: %d %s %v", r.status, r.body, err)
	}
	if info.State != "completed" || info.StoredStatus != 201 || info.Fence == 0 || info.Body != nil || info.BodyBytes == nil || *info.BodyBytes != len(first.body) {
		t.Fatalf("keys info: %s", r.body)
	}
	r = do(t, c, "GET", p.admin+"/keys?key="+k+"&scope="+info.Scope+"&body=1", auth, "")
	if jsonUnmarshal(r.body, &info) != nil || info.Body == nil || *info.Body != string(first.body) {
		t.Fatalf("keys with body: %s", r.body)
	}
	if r := do(t, c, "GET", p.admin+"/keys?key="+k+scopeQuery(p, "X-Tenant:other"), auth, ""); r.status != 404 {
		t.Fatalf("other tenant: %d %s", r.status, r.body)
	}
	if r := do(t, c, "GET", p.admin+"/keys?key=", auth, ""); r.status != 400 {
		t.Fatalf("empty key: %d", r.status)
	}

	// Without -admin-token the endpoint does not exist.
	p2 := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-admin", "127.0.0.1:0")
	if r := do(t, c, "GET", p2.admin+"/keys?key="+k, auth, ""); r.status != 404 {
		t.Fatalf("keys without -admin-token: %d", r.status)
	}
}

// TestBadFlagsExit2: invalid settings exit 2 with a clear message before
// listening.
func TestBadFlagsExit2(t *testing.T) {
	cases := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"-upstream", "http://127.0.0.1:1", "-lease", "48h"}, nil, "-lease: must be > 0 and < ttl"},
		{[]string{"-upstream", "http://127.0.0.1:1", "-store", "mongodb://x"}, nil, `-store: unknown store scheme "mongodb"`},
		{nil, []string{"IDEMPROXY_UPSTREAM=http://127.0.0.1:1", "IDEMPROXY_TTL=soon"}, `IDEMPROXY_TTL="soon"`},
		{[]string{"-upstream", "http://127.0.0.1:1", "-config", "/nonexistent/c.yaml"}, nil, "config: open /nonexistent/c.yaml"},
	}
	for _, tc := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, bin, tc.args...)
		cmd.Env = append(cleanEnv(), tc.env...)
		out, err := cmd.CombinedOutput()
		cancel()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v %v: err %v, want exit 2; output %s", tc.args, tc.env, err, out)
		}
		if !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "listening") {
			t.Errorf("%v %v: output %q, want %q", tc.args, tc.env, out, tc.want)
		}
	}
}

// TestDefaultStoreIsFile: without -store the records go to file:idem.db in
// the working directory.
func TestDefaultStoreIsFile(t *testing.T) {
	dir := t.TempDir()
	u := newUpstream(t)
	workDir = dir
	p, err := tryStartProxy(t, "-upstream", u.srv.URL)
	workDir = ""
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	if !strings.Contains(p.log.String(), `"store":"file:idem.db"`) {
		t.Fatalf("log: %s", p.log)
	}
	if _, err := os.Stat(filepath.Join(dir, "idem.db")); err != nil {
		t.Fatalf("default store file: %v", err)
	}
}

// TestDemo runs -demo: it prints the curl commands, and the demo API shows
// a replay, a 409 and a 422 through the proxy.
func TestDemo(t *testing.T) {
	p := startProxy(t, "-demo", "-shutdown-timeout", "200ms")
	waitFor(t, 5*time.Second, "the curl commands", func() bool { return strings.Contains(p.log.String(), "curl -si -X POST "+p.addr) })
	c := client(t)
	if !strings.Contains(p.log.String(), "-H 'Authorization: Bearer demo-alice' -H 'Idempotency-Key: demo-") {
		t.Fatalf("the demo's commands send no credentials:\n%s", p.log)
	}
	h := map[string]string{"Idempotency-Key": newKey(), "Content-Type": "application/json", "Authorization": "Bearer demo-alice"}
	r1 := do(t, c, "POST", p.addr+"/v1/charges", h, `{"amount":1000}`)
	r2 := do(t, c, "POST", p.addr+"/v1/charges", h, `{"amount":1000}`)
	if r1.status != 201 || r2.status != 201 || r2.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r1.body, r2.body) {
		t.Fatalf("replay: %d %s / %d %s", r1.status, r1.body, r2.status, r2.body)
	}
	if r := do(t, c, "POST", p.addr+"/v1/charges", h, `{"amount":2000}`); r.status != 422 {
		t.Fatalf("mismatch: %d", r.status)
	}
	if r := do(t, c, "GET", p.addr+"/v1/stats", nil, ""); string(r.body) != "{\"charges_made\":1}\n" {
		t.Fatalf("stats: %s", r.body)
	}
	if r := do(t, c, "POST", p.addr+"/v1/charges", map[string]string{"Idempotency-Key": h["Idempotency-Key"], "Content-Type": "application/json", "Authorization": "Bearer demo-bob"}, `{"amount":1000}`); r.status != 201 || r.header.Get("Idempotency-Replayed") != "" {
		t.Fatalf("another caller: %d %s", r.status, r.body)
	}
	if r := do(t, c, "POST", p.addr+"/v1/charges", map[string]string{"Idempotency-Key": h["Idempotency-Key"], "Authorization": ""}, `{"amount":1000}`); r.status != 400 || problemCode(t, r) != "credentials-required" {
		t.Fatalf("anonymous: %d %s", r.status, r.body)
	}
	slow := map[string]string{"Idempotency-Key": newKey(), "Content-Type": "application/json", "Authorization": "Bearer demo-alice"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, "POST", p.addr+"/v1/slow-charges", strings.NewReader(`{"amount":5}`))
		for k, v := range slow {
			req.Header.Set(k, v)
		}
		if res, err := c.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	time.Sleep(300 * time.Millisecond) // the first is at the upstream
	r := do(t, c, "POST", p.addr+"/v1/slow-charges", slow, `{"amount":5}`)
	if r.status != 409 {
		t.Fatalf("duplicate of the slow charge: %d %s", r.status, r.body)
	}
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("409 without Retry-After: %v", r.header)
	}
	cancel() // the client gives up; the proxy's shutdown (200ms bound) aborts the upstream call
	<-done
}
