// Command notifications is an event consumer that sends each notification
// exactly once, however often the broker redelivers the event: the
// PostgreSQL transactional claim (idemmsg.OnceTx / BatchTx on pgxstore's
// Claim) plus an outbox row, relayed to the mail provider with a stable
// idempotency key.
//
//	eval "$(scripts/postgres.sh start)"
//	go run ./examples/notifications            # a demo with redeliveries and crashes
//
// # Step by step
//
// Consuming an event (Consumer.Handle, Consumer.HandleBatch):
//
//  1. Begin a transaction.
//  2. Claim the event id in it: pgxstore's Claim is one
//     INSERT … ON CONFLICT DO NOTHING into idem_claims, bound to the
//     transaction through idemmsg.ClaimerFunc. A batch claims up to 100 ids
//     in one statement (ClaimBatch).
//  3. Only if the claim is new, insert the outbox row (who to notify, with
//     what) in the same transaction. Nothing leaves the process yet.
//  4. Commit. The claim and the outbox row commit together, or neither does.
//  5. Only then acknowledge the event to the broker (ack, XACK, offset
//     commit).
//
// What a crash does at each point:
//
//   - before the commit (steps 1–4): the transaction rolls back, taking
//     the claim with it; the broker redelivers, and the event is processed
//     then, once.
//   - after the commit, before the ack: the broker redelivers; the claim
//     exists, so OnceTx reports Duplicate, nothing is inserted, and the
//     event is acknowledged.
//   - two consumers get the same event at once: the second INSERT of the
//     same claim waits for the first transaction; if it commits, the second
//     finds a duplicate; if it rolls back, the second processes it.
//
// This is effectively-once in the database: exactly one outbox row per
// event id within the claim retention (30 days by default; an event
// redelivered after that is processed again).
//
// Sending (Relay.Flush):
//
//  6. In a transaction, lock a batch of unsent outbox rows (FOR UPDATE
//     SKIP LOCKED, so several relays can run).
//  7. Send each notification with its idempotency key, derived from the
//     event id.
//  8. Mark the rows sent and commit.
//
// A crash between 7 and 8 sends the row again on the next Flush: the send
// itself is at-least-once, made exactly-once by the provider honouring the
// idempotency key (as e-mail, SMS and push APIs do, and as the fake provider
// in this example does). That is the one step no database transaction can
// cover, which is why the key is stable and derived from the event.
//
// With a separate dedup store (Redis, memory) instead of the claim, the
// guarantee is weaker: at-least-once effects guarded by lease and fence
// (see package idemmsg).
package main
