// Command payments-pg is a payments endpoint that charges at most once per
// Idempotency-Key, with the charge row and the idempotency record committed
// in one PostgreSQL transaction (idemhttp + pgxstore).
//
//	eval "$(scripts/postgres.sh start)"
//	export PAYMENTS_SCOPE_SECRET=$(openssl rand -hex 32)   # the same on every replica
//	go run ./examples/payments-pg -addr 127.0.0.1:8080
//	curl -i -X POST localhost:8080/payments -H 'Idempotency-Key: order-42' \
//		-H 'Authorization: Bearer tenant-1' \
//		-H 'Content-Type: application/json' -d '{"amount_cents":4200,"currency":"EUR"}'
//
// # The shape
//
// idemhttp claims the key (Begin, on the pool, autocommit: other replicas
// see the lease at once) and runs the handler with the lease in its context
// (idem.LeaseFromContext). The handler then, in ONE transaction:
//
//  1. inserts the charge row, tagged with the lease's fence;
//  2. encodes the response it is about to send as an idemhttp.Response and
//     completes the idempotency record with it (pgxstore Store.CompleteIn
//     with the lease's Key, Fence and Retention);
//  3. commits; only then it calls lease.MarkCompleted and writes that
//     response.
//
// Both rows commit or neither does:
//
//   - the transaction rolls back or its connection dies before the commit:
//     no charge, and the record is still in progress; the handler answers
//     503 without marking the lease, so the middleware releases the record
//     and the client's retry charges (once);
//   - the commit succeeded but its acknowledgement was lost: the handler
//     answers 503, the middleware's release is refused (the record is
//     completed), and the retry replays the 201;
//   - a newer executor took the key over (the lease expired): the fenced
//     completion fails with ErrLeaseLost, the charge rolls back, and the
//     handler answers 503 (a status the middleware never stores); the retry
//     gets the newer executor's answer.
//
// After the handler returns 201, the middleware would complete the record
// itself; the store refuses to complete a completed record (SPEC §2), so
// the handler marks the lease completed after its commit, and the
// middleware's Complete then does nothing and reports the response as
// stored. The response the handler stored in its transaction is the one
// replayed; the handler writes exactly that Response, so the first answer
// and every replay are the same bytes.
package main
