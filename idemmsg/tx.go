package idemmsg

import (
	"context"
	"fmt"
	"slices"

	"github.com/idemkit/idem"
)

// Claimer claims message ids inside one database transaction that the
// caller owns. A SQL store implements it with
// INSERT ... ON CONFLICT DO NOTHING on (scope, id) in that transaction, so the
// claim commits or rolls back together with the handler's writes. A
// concurrent transaction claiming the same id waits for the first to commit
// (then its Claim reports false) or roll back (then it reports true).
type Claimer interface {
	// Claim records (scope, id) in the transaction and reports first ==
	// true if no committed or pending claim existed within retention.
	Claim(ctx context.Context, scope, id string) (first bool, err error)
}

// BatchClaimer claims many ids of one scope in one statement inside the
// caller's transaction.
type BatchClaimer interface {
	// ClaimBatch records every id and returns those claimed for the first
	// time (each once, in any order).
	ClaimBatch(ctx context.Context, scope string, ids []string) (fresh []string, err error)
}

// ClaimerFunc adapts a function to Claimer; bind it to a transaction:
//
//	c := idemmsg.ClaimerFunc(func(ctx context.Context, scope, id string) (bool, error) {
//		return store.Claim(ctx, tx, scope, id)
//	})
type ClaimerFunc func(ctx context.Context, scope, id string) (bool, error)

// Claim calls f(ctx, scope, id).
func (f ClaimerFunc) Claim(ctx context.Context, scope, id string) (bool, error) {
	return f(ctx, scope, id)
}

// BatchClaimerFunc adapts a function to BatchClaimer.
type BatchClaimerFunc func(ctx context.Context, scope string, ids []string) ([]string, error)

// ClaimBatch calls f(ctx, scope, ids).
func (f BatchClaimerFunc) ClaimBatch(ctx context.Context, scope string, ids []string) ([]string, error) {
	return f(ctx, scope, ids)
}

// OnceTx is the transactional form of Once (SPEC §4). c must be bound to the
// caller's transaction, and fn must do its writes in that same transaction.
// OnceTx claims (scope, id) with c and runs fn only if the claim is the
// first:
//
//   - Executed, nil: fn ran and returned nil. Commit the transaction, then
//     acknowledge the message. If the commit fails, do not acknowledge: the
//     claim rolled back with fn's writes and the redelivery runs fn again.
//   - Duplicate, nil: id was claimed by a committed transaction; fn did not
//     run. Acknowledge (committing or rolling back changes nothing).
//   - Failed, fn's error: roll the transaction back (this also drops the
//     claim) and do not acknowledge.
//   - NotRun, error: the claim failed (or id is empty); roll back.
//
// OnceTx never reports InFlight: a concurrent claim of the same id waits in
// the database for the other transaction to finish.
func OnceTx(ctx context.Context, c Claimer, scope, id string, fn func(context.Context) error) (Status, error) {
	if id == "" {
		return NotRun, fmt.Errorf("idemmsg: %w: empty", idem.ErrInvalidKey)
	}
	first, err := c.Claim(ctx, scope, id)
	if err != nil {
		return NotRun, fmt.Errorf("idemmsg: claim %q in scope %q: %w", id, scope, err)
	}
	if !first {
		return Duplicate, nil
	}
	if err := fn(ctx); err != nil {
		return Failed, err
	}
	return Executed, nil
}

// BatchTx is the transactional form of Batch: it claims every id with one
// ClaimBatch call in the caller's transaction (each id once, in sorted order,
// so that concurrent transactions claiming overlapping batches lock the
// claim rows in the same order and do not deadlock) and calls fn once with the
// indexes (into ids, in order) of the messages to process: the first
// occurrence of each id claimed for the first time. fn does its writes for
// all of them in the same transaction.
//
// When fn returns nil the outcomes are Executed for those indexes and
// Duplicate for every other message: commit, then acknowledge them all.
// When fn or the claim fails, every outcome is Failed or NotRun with the
// error and the caller rolls the whole transaction back.
func BatchTx(ctx context.Context, c BatchClaimer, scope string, ids []string, fn func(ctx context.Context, fresh []int) error) ([]BatchResult, error) {
	out := make([]BatchResult, len(ids))
	fail := func(s Status, err error) ([]BatchResult, error) {
		for i := range out {
			out[i] = BatchResult{s, err}
		}
		return out, err
	}
	if len(ids) == 0 {
		return out, nil
	}
	uniq := make([]string, 0, len(ids))
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		if id == "" {
			return fail(NotRun, fmt.Errorf("idemmsg: message %d: %w: empty", i, idem.ErrInvalidKey))
		}
		if !seen[id] {
			seen[id] = true
			uniq = append(uniq, id)
		}
	}
	// Claim in sorted order: two transactions claiming overlapping batches
	// then take their row locks in the same order and cannot deadlock.
	slices.Sort(uniq)
	fresh, err := c.ClaimBatch(ctx, scope, uniq)
	if err != nil {
		return fail(NotRun, fmt.Errorf("idemmsg: claim batch of %d in scope %q: %w", len(uniq), scope, err))
	}
	isFresh := make(map[string]bool, len(fresh))
	for _, id := range fresh {
		if !seen[id] {
			return fail(NotRun, fmt.Errorf("idemmsg: claim batch returned id %q that was not asked for", id))
		}
		isFresh[id] = true
	}
	var idx []int
	for i, id := range ids {
		if isFresh[id] {
			idx = append(idx, i)
			delete(isFresh, id) // later occurrences are duplicates
			out[i] = BatchResult{Status: Executed}
		} else {
			out[i] = BatchResult{Status: Duplicate}
		}
	}
	if len(idx) > 0 {
		if err := fn(ctx, idx); err != nil {
			return fail(Failed, err)
		}
	}
	return out, nil
}
