// Command redis measures redisstore against Redis's own baseline on one
// server: redis-benchmark's SET key v NX PX (one round trip, the cheapest
// write that can claim a key) versus redisstore's first executions
// (Begin + Complete on a fresh key: two round trips) and replays (Begin on a
// completed key: one round trip), all at the same concurrency. It runs the
// three measurements in interleaved rounds and prints the median of each and
// the ratios, plus the round trips per request counted by a go-redis hook.
//
//	go run ./bench/redis -addr 127.0.0.1:16379 -c 32 -n 200000 -rounds 3
//
// See docs/bench/redis.md for figures.
package main

import (
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"

	"github.com/idemkit/idem/bench/internal/par"
	"github.com/idemkit/idem/bench/internal/redisinfo"
	"github.com/redis/go-redis/v9"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/redis:", err)
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	addr   string
	conc   int
	n      int
	rounds int
	bin    string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("redis", flag.ContinueOnError)
	def := os.Getenv("IDEM_REDIS_ADDR")
	if def == "" {
		def = "127.0.0.1:16379"
	}
	fs.StringVar(&cfg.addr, "addr", def, "Redis server host:port (default $IDEM_REDIS_ADDR)")
	fs.IntVar(&cfg.conc, "c", 32, "concurrent clients (connections and goroutines)")
	fs.IntVar(&cfg.n, "n", 200000, "requests per measurement")
	fs.IntVar(&cfg.rounds, "rounds", 3, "interleaved rounds; medians are reported")
	fs.StringVar(&cfg.bin, "redis-benchmark", "redis-benchmark", "redis-benchmark executable")
	autopipeline := fs.Bool("autopipeline", false, "run the scripts through a go-redis AutoPipeliner (Options.Scripter)")
	protocol := fs.Int("protocol", 3, "RESP version go-redis speaks (2 or 3)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the redisstore measurements to this file")
	waitReplicas := fs.Int("wait-replicas", 0, "redisstore Options.WaitReplicas: WAIT for this many replicas after each acquiring Begin and each Complete (the server needs them)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	host, port, ok := strings.Cut(cfg.addr, ":")
	if !ok {
		return fmt.Errorf("-addr %q: want host:port", cfg.addr)
	}

	hook := &counter{}
	c := redis.NewClient(&redis.Options{Addr: cfg.addr, Protocol: *protocol, PoolSize: cfg.conc, MinIdleConns: cfg.conc})
	defer c.Close()
	c.AddHook(hook)
	if err := c.Ping(ctx).Err(); err != nil {
		return err
	}
	o := redisstore.Options{Prefix: fmt.Sprintf("bench:%d:", time.Now().UnixNano()), WaitReplicas: *waitReplicas}
	if *autopipeline {
		ap, err := c.AutoPipeline()
		if err != nil {
			return err
		}
		defer ap.Close()
		// Count requests, not the AutoPipeliner's batches.
		hook.off.Store(true)
		o.Scripter = &countingScripter{Scripter: ap, n: &hook.n}
	}
	st := redisstore.New(c, o)
	defer st.Close()

	// Completed keys to replay, and a warm script cache.
	const hot = 1024
	for i := range hot {
		k := "hot/" + strconv.Itoa(i)
		b, err := st.Begin(ctx, k, fp, time.Hour)
		if err != nil {
			return err
		}
		if err := st.Complete(ctx, k, b.Fence, result, time.Hour); err != nil {
			return err
		}
	}

	var setnx, first, replay []float64
	var cpuSet, cpuFirst, cpuReplay []float64 // server CPU µs per request
	var rtFirst, rtReplay float64
	for r := range cfg.rounds {
		cpu0, err := redisinfo.CPU(ctx, c)
		if err != nil {
			return err
		}
		v, err := redisBenchmark(ctx, cfg, host, port)
		if err != nil {
			return err
		}
		setnx = append(setnx, v)
		cpu1, err := redisinfo.CPU(ctx, c)
		if err != nil {
			return err
		}
		cpuSet = append(cpuSet, (cpu1-cpu0)/float64(cfg.n))
		before := hook.n.Load()
		v, err = measure(cfg, func(w, i int) error {
			k := fmt.Sprintf("new/%d/%d/%d", r, w, i)
			b, err := st.Begin(ctx, k, fp, time.Hour)
			if err != nil {
				return err
			}
			if b.Outcome != idem.Acquired {
				return fmt.Errorf("begin %s: %v", k, b.Outcome)
			}
			return st.Complete(ctx, k, b.Fence, result, time.Hour)
		})
		if err != nil {
			return err
		}
		first = append(first, v)
		rtFirst = float64(hook.n.Load()-before) / float64(cfg.n)
		cpu2, err := redisinfo.CPU(ctx, c)
		if err != nil {
			return err
		}
		cpuFirst = append(cpuFirst, (cpu2-cpu1)/float64(cfg.n))
		before = hook.n.Load()
		v, err = measure(cfg, func(w, i int) error {
			b, err := st.Begin(ctx, "hot/"+strconv.Itoa((w*7919+i)%hot), fp, time.Hour)
			if err == nil && b.Outcome != idem.Replay {
				err = fmt.Errorf("begin: %v, want replay", b.Outcome)
			}
			return err
		})
		if err != nil {
			return err
		}
		replay = append(replay, v)
		rtReplay = float64(hook.n.Load()-before) / float64(cfg.n)
		cpu3, err := redisinfo.CPU(ctx, c)
		if err != nil {
			return err
		}
		cpuReplay = append(cpuReplay, (cpu3-cpu2)/float64(cfg.n))
		fmt.Fprintf(out, "round %d: SET NX PX %.0f/s, first executions %.0f pairs/s, replays %.0f/s\n",
			r+1, setnx[r], first[r], replay[r])
	}
	// Remove what the benchmark wrote.
	if err := redisinfo.DeleteMatching(ctx, c, st.Key("")[:strings.IndexByte(st.Key(""), '{')]+"*"); err != nil {
		return err
	}
	ms, mf, mr := median(setnx), median(first), median(replay)
	fmt.Fprintf(out, "\nmedians over %d rounds, %d requests each, concurrency %d, server %s:\n", cfg.rounds, cfg.n, cfg.conc, cfg.addr)
	fmt.Fprintf(out, "  %-48s %9s %7s %6s %s\n", "", "per s", "RTs", "ratio", "server CPU/req")
	fmt.Fprintf(out, "  %-48s %9.0f %7.2f %5.0f%% %6.1f µs\n", "redis-benchmark SET __rand_int__ v NX PX 60000", ms, 1.0, 100.0, median(cpuSet))
	fmt.Fprintf(out, "  %-48s %9.0f %7.2f %5.0f%% %6.1f µs  (goal >= 35%%)\n", "redisstore first execution (Begin+Complete)", mf, rtFirst, 100*mf/ms, median(cpuFirst))
	fmt.Fprintf(out, "  %-48s %9.0f %7.2f %5.0f%% %6.1f µs  (goal >= 70%%)\n", "redisstore replay (Begin)", mr, rtReplay, 100*mr/ms, median(cpuReplay))
	ratios := func(a, b []float64) []float64 {
		r := make([]float64, len(a))
		for i := range a {
			r[i] = a[i] / b[i]
		}
		return r
	}
	fmt.Fprintf(out, "  median of per-round ratios: first %.0f%%, replay %.0f%%\n",
		100*median(ratios(first, setnx)), 100*median(ratios(replay, setnx)))
	return nil
}

var (
	fp     = idem.Fingerprint([]byte("POST /charges"), []byte(`{"amount":1000}`))
	result = []byte(`{"status":201,"body":{"id":"ch_1","amount":1000}}`)
)

// measure runs n calls of f over conc goroutines and returns calls/s.
func measure(cfg config, f func(worker, i int) error) (float64, error) {
	d, err := par.Run(cfg.conc, cfg.n, f)
	if err != nil {
		return 0, err
	}
	return float64(cfg.n) / d.Seconds(), nil
}

// redisBenchmark runs redis-benchmark's SET NX PX at the same concurrency and
// returns its requests per second.
func redisBenchmark(ctx context.Context, cfg config, host, port string) (float64, error) {
	cmd := exec.CommandContext(ctx, cfg.bin, "-h", host, "-p", port,
		"-c", strconv.Itoa(cfg.conc), "-n", strconv.Itoa(cfg.n), "-r", "1000000", "--csv",
		"SET", "__rand_int__", "v", "NX", "PX", "60000")
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %w", err)
	}
	recs, err := csv.NewReader(strings.NewReader(string(b))).ReadAll()
	if err != nil || len(recs) < 2 || len(recs[1]) < 2 {
		return 0, fmt.Errorf("redis-benchmark: unexpected output %q", b)
	}
	return strconv.ParseFloat(recs[1][1], 64)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// counter counts round trips: one per command sent alone, one per pipeline,
// unless off is set.
type counter struct {
	n   atomic.Int64
	off atomic.Bool
}

func (h *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !h.off.Load() {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !h.off.Load() {
			h.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// countingScripter counts the scripts sent through an AutoPipeliner, whose
// hooks see batches, not requests: each script is one request awaiting its
// own reply, that is one round trip.
type countingScripter struct {
	redis.Scripter
	n *atomic.Int64
}

func (s *countingScripter) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	s.n.Add(1)
	return s.Scripter.EvalSha(ctx, sha1, keys, args...)
}

func (s *countingScripter) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	s.n.Add(1)
	return s.Scripter.Eval(ctx, script, keys, args...)
}
