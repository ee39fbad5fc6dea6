package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/bench/internal/redisclient"
	"github.com/idemkit/idem/bench/internal/redisinfo"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/redisstore"
)

// The library rows: the upstream's own handler served with the idemhttp
// middleware in the same process, on redisstore, one server process per
// Redis client (-lib). Their reference is "direct upstream", the same
// handler in the same kind of process without the layer: the share of its
// rate the layer keeps.

// libClients are the clients -lib accepts: redisstore's, the floor row
// (floor.go), which is not a store, and memoryClient.
var libClients = append(append([]string{}, redisclient.Names...), floorClient, memoryClient)

// memoryClient is the -lib row without Redis: the same middleware on
// memstore, in process. What it loses against the bare server is the
// middleware's own price; what the Redis rows lose beyond it is the store's.
const memoryClient = "memory"

// libHandler is the "lib" role's handler: upstreamHandler behind
// idemhttp.Middleware on redisstore with client, keys under prefix
// (redisstore's default when empty); for floorClient on floorStore, for
// memoryClient on memstore.
func libHandler(client, addr, prefix string) (http.Handler, func(), error) {
	switch client {
	case floorClient:
		return floorHandler(addr, prefix)
	case memoryClient:
		return libMiddleware(memstore.New(memstore.Options{})), func() {}, nil
	}
	c, err := redisclient.Open(context.Background(), client, addr, 0, redisstore.Options{Prefix: prefix})
	if err != nil {
		return nil, nil, fmt.Errorf("-lib-client %s: %w", client, err)
	}
	return libMiddleware(c.Store), c.Close, nil
}

// libMiddleware is upstreamHandler behind the idemhttp middleware on st,
// as every library row serves it.
func libMiddleware(st idem.Store) http.Handler {
	scope := &idemhttp.IdentityScope{Secret: []byte("bench-load-" + scopeSecret)}
	mw := &idemhttp.Middleware{Keeper: &idem.Keeper{Store: st}, Scope: scope.Scope}
	return mw.Handler(upstreamHandler())
}

// redisProbe reads the Redis server's command counts and the memory of the
// records a scenario wrote, for the Redis rows.
type redisProbe struct{ c *redis.Client }

// commands returns the server's calls per command so far.
func (p *redisProbe) commands(ctx context.Context) (map[string]int64, error) {
	return redisinfo.CommandStats(ctx, p.c)
}

// recordBytes returns the median MEMORY USAGE (key, value, expiry and the
// allocator's rounding: what Redis spends on the record) of up to n keys
// that start with prefix, and how many it sampled.
func (p *redisProbe) recordBytes(ctx context.Context, prefix string, n int) (float64, int, error) {
	var sizes []float64
	iter := p.c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) && len(sizes) < n {
		v, err := p.c.MemoryUsage(ctx, iter.Val(), 0).Result()
		if errors.Is(err, redis.Nil) {
			continue // expired or released meanwhile
		}
		if err != nil {
			return 0, 0, err
		}
		sizes = append(sizes, float64(v))
	}
	if err := iter.Err(); err != nil {
		return 0, 0, err
	}
	if len(sizes) == 0 {
		return 0, 0, nil
	}
	slices.Sort(sizes)
	return sizes[len(sizes)/2], len(sizes), nil
}

// cleanup deletes the keys that match pattern.
func (p *redisProbe) cleanup(ctx context.Context, pattern string) {
	_ = redisinfo.DeleteMatching(ctx, p.c, pattern)
}

// commandDelta is the commands per request between two commandstats reads.
// It leaves out the probe's own commands and a client's connection
// handshake (rueidis may open a connection in the middle of a measurement),
// which no request causes.
func commandDelta(before, after map[string]int64, requests int) map[string]float64 {
	out := map[string]float64{}
	if requests <= 0 {
		return out
	}
	for k, v := range after {
		switch k {
		case "info", "scan", "memory|usage": // the probe's own
			continue
		case "hello", "auth", "select", "client|setinfo", "client|setname", "client|tracking": // a new connection's
			continue
		}
		if d := float64(v-before[k]) / float64(requests); d >= 0.005 {
			out[k] = d
		}
	}
	return out
}

// formatCommands prints commands per request, most frequent first.
func formatCommands(m map[string]float64) string {
	if m == nil {
		return "–"
	}
	keys := make([]string, 0, len(m))
	var total float64
	for k, v := range m {
		keys = append(keys, k)
		total += v
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.2f", strings.ToUpper(k), m[k])
	}
	return fmt.Sprintf("%.2f (%s)", total, strings.Join(parts, ", "))
}

// libReport prints the library rows against the bare server ("direct
// upstream"), and the Redis rows' commands and record sizes.
func libReport(w io.Writer, scenarios []*scenario) {
	bare := scenarios[0]
	var lib, rs []*scenario
	for _, s := range scenarios {
		if s.lib {
			lib = append(lib, s)
		}
		if s.probe {
			rs = append(rs, s)
		}
	}
	if len(lib) > 0 {
		fmt.Fprintf(w, "\nIn process: the upstream's handler behind idemhttp on redisstore, against the same server without the layer (direct upstream, %.0f req/s, %s CPU/req):\n\n",
			median(bare.runs).rps, cpuPerRequest(bare.runs))
		fmt.Fprintln(w, "| scenario | req/s (median) | share of the bare server | share, per run (median) | p50 | p99 | server CPU/req | server allocs/req |")
		fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
		for _, s := range lib {
			m := median(s.runs)
			fmt.Fprintf(w, "| %s | %.0f | %.0f%% | %s | %v | %v | %s | %s |\n", s.name, m.rps, 100*m.rps/median(bare.runs).rps,
				perRunRatio(s.runs, bare.runs), m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond),
				cpuPerRequest(s.runs), allocsPerRequest(s.runs))
		}
	}
	if len(rs) > 0 {
		fmt.Fprintln(w, "\nRedis: commands the server ran per request (INFO commandstats over the last run, commands inside scripts included) and memory per stored record (median MEMORY USAGE of up to 200 records of the last unique-keys run):")
		fmt.Fprintln(w, "\n| scenario | commands per request | bytes per record |")
		fmt.Fprintln(w, "| --- | --- | ---: |")
		for _, s := range rs {
			bytes := "–"
			if s.recordBytes > 0 {
				bytes = fmt.Sprintf("%.0f", s.recordBytes)
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", s.name, formatCommands(s.commands), bytes)
		}
	}
}
