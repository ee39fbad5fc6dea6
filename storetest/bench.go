package storetest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// Benchmark measures the store's hot paths with b.RunParallel, so that
// -cpu 1,2,4 shows how it scales. Its sub-benchmarks are:
//
//   - BeginComplete: Begin of a new key then Complete, every iteration a
//     unique key (the store grows by b.N records); reports pairs/s.
//   - Replay: Begin on one of 1024 completed keys; reports begins/s.
//   - InFlight: Begin on one of 1024 keys held by a live lease; reports
//     begins/s.
//
// Each sub-benchmark calls newStore once. Leases and retentions are one
// hour. Where the platform measures it, each also reports cpu-ns/op: the
// process CPU time per operation, garbage collection and the store's client
// included (not a server's), a steadier figure than ns/op on a shared
// machine. Run it under -race too: it then doubles as a concurrency test.
func Benchmark(b *testing.B, newStore NewStore) {
	b.Run("BeginComplete", func(b *testing.B) { benchBeginComplete(b, newStore) })
	b.Run("Replay", func(b *testing.B) { benchHot(b, newStore, true) })
	b.Run("InFlight", func(b *testing.B) { benchHot(b, newStore, false) })
}

const benchDur = time.Hour

func benchBeginComplete(b *testing.B, newStore NewStore) {
	s := newStore(b)
	prefix := key(b) + "/"
	result := []byte(`{"id":"ch_1","amount":1000}`)
	var workers atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		buf := strconv.AppendUint([]byte(prefix), workers.Add(1), 10)
		buf = append(buf, '/')
		base := len(buf)
		for i := uint64(0); pb.Next(); i++ {
			buf = strconv.AppendUint(buf[:base], i, 10)
			k := string(buf)
			bg, err := s.Begin(ctx, k, fpA, benchDur)
			if err != nil || bg.Outcome != idem.Acquired {
				b.Errorf("Begin(%q) = %s, %v; want acquired", k, describe(bg), err)
				return
			}
			if err := s.Complete(ctx, k, bg.Fence, result, benchDur); err != nil {
				b.Errorf("Complete(%q): %v", k, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

func benchHot(b *testing.B, newStore NewStore, completed bool) {
	s := newStore(b)
	ctx := context.Background()
	ks := keys(b, 1024)
	result := []byte(`{"id":"ch_1","amount":1000}`)
	want := idem.InFlight
	for _, k := range ks {
		bg, err := s.Begin(ctx, k, fpA, benchDur)
		if err != nil || bg.Outcome != idem.Acquired {
			b.Fatalf("setup Begin(%q) = %s, %v", k, describe(bg), err)
		}
		if completed {
			want = idem.Replay
			if err := s.Complete(ctx, k, bg.Fence, result, benchDur); err != nil {
				b.Fatalf("setup Complete(%q): %v", k, err)
			}
		}
	}
	var workers atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	b.RunParallel(func(pb *testing.PB) {
		// Each worker walks the keys from its own offset, with a stride
		// co-prime to 1024, so workers rarely hit one key together.
		i := workers.Add(1) * 397
		for pb.Next() {
			i += 7
			bg, err := s.Begin(ctx, ks[i%uint64(len(ks))], fpA, benchDur)
			if err != nil || bg.Outcome != want {
				b.Errorf("Begin = %s, %v; want %v", describe(bg), err, want)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "begins/s")
}

// reportCPU reports the process CPU time per operation since start, when
// the platform measures it.
func reportCPU(b *testing.B, start time.Duration) {
	if end := cpuTime(); end > 0 && start > 0 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}
