//go:build linux

package faults

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem/pgxstore"
)

// soak runs the long form: more clients, a longer load and the fault
// repeated all along (IDEM_SOAK=1, or the soak build tag that
// scripts/test.sh sets when IDEM_SOAK=1).
var soak = soakTag || os.Getenv("IDEM_SOAK") == "1"

// lease is the proxy's -lease in every scenario: short, so that faults
// longer than the lease take seconds.
const lease = time.Second

type storeKind int

const (
	storeFile          storeKind = iota + 1 // file:PATH (bbolt) in the scenario's temp dir
	storeRedis                              // a dedicated redis-server, no persistence
	storeRedisAOF                           // a dedicated redis-server, --appendonly yes --appendfsync always
	storePostgres                           // a dedicated PostgreSQL cluster
	storeRedisCluster                       // a dedicated Redis Cluster, 3 masters (see haConfig)
	storeRedisSentinel                      // a dedicated master, 2 replicas and 3 sentinels
)

func (k storeKind) String() string {
	return [...]string{storeFile: "file:", storeRedis: "redis://", storeRedisAOF: "redis:// (AOF always)", storePostgres: "postgres://",
		storeRedisCluster: "redis+cluster://", storeRedisSentinel: "redis+sentinel://"}[k]
}

// scenario is one fault scenario.
type scenario struct {
	name  string
	store storeKind
	// fault injects the scenario's fault once: shortFaults times in the
	// short form (default 1), again and again in the long form. nil: the
	// load itself is the fault (slow upstream).
	fault       func(r *run)
	shortFaults int
	// delay is how long the upstream takes per execution (nil: 0-30 ms).
	delay   func(key string) time.Duration
	clients int // in the short form (the long form doubles it)
	// query is added to a Redis store URL's query, such as
	// "native_begin=true".
	query string
	twins int // 1 in twins operations has two concurrent callers
	// ha configures a failover scenario (Cluster, Sentinel): one kill -9
	// of a master in both forms, timed.
	ha *haConfig
	// soakOnly scenarios run in the long form only (IDEM_SOAK=1).
	soakOnly bool
}

// haConfig is a failover scenario's set-up.
type haConfig struct {
	replicas int  // replicas per master (Cluster)
	wait     bool // ?wait_replicas=1&wait_timeout=500ms on the store URL
	proxies  int  // idemproxy instances on the store, the clients' retries alternating between them
	// restart the killed master once its replica is promoted, as a
	// supervisor would: it rejoins as a replica of the new master (with
	// one replica per master, wait_replicas=1 needs it back).
	restart bool
	// lossAllowed: acknowledged responses lost on the dead master's keys
	// (replay-mismatch, divergent-2xx, re-execution) are measured and
	// reported instead of failing the scenario (without wait_replicas).
	lossAllowed bool
	// lag delays replication (Sentinel only: the replicas replicate
	// through a lagRelay) so that a failover can lose what the master
	// acknowledged in its last lag.
	lag time.Duration
	// expectLoss: fail unless the checker reports acknowledged responses
	// lost (with lag and no wait_replicas: the suite must see the loss).
	expectLoss bool
	// maxServed bounds the time from the promotion until the dead
	// master's keys are served again (first 2xx, end of the failures); 0:
	// report only.
	maxServed time.Duration
}

// stall is how long a store stays stopped, down or locked: well beyond the
// lease.
const stall = 5 * lease / 2

// fast is the default upstream: 0-30 ms per execution.
func fast(key string) time.Duration { return time.Duration(hash(key)%31) * time.Millisecond }

// someSlow makes 1 key in n take d (the others are fast): executions that
// span a store stall, so that their lease renewals fail while they run.
func someSlow(n uint32, d time.Duration) func(string) time.Duration {
	return func(key string) time.Duration {
		if hash(key)%n == 0 {
			return d
		}
		return fast(key)
	}
}

func scenarios() []scenario {
	spanning := someSlow(3, stall+lease)
	return []scenario{
		{name: "proxy-kill9-file", store: storeFile, fault: kill9Proxy, shortFaults: 3, clients: 8, twins: 4},
		{name: "proxy-sigterm-file", store: storeFile, fault: sigtermProxy, clients: 4, twins: 4,
			delay: func(key string) time.Duration { return time.Duration(50+hash(key)%250) * time.Millisecond }},
		{name: "redis-sigstop", store: storeRedis, fault: stopRedis, clients: 8, twins: 2, delay: spanning},
		{name: "redis-kill9-aof", store: storeRedisAOF, fault: kill9Redis, clients: 8, twins: 2, delay: spanning},
		// The same with redisstore's native Begin (records in the "N"
		// layout, fences from PEXPIRETIME).
		{name: "redis-kill9-aof-native", store: storeRedisAOF, fault: kill9Redis, clients: 8, twins: 2, delay: spanning,
			query: "native_begin=true"},
		{name: "postgres-restart-immediate", store: storePostgres, fault: restartPostgres, clients: 8, twins: 2, delay: spanning},
		{name: "postgres-lock-table", store: storePostgres, fault: lockTable, clients: 8, twins: 2, delay: spanning},
		{name: "slow-upstream", store: storeFile, clients: 6, twins: 2,
			delay: func(string) time.Duration { return 3 * lease }},
		// Redis Cluster 3+3 (issue 17): kill -9 of the master of slot 0,
		// restarted once its replica is promoted (as a supervisor would):
		// with one replica per master, wait_replicas=1 needs it back.
		{name: "cluster-failover-wait1", store: storeRedisCluster, fault: failoverRedis, clients: 6, twins: 4,
			ha: &haConfig{replicas: 1, wait: true, proxies: 1, restart: true, maxServed: 3 * time.Second}},
		// Redis Sentinel: a master, 2 replicas replicating 250 ms behind
		// (a lagging link), 3 sentinels; kill -9 of the master. Without
		// wait_replicas the failover loses what the master acknowledged in
		// its last 250 ms, and the checker must report it; with
		// wait_replicas=1 nothing acknowledged is lost.
		{name: "sentinel-failover-lag-wait1", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 4,
			ha: &haConfig{wait: true, proxies: 1, lag: 250 * time.Millisecond, maxServed: 3 * time.Second}},
		{name: "sentinel-failover-lag-nowait", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 4,
			ha: &haConfig{proxies: 1, lag: 250 * time.Millisecond, lossAllowed: true, expectLoss: true, maxServed: 3 * time.Second}},
		// The native Begin across a failover: a promoted replica must
		// derive the fences of the records it received as its master did
		// (Redis 7 replicates SET … PX as an absolute PXAT).
		{name: "sentinel-failover-lag-nowait-native", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 4,
			query: "native_begin=true",
			ha:    &haConfig{proxies: 1, lag: 250 * time.Millisecond, lossAllowed: true, expectLoss: true, maxServed: 3 * time.Second}},

		// Long form only.
		{name: "cluster-failover-nowait", store: storeRedisCluster, fault: failoverRedis, clients: 6, twins: 4, soakOnly: true,
			ha: &haConfig{replicas: 1, proxies: 1, lossAllowed: true, maxServed: 3 * time.Second}},
		{name: "cluster-failover-two-proxies", store: storeRedisCluster, fault: failoverRedis, clients: 6, twins: 2, soakOnly: true,
			ha: &haConfig{replicas: 1, wait: true, proxies: 2, restart: true, maxServed: 3 * time.Second}},
		// Two replicas per master: the second follows the promoted one, so
		// wait_replicas=1 needs no restart.
		{name: "cluster-failover-wait1-3x2", store: storeRedisCluster, fault: failoverRedis, clients: 6, twins: 4, soakOnly: true,
			ha: &haConfig{replicas: 2, wait: true, proxies: 1, maxServed: 3 * time.Second}},
		// Sentinel without lag: the other replica follows the new master,
		// so wait_replicas=1 needs no restart.
		{name: "sentinel-failover-wait1", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 4, soakOnly: true,
			ha: &haConfig{wait: true, proxies: 1, maxServed: 3 * time.Second}},
		{name: "sentinel-failover-nowait", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 4, soakOnly: true,
			ha: &haConfig{proxies: 1, lossAllowed: true, maxServed: 3 * time.Second}},
		{name: "sentinel-failover-two-proxies", store: storeRedisSentinel, fault: failoverRedis, clients: 6, twins: 2, soakOnly: true,
			ha: &haConfig{wait: true, proxies: 2, maxServed: 3 * time.Second}},
	}
}

// TestFaults runs every scenario (see docs/reliability.md), as many at once
// as -parallel allows (GOMAXPROCS by default): each has its own proxy,
// upstream and servers.
func TestFaults(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			if sc.soakOnly && !soak {
				t.Skip("long form only (IDEM_SOAK=1)")
			}
			t.Parallel()
			runScenario(t, sc)
		})
	}
}

// run is the state of one scenario run.
type run struct {
	t     *testing.T
	sc    scenario
	ctx   context.Context
	log   *logFile
	up    *upstream
	to    target
	args  []string // the proxy's flags
	start time.Time
	end   time.Time // no operation starts after end

	mu      sync.Mutex
	proxy   *proxyProc
	others  []*proxyProc // more instances on the same store (haConfig.proxies)
	gen     int
	redis   *redisServer
	pg      *pgServer
	cluster *redisCluster
	sent    *sentinelSet
	fo      *failover // set by failoverRedis
	faults  int
	events  []string // fault timeline
	errs    []string // harness failures, reported at the end
}

// note adds an event to the fault timeline.
func (r *run) note(format string, args ...any) {
	msg := fmt.Sprintf("+%.2fs ", time.Since(r.start).Seconds()) + fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.events = append(r.events, msg)
	r.mu.Unlock()
	r.log.printf("[harness] %s", msg)
}

// fail records a harness failure (from any goroutine).
func (r *run) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.errs = append(r.errs, msg)
	r.mu.Unlock()
	r.log.printf("[harness] FAIL %s", msg)
}

func (r *run) injected() {
	r.mu.Lock()
	r.faults++
	r.mu.Unlock()
}

func (r *run) currentProxy() *proxyProc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proxy
}

// startProxy starts a new generation of the proxy with the run's flags and
// points the clients at it.
func (r *run) startProxy() error {
	r.mu.Lock()
	r.gen++
	gen := r.gen
	r.mu.Unlock()
	p, err := startProxy(r.t, r.log, gen, r.args...)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.proxy = p
	r.mu.Unlock()
	r.to.set(p.addr)
	return nil
}

// startProxies starts n instances on the run's store: the clients'
// attempts alternate between them.
func (r *run) startProxies(n int) error {
	if err := r.startProxy(); err != nil {
		return err
	}
	addrs := []string{r.proxy.addr}
	for range n - 1 {
		r.mu.Lock()
		r.gen++
		gen := r.gen
		r.mu.Unlock()
		p, err := startProxy(r.t, r.log, gen, r.args...)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.others = append(r.others, p)
		r.mu.Unlock()
		addrs = append(addrs, p.addr)
	}
	r.to.set(addrs...)
	return nil
}

func runScenario(t *testing.T, sc scenario) {
	clients, load, gap, injections := sc.clients, 4*time.Second, time.Second, max(sc.shortFaults, 1)
	if soak {
		clients, load, gap, injections = 2*sc.clients, 45*time.Second, 4*time.Second, 1<<30
	}
	firstFault := load / 4
	if sc.ha != nil {
		// One failover: 1.5 s of load before the kill, the failover
		// itself (promotion after 3-5 s), then load on the new topology
		// (20 s of it in the long form).
		load, injections, firstFault = 11*time.Second, 1, 1500*time.Millisecond
		if soak {
			load = 30 * time.Second
		}
	}
	delay := sc.delay
	if delay == nil {
		delay = fast
	}
	cfg := loadConfig{
		name:     sc.name,
		clients:  clients,
		duration: load,
		twins:    sc.twins,
		opBound:  30 * time.Second,
		// Longer than the slowest execution (3× the lease) plus a stall.
		timeout: 12 * time.Second,
		seed:    uint64(time.Now().UnixNano()),
	}
	ctx, cancel := context.WithTimeout(context.Background(), load+2*cfg.opBound+time.Minute)
	defer cancel()

	r := &run{t: t, sc: sc, ctx: ctx, log: newLogFile(t)}
	// 1 key in 8 answers 500 at its first execution: the record is
	// released and the retry executes again.
	r.up = newUpstream(delay, func(key string, n int) bool { return n == 1 && hash(key)%8 == 3 })
	upClosed := false
	defer func() {
		if !upClosed {
			r.up.close()
		}
	}()

	var store string
	switch sc.store {
	case storeFile:
		store = "file:" + filepath.Join(t.TempDir(), "idem.db")
	case storeRedis, storeRedisAOF:
		r.redis = newRedis(t, r.log, sc.store == storeRedisAOF)
		store = "redis://" + r.redis.addr() + "/0" + joinQuery("", sc.query)
	case storePostgres:
		r.pg = newPostgres(t, r.log)
		store = r.pg.dsn()
	case storeRedisCluster:
		r.cluster = newRedisCluster(t, r.log, 3, sc.ha.replicas)
		store = "redis+cluster://" + strings.Join(r.cluster.addrs(), ",") + joinQuery(sc.ha.query(), sc.query)
	case storeRedisSentinel:
		r.sent = newSentinelSet(t, r.log, 2, 3, sc.ha.lag)
		store = "redis+sentinel://" + strings.Join(r.sent.sentinelAddrs(), ",") + "/" + sentinelMaster + joinQuery(sc.ha.query(), sc.query)
	}
	r.args = []string{"-upstream", r.up.srv.URL, "-store", store, "-lease", lease.String(), "-shutdown-timeout", "15s"}
	if sc.store != storeFile {
		// Shared stores need the scope secret that every instance uses (a
		// file: store keeps a generated one beside its database).
		secret := filepath.Join(t.TempDir(), "scope-secret")
		if err := os.WriteFile(secret, []byte(scopeSecret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r.args = append(r.args, "-scope-secret-file", secret)
	}
	proxies := 1
	if sc.ha != nil {
		proxies = sc.ha.proxies
	}
	if err := r.startProxies(proxies); err != nil {
		t.Fatalf("%v\n%s", err, strings.Join(r.log.grep("", 50), "\n"))
	}

	rec := newRecorder()
	r.start = time.Now()
	r.end = r.start.Add(load)
	var faultsDone sync.WaitGroup
	if sc.fault != nil {
		faultsDone.Add(1)
		go func() {
			defer faultsDone.Done()
			// First fault after a quarter of the load, then again a gap
			// after the previous one is over, while the load lasts.
			next := r.start.Add(firstFault)
			for range injections {
				select {
				case <-time.After(time.Until(next)):
				case <-ctx.Done():
					return
				}
				if time.Now().After(r.end.Add(-500 * time.Millisecond)) {
					return
				}
				sc.fault(r)
				next = time.Now().Add(gap)
			}
		}()
	}
	runLoad(ctx, cfg, &r.to, rec)
	faultsDone.Wait()
	loadTook := time.Since(r.start)

	replayStart := time.Now()
	replayAll(ctx, cfg, &r.to, rec)
	replayTook := time.Since(replayStart)

	if p := r.currentProxy(); p != nil {
		if err := p.terminate(20 * time.Second); err != nil {
			r.fail("the last idemproxy did not exit cleanly on SIGTERM: %v", err)
		}
	}
	for _, p := range r.others {
		if err := p.terminate(20 * time.Second); err != nil {
			r.fail("idemproxy %s did not exit cleanly on SIGTERM: %v", p.name, err)
		}
	}
	r.up.close() // waits for every execution to end
	upClosed = true
	execs := r.up.executions()
	if sc.fault == nil { // the slow upstream: every execution is the fault
		r.faults = len(execs)
		r.note("every execution took %v (%d× the lease)", delay(""), delay("")/lease)
	}

	h := rec.history(execs)
	vs := Check(h)
	var ha *haReport
	if sc.ha != nil {
		ha, vs = r.failoverReport(cfg, rec, h, vs)
	}
	r.report(cfg, rec, h, vs, loadTook, replayTook, ha)
}

// report logs the scenario's numbers, appends them to $IDEM_FAULTS_REPORT
// (a markdown table row) if set, and fails the test on any violation or
// harness failure.
func (r *run) report(cfg loadConfig, rec *recorder, h History, vs []Violation, loadTook, replayTook time.Duration, ha *haReport) {
	t := r.t
	keys := map[string]bool{}
	for _, a := range h.Acks {
		keys[a.Key] = true
	}
	faults := fmt.Sprintf("%d", r.faults)
	t.Logf("scenario %s: store %s, lease %v, %d clients, load %v (took %v), final replay of %d keys took %v",
		r.sc.name, r.sc.store, lease, cfg.clients, cfg.duration, loadTook.Round(time.Millisecond), len(keys),
		replayTook.Round(time.Millisecond))
	t.Logf("  operations %d (%d with two concurrent callers), requests %d, 2xx acknowledged %d, upstream executions %d",
		rec.ops.Load(), rec.twinOps.Load(), rec.attempts.Load(), len(h.Acks), len(h.Executions))
	t.Logf("  retried answers: %s", rec.retrySummary())
	t.Logf("  proxy answers: %s", r.log.proxyStats())
	t.Logf("  faults injected: %s", faults)
	for _, e := range r.events {
		t.Logf("    %s", e)
	}
	if ha != nil {
		for _, l := range ha.lines {
			t.Logf("  %s", l)
		}
		faults += " (" + ha.short + ")"
	}
	t.Logf("  violations: %s", Summary(vs))
	if path := os.Getenv("IDEM_FAULTS_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			form := "short"
			if soak {
				form = "long"
			}
			fmt.Fprintf(f, "| %s | %s | %s | %d (%d twin) | %d | %d | %s | %s |\n", r.sc.name, form, r.sc.store,
				rec.ops.Load(), rec.twinOps.Load(), rec.attempts.Load(), len(h.Executions), faults, Summary(vs))
			f.Close()
		}
	}
	for _, e := range r.errs {
		t.Errorf("harness: %s", e)
	}
	if ha != nil {
		for _, e := range ha.errs {
			t.Errorf("failover: %s", e)
		}
	}
	if len(vs) == 0 {
		return
	}
	// Up to maxShown violations of each kind.
	const maxShown = 6
	var b strings.Builder
	shownOf := map[Kind]int{}
	for _, v := range vs {
		if shownOf[v.Kind]++; shownOf[v.Kind] <= maxShown {
			fmt.Fprintf(&b, "  %s\n", v)
		}
	}
	for _, k := range Kinds {
		if n := shownOf[k]; n > maxShown {
			fmt.Fprintf(&b, "  … and %d more %s\n", n-maxShown, k)
		}
	}
	t.Errorf("%s: %s violations:\n%s", r.sc.name, Summary(vs), b.String())
	// The proxy's log lines of one key of each kind.
	shown, kinds := map[string]bool{}, map[Kind]bool{}
	for _, v := range vs {
		if kinds[v.Kind] || shown[v.Key] {
			continue
		}
		kinds[v.Kind], shown[v.Key] = true, true
		t.Logf("log lines of key %s (%s):\n%s", v.Key, v.Kind, strings.Join(r.log.grep(v.Key, 20), "\n"))
	}
	t.Logf("fault timeline: %s", strings.Join(r.events, "; "))
}

// ---- faults ----

// kill9Proxy kills the proxy with SIGKILL mid-load and starts a new one on
// the same store (the same file).
func kill9Proxy(r *run) {
	p := r.currentProxy()
	p.kill()
	r.injected()
	r.note("kill -9 of idemproxy pid %d", p.cmd.Process.Pid)
	time.Sleep(100 * time.Millisecond)
	if err := r.startProxy(); err != nil {
		r.fail("restart after kill -9: %v", err)
		return
	}
	r.note("idemproxy restarted on the same store at %s", r.to.get())
}

// sigtermProxy sends SIGTERM mid-load (graceful shutdown: in-flight
// requests finish and complete their records), expects exit status 0, and
// starts a new proxy on the same file.
func sigtermProxy(r *run) {
	p := r.currentProxy()
	if err := p.signal(syscall.SIGTERM); err != nil {
		r.fail("SIGTERM: %v", err)
		return
	}
	r.injected()
	r.note("SIGTERM to idemproxy pid %d", p.cmd.Process.Pid)
	if err := p.wait(20 * time.Second); err != nil {
		r.fail("idemproxy after SIGTERM: %v", err)
	} else {
		r.note("idemproxy exited 0")
	}
	if err := r.startProxy(); err != nil {
		r.fail("restart after SIGTERM: %v", err)
		return
	}
	r.note("idemproxy restarted on the same store at %s", r.to.get())
}

// stopRedis stops redis-server with SIGSTOP for longer than the lease, then
// resumes it with SIGCONT.
func stopRedis(r *run) {
	if err := r.redis.proc.signal(syscall.SIGSTOP); err != nil {
		r.fail("SIGSTOP: %v", err)
		return
	}
	r.injected()
	r.note("SIGSTOP redis-server for %v (%.1f× the lease)", stall, float64(stall)/float64(lease))
	time.Sleep(stall)
	if err := r.redis.proc.signal(syscall.SIGCONT); err != nil {
		r.fail("SIGCONT: %v", err)
	}
	r.note("SIGCONT redis-server")
}

// kill9Redis kills redis-server (AOF, fsync always) with SIGKILL and
// restarts it on the same port and data dir after 1.5× the lease.
func kill9Redis(r *run) {
	r.redis.proc.kill()
	r.injected()
	r.note("kill -9 of redis-server (down for %v)", 3*lease/2)
	time.Sleep(3 * lease / 2) // leases lapse meanwhile
	if err := r.redis.start(); err != nil {
		r.fail("redis-server restart: %v", err)
		return
	}
	r.note("redis-server restarted from its AOF")
}

// restartPostgres is pg_ctl restart -m immediate (see pgServer).
func restartPostgres(r *run) {
	r.injected()
	r.note("pg_ctl stop -m immediate")
	if err := r.pg.restartImmediate(); err != nil {
		r.fail("PostgreSQL restart: %v\n%s", err, r.pg.serverLog())
		return
	}
	r.note("PostgreSQL restarted (crash recovery done)")
}

// lockTable holds LOCK TABLE idem_records IN ACCESS EXCLUSIVE MODE for
// longer than the lease: every statement of the store waits.
func lockTable(r *run) {
	table := pgx.Identifier{pgxstore.DefaultSchema, pgxstore.DefaultTable}.Sanitize()
	ctx, cancel := context.WithTimeout(r.ctx, stall+30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, r.pg.dsn())
	if err != nil {
		r.fail("connect: %v", err)
		return
	}
	defer c.Close(context.Background())
	tx, err := c.Begin(ctx)
	if err != nil {
		r.fail("begin: %v", err)
		return
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '10s'"); err != nil {
		r.fail("lock_timeout: %v", err)
		return
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		r.fail("LOCK TABLE: %v", err)
		return
	}
	r.injected()
	r.note("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE held for %v (%.1f× the lease)", table, stall, float64(stall)/float64(lease))
	time.Sleep(stall)
	if err := tx.Rollback(ctx); err != nil {
		r.fail("unlock: %v", err)
	}
	r.note("lock released")
}

func hash(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// joinQuery joins a store URL's query string q ("" or "?a=b") with the
// parameters extra ("" or "c=d").
func joinQuery(q, extra string) string {
	switch {
	case extra == "":
		return q
	case q == "":
		return "?" + extra
	}
	return q + "&" + extra
}
