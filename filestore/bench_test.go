package filestore

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/storetest"
)

// BenchmarkStore runs the shared store benchmarks on a durable file.
func BenchmarkStore(b *testing.B) {
	storetest.Benchmark(b, func(t testing.TB) idem.Store { return open(t, Options{}) })
}

// BenchmarkDurablePairs measures first executions as the proxy makes them:
// exactly conc goroutines each Begin a new key and Complete it with a small
// result, every call synced to disk unless NoSync. It reports pairs/s (one
// pair = two durable writes), the process CPU time per pair (cpu-ns/op,
// meaningful on a shared machine), and the writes each commit carried.
func BenchmarkDurablePairs(b *testing.B) {
	for _, c := range []struct {
		name string
		conc int
		o    Options
	}{
		{"c1", 1, Options{}},
		{"c32", 32, Options{}},
		{"c32-delay100us", 32, Options{MaxBatchDelay: 100 * time.Microsecond}},
		{"c32-delay500us", 32, Options{MaxBatchDelay: 500 * time.Microsecond}},
		{"c32-nosync", 32, Options{NoSync: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := open(b, c.o)
			result := []byte(`{"status":201,"body":"{\"id\":\"ch_1\",\"amount\":1000}"}`)
			fp := idem.Fingerprint([]byte("POST /charges"), []byte(`{"amount":1000}`))
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for range c.conc {
				wg.Go(func() {
					ctx := context.Background()
					buf := []byte("7:tenant1key-")
					base := len(buf)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						k := string(strconv.AppendInt(buf[:base], i, 10))
						bg, err := s.Begin(ctx, k, fp, 30*time.Second)
						if err != nil || bg.Outcome != idem.Acquired {
							b.Errorf("Begin(%q) = %+v, %v", k, bg, err)
							return
						}
						if err := s.Complete(ctx, k, bg.Fence, result, 24*time.Hour); err != nil {
							b.Errorf("Complete(%q): %v", k, err)
							return
						}
					}
				})
			}
			wg.Wait()
			if cpu := cpuTime() - cpu0; cpu > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
			if n := s.commits.Load(); n > 0 {
				b.ReportMetric(float64(2*b.N)/float64(n), "writes/commit")
			}
		})
	}
}
