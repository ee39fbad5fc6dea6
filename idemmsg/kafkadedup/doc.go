// Package kafkadedup runs Kafka record handlers once per event id (SPEC §4)
// with idemmsg, on the franz-go client (github.com/twmb/franz-go/pkg/kgo).
//
// Consumer.Poll fetches records, and for every partition, concurrently:
//
//   - reads each record's id from a header (default "event-id"), falling
//     back to "<topic>:<partition>:<offset>", which names one stored record
//     and so catches redeliveries (not a producer's duplicate sends);
//   - claims all the partition's ids in one store call and runs the handler
//     for the new ones strictly in offset order
//     (idemmsg.Deduper.BatchMessagesInOrder, with the record value as the
//     payload), with a context carrying the record's *idem.Lease
//     (idem.LeaseFromContext), stopping at the first record that cannot be
//     acknowledged: one whose handler failed, one in flight on another
//     consumer, or a store error;
//   - commits the offset after the last record that was processed or found
//     duplicate (auto-commit is disabled, so nothing is committed before it
//     is processed), and rewinds the partition to the first record that was
//     not, so that it is fetched again after a backoff (RetryBackoff,
//     doubling; for an in-flight record never past the holder's lease).
//
// With Deduper.MaxAttempts a record whose handler keeps failing stops
// blocking its partition: after the limit it goes to Deduper.OnPoison, is
// reported Poisoned to OnError and committed. With Deduper.FingerprintPayload
// an event id reused with another value is committed and reported
// Mismatched to OnError.
//
// Rebalances: the client must be built with ClientOpts (DisableAutoCommit and
// BlockRebalanceOnPoll). A revocation then waits until the polled records
// are processed and committed, so a rebalance neither loses nor repeats
// work. When a consumer is kicked out of the group anyway (it stalled past
// the rebalance timeout) and the new owner fetches records the old one is
// still processing, the claims make the new owner wait (in flight) and then
// skip them (duplicate): no record is processed twice within the dedup
// window.
//
// The dedup store gives at-least-once effects guarded by lease and fence
// (package idemmsg). For effectively-once effects in a SQL database, run
// idemmsg.OnceTx or BatchTx in the handler with the database transaction,
// and let Poll commit the offset after the transaction committed.
//
// The tests run against franz-go's in-process fake cluster (kfake): no
// Kafka broker can be installed on the machines this project is built on.
package kafkadedup
