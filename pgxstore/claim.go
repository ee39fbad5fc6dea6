package pgxstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/idemkit/idem"
)

// Claim records that the message id in scope is being processed, inside the
// caller's transaction tx, and reports whether this is the first time
// (SPEC §4, transactional form). It is one INSERT … ON CONFLICT statement: a
// duplicate is never an error, so tx stays usable either way.
//
// Run the handler's writes in the same tx, and ack the message (or commit
// the offset) only after tx commits. Then the claim and the effects commit
// together or not at all: a crash before commit leaves the id unclaimed and
// the redelivery runs again; a redelivery after commit sees first == false.
// That is effectively-once effects in this database.
//
// While another transaction holds an uncommitted claim of the same id, Claim
// waits for it to commit (first == false) or roll back (first == true).
// A claim older than Options.ClaimRetention counts as absent: the id is
// claimed again and first == true. An empty id is an ErrInvalidKey error.
func (s *Store) Claim(ctx context.Context, tx DBTX, scope, id string) (first bool, err error) {
	if err := check(ctx, id); err != nil {
		return false, opErr("claim", err)
	}
	tag, err := tx.Exec(ctx, s.q.claim, []byte(scope), []byte(id), micros(s.opts.ClaimRetention))
	if err != nil {
		return false, s.fail(ctx, "claim", err)
	}
	return tag.RowsAffected() == 1, nil
}

// ClaimBatch claims many message ids of one scope inside tx in one statement
// (an INSERT … SELECT FROM unnest … ON CONFLICT) and returns the ids claimed
// for the first time, in the order of ids. Repeated ids in the input count
// once. The rules of Claim apply to each id. An empty id is an ErrInvalidKey
// error and nothing is claimed.
func (s *Store) ClaimBatch(ctx context.Context, tx DBTX, scope string, ids []string) (fresh []string, err error) {
	if err := ctx.Err(); err != nil {
		return nil, opErr("claim batch", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	seen := make(map[string]struct{}, len(ids))
	uniq := make([][]byte, 0, len(ids))
	for i, id := range ids {
		if id == "" {
			return nil, opErr("claim batch", fmt.Errorf("%w: empty id at index %d", idem.ErrInvalidKey, i))
		}
		if _, dup := seen[id]; dup {
			continue
		}
		seen[id] = struct{}{}
		uniq = append(uniq, []byte(id))
	}
	rows, err := tx.Query(ctx, s.q.claimBatch, []byte(scope), uniq, micros(s.opts.ClaimRetention))
	if err != nil {
		return nil, s.fail(ctx, "claim batch", err)
	}
	claimed := make(map[string]struct{}, len(uniq))
	var id []byte
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		claimed[string(id)] = struct{}{}
		return nil
	})
	if err != nil {
		return nil, s.fail(ctx, "claim batch", err)
	}
	for _, b := range uniq {
		if _, ok := claimed[string(b)]; ok {
			fresh = append(fresh, string(b))
		}
	}
	return fresh, nil
}
