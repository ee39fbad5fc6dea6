package storetest_test

import (
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

// A store's conformance test: one Run with the store's fake clock, so that
// expiry is checked without sleeping, and the benchmarks.
func ExampleRun() {
	TestConformance := func(t *testing.T) {
		c := &clock{}
		storetest.Run(t, func(testing.TB) idem.Store {
			return memstore.New(memstore.Options{Now: c.Now})
		}, storetest.Features{Extend: true, Sweep: true, Wait: true, Inspect: true, Advance: c.Advance})
	}
	BenchmarkStore := func(b *testing.B) {
		storetest.Benchmark(b, func(testing.TB) idem.Store { return memstore.New(memstore.Options{}) })
	}
	_, _ = TestConformance, BenchmarkStore
}
