package filestore

import (
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/storetest"
)

var allFeatures = storetest.Features{Extend: true, Sweep: true, Wait: true, Inspect: true}

// TestConformance runs the conformance suite with an injected clock, on
// durable (fsynced) files: one fresh file per subtest.
func TestConformance(t *testing.T) {
	clock := newFakeClock()
	f := allFeatures
	f.Advance = clock.Advance
	storetest.Run(t, func(t testing.TB) idem.Store {
		return open(t, Options{Now: clock.Now})
	}, f)
}

// TestConformanceRealClock runs the suite on the wall clock (the production
// configuration), with leases of a few tens of milliseconds.
func TestConformanceRealClock(t *testing.T) {
	f := allFeatures
	f.MinLease = 50 * time.Millisecond
	storetest.Run(t, func(t testing.TB) idem.Store {
		return open(t, Options{})
	}, f)
}

// TestConformanceSharedFile runs the suite with every subtest on one file,
// as a long-lived store is used, with batching delay and small batches so
// that commits carry writes of unrelated subtests.
func TestConformanceSharedFile(t *testing.T) {
	clock := newFakeClock()
	s := open(t, Options{Now: clock.Now, MaxBatchDelay: 100 * time.Microsecond, MaxBatchSize: 4, SweepBatch: 2})
	f := allFeatures
	f.Advance = clock.Advance
	storetest.Run(t, func(testing.TB) idem.Store { return s }, f)
}
