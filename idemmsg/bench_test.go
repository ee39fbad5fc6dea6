package idemmsg_test

import (
	"context"
	"github.com/idemkit/idem"
	"strconv"
	"testing"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/memstore"
)

// BenchmarkOnce is the per-message cost of Once on memstore (a new id each
// time: begin, run, complete).
func BenchmarkOnce(b *testing.B) {
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}}
	ctx := context.Background()
	fn := func(context.Context) error { return nil }
	i := 0
	for b.Loop() {
		i++
		if st, err := d.Once(ctx, "bench", strconv.Itoa(i), fn); st != idemmsg.Executed {
			b.Fatal(st, err)
		}
	}
}

// BenchmarkBatch is the per-message cost of Batch on memstore, batches of
// 1000 new ids, with the store calls sequential (Parallelism 1) or
// concurrent (the default, 32).
func BenchmarkBatch(b *testing.B) {
	for _, par := range []int{1, 0} {
		b.Run("parallelism="+strconv.Itoa(par), func(b *testing.B) {
			ctx := context.Background()
			var d *idemmsg.Deduper
			ids := make([]string, 1000)
			fn := func(context.Context, int) error { return nil }
			n := 0
			for b.Loop() {
				if n%20_000 == 0 { // a store holding at most 20,000 ids, like one broker poll window
					b.StopTimer()
					d = &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}, Parallelism: par}
					b.StartTimer()
				}
				for i := range ids {
					n++
					ids[i] = strconv.Itoa(n)
				}
				for _, o := range d.Batch(ctx, "bench", ids, fn) {
					if o.Status != idemmsg.Executed {
						b.Fatal(o)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/msg")
		})
	}
}
