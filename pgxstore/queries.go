package pgxstore

import "strings"

// queries holds the SQL text of every statement, with the quoted table names
// substituted once by New.
type queries struct {
	begin, complete           string
	release, extend, get      string
	sweepRecords, sweepClaims string
	claim, claimBatch         string
}

// Record states as stored in the state column.
//
//	1 = in progress (expires_at is the lease deadline)
//	2 = completed   (expires_at is the retention deadline)
//
// Clock: every statement reads clock_timestamp() once, in a materialized CTE
// (a CTE holding a volatile function is never inlined), and judges all its
// deadlines by that instant. now() is the start time of the surrounding
// transaction: inside a caller's long transaction (Store.With) it would
// shorten new leases and retention and judge expiry in the past.
// clock_timestamp() is the same single server clock, read when the statement
// runs, whichever transaction it runs in.
const (
	// beginSQL: $1 key, $2 fingerprint, $3 lease in µs.
	//
	// The cur CTE reads the key's row (if any) under the statement's
	// snapshot, without locking it, and judges whether it is free: its
	// deadline has passed and it is either completed (past retention) or in
	// progress with the same fingerprint (lease expired).
	//
	// When a row is readable and not free (a replay, an in-flight lease, a
	// mismatch), the INSERT below receives no input row, so the statement
	// locks, inserts and updates nothing: it takes no transaction id, writes
	// no WAL and waits for no commit flush. The last branch reports that
	// row.
	//
	// Otherwise (no row, or a free one) the INSERT creates a fresh record,
	// or its ON CONFLICT … DO UPDATE takes the row over when the latest
	// committed version of it is still free: completed past retention (fresh,
	// any fingerprint, fence max(prev+1, clock µs)) or in progress with the
	// same fingerprint (takeover, fence+1). RETURNING yields the acquired
	// row. ON CONFLICT is what closes the race between two Begins of one
	// key: the loser waits for the winner's row lock and then sees its row.
	//
	// If the write branch affected no row although the snapshot said the
	// key was free (or missing), a concurrent writer changed the row after
	// the snapshot was taken; the report branch answers 0 (or no row) and
	// Begin runs the statement again with a fresh snapshot.
	beginSQL = `WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t),
cur AS MATERIALIZED (
	SELECT r.fingerprint, r.fence, r.state, r.expires_at, r.result,
		(r.expires_at <= now.t AND (r.state = 2 OR r.fingerprint = $2::bytea)) AS free
	FROM @records r, now
	WHERE r.key = $1::bytea
),
up AS (
	INSERT INTO @records AS r (key, fingerprint, fence, state, takeover, result, acquired_at, expires_at)
	SELECT $1::bytea, $2::bytea, (extract(epoch FROM now.t) * 1000000)::bigint, 1, false, NULL,
		now.t, now.t + $3::bigint * interval '1 microsecond'
	FROM now
	WHERE NOT EXISTS (SELECT 1 FROM cur WHERE NOT cur.free)
	ON CONFLICT (key) DO UPDATE SET
		fingerprint = EXCLUDED.fingerprint,
		fence = CASE WHEN r.state = 1 THEN r.fence + 1 ELSE greatest(r.fence + 1, EXCLUDED.fence) END,
		takeover = (r.state = 1),
		state = 1,
		result = NULL,
		acquired_at = EXCLUDED.acquired_at,
		expires_at = EXCLUDED.expires_at
	WHERE r.expires_at <= EXCLUDED.acquired_at AND (r.state = 2 OR r.fingerprint = EXCLUDED.fingerprint)
	RETURNING r.fence, r.takeover
)
SELECT 1::smallint, up.fence, up.takeover, 0::bigint, NULL::bytea FROM up
UNION ALL
SELECT CASE
		WHEN cur.free THEN 0
		WHEN cur.fingerprint <> $2::bytea THEN 4
		WHEN cur.state = 1 THEN 2
		ELSE 3
	END::smallint,
	CASE WHEN cur.state = 1 AND cur.fingerprint = $2::bytea THEN cur.fence ELSE 0 END,
	false,
	(extract(epoch FROM (cur.expires_at - now.t)) * 1000000)::bigint,
	CASE WHEN cur.state = 2 AND cur.fingerprint = $2::bytea THEN cur.result END
FROM cur, now
WHERE NOT EXISTS (SELECT 1 FROM up)`

	// completeSQL: $1 key, $2 fence, $3 result, $4 retention in µs.
	completeSQL = `UPDATE @records SET state = 2, result = $3::bytea,
	expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond'
WHERE key = $1::bytea AND fence = $2::bigint AND state = 1`

	// releaseSQL: $1 key, $2 fence.
	releaseSQL = `DELETE FROM @records WHERE key = $1::bytea AND fence = $2::bigint AND state = 1`

	// extendSQL: $1 key, $2 fence, $3 lease in µs.
	extendSQL = `UPDATE @records SET expires_at = clock_timestamp() + $3::bigint * interval '1 microsecond'
WHERE key = $1::bytea AND fence = $2::bigint AND state = 1`

	// getSQL: $1 key. Completed records past retention are invisible.
	getSQL = `WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t)
SELECT r.state, r.fingerprint, r.fence,
	(extract(epoch FROM (now.t - r.acquired_at)) * 1000000)::bigint,
	(extract(epoch FROM (r.expires_at - now.t)) * 1000000)::bigint,
	r.result
FROM @records r, now
WHERE r.key = $1::bytea AND (r.state = 1 OR r.expires_at > now.t)`

	// sweepRecordsSQL: $1 batch size, $2 Abandon in µs, $3 the
	// acquired_at to start from. Deletes at most $1 completed records past
	// retention and in-progress records whose lease expired more than
	// Abandon ago, oldest acquired first, and reports how many it
	// deleted and the latest acquired_at among them (where the next batch
	// of the same sweep starts). The rows are found through the index on
	// acquired_at, a column that Complete and Extend never change (so that
	// they are HOT updates). Rows locked by a running statement are skipped,
	// so a sweep never waits on live traffic.
	sweepRecordsSQL = `WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t),
victim AS (
	SELECT r.key FROM @records r, now
	WHERE r.acquired_at >= $3::timestamptz
		AND r.expires_at <= now.t
		AND (r.state = 2 OR r.expires_at <= now.t - $2::bigint * interval '1 microsecond')
	ORDER BY r.acquired_at
	LIMIT $1::int
	FOR UPDATE OF r SKIP LOCKED
),
gone AS (
	DELETE FROM @records d USING victim v, now
	WHERE d.key = v.key AND d.expires_at <= now.t
		AND (d.state = 2 OR d.expires_at <= now.t - $2::bigint * interval '1 microsecond')
	RETURNING d.acquired_at
)
SELECT count(*)::int, max(acquired_at) FROM gone`

	// sweepClaimsSQL: $1 batch size, $2 claim retention in µs.
	sweepClaimsSQL = `WITH victim AS (
	SELECT c.scope, c.id FROM @claims c
	WHERE c.claimed_at <= clock_timestamp() - $2::bigint * interval '1 microsecond'
	LIMIT $1::int
	FOR UPDATE SKIP LOCKED
)
DELETE FROM @claims d USING victim v WHERE d.scope = v.scope AND d.id = v.id`

	// claimSQL: $1 scope, $2 id, $3 claim retention in µs. One row is
	// affected when the id is claimed for the first time, or when its
	// previous claim is older than retention (a duplicate older than
	// retention is processed again, SPEC §4, whether or not the sweep has
	// run yet). A conflict is never an error, so the caller's transaction
	// goes on.
	claimSQL = `INSERT INTO @claims AS c (scope, id, claimed_at)
VALUES ($1::bytea, $2::bytea, clock_timestamp())
ON CONFLICT (scope, id) DO UPDATE SET claimed_at = EXCLUDED.claimed_at
	WHERE c.claimed_at <= EXCLUDED.claimed_at - $3::bigint * interval '1 microsecond'`

	// claimBatchSQL: $1 scope, $2 ids (distinct), $3 claim retention in µs.
	claimBatchSQL = `INSERT INTO @claims AS c (scope, id, claimed_at)
SELECT $1::bytea, u.id, clock_timestamp() FROM unnest($2::bytea[]) AS u(id)
ON CONFLICT (scope, id) DO UPDATE SET claimed_at = EXCLUDED.claimed_at
	WHERE c.claimed_at <= EXCLUDED.claimed_at - $3::bigint * interval '1 microsecond'
RETURNING c.id`
)

func buildQueries(records, claims string) queries {
	r := strings.NewReplacer("@records", records, "@claims", claims)
	return queries{
		begin:        r.Replace(beginSQL),
		complete:     r.Replace(completeSQL),
		release:      r.Replace(releaseSQL),
		extend:       r.Replace(extendSQL),
		get:          r.Replace(getSQL),
		sweepRecords: r.Replace(sweepRecordsSQL),
		sweepClaims:  r.Replace(sweepClaimsSQL),
		claim:        r.Replace(claimSQL),
		claimBatch:   r.Replace(claimBatchSQL),
	}
}
