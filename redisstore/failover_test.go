//go:build unix

package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// needBinary returns the path of a program the test needs: a missing one
// skips the test, or fails it under CI=true.
func needBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found and CI=true: the test command must install it", name)
	}
	t.Skipf("%s not found", name)
	return ""
}

// failoverCluster is a Redis Cluster of 3 primaries with one replica each,
// owned by the test: its processes are killed at cleanup.
type failoverCluster struct {
	addrs []string
	procs map[string]*redisProc
}

// newFailoverCluster starts 6 cluster-enabled redis-servers on free ports
// (cluster-node-timeout 2000 ms, cluster-require-full-coverage no, as
// docs/redis.md recommends, no persistence) and creates the cluster.
func newFailoverCluster(t *testing.T) *failoverCluster {
	server := needBinary(t, "redis-server")
	cli := needBinary(t, "redis-cli")
	fc := &failoverCluster{procs: map[string]*redisProc{}}
	t.Cleanup(func() {
		for _, p := range fc.procs {
			p.kill()
		}
	})
	for i := range 6 {
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		for range 5 { // a port picked free may be taken by the time the node binds it
			port := testenv.FreePort(t, 10000) // and its bus port, port+10000
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			var p *redisProc
			p, err = startRedisProc(server, addr, filepath.Join(dir, "redis.log"), 10*time.Second,
				"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
				"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
				"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
				"--enable-debug-command", "yes")
			if err == nil {
				fc.procs[addr] = p
				fc.addrs = append(fc.addrs, addr)
				break
			}
			_ = os.Remove(filepath.Join(dir, "nodes.conf"))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(cli, append(append([]string{"--cluster", "create"}, fc.addrs...), "--cluster-replicas", "1", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	waitFor(t, 20*time.Second, "cluster state ok with 3 replicas in sync", func() bool {
		replicas := 0
		for _, a := range fc.addrs {
			c := redis.NewClient(&redis.Options{Addr: a})
			info, err1 := c.ClusterInfo(context.Background()).Result()
			repl, err2 := c.Info(context.Background(), "replication").Result()
			c.Close()
			if err1 != nil || err2 != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			if strings.Contains(repl, "role:slave") && strings.Contains(repl, "master_link_status:up") {
				replicas++
			}
		}
		return replicas == 3
	})
	return fc
}

// replicaOf returns the address of the replica of the primary at addr.
func (fc *failoverCluster) replicaOf(t *testing.T, addr string) string {
	for _, a := range fc.addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		repl, err := c.Info(context.Background(), "replication").Result()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(addr)
		if strings.Contains(repl, "role:slave") && strings.Contains(repl, "master_port:"+port+"\r\n") {
			return a
		}
	}
	t.Fatalf("no replica of %s", addr)
	return ""
}

// waitFor polls ok every few milliseconds and fails the test when it is
// not true within d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterFailoverServedAgain kills a primary of a 3+3 Redis Cluster
// with SIGKILL and measures how long after its replica's promotion the
// store serves new keys on that primary's slots again. The dead node never
// answers MOVED; go-redis alone would keep sending those slots to it until
// its periodic slot-map reload (about a minute). redisstore asks for a
// reload on every connection failure, so the slots must be served within
// 3 s of the promotion. Keys on the other primaries must be served
// throughout.
func TestClusterFailoverServedAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	fc := newFailoverCluster(t)
	ctx := context.Background()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: fc.addrs, DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	defer c.Close()
	st := redisstore.New(c, redisstore.Options{Prefix: "fo:"})
	defer st.Close()

	// The victim is the primary of the first key; sort keys by owner.
	master := func(key string) string {
		n, err := c.MasterForKey(ctx, st.Key(key))
		if err != nil {
			t.Fatal(err)
		}
		return n.Options().Addr
	}
	victim := master("k-0")
	replica := fc.replicaOf(t, victim)
	var onVictim, elsewhere []string
	for i := 0; len(onVictim) < 400 || len(elsewhere) < 400; i++ {
		k := "k-" + strconv.Itoa(i)
		if master(k) == victim {
			onVictim = append(onVictim, k)
		} else {
			elsewhere = append(elsewhere, k)
		}
	}
	begin := func(key string) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		b, err := st.Begin(ctx, key, []byte("fp"), time.Minute)
		if err != nil {
			return err
		}
		return st.Complete(ctx, key, b.Fence, []byte("r"), time.Minute)
	}
	for _, k := range []string{onVictim[0], elsewhere[0]} {
		if err := begin(k); err != nil {
			t.Fatalf("before the failover: %v", err)
		}
	}

	killed := time.Now()
	if err := fc.procs[victim].signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	// Watch the replica's role to time the promotion.
	var mu sync.Mutex
	var promoted time.Time
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		rc := redis.NewClient(&redis.Options{Addr: replica})
		defer rc.Close()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			info, err := rc.Info(ctx, "replication").Result()
			if err == nil && strings.Contains(info, "role:master") {
				mu.Lock()
				promoted = time.Now()
				mu.Unlock()
				return
			}
		}
	}()
	defer func() { close(stop); <-watched }()

	var served time.Time
	otherFailures := 0
	for i := 1; ; i++ {
		if i >= len(onVictim) || time.Since(killed) > 40*time.Second {
			t.Fatalf("the victim's slots were not served again within %v of the kill (promotion at %v)", time.Since(killed).Round(time.Millisecond), promotedAfter(&mu, &promoted, killed))
		}
		if err := begin(elsewhere[i]); err != nil {
			otherFailures++
			t.Logf("key on a live primary failed at +%v: %v", time.Since(killed).Round(time.Millisecond), err)
		}
		mu.Lock()
		p := promoted
		mu.Unlock()
		if err := begin(onVictim[i]); err == nil && !p.IsZero() {
			served = time.Now()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	p := promoted
	mu.Unlock()
	gap := served.Sub(p)
	t.Logf("kill → promotion %v; promotion → victim's slots served %v", p.Sub(killed).Round(time.Millisecond), gap.Round(time.Millisecond))
	if gap > 3*time.Second {
		t.Errorf("the victim's slots were served %v after the promotion; want ≤ 3s", gap.Round(time.Millisecond))
	}
	if otherFailures > 0 {
		t.Errorf("%d operations on keys of the live primaries failed during the failover; want 0", otherFailures)
	}
	// The record completed before the kill lived on the replica (async
	// replication usually has it by now); report, do not require.
	if rec, ok, err := st.Get(ctx, onVictim[0]); err != nil || !ok {
		t.Logf("record completed before the kill: found=%v err=%v (lost in the failover without wait_replicas)", ok, err)
	} else if !bytes.Equal(rec.Result, []byte("r")) {
		t.Errorf("record after failover = %+v", rec)
	}
}

func promotedAfter(mu *sync.Mutex, promoted *time.Time, killed time.Time) string {
	mu.Lock()
	defer mu.Unlock()
	if promoted.IsZero() {
		return "not seen"
	}
	return fmt.Sprintf("+%v", promoted.Sub(killed).Round(time.Millisecond))
}

// TestClusterNoResend: a step whose reply is lost is not sent again. The
// key's primary sleeps (DEBUG SLEEP) longer than the client's read timeout,
// so Begin's script waits in its socket buffer, the read times out, and the
// script runs when the server wakes (Redis reads what a closed connection
// sent before it closed). A go-redis cluster client would resend
// it after the timeout (to the same node, within MaxRedirects), a second
// claim of the same key; the store must send it once, report the outcome
// as unknown (ErrStoreUnavailable), and leave the verdict to Get.
func TestClusterNoResend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster")
	}
	fc := newFailoverCluster(t)
	for _, native := range []bool{false, true} {
		t.Run(fmt.Sprintf("NativeBegin=%v", native), func(t *testing.T) { testClusterNoResend(t, fc, native) })
	}
}

// testClusterNoResend is TestClusterNoResend with Begin's script, or with
// its native SET (Options.NativeBegin).
func testClusterNoResend(t *testing.T, fc *failoverCluster, native bool) {
	ctx := context.Background()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: fc.addrs, ReadTimeout: 150 * time.Millisecond,
		WriteTimeout: 150 * time.Millisecond, DialTimeout: time.Second})
	defer c.Close()
	st := redisstore.New(c, redisstore.Options{Prefix: fmt.Sprintf("nr%v:", native), NativeBegin: native})
	defer st.Close()
	counted := []string{"cmdstat_evalsha:", "cmdstat_eval:"}
	if native {
		counted = []string{"cmdstat_set:"} // a script's SETs count too
	}
	const key = "once"
	// Warm the connections and load the scripts.
	if _, _, err := st.Get(ctx, key); err != nil {
		t.Fatal(err)
	}
	node, err := c.MasterForKey(ctx, st.Key(key))
	if err != nil {
		t.Fatal(err)
	}
	// Load the scripts on that primary (a first EVALSHA answers NOSCRIPT):
	// begin and release a key of the same primary.
	for i := 0; ; i++ {
		warm := "warm-" + strconv.Itoa(i)
		n, err := c.MasterForKey(ctx, st.Key(warm))
		if err != nil {
			t.Fatal(err)
		}
		if n.Options().Addr != node.Options().Addr {
			continue
		}
		b, err := st.Begin(ctx, warm, nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Release(ctx, warm, b.Fence); err != nil {
			t.Fatal(err)
		}
		break
	}
	admin := redis.NewClient(&redis.Options{Addr: node.Options().Addr})
	defer admin.Close()
	calls := func() int {
		info, err := admin.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, name := range counted {
			if i := strings.Index(info, name+"calls="); i >= 0 {
				v := info[i+len(name)+len("calls="):]
				v = v[:strings.IndexAny(v, ",\r\n")]
				x, _ := strconv.Atoi(v)
				n += x
			}
		}
		return n
	}
	before := calls()
	slept := make(chan error, 1)
	go func() { slept <- admin.Do(ctx, "DEBUG", "SLEEP", "0.7").Err() }()
	time.Sleep(100 * time.Millisecond) // the primary is asleep: scripts wait in its socket buffers
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = st.Begin(bctx, key, []byte("fp"), time.Minute)
	cancel()
	if serr := <-slept; serr != nil {
		t.Fatalf("DEBUG SLEEP: %v", serr)
	}
	if err == nil || !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin across a paused primary = %v, want ErrStoreUnavailable (outcome unknown)", err)
	}
	time.Sleep(200 * time.Millisecond) // let the woken server run what it read
	if got := calls() - before; got != 1 {
		t.Errorf("Begin's script or native SET ran %d times on the primary, want 1 (a lost reply must not be resent)", got)
	}
	rec, ok, err := st.Get(ctx, key)
	if err != nil || !ok || rec.State != idem.StateInProgress {
		t.Errorf("after the lost reply Get = %+v, %v, %v; want the claim in progress", rec, ok, err)
	}
}
