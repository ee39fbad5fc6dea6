// Package storetest checks that an idem.Store honours the contract documented
// on idem.Store and on the optional interfaces (idem.Extender, idem.Sweeper,
// idem.Waiter, idem.Inspector). Every store in this module calls Run from its
// tests, and a third-party store should too:
//
//	func TestConformance(t *testing.T) {
//		clock := newFakeClock()
//		storetest.Run(t, func(t testing.TB) idem.Store {
//			return mystore.New(mystore.Options{Now: clock.Now})
//		}, storetest.Features{Extend: true, Inspect: true, Advance: clock.Advance})
//	}
//
// Run's named subtests are AcquireNew, AcquireHeld, AcquireCompleted,
// Mismatch, TakeoverAfterLease, Fencing, ReleaseThenReacquire,
// RetentionExpiry, ConcurrentBegin (64 goroutines, exactly one acquires),
// ConcurrentCompleteVsTakeover, KeyIsolation, Values, CanceledContext,
// Extend, Sweep, Wait and Inspect (the last four only when declared in
// Features), and Model: a seeded random sequence of operations checked step
// by step against a small reference model (see SeedEnv to replay a seed).
// Run them under -race.
//
// Besides the doc comments of idem.Store, Run holds a store to these rules,
// which the comments leave implicit:
//
//   - Fingerprints are compared as byte strings: nil and empty are equal.
//   - A Replay's Result and a completed Record's Result are never nil, even
//     for an empty or nil stored result.
//   - Fencing, not the lease clock, decides Complete, Release and Extend: the
//     holder of an in-progress record whose lease ended may still complete,
//     release or extend it until someone takes it over.
//   - An in-progress record whose lease ended stays, still fencing, still
//     refusing other fingerprints with Mismatch and taken over with the
//     previous fence plus one, for at least 10000×MinLease after its lease
//     ended; Run never advances the clock further than that. Sweep must not
//     remove it sooner.
//   - Sweep changes no outcome of any later call.
//   - Lease and retention boundaries: Run never asks about an instant within
//     MinLease of a deadline, so "expired at the deadline" and "expired just
//     after it" are both accepted.
//
// Keys are unique per subtest and run (derived from t.Name() and a random
// suffix), and include bytes that are not visible ASCII (NUL, non-UTF-8,
// non-ASCII letters) and keys up to 400 bytes, since a store key is an opaque
// idem.RecordKey. So one server may back every subtest and several runs at
// once; use Prefix when the store needs a namespace of its own. The one
// exception is the Sweep subtest, which counts what Sweep removed: nothing
// else may sweep the same backend while it runs.
//
// Clock: with Features.Advance set, the subtests that move the clock run one
// at a time, then the others in parallel. With Advance nil they all run in
// parallel and sleep real time, using leases of a few MinLease that expire
// and one-hour leases that never do; the Model subtest then runs 300
// operations with one-hour leases, no expiry and no Sweep, instead of 2000
// operations with clock advances.
//
// Fuzz drives the same reference model with operation sequences decoded
// from fuzz inputs; call it from a FuzzXxx function. Benchmark measures the
// hot paths (new key Begin+Complete, Replay, InFlight) in parallel.
//
// This package imports only the standard library and package idem.
package storetest
