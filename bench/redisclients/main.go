// Command redisclients measures redisstore's scripts through three Redis
// clients side by side, in one run on one server, to choose the client by
// the numbers:
//
//   - go-redis: redisstore on a *redis.Client (one connection per call in
//     flight, each script its own write and read);
//   - go-redis AutoPipeliner: the same client with redisstore's
//     Options.AutoPipeline (idemproxy's default on redis://);
//   - rueidis: redisstore with Options.Scripter set to an adapter over a
//     rueidis client, which writes the commands of concurrent callers
//     together (auto-pipelining) on a shared connection.
//
// For each client it runs, at the same concurrency: first executions
// (Begin + Complete on a fresh key), replays (Begin on a completed key), and
// the raw loop of the issue that asked for this comparison: one small
// EVALSHA (GET, else SET PX) per call, sent with the client's own API. The
// clients and scenarios are interleaved round by round, so that the noise of
// a shared machine hits all alike; the table shows medians, the median of
// the per-round ratios to go-redis, the client process's CPU time per call,
// the server's CPU time per call (INFO cpu) and the commands the server ran
// per call (INFO commandstats, the commands inside scripts included).
//
//	go run ./redisclients -addr 127.0.0.1:16379 -c 32 -n 100000 -rounds 5   # from bench/
//
// See docs/bench/redis.md for figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"

	"github.com/idemkit/idem/bench/internal/par"
	"github.com/idemkit/idem/bench/internal/redisclient"
	"github.com/idemkit/idem/bench/internal/redisinfo"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "redisclients:", err)
		os.Exit(1)
	}
}

type config struct {
	addr    string
	conc    int
	n       int
	rounds  int
	clients []string
}

// variant is one client under test.
type variant struct {
	name  string
	store *redisstore.Store
	raw   func(ctx context.Context, key string) error
	close func()
}

// sample is one measurement.
type sample struct {
	rate, clientCPU, serverCPU, cmds float64
	perCmd                           map[string]float64
}

var allClients = redisclient.Names

func run(ctx context.Context, args []string, out io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("redisclients", flag.ContinueOnError)
	def := os.Getenv("IDEM_REDIS_ADDR")
	if def == "" {
		def = "127.0.0.1:16379"
	}
	fs.StringVar(&cfg.addr, "addr", def, "Redis server host:port (default $IDEM_REDIS_ADDR)")
	fs.IntVar(&cfg.conc, "c", 32, "concurrent callers")
	fs.IntVar(&cfg.n, "n", 100000, "calls per measurement")
	fs.IntVar(&cfg.rounds, "rounds", 5, "interleaved rounds; medians are reported")
	clients := fs.String("clients", strings.Join(allClients, ","), "clients to measure: go-redis, go-redis-ap, rueidis")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.conc < 1 || cfg.n < cfg.conc || cfg.rounds < 1 {
		return errors.New("want -c >= 1, -n >= -c and -rounds >= 1")
	}
	for _, c := range strings.Split(*clients, ",") {
		if !slices.Contains(allClients, c) {
			return fmt.Errorf("-clients: unknown client %q (want %s)", c, strings.Join(allClients, ", "))
		}
		cfg.clients = append(cfg.clients, c)
	}

	admin := redis.NewClient(&redis.Options{Addr: cfg.addr, MaxRetries: -1})
	defer admin.Close()
	if err := admin.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", cfg.addr, err)
	}
	prefix := fmt.Sprintf("benchclients:%d:", time.Now().UnixNano())
	defer func() { _ = redisinfo.DeleteMatching(context.WithoutCancel(ctx), admin, prefix+"*") }()
	if err := rawScript.Load(ctx, admin).Err(); err != nil {
		return err
	}

	var vs []*variant
	defer func() {
		for _, v := range vs {
			v.close()
		}
	}()
	for _, name := range cfg.clients {
		v, err := newVariant(ctx, name, cfg, prefix+name+":")
		if err != nil {
			return err
		}
		vs = append(vs, v)
	}

	// Completed keys to replay.
	const hot = 1024
	for _, v := range vs {
		for i := range hot {
			k := "hot/" + strconv.Itoa(i)
			b, err := v.store.Begin(ctx, k, fp, time.Hour)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			if err := v.store.Complete(ctx, k, b.Fence, result, time.Hour); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}

	scenarios := []struct {
		name string
		call func(v *variant, r, w, i int) error
	}{
		{"first execution (Begin + Complete)", func(v *variant, r, w, i int) error {
			k := fmt.Sprintf("new/%d/%d/%d", r, w, i)
			b, err := v.store.Begin(ctx, k, fp, time.Hour)
			if err != nil {
				return err
			}
			if b.Outcome != idem.Acquired {
				return fmt.Errorf("begin %s: %v, want acquired", k, b.Outcome)
			}
			return v.store.Complete(ctx, k, b.Fence, result, time.Hour)
		}},
		{"replay (Begin)", func(v *variant, r, w, i int) error {
			b, err := v.store.Begin(ctx, "hot/"+strconv.Itoa((w*7919+i)%hot), fp, time.Hour)
			if err == nil && b.Outcome != idem.Replay {
				err = fmt.Errorf("begin: %v, want replay", b.Outcome)
			}
			return err
		}},
		{"raw EVALSHA (GET, else SET PX)", func(v *variant, r, w, i int) error {
			return v.raw(ctx, fmt.Sprintf("%s%s:raw/%d/%d/%d", prefix, v.name, r, w, i))
		}},
	}

	res := make([][][]sample, len(scenarios)) // [scenario][variant][round]
	for s := range scenarios {
		res[s] = make([][]sample, len(vs))
	}
	for r := range cfg.rounds {
		for s, sc := range scenarios {
			// Alternate which client goes first from round to round.
			order := make([]int, len(vs))
			for i := range order {
				order[i] = (i + r) % len(vs)
			}
			for _, vi := range order {
				v := vs[vi]
				smp, err := measure(ctx, admin, cfg, func(w, i int) error { return sc.call(v, r, w, i) })
				if err != nil {
					return fmt.Errorf("%s, %s: %w", v.name, sc.name, err)
				}
				res[s][vi] = append(res[s][vi], smp)
				fmt.Fprintf(os.Stderr, "round %d %-26s %-36s %8.0f/s\n", r+1, v.name, sc.name, smp.rate)
			}
		}
	}

	fmt.Fprintf(out, "%d rounds of %d calls per cell, %d callers, server %s, GOMAXPROCS %d\n\n", cfg.rounds, cfg.n, cfg.conc, cfg.addr, runtimeProcs())
	fmt.Fprintln(out, "| scenario | client | calls/s (median) | per round | vs go-redis, per round (median) | client CPU/call | server CPU/call | server commands/call |")
	fmt.Fprintln(out, "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
	for s, sc := range scenarios {
		for vi, v := range vs {
			rows := res[s][vi]
			rates := pick(rows, func(x sample) float64 { return x.rate })
			ratio := "—"
			if base := slices.Index(cfg.clients, "go-redis"); base >= 0 && base != vi {
				var rr []float64
				for r := range rows {
					rr = append(rr, rows[r].rate/res[s][base][r].rate)
				}
				ratio = fmt.Sprintf("%.0f%%", 100*median(rr))
			}
			var per []string
			for _, x := range rates {
				per = append(per, fmt.Sprintf("%.0f", x))
			}
			fmt.Fprintf(out, "| %s | %s | %.0f | %s | %s | %.1f µs | %.1f µs | %s |\n", sc.name, v.name, median(rates), strings.Join(per, ", "), ratio,
				median(pick(rows, func(x sample) float64 { return x.clientCPU })),
				median(pick(rows, func(x sample) float64 { return x.serverCPU })),
				cmdSummary(rows[len(rows)-1]))
		}
	}
	return nil
}

func newVariant(ctx context.Context, name string, cfg config, prefix string) (*variant, error) {
	c, err := redisclient.Open(ctx, name, cfg.addr, cfg.conc, redisstore.Options{Prefix: prefix})
	if err != nil {
		return nil, err
	}
	v := &variant{name: name, store: c.Store, close: c.Close}
	switch {
	case c.Rueidis != nil:
		rc, sha := c.Rueidis, rawScript.Hash()
		v.raw = func(ctx context.Context, k string) error {
			err := rc.Do(ctx, rc.B().Evalsha().Sha1(sha).Numkeys(1).Key(k).Arg("v").Build()).Error()
			if rueidis.IsRedisNil(err) {
				err = nil
			}
			return err
		}
	case c.AP != nil:
		v.raw = func(ctx context.Context, k string) error {
			return rawErr(rawScript.Run(ctx, c.AP, []string{k}, "v").Err())
		}
	default:
		v.raw = func(ctx context.Context, k string) error {
			return rawErr(rawScript.Run(ctx, c.Redis, []string{k}, "v").Err())
		}
	}
	return v, nil
}

// rawScript is the small script: GET, else SET PX.
var rawScript = redis.NewScript(`local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000)
return false`)

func rawErr(err error) error {
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

var (
	fp     = idem.Fingerprint([]byte("POST /charges"), []byte(`{"amount":1000}`))
	result = []byte(`{"status":201,"body":{"id":"ch_1","amount":1000}}`)
)

// measure runs cfg.n calls of f over cfg.conc goroutines.
func measure(ctx context.Context, admin *redis.Client, cfg config, f func(worker, i int) error) (sample, error) {
	st0, err := redisinfo.CommandStats(ctx, admin)
	if err != nil {
		return sample{}, err
	}
	srv0, err := redisinfo.CPU(ctx, admin)
	if err != nil {
		return sample{}, err
	}
	cpu0 := processCPU()
	d, err := par.Run(cfg.conc, cfg.n, f)
	cpu := processCPU() - cpu0
	if err != nil {
		return sample{}, err
	}
	srv1, err := redisinfo.CPU(ctx, admin)
	if err != nil {
		return sample{}, err
	}
	st1, err := redisinfo.CommandStats(ctx, admin)
	if err != nil {
		return sample{}, err
	}
	n := float64(cfg.n)
	s := sample{
		rate:      n / d.Seconds(),
		clientCPU: float64(cpu.Microseconds()) / n,
		serverCPU: (srv1 - srv0) / n,
		perCmd:    map[string]float64{},
	}
	for k, v := range st1 {
		if k == "info" {
			continue
		}
		if dv := float64(v-st0[k]) / n; dv >= 0.005 {
			s.perCmd[k] = dv
			s.cmds += dv
		}
	}
	return s, nil
}

// cmdSummary formats the commands per call, most frequent first.
func cmdSummary(s sample) string {
	keys := make([]string, 0, len(s.perCmd))
	for k := range s.perCmd {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if s.perCmd[keys[i]] != s.perCmd[keys[j]] {
			return s.perCmd[keys[i]] > s.perCmd[keys[j]]
		}
		return keys[i] < keys[j]
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", strings.ToUpper(k), s.perCmd[k]))
	}
	return fmt.Sprintf("%.2f: %s", s.cmds, strings.Join(parts, ", "))
}

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pick(s []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = f(x)
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
