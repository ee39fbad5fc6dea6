// Command load measures idemproxy's throughput against a direct upstream and
// a plain net/http/httputil.ReverseProxy, on loopback only, in one bounded
// run, and prints a Markdown table with the ratios (docs/bench/idemproxy.md).
//
//	go run ./bench/load                       # memory and file stores
//	IDEM_REDIS_ADDR=127.0.0.1:6379 go run ./bench/load   # adds Redis
//	IDEM_POSTGRES_DSN=postgres://…@127.0.0.1/db go run ./bench/load   # adds PostgreSQL
//	go run ./bench/load -duration 5s -runs 5 -concurrency 32
//
// Two baselines run beside idemproxy: httputil.ReverseProxy with the same
// transport settings ("plain ReverseProxy", the reference of the ratios),
// and the same with a BufferPool ("+ BufferPool"), as idemproxy has since
// its profile showed the 32 KiB copy buffer per request.
//
// Every server runs as its own process (the upstream and the plain proxy
// are this program re-executed with -role; idemproxy is built from
// ./cmd/idemproxy unless -proxy-bin is given), so that the three set-ups pay
// the same process and loopback costs. The load generator keeps
// -concurrency requests in flight over keep-alive connections for
// -duration per scenario, after a warm-up, and repeats each scenario -runs
// times; the table reports the median.
//
// With -base-bin, a second idemproxy binary (for example one built from an
// older commit) runs the same idemproxy scenarios in the same run, each
// scenario of the base binary next to the same scenario of the current one
// (which of the two goes first alternates from run to run), so that the
// noise of a shared machine hits both alike; a second table compares them:
//
//	go run ./bench/load -base-bin /tmp/idemproxy-before -base-label before -label after
//
// Besides the rates and latencies, the table gives each server process's
// CPU time (user + system, from /proc) and heap allocations (idemproxy's
// go_memstats_mallocs_total on its -admin /metrics; runtime.MemStats on the
// benchmark's own servers) per successful request, medians over runs.
//
// Scenarios: "unique" sends a new Idempotency-Key on every request (every
// request is a first execution that reaches the upstream and completes a
// record); "replay" first executes -keys keys and then sends only retries of
// them (every request is answered from the store).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

type config struct {
	role        string
	listen      string
	upstream    string
	proxyBin    string
	baseBin     string
	baseLabel   string
	label       string
	stores      string
	redisAddr   string
	postgres    string
	drive       string
	replay      bool
	duration    time.Duration
	warmup      time.Duration
	runs        int
	concurrency int
	keys        int
	lib         string
	libClient   string
	libPrefix   string
}

func run(args []string, stdout io.Writer) error {
	var c config
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.StringVar(&c.role, "role", "", "internal: run as `upstream`, plain or plain-pooled (a server for the benchmark)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:0", "internal: listen address for -role")
	fs.StringVar(&c.upstream, "upstream", "", "internal: upstream URL for -role plain")
	fs.StringVar(&c.proxyBin, "proxy-bin", "", "idemproxy binary (default: go build ./cmd/idemproxy into a temp dir)")
	fs.StringVar(&c.baseBin, "base-bin", "", "second idemproxy `binary` (e.g. built from an older commit) measured side by side with the current one, run by run")
	fs.StringVar(&c.baseLabel, "base-label", "before", "`label` of the -base-bin binary in the tables")
	fs.StringVar(&c.label, "label", "after", "`label` of the current binary in the tables when -base-bin is given")
	fs.StringVar(&c.stores, "stores", "memory,file,redis,postgres", "idemproxy stores to measure (redis needs IDEM_REDIS_ADDR or -redis, postgres IDEM_POSTGRES_DSN or -postgres)")
	fs.StringVar(&c.redisAddr, "redis", os.Getenv("IDEM_REDIS_ADDR"), "Redis host:port for the redis store (loopback)")
	fs.StringVar(&c.postgres, "postgres", os.Getenv("IDEM_POSTGRES_DSN"), "PostgreSQL URL for the postgres store (loopback host)")
	fs.DurationVar(&c.duration, "duration", 3*time.Second, "measured time per scenario run")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each scenario run")
	fs.IntVar(&c.runs, "runs", 3, "runs per scenario; the median is reported")
	fs.IntVar(&c.concurrency, "concurrency", 32, "requests in flight")
	fs.IntVar(&c.keys, "keys", 1000, "keys executed before a replay scenario")
	fs.StringVar(&c.drive, "drive", "", "only drive the server at `URL` (e.g. an idemproxy under a profiler) with the load of one scenario for -duration, and print its rate")
	fs.BoolVar(&c.replay, "replay", false, "with -drive: the replay scenario instead of unique keys")
	fs.StringVar(&c.lib, "lib", strings.Join(libClients, ","), "Redis clients of the in-process library rows (idemhttp + redisstore in the upstream's own server; needs -redis): "+strings.Join(libClients, ", ")+" (floor: not a store, two plain SETs, see floor.go; memory: the middleware on memstore, no Redis); empty for none")
	fs.StringVar(&c.libClient, "lib-client", "", "internal: the Redis client of -role lib")
	fs.StringVar(&c.libPrefix, "lib-prefix", "", "internal: the redisstore key prefix of -role lib (default redisstore's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch c.role {
	case "upstream":
		return serveRole(c.listen, withMallocs(upstreamHandler()))
	case "plain", "plain-pooled":
		u, err := url.Parse(c.upstream)
		if err != nil {
			return err
		}
		rp := plainProxy(u)
		if c.role == "plain-pooled" {
			rp.BufferPool = &bufferPool{}
		}
		return serveRole(c.listen, withMallocs(rp))
	case "lib":
		h, closeFn, err := libHandler(c.libClient, c.redisAddr, c.libPrefix)
		if err != nil {
			return err
		}
		defer closeFn()
		return serveRole(c.listen, withMallocs(h))
	case "":
	default:
		return fmt.Errorf("unknown -role %q", c.role)
	}
	if c.duration <= 0 || c.duration > time.Minute || c.runs < 1 || c.runs > 10 || c.concurrency < 1 || c.concurrency > 1024 {
		return errors.New("bounds: 0 < -duration <= 1m, 1 <= -runs <= 10, 1 <= -concurrency <= 1024")
	}
	if c.drive != "" {
		return drive(c, stdout)
	}
	if c.baseBin != "" && (c.baseLabel == "" || c.label == "" || c.baseLabel == c.label) {
		return errors.New("-base-label and -label must be non-empty and differ")
	}
	return bench(c, stdout)
}

// upstreamHandler answers every request 201 with a small JSON body, like a
// fast payments API.
func upstreamHandler() http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		id := n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"ch_%012d","object":"charge","amount":1000,"currency":"eur","status":"succeeded"}`, id)
	})
}

// bufferPool is the httputil.BufferPool of the "plain-pooled" baseline: the
// same 32 KiB buffers ReverseProxy would allocate per request, reused
// (idemproxy lends its ReverseProxy such a pool).
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == 32<<10 {
		buf = buf[:cap(buf)]
		b.p.Put(&buf)
	}
}

// mallocsPath answers, on the benchmark's own servers, the number of heap
// allocations the process made so far (runtime.MemStats.Mallocs), which
// idemproxy reports as go_memstats_mallocs_total on its -admin /metrics.
const mallocsPath = "/__bench/mallocs"

// withMallocs serves mallocsPath and passes every other request to h.
func withMallocs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != mallocsPath {
			h.ServeHTTP(w, r)
			return
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Fprintf(w, "go_memstats_mallocs_total %d\n", m.Mallocs)
	})
}

// mallocs reads go_memstats_mallocs_total from a Prometheus text page at
// url (idemproxy's /metrics, or mallocsPath on the benchmark's servers).
func mallocs(c *http.Client, url string) (float64, bool) {
	if url == "" {
		return 0, false
	}
	res, err := c.Get(url)
	if err != nil {
		return 0, false
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_mallocs_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// plainProxy is the baseline: httputil.ReverseProxy with the same transport
// settings and flush behaviour as idemproxy.
func plainProxy(u *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
		},
		FlushInterval: -1,
	}
}

// serveRole serves h, prints "ADDR host:port" on stdout, and exits on
// SIGTERM or when stdin closes (the parent died).
func serveRole(addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("ADDR %s\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// child is a server process of the benchmark.
type child struct {
	cmd   *exec.Cmd
	addr  string
	admin string // idemproxy's -admin address, if any
	stdin io.WriteCloser
}

func (ch *child) stop() {
	_ = ch.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = ch.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = ch.cmd.Process.Kill()
		<-done
	}
	_ = ch.stdin.Close()
}

// startRole re-executes this program as a server with -role.
func startRole(role string, extra ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"-role", role}, extra...)...)
	cmd.Stderr = os.Stderr
	dieWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s did not start: %q %v", role, line, err)
	}
	return &child{cmd: cmd, addr: strings.TrimSpace(strings.TrimPrefix(line, "ADDR ")), stdin: stdin}, nil
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startIdemproxy runs the idemproxy binary in front of upstream on store.
func startIdemproxy(bin, upstream, store string) (*child, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-listen", addr, "-admin", admin, "-upstream", upstream, "-store", store, "-log-level", "warn")
	cmd.Stderr = os.Stderr
	// Newer idemproxy versions need a scope secret for shared stores; the
	// variable (unlike a flag) is ignored by versions that have none.
	if os.Getenv("IDEMPROXY_SCOPE_SECRET") == "" && os.Getenv("IDEMPROXY_SCOPE_SECRET_FILE") == "" {
		cmd.Env = append(os.Environ(), "IDEMPROXY_SCOPE_SECRET=bench-load-"+scopeSecret)
	}
	dieWithParent(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &child{cmd: cmd, addr: addr, admin: admin, stdin: stdin}
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return ch, nil
		}
		if time.Now().After(deadline) {
			ch.stop()
			return nil, fmt.Errorf("idemproxy did not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func buildIdemproxy() (bin string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "idemproxy-load-")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "idemproxy")
	// cmd/idemproxy is a module of its own: build it in its directory.
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("cmd", "idemproxy")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("go build ./cmd/idemproxy (run from the repository root, or give -proxy-bin): %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// result is one measured scenario run.
type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
	n        int           // successful requests
	cpu      time.Duration // CPU time of the server process meanwhile
	cpuOK    bool          // cpu was measured
	allocs   float64       // heap allocations of the server process meanwhile
	allocsOK bool          // allocs was measured
}

// scenario is one line of the table.
type scenario struct {
	name   string
	target string
	pid    int // of the server process, for its CPU time; 0 if unknown
	// mallocs is the URL of the server's allocation count ("" if unknown).
	mallocs string
	replay  bool
	runs    []result
	// With -base-bin: the binary's label, and the group of scenarios (the
	// same store and kind on each binary) that run next to each other.
	// group 0 is not a group.
	label string
	group int
	// lib marks the in-process library rows; probe the Redis rows, whose
	// commands per request and record sizes are read from the server.
	lib, probe  bool
	commands    map[string]float64
	recordBytes float64
	// keyPrefix starts the Redis keys of the scenario's records.
	keyPrefix string
}

// proxyBinary is an idemproxy binary under test.
type proxyBinary struct {
	label, path string
}

// server is a running server under test: its URL and process id.
type server struct {
	target  string
	pid     int
	mallocs string
}

// idemScenarios returns the scenarios of one store for the binaries and
// the proxies serving them (servers[i] for bins[i]). With one binary they
// are named as before -base-bin existed; with two, each is labelled and the
// same kind of scenario on both forms one group, numbered from group.
func idemScenarios(store string, bins []proxyBinary, servers []server, group int) []*scenario {
	var out []*scenario
	for _, replay := range []bool{false, true} {
		kind := "unique keys"
		if replay {
			kind = "replays"
		}
		for i, b := range bins {
			s := &scenario{name: "idemproxy " + store + ", " + kind, target: servers[i].target, pid: servers[i].pid, mallocs: servers[i].mallocs, replay: replay}
			if len(bins) > 1 {
				s.name += " (" + b.label + ")"
				s.label, s.group = b.label, group
			}
			out = append(out, s)
		}
		group++
	}
	return out
}

// runOrder is the order of the scenarios in run r (from 0): as listed, but
// in odd runs each group's scenarios run in reverse order, so that neither
// binary always follows the other.
func runOrder(scenarios []*scenario, r int) []*scenario {
	out := slices.Clone(scenarios)
	if r%2 == 0 {
		return out
	}
	for i := 0; i < len(out); {
		j := i + 1
		for out[i].group != 0 && j < len(out) && out[j].group == out[i].group {
			j++
		}
		slices.Reverse(out[i:j])
		i = j
	}
	return out
}

func bench(c config, stdout io.Writer) error {
	bin := c.proxyBin
	if bin == "" {
		b, cleanup, err := buildIdemproxy()
		if err != nil {
			return err
		}
		defer cleanup()
		bin = b
	}
	up, err := startRole("upstream")
	if err != nil {
		return err
	}
	defer up.stop()
	upURL := "http://" + up.addr
	plain, err := startRole("plain", "-upstream", upURL)
	if err != nil {
		return err
	}
	defer plain.stop()
	pooled, err := startRole("plain-pooled", "-upstream", upURL)
	if err != nil {
		return err
	}
	defer pooled.stop()

	// Every Redis key of this run starts with keyBase: the clean-up
	// deletes them by it. idemproxy's keys start with keyPrefix, each
	// library row's with its own (libPrefix), all as long as redisstore's
	// default "idem:" so that the records are the size users get, and the
	// probe samples each row's own.
	keyBase := "b" + randHex()[:2]
	keyPrefix := keyBase + "_:"
	libPrefix := func(row int) string { return keyBase + strconv.FormatInt(int64(row%36), 36) + ":" }
	scenarios := []*scenario{
		{name: "direct upstream", target: upURL, pid: up.cmd.Process.Pid, mallocs: upURL + mallocsPath},
		{name: "plain ReverseProxy", target: "http://" + plain.addr, pid: plain.cmd.Process.Pid, mallocs: "http://" + plain.addr + mallocsPath},
		{name: "plain ReverseProxy + BufferPool", target: "http://" + pooled.addr, pid: pooled.cmd.Process.Pid, mallocs: "http://" + pooled.addr + mallocsPath},
	}
	tmp, err := os.MkdirTemp("", "idemproxy-load-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var procs []*child
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	bins := []proxyBinary{{label: c.label, path: bin}}
	if c.baseBin != "" {
		bins = []proxyBinary{{label: c.baseLabel, path: c.baseBin}, {label: c.label, path: bin}}
	}
	group := 1
	for _, s := range strings.Split(c.stores, ",") {
		if s == "" {
			continue
		}
		var store string
		switch s {
		case "memory":
			store = "memory:"
		case "file":
			store = "file:" + filepath.Join(tmp, "idem.db")
		case "redis":
			if c.redisAddr == "" {
				fmt.Fprintln(os.Stderr, "load: skipping redis (set IDEM_REDIS_ADDR or -redis)")
				continue
			}
			if !isLoopback(c.redisAddr) {
				return fmt.Errorf("-redis %s: loopback addresses only", c.redisAddr)
			}
			store = "redis://" + c.redisAddr + "/0?prefix=" + url.QueryEscape(keyPrefix)
		case "postgres":
			if c.postgres == "" {
				fmt.Fprintln(os.Stderr, "load: skipping postgres (set IDEM_POSTGRES_DSN or -postgres)")
				continue
			}
			u, err := url.Parse(c.postgres)
			if err != nil || !isLoopback(net.JoinHostPort(u.Hostname(), "0")) {
				return errors.New("-postgres: a postgres:// URL with a loopback host only")
			}
			store = c.postgres
		default:
			return fmt.Errorf("unknown store %q", s)
		}
		var servers []server
		for i, b := range bins {
			st := store
			if s == "file" && i > 0 {
				st = "file:" + filepath.Join(tmp, fmt.Sprintf("idem-%d.db", i))
			}
			p, err := startIdemproxy(b.path, upURL, st)
			if err != nil {
				return fmt.Errorf("%s: %w", b.path, err)
			}
			procs = append(procs, p)
			servers = append(servers, server{target: "http://" + p.addr, pid: p.cmd.Process.Pid, mallocs: "http://" + p.admin + "/metrics"})
		}
		ss := idemScenarios(s, bins, servers, group)
		for _, sc := range ss {
			sc.probe, sc.keyPrefix = s == "redis", keyPrefix
		}
		scenarios = append(scenarios, ss...)
		group += 2
	}

	prefix := randHex()
	var probe *redisProbe
	if c.redisAddr != "" {
		if !isLoopback(c.redisAddr) {
			return fmt.Errorf("-redis %s: loopback addresses only", c.redisAddr)
		}
		rc := redis.NewClient(&redis.Options{Addr: c.redisAddr})
		defer rc.Close()
		probe = &redisProbe{c: rc}
		defer probe.cleanup(context.Background(), keyBase+"*")
	}
	if c.lib != "" {
		if probe == nil {
			fmt.Fprintln(os.Stderr, "load: skipping the library rows (set IDEM_REDIS_ADDR or -redis)")
		} else {
			for row, lc := range strings.Split(c.lib, ",") {
				if !slices.Contains(libClients, lc) {
					return fmt.Errorf("-lib: unknown client %q (want %s)", lc, strings.Join(libClients, ", "))
				}
				rowPrefix := libPrefix(row)
				p, err := startRole("lib", "-lib-client", lc, "-redis", c.redisAddr, "-lib-prefix", rowPrefix)
				if err != nil {
					return err
				}
				procs = append(procs, p)
				for _, replay := range []bool{false, true} {
					kind := "unique keys"
					if replay {
						kind = "replays"
					}
					scenarios = append(scenarios, &scenario{name: "library redis (" + lc + "), " + kind, target: "http://" + p.addr,
						pid: p.cmd.Process.Pid, mallocs: "http://" + p.addr + mallocsPath, replay: replay, lib: true,
						probe: lc != memoryClient, keyPrefix: rowPrefix})
				}
			}
		}
	}

	client := &http.Client{Transport: &http.Transport{
		Proxy: nil, MaxIdleConns: 2 * c.concurrency, MaxIdleConnsPerHost: 2 * c.concurrency, IdleConnTimeout: time.Minute,
	}}
	defer client.CloseIdleConnections()
	// Runs are interleaved (run 1 of every scenario, then run 2, …) so that
	// a slow patch of the shared machine does not hit one scenario only.
	// With -base-bin, each binary's scenario runs next to the same scenario
	// of the other binary, first in one run and second in the next.
	fmt.Fprintf(os.Stderr, "load: load average at start: %s\n", loadAvg())
	for r := 0; r < c.runs; r++ {
		for _, s := range runOrder(scenarios, r) {
			i := slices.Index(scenarios, s)
			tag := fmt.Sprintf("%s-%d-%d", prefix, r, i)
			var replayKeys []string
			if s.replay {
				replayKeys = make([]string, c.keys)
				for k := range replayKeys {
					replayKeys[k] = fmt.Sprintf("%s-r%d", tag, k)
					if err := post(client, s.target, replayKeys[k]); err != nil {
						return fmt.Errorf("%s: priming: %w", s.name, err)
					}
				}
			}
			load(client, s.target, tag+"-w", replayKeys, c.concurrency, c.warmup)
			var cmds0 map[string]int64
			if s.probe && probe != nil {
				if cmds0, err = probe.commands(context.Background()); err != nil {
					return err
				}
			}
			m0, mok0 := mallocs(client, s.mallocs)
			cpu0, ok0 := procCPU(s.pid)
			res := load(client, s.target, tag, replayKeys, c.concurrency, c.duration)
			if cpu1, ok1 := procCPU(s.pid); ok0 && ok1 {
				res.cpu, res.cpuOK = cpu1-cpu0, true
			}
			if cmds0 != nil {
				cmds1, err := probe.commands(context.Background())
				if err != nil {
					return err
				}
				s.commands = commandDelta(cmds0, cmds1, res.n+int(res.errors))
				if !s.replay {
					b, n, err := probe.recordBytes(context.Background(), s.keyPrefix, 200)
					if err != nil {
						return err
					}
					if n > 0 {
						s.recordBytes = b
					}
				}
			}
			if m1, mok1 := mallocs(client, s.mallocs); mok0 && mok1 {
				res.allocs, res.allocsOK = m1-m0, true
			}
			s.runs = append(s.runs, res)
			fmt.Fprintf(os.Stderr, "load: run %d %-32s %9.0f req/s  p50 %v  p99 %v  errors %d\n",
				r+1, s.name, res.rps, res.p50, res.p99, res.errors)
		}
	}
	fmt.Fprintf(os.Stderr, "load: load average at end: %s\n", loadAvg())
	report(stdout, c, scenarios)
	return nil
}

// drive sends one scenario's load to c.drive for c.duration (after the
// warm-up) and prints the rate and latencies: for profiling a server
// started by hand.
func drive(c config, stdout io.Writer) error {
	u, err := url.Parse(c.drive)
	if err != nil || u.Scheme != "http" || !isLoopback(net.JoinHostPort(u.Hostname(), "0")) {
		return errors.New("-drive: an http:// URL with a loopback host only")
	}
	target := strings.TrimSuffix(c.drive, "/")
	client := &http.Client{Transport: &http.Transport{
		Proxy: nil, MaxIdleConns: 2 * c.concurrency, MaxIdleConnsPerHost: 2 * c.concurrency, IdleConnTimeout: time.Minute,
	}}
	defer client.CloseIdleConnections()
	tag := randHex()
	var replayKeys []string
	if c.replay {
		replayKeys = make([]string, c.keys)
		for k := range replayKeys {
			replayKeys[k] = fmt.Sprintf("%s-r%d", tag, k)
			if err := post(client, target, replayKeys[k]); err != nil {
				return fmt.Errorf("priming: %w", err)
			}
		}
	}
	load(client, target, tag+"-w", replayKeys, c.concurrency, c.warmup)
	res := load(client, target, tag, replayKeys, c.concurrency, c.duration)
	fmt.Fprintf(stdout, "%.0f req/s  p50 %v  p99 %v  errors %d\n", res.rps, res.p50, res.p99, res.errors)
	return nil
}

// loadAvg is the first three fields of /proc/loadavg, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func isLoopback(hostport string) bool {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// scopeSecret is this run's scope secret for the idemproxy processes.
var scopeSecret = randHex() + randHex()

func randHex() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const body = `{"amount":1000,"currency":"eur","customer":"cus_123","description":"load test"}`

func post(c *http.Client, target, key string) error {
	req, err := http.NewRequest(http.MethodPost, target+"/v1/charges", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Authorization", "Bearer sk_test_load")
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	return nil
}

// load keeps n requests in flight against target for d. With replayKeys it
// cycles through them (every request is a replay); otherwise every request
// has a new key.
func load(c *http.Client, target, tag string, replayKeys []string, n int, d time.Duration) result {
	var (
		wg   sync.WaitGroup
		errs atomic.Int64
		mu   sync.Mutex
		lats []time.Duration
		seq  atomic.Int64
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				i := seq.Add(1)
				key := tag + "-" + strconv.FormatInt(i, 10)
				if replayKeys != nil {
					key = replayKeys[int(i)%len(replayKeys)]
				}
				t0 := time.Now()
				if err := post(c, target, key); err != nil {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	res := result{rps: float64(len(lats)) / elapsed.Seconds(), errors: errs.Load(), n: len(lats)}
	if len(lats) > 0 {
		res.p50 = lats[len(lats)/2]
		res.p99 = lats[len(lats)*99/100]
	}
	return res
}

func median(rs []result) result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b result) int {
		switch {
		case a.rps < b.rps:
			return -1
		case a.rps > b.rps:
			return 1
		}
		return 0
	})
	return s[len(s)/2]
}

func report(w io.Writer, c config, scenarios []*scenario) {
	fmt.Fprintf(w, "%d runs of %v per scenario (median shown), %d requests in flight, GOMAXPROCS %d, %d CPUs, %s\n\n",
		c.runs, c.duration, c.concurrency, runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version())
	if c.baseBin != "" {
		fmt.Fprintf(w, "%s: %s; %s: %s\n\n", c.baseLabel, c.baseBin, c.label, orDefault(c.proxyBin, "./cmd/idemproxy"))
	}
	fmt.Fprintln(w, "| scenario | req/s (median) | runs (req/s) | vs plain proxy | vs plain, per run (median) | p50 | p99 | server CPU/req | server allocs/req | errors |")
	fmt.Fprintln(w, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	plain := median(scenarios[1].runs).rps
	for _, s := range scenarios {
		m := median(s.runs)
		var all []string
		var errs int64
		for _, r := range s.runs {
			all = append(all, fmt.Sprintf("%.0f", r.rps))
			errs += r.errors
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %.0f%% | %s | %v | %v | %s | %s | %d |\n", s.name, m.rps, strings.Join(all, ", "),
			100*m.rps/plain, perRunRatio(s.runs, scenarios[1].runs), m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond),
			cpuPerRequest(s.runs), allocsPerRequest(s.runs), errs)
	}
	if c.baseBin != "" {
		compare(w, c, scenarios)
	}
	libReport(w, scenarios)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// cpuPerRequest is the median over runs of the server's CPU time per
// successful request, or "–" when it was not measured.
func cpuPerRequest(rs []result) string {
	var per []result
	for _, r := range rs {
		if r.cpuOK && r.n > 0 {
			per = append(per, result{rps: float64(r.cpu) / float64(r.n)})
		}
	}
	if len(per) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", median(per).rps/float64(time.Microsecond))
}

// allocsPerRequest is the median over runs of the server's heap
// allocations per successful request, or "–" when they were not measured.
func allocsPerRequest(rs []result) string {
	var per []result
	for _, r := range rs {
		if r.allocsOK && r.n > 0 {
			per = append(per, result{rps: r.allocs / float64(r.n)})
		}
	}
	if len(per) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", median(per).rps)
}

// perRunRatio is the median over runs of a's rate divided by b's in the
// same run, or "–".
func perRunRatio(a, b []result) string {
	var per []result
	for r := range min(len(a), len(b)) {
		if b[r].rps > 0 {
			per = append(per, result{rps: a[r].rps / b[r].rps})
		}
	}
	if len(per) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*median(per).rps)
}

// compare prints, with -base-bin, one line per store and scenario kind: the
// medians of both binaries, the current one's ratio to the base, the
// median of the per-run ratios (both ran next to each other in each run),
// each one's ratio to the plain proxy (of the medians, and the median of
// the per-run ratios), p50 and p99 of both, and the proxy
// process's CPU time per request (user + system, median over runs), which
// the noise of a shared machine disturbs less than the rates.
func compare(w io.Writer, c config, scenarios []*scenario) {
	plain := median(scenarios[1].runs).rps
	fmt.Fprintf(w, "\nCPU time per request of the plain ReverseProxy process: %s.\n", cpuPerRequest(scenarios[1].runs))
	fmt.Fprintf(w, "\n| scenario | %[1]s req/s | %[2]s req/s | %[2]s / %[1]s | per-run %[2]s / %[1]s (median) | %[1]s vs plain (per-run median) | %[2]s vs plain (per-run median) | p50 %[1]s → %[2]s | p99 %[1]s → %[2]s | proxy CPU/req %[1]s → %[2]s |\n",
		c.baseLabel, c.label)
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for i := 0; i+1 < len(scenarios); i++ {
		b, a := scenarios[i], scenarios[i+1]
		if b.group == 0 || a.group != b.group || b.label != c.baseLabel || a.label != c.label {
			continue
		}
		mb, ma := median(b.runs), median(a.runs)
		name := strings.TrimSuffix(b.name, " ("+b.label+")")
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f%% | %s | %.0f%% (%s) | %.0f%% (%s) | %v → %v | %v → %v | %s → %s |\n",
			name, mb.rps, ma.rps, 100*ma.rps/mb.rps, perRunRatio(a.runs, b.runs),
			100*mb.rps/plain, perRunRatio(b.runs, scenarios[1].runs),
			100*ma.rps/plain, perRunRatio(a.runs, scenarios[1].runs),
			mb.p50.Round(time.Microsecond), ma.p50.Round(time.Microsecond),
			mb.p99.Round(time.Microsecond), ma.p99.Round(time.Microsecond),
			cpuPerRequest(b.runs), cpuPerRequest(a.runs))
	}
}
