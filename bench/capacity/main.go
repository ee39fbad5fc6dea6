// Command capacity measures what one stored record costs in each store, for
// the benchmark's answer (idemproxy's stored response of bench/load's
// upstream: 201, Content-Type and Content-Length, a 94-byte JSON body), and
// prints a capacity table: bytes per record, and what a rate of first
// executions kept for a retention costs.
//
//	cd bench && go run ./capacity -n 20000          # file: and memory:
//	IDEM_REDIS_ADDR=… IDEM_POSTGRES_DSN=… go run ./capacity   # adds Redis and PostgreSQL
//
// Each store receives n records (Begin, then Complete, fresh keys made by
// idem.RecordKey of a 16-byte scope, as idemhttp.IdentityScope makes, and a
// 36-character key):
//
//   - memory: the Go heap in use after a GC, before and after, per record;
//   - file: after a clean Close (every record in the B+tree), the file's
//     size per record, and the B+tree pages in use (the write-ahead log is a
//     fixed 4 MiB, not counted);
//   - Redis: the median MEMORY USAGE of 500 records, and INFO memory's
//     used_memory before and after, per record;
//   - PostgreSQL: pg_total_relation_size (heap, TOAST and every index) of a
//     table of its own before and after, per record, and the heap and each
//     index apart.
//
// See docs/capacity.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/filestore"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/pgxstore"
	"github.com/idemkit/idem/redisstore"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}

// measurement is what one store spends per record.
type measurement struct {
	store   string
	perRec  float64 // bytes per record, the figure the capacity table uses
	how     string  // how perRec was measured
	details string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("capacity", flag.ContinueOnError)
	n := fs.Int("n", 20000, "records per store")
	redisAddr := fs.String("redis", os.Getenv("IDEM_REDIS_ADDR"), "Redis host:port (empty: skip Redis)")
	pg := fs.String("postgres", os.Getenv("IDEM_POSTGRES_DSN"), "PostgreSQL URL (empty: skip PostgreSQL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 100 || *n > 10_000_000 {
		return errors.New("-n: between 100 and 10,000,000")
	}
	result, err := answer()
	if err != nil {
		return err
	}
	var ms []measurement
	m, err := memoryStore(ctx, *n, result)
	if err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	ms = append(ms, m)
	if m, err = fileStore(ctx, *n, result); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	ms = append(ms, m)
	if *redisAddr != "" {
		if m, err = redisStore(ctx, *n, result, *redisAddr); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		ms = append(ms, m)
	}
	if *pg != "" {
		if m, err = postgresStore(ctx, *n, result, *pg); err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		ms = append(ms, m)
	}
	report(out, *n, len(result), ms)
	return nil
}

// answer is the stored form of bench/load's upstream answer as idemproxy
// keeps it.
func answer() ([]byte, error) {
	body := fmt.Sprintf(`{"id":"ch_%012d","object":"charge","amount":1000,"currency":"eur","status":"succeeded"}`, 1)
	r := &idemhttp.Response{
		Status: http.StatusCreated,
		Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {strconv.Itoa(len(body))}},
		Body:   []byte(body),
	}
	return r.MarshalBinary()
}

var fp = idem.Fingerprint([]byte("POST"), []byte("/v1/charges"), []byte("application/json"), []byte(`{"amount":1000,"currency":"eur","customer":"cus_123","description":"load test"}`))

// keys returns n record keys: one 16-byte scope (idemhttp.ScopeSize) and
// 36-character keys, as a UUID.
func keys(n int) []string {
	var sc [idemhttp.ScopeSize]byte
	_, _ = rand.Read(sc[:])
	out := make([]string, n)
	for i := range out {
		var u [16]byte
		_, _ = rand.Read(u[:])
		h := hex.EncodeToString(u[:])
		out[i] = idem.RecordKey(string(sc[:]), h[:8]+"-"+h[8:12]+"-"+h[12:16]+"-"+h[16:20]+"-"+h[20:])
	}
	return out
}

// fill begins and completes every key.
func fill(ctx context.Context, st idem.Store, ks []string, result []byte) error {
	for _, k := range ks {
		b, err := st.Begin(ctx, k, fp, time.Hour)
		if err != nil {
			return err
		}
		if b.Outcome != idem.Acquired {
			return fmt.Errorf("begin %q: %v", k, b.Outcome)
		}
		if err := st.Complete(ctx, k, b.Fence, result, 24*time.Hour); err != nil {
			return err
		}
	}
	return nil
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

func memoryStore(ctx context.Context, n int, result []byte) (measurement, error) {
	ks := keys(n)
	before := heapInUse()
	st := memstore.New(memstore.Options{})
	if err := fill(ctx, st, ks, result); err != nil {
		return measurement{}, err
	}
	after := heapInUse()
	runtime.KeepAlive(st)
	per := float64(after-before) / float64(n)
	return measurement{store: "memory:", perRec: per, how: "Go heap in use after GC",
		details: fmt.Sprintf("%.0f B of heap per record (the keys' strings included)", per)}, nil
}

func fileStore(ctx context.Context, n int, result []byte) (measurement, error) {
	dir, err := os.MkdirTemp("", "idem-capacity-")
	if err != nil {
		return measurement{}, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "idem.db")
	st, err := filestore.Open(path, filestore.Options{NoSync: true}) // sizes only: syncing changes none
	if err != nil {
		return measurement{}, err
	}
	if err := fill(ctx, st, keys(n), result); err != nil {
		st.Close()
		return measurement{}, err
	}
	if err := st.Close(); err != nil { // a clean close: every record in the B+tree
		return measurement{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return measurement{}, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return measurement{}, err
	}
	defer db.Close()
	var bs bolt.BucketStats
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("records"))
		if b == nil {
			return errors.New("no records bucket")
		}
		bs = b.Stats()
		return nil
	}); err != nil {
		return measurement{}, err
	}
	if bs.KeyN != n {
		return measurement{}, fmt.Errorf("%d records in the file, want %d", bs.KeyN, n)
	}
	pageSize := os.Getpagesize()
	pages := bs.LeafPageN + bs.BranchPageN + bs.LeafOverflowN + bs.BranchOverflowN
	alloc := float64(pages*pageSize) / float64(n)
	inuse := float64(bs.LeafInuse+bs.BranchInuse) / float64(n)
	return measurement{store: "file:", perRec: float64(fi.Size()) / float64(n), how: "file size per record",
		details: fmt.Sprintf("%.4f B+tree pages of %d B (%.0f B) per record, %.0f B of them in use; the rest of the file is free pages that later records reuse",
			float64(pages)/float64(n), pageSize, alloc, inuse)}, nil
}

func redisStore(ctx context.Context, n int, result []byte, addr string) (measurement, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return measurement{}, err
	}
	st := redisstore.New(c, redisstore.Options{}) // the default prefix, as users get
	defer st.Close()
	ks := keys(n)
	before, err := usedMemory(ctx, c)
	if err != nil {
		return measurement{}, err
	}
	if err := fill(ctx, st, ks, result); err != nil {
		return measurement{}, err
	}
	after, err := usedMemory(ctx, c)
	if err != nil {
		return measurement{}, err
	}
	defer func() {
		for i := 0; i < len(ks); i += 1000 {
			batch := make([]string, 0, 1000)
			for _, k := range ks[i:min(i+1000, len(ks))] {
				batch = append(batch, st.Key(k))
			}
			c.Unlink(context.WithoutCancel(ctx), batch...)
		}
	}()
	var usage []float64
	for _, k := range ks[:min(500, len(ks))] {
		v, err := c.MemoryUsage(ctx, st.Key(k), 0).Result()
		if err != nil {
			return measurement{}, err
		}
		usage = append(usage, float64(v))
	}
	slices.Sort(usage)
	med := usage[len(usage)/2]
	return measurement{store: "redis://", perRec: med, how: "median MEMORY USAGE",
		details: fmt.Sprintf("MEMORY USAGE median %.0f B; used_memory grew %.0f B per record; key %d B (prefix %q)",
			med, float64(after-before)/float64(n), len(st.Key(ks[0])), redisstore.DefaultPrefix)}, nil
}

func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	info, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("INFO memory without used_memory")
}

func postgresStore(ctx context.Context, n int, result []byte, dsn string) (measurement, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return measurement{}, err
	}
	defer pool.Close()
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	table := "idem_capacity_" + hex.EncodeToString(suffix[:])
	st := pgxstore.New(pool, pgxstore.Options{Table: table, ClaimTable: table + "_claims"})
	if err := st.Migrate(ctx); err != nil {
		return measurement{}, err
	}
	defer func() {
		_, _ = pool.Exec(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+table+", "+table+"_claims")
		_, _ = pool.Exec(context.WithoutCancel(ctx), "DELETE FROM idem_migrations WHERE table_name = $1", table)
	}()
	if err := fill(ctx, st, keys(n), result); err != nil {
		return measurement{}, err
	}
	// VACUUM so that the dead versions the completions left are counted as
	// free space, as they are once autovacuum has run.
	if _, err := pool.Exec(ctx, "VACUUM "+table); err != nil {
		return measurement{}, err
	}
	var total, heap, toast, pkey, acq int64
	if err := pool.QueryRow(ctx, `SELECT pg_total_relation_size($1::regclass), pg_relation_size($1::regclass),
		COALESCE(pg_total_relation_size(NULLIF(reltoastrelid, 0)), 0),
		pg_relation_size(($1 || '_pkey')::regclass), pg_relation_size(($1 || '_acquired')::regclass)
		FROM pg_class WHERE oid = $1::regclass`, table).Scan(&total, &heap, &toast, &pkey, &acq); err != nil {
		return measurement{}, err
	}
	var live float64
	if err := pool.QueryRow(ctx, "SELECT avg(pg_column_size(t.*)) FROM "+table+" t").Scan(&live); err != nil {
		return measurement{}, err
	}
	f := func(v int64) float64 { return float64(v) / float64(n) }
	return measurement{store: "postgres://", perRec: f(total), how: "pg_total_relation_size after VACUUM",
		details: fmt.Sprintf("%.0f B per row in all: heap %.0f (a row's tuple %.0f B), TOAST %.0f, primary key index %.0f, acquired_at index %.0f",
			f(total), f(heap), live, f(toast), f(pkey), f(acq))}, nil
}

func report(w io.Writer, n, resultLen int, ms []measurement) {
	fmt.Fprintf(w, "%d records per store; each holds a %d-byte stored answer (201, Content-Type, Content-Length, 94-byte JSON body), a 32-byte fingerprint and a %d-byte key\n\n",
		n, resultLen, len(keys(1)[0]))
	fmt.Fprintln(w, "| store | bytes per record | measured as | details |")
	fmt.Fprintln(w, "| --- | ---: | --- | --- |")
	for _, m := range ms {
		fmt.Fprintf(w, "| %s | %.0f | %s | %s |\n", m.store, m.perRec, m.how, m.details)
	}
	rates := []int{100, 1000, 10000}
	fmt.Fprintln(w, "\nCapacity: the store's size for a steady rate of first executions kept for the retention (records = rate × retention):")
	fmt.Fprintln(w)
	fmt.Fprint(w, "| store | retention")
	for _, r := range rates {
		fmt.Fprintf(w, " | %d/s", r)
	}
	fmt.Fprintln(w, " |")
	fmt.Fprint(w, "| --- | ---")
	for range rates {
		fmt.Fprint(w, " | ---:")
	}
	fmt.Fprintln(w, " |")
	for _, m := range ms {
		for _, ret := range []time.Duration{time.Hour, 24 * time.Hour} {
			fmt.Fprintf(w, "| %s | %.0f h", m.store, ret.Hours())
			for _, r := range rates {
				fmt.Fprintf(w, " | %s", human(m.perRec*float64(r)*ret.Seconds()))
			}
			fmt.Fprintln(w, " |")
		}
	}
}

// human formats bytes in binary units.
func human(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if b >= 100 || i == 0 {
		return fmt.Sprintf("%.0f %s", b, units[i])
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
