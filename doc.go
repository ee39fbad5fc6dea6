// Package idem makes retries safe: it runs an operation named by an
// idempotency key at most once per retention period and replays its stored
// result to every retry.
//
// The package holds the record state machine of the behaviour contract
// (SPEC §2), the small Store interface every backend implements (with
// optional Extender, Sweeper, Waiter and Inspector interfaces), the errors a
// caller can branch on, key validation, fingerprinting, and Keeper, which
// applies the policy: leases with fencing, renewal, wait mode, and an
// Observer hook for metrics and logs.
//
// A Store does only the compare-and-set that must be atomic in its backend;
// decisions such as 409 versus 422 and the encoding of results live here and
// in the adapters: idemhttp (HTTP middleware) and idemmsg (message consumers).
//
// For plain Go functions, Do runs fn once per key:
//
//	k := &idem.Keeper{Store: memstore.New(memstore.Options{})}
//	charge, replayed, err := idem.Do(ctx, k, tenant, key, func(ctx context.Context) (Charge, error) {
//		return chargeCard(ctx, req)
//	})
//
// This package imports only the standard library.
package idem
