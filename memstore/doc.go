// Package memstore is an in-memory idem.Store for single-process services,
// development and tests.
//
// A Store keeps records in sharded maps, each shard guarded by its own mutex,
// so there is no global lock on the hot path; the optional record limit is an
// atomic counter. It implements every optional interface of package idem:
// Extender (lease renewal), Sweeper (bulk removal of expired records),
// Waiter (wait mode without polling) and Inspector (read-only Get).
//
// Expiry is lazy: a call that touches a dead record removes it, and Sweep
// removes all of them. The constructor starts no goroutines; schedule Sweep
// yourself when keys are rarely reused:
//
//	s := memstore.New(memstore.Options{MaxRecords: 1_000_000})
//	go func() {
//		for range time.Tick(time.Minute) {
//			s.Sweep(ctx)
//		}
//	}()
//
// Budgets: Options.MaxRecords and Options.MaxBytes (an estimate: key,
// fingerprint and result plus RecordOverhead per record, and
// CompletionReserve while in progress) bound the store, and
// MaxRecordsPerScope / MaxBytesPerScope bound each scope (idem.SplitRecordKey)
// so that one caller cannot fill it for all. At a limit, Begin of a new key
// (after reclaiming dead records) and a Complete whose result does not fit
// return idem.ErrStoreFull; replays, in-flight answers, mismatches and
// takeovers are never refused, and live records are never evicted.
//
// Lease and retention deadlines are judged by Options.Now (by default the
// process's monotonic clock, so wall-clock steps do not move them). Fences come from the same clock: a fresh record's fence is at
// least the clock in Unix microseconds and above every fence its shard issued
// before, and a takeover's fence is the previous one plus one, so fences for
// a key keep growing across releases and expiries within the process.
//
// Records do not survive the process. Use a shared store (redisstore,
// pgxstore) when several processes serve the same keys or when a restart
// must not forget completed operations.
//
// This package imports only the standard library and package idem.
package memstore
