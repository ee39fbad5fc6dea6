package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench/pg:", err)
		os.Exit(1)
	}
}

// workload is one measured operation. op performs one unit in round on
// worker w (sequence number i) and returns how many rows (ids, pairs) it
// covered.
type workload struct {
	name  string
	floor string // name of the floor workload it is compared to, if any
	op    func(ctx context.Context, round, w, i int) (int, error)
}

type bench struct {
	pool   *pgxpool.Pool
	store  *pgxstore.Store
	async  *pgxstore.Store // on a pool with synchronous_commit=off
	claims bool            // measure the claim workloads
	nkeys  int             // completed keys replayed by the replay workloads
	// statsWait is how long -costs and -sizes wait for the server to
	// publish its statistics.
	statsWait time.Duration
	plainR    string // plain records table (floor for pairs)
	plainC    string // plain claims table (floor for claims)
	inTx      bool   // run each claim (and its floor) in BEGIN … COMMIT
	run       string // unique per process, so rounds never collide
	fp        []byte
	result    []byte
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench/pg", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("dsn", os.Getenv("IDEM_POSTGRES_DSN"), "PostgreSQL connection string (default $IDEM_POSTGRES_DSN)")
	rounds := fs.Int("rounds", 15, "rounds (the report gives medians)")
	dur := fs.Duration("dur", 500*time.Millisecond, "duration of each workload in each round")
	workers := fs.Int("workers", 4, "concurrent workers (pool connections)")
	inTx := fs.Bool("tx", false, "run each claim and each floor insert in its own BEGIN … COMMIT, as a consumer does (default: autocommit)")
	claims := fs.Bool("claims", true, "measure the claim workloads")
	resultSize := fs.Int("result", 256, "bytes of the stored result")
	nkeys := fs.Int("replay-keys", 1000, "completed keys the replay workloads cycle through")
	costs := fs.Int("costs", 0, "if > 0, measure per-operation costs (transaction ids, WAL bytes, WAL syncs) over this many sequential operations of each kind (implies -sizes)")
	statsWait := fs.Duration("stats-wait", 1200*time.Millisecond, "how long -costs and -sizes wait for statistics to be published")
	sizes := fs.Bool("sizes", false, "after the load, report bytes per row of the tables and the share of HOT updates")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" {
		return errors.New("no -dsn and IDEM_POSTGRES_DSN is unset")
	}
	cfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		return err
	}
	cfg.MaxConns = int32(*workers)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	acfg := cfg.Copy()
	acfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	apool, err := pgxpool.NewWithConfig(ctx, acfg)
	if err != nil {
		return err
	}
	defer apool.Close()

	schema := fmt.Sprintf("idem_bench_%08x", rand.Uint32())
	b := &bench{
		pool:   pool,
		store:  pgxstore.New(pool, pgxstore.Options{Schema: schema}),
		plainR: pgx.Identifier{schema, "plain_records"}.Sanitize(),
		plainC: pgx.Identifier{schema, "plain_claims"}.Sanitize(),
		run:    strconv.FormatUint(rand.Uint64(), 36),
		inTx:   *inTx,
		fp:     idem.Fingerprint([]byte("bench")),
		result: make([]byte, *resultSize),
		async:  pgxstore.New(apool, pgxstore.Options{Schema: schema}),
		claims: *claims,
		nkeys:  max(1, *nkeys),

		statsWait: *statsWait,
	}
	if err := b.store.Migrate(ctx); err != nil {
		return err
	}
	defer pool.Exec(context.WithoutCancel(ctx), `DROP SCHEMA `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	// The floor tables have the same keys as ours and nothing else.
	if _, err := pool.Exec(ctx, `CREATE TABLE `+b.plainR+` (key bytea PRIMARY KEY, result bytea);
CREATE TABLE `+b.plainC+` (scope bytea NOT NULL, id bytea NOT NULL, PRIMARY KEY (scope, id))`); err != nil {
		return err
	}
	if err := b.preload(ctx); err != nil {
		return err
	}

	ws := b.workloads()
	rates := make(map[string][]float64)
	for r := range *rounds {
		// Workloads come in (floor, ours) pairs, measured back to back; odd
		// rounds swap each pair so that neither side always runs first.
		order := slices.Clone(ws)
		if r%2 == 1 {
			for i := 0; i+1 < len(order); i += 2 {
				order[i], order[i+1] = order[i+1], order[i]
			}
		}
		for _, w := range order {
			rate, err := measure(ctx, w, *workers, *dur, r)
			if err != nil {
				return fmt.Errorf("%s: %w", w.name, err)
			}
			rates[w.name] = append(rates[w.name], rate)
		}
		fmt.Fprintf(stderr, "round %d/%d done\n", r+1, *rounds)
	}
	mode := "autocommit"
	if *inTx {
		mode = "each claim in BEGIN … COMMIT"
	}
	report(stdout, ws, rates, *rounds, *dur, *workers, mode, b.claims)
	if *costs > 0 || *sizes {
		return b.costs(ctx, stdout, *costs)
	}
	return nil
}

// replayKey is the i-th of the completed keys the replay workloads read.
func (b *bench) replayKey(i int) string { return b.run + "/replay/" + strconv.Itoa(i%b.nkeys) }

// preload completes the keys the replay workloads replay, and writes the
// same keys and results into the plain table for the floor.
func (b *bench) preload(ctx context.Context) error {
	for i := range b.nkeys {
		k := b.replayKey(i)
		bg, err := b.store.Begin(ctx, k, b.fp, time.Minute)
		if err != nil {
			return err
		}
		if err := b.store.Complete(ctx, k, bg.Fence, b.result, 24*time.Hour); err != nil {
			return err
		}
		if _, err := b.pool.Exec(ctx, `INSERT INTO `+b.plainR+` (key, result) VALUES ($1, $2)`, []byte(k), b.result); err != nil {
			return err
		}
	}
	return nil
}

// with runs fn on the pool (autocommit) or, with -tx, in a transaction.
func (b *bench) with(ctx context.Context, fn func(db pgxstore.DBTX) error) error {
	if !b.inTx {
		return fn(b.pool)
	}
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error { return fn(tx) })
}

// key returns a row key unique to this process, round, worker and sequence.
func (b *bench) key(round, w, i int) string {
	return b.run + "/" + strconv.Itoa(round) + "/" + strconv.Itoa(w) + "/" + strconv.Itoa(i)
}

func (b *bench) ids(round, w, i, n int) []string {
	ids := make([]string, n)
	base := b.key(round, w, i) + "/n" + strconv.Itoa(n) + "/"
	for j := range ids {
		ids[j] = base + strconv.Itoa(j)
	}
	return ids
}

func (b *bench) workloads() []workload {
	ws := []workload{
		{name: "plain insert+update pair", op: func(ctx context.Context, round, w, i int) (int, error) {
			k := []byte(b.key(round, w, i))
			if _, err := b.pool.Exec(ctx, `INSERT INTO `+b.plainR+` (key) VALUES ($1) ON CONFLICT DO NOTHING`, k); err != nil {
				return 0, err
			}
			_, err := b.pool.Exec(ctx, `UPDATE `+b.plainR+` SET result = $2 WHERE key = $1`, k, b.result)
			return 1, err
		}},
		{name: "pgxstore begin+complete pair", floor: "plain insert+update pair", op: func(ctx context.Context, round, w, i int) (int, error) {
			k := b.key(round, w, i)
			bg, err := b.store.Begin(ctx, k, b.fp, time.Minute)
			if err != nil {
				return 0, err
			}
			if bg.Outcome != idem.Acquired {
				return 0, fmt.Errorf("begin %s: %v", k, bg.Outcome)
			}
			return 1, b.store.Complete(ctx, k, bg.Fence, b.result, time.Hour)
		}},
		{name: "plain SELECT result by key", op: func(ctx context.Context, round, w, i int) (int, error) {
			var r []byte
			err := b.pool.QueryRow(ctx, `SELECT result FROM `+b.plainR+` WHERE key = $1`, []byte(b.replayKey(w*7919+i))).Scan(&r)
			return 1, err
		}},
		{name: "pgxstore replay", floor: "plain SELECT result by key", op: func(ctx context.Context, round, w, i int) (int, error) {
			return 1, b.replay(ctx, b.store, w*7919+i)
		}},
		{name: "pgxstore replay, synchronous_commit off", op: func(ctx context.Context, round, w, i int) (int, error) {
			return 1, b.replay(ctx, b.async, w*7919+i)
		}},
		{name: "pgxstore replay, synchronous_commit on", floor: "pgxstore replay, synchronous_commit off", op: func(ctx context.Context, round, w, i int) (int, error) {
			return 1, b.replay(ctx, b.store, w*7919+i)
		}},
	}
	if !b.claims {
		return ws
	}
	for _, n := range []int{1, 100, 1000} {
		plain := fmt.Sprintf("plain INSERT … ON CONFLICT DO NOTHING, %d id(s)", n)
		ws = append(ws, workload{name: plain, op: func(ctx context.Context, round, w, i int) (int, error) {
			return n, b.with(ctx, func(db pgxstore.DBTX) error {
				if n == 1 {
					_, err := db.Exec(ctx, `INSERT INTO `+b.plainC+` (scope, id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
						[]byte("bench"), []byte(b.key(round, w, i)))
					return err
				}
				ids := b.ids(round, w, i, n)
				raw := make([][]byte, len(ids))
				for j, id := range ids {
					raw[j] = []byte(id)
				}
				tag, err := db.Exec(ctx, `INSERT INTO `+b.plainC+` (scope, id) SELECT $1, u FROM unnest($2::bytea[]) u ON CONFLICT DO NOTHING`,
					[]byte("bench"), raw)
				if err == nil && tag.RowsAffected() != int64(n) {
					err = fmt.Errorf("inserted %d of %d", tag.RowsAffected(), n)
				}
				return err
			})
		}})
		name := "pgxstore Claim"
		if n > 1 {
			name = fmt.Sprintf("pgxstore ClaimBatch, %d ids", n)
		}
		ws = append(ws, workload{name: name, floor: plain, op: func(ctx context.Context, round, w, i int) (int, error) {
			return n, b.with(ctx, func(db pgxstore.DBTX) error {
				if n == 1 {
					first, err := b.store.Claim(ctx, db, "bench", b.key(round, w, i))
					if err == nil && !first {
						err = errors.New("claim not first")
					}
					return err
				}
				fresh, err := b.store.ClaimBatch(ctx, db, "bench", b.ids(round, w, i, n))
				if err == nil && len(fresh) != n {
					err = fmt.Errorf("%d of %d fresh", len(fresh), n)
				}
				return err
			})
		}})
	}
	return ws
}

// replay begins a completed key on s and checks that it is a replay.
func (b *bench) replay(ctx context.Context, s *pgxstore.Store, i int) error {
	k := b.replayKey(i)
	bg, err := s.Begin(ctx, k, b.fp, time.Minute)
	if err == nil && (bg.Outcome != idem.Replay || len(bg.Result) != len(b.result)) {
		err = fmt.Errorf("begin %s: %v", k, bg.Outcome)
	}
	return err
}

// measure runs w with workers goroutines for d and returns rows per second.
func measure(ctx context.Context, w workload, workers int, d time.Duration, round int) (float64, error) {
	runtime.GC()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		rows  atomic.Int64
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	start := time.Now()
	deadline := start.Add(d)
	for wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				n, err := w.op(ctx, round, wk, i)
				if err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
				rows.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, first
	}
	return float64(rows.Load()) / time.Since(start).Seconds(), nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report prints the median rate of each workload and, for ours, the median
// over rounds of the per-round cost ratio to its floor (the two ran back to
// back, so the ratio cancels most of the load other processes put on the
// machine, which the absolute rates do not).
func report(out io.Writer, ws []workload, rates map[string][]float64, rounds int, d time.Duration, workers int, mode string, claims bool) {
	fmt.Fprintf(out, "%d rounds × %v per workload, %d workers, claims: %s, GOMAXPROCS %d\n\n", rounds, d, workers, mode, runtime.GOMAXPROCS(0))
	fmt.Fprintln(out, "| workload | rows/s (median) | min | max | cost vs floor (median of per-round ratios) |")
	fmt.Fprintln(out, "| --- | ---: | ---: | ---: | ---: |")
	for _, w := range ws {
		ratio := ""
		if w.floor != "" {
			ratio = fmt.Sprintf("%.2f×", median(ratios(rates[w.floor], rates[w.name])))
		}
		fmt.Fprintf(out, "| %s | %.0f | %.0f | %.0f | %s |\n", w.name, median(rates[w.name]), slices.Min(rates[w.name]), slices.Max(rates[w.name]), ratio)
	}
	if !claims {
		return
	}
	single := rates["pgxstore Claim"]
	fmt.Fprintf(out, "\nids/s of ClaimBatch over ids/s of single Claim (median of per-round ratios): batch of 100: %.1f×, of 1000: %.1f×.\n",
		median(ratios(rates["pgxstore ClaimBatch, 100 ids"], single)), median(ratios(rates["pgxstore ClaimBatch, 1000 ids"], single)))
	fmt.Fprintf(out, "The floor itself: plain batch of 1000 over plain single: %.1f×.\n",
		median(ratios(rates["plain INSERT … ON CONFLICT DO NOTHING, 1000 id(s)"], rates["plain INSERT … ON CONFLICT DO NOTHING, 1 id(s)"])))
}

// ratios returns a[i]/b[i] for each round.
func ratios(a, b []float64) []float64 {
	r := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return r
}
