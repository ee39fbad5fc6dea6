// Package idemmsg makes message consumers effectively once: a message that a
// broker redelivers, or that a sender publishes twice, has its side effect
// applied once per id (SPEC §4).
//
// There are two forms.
//
// The store form, [Deduper.Once] and [Deduper.Batch], works on any
// [idem.Store] (memory, Redis, PostgreSQL, ...) through an [idem.Keeper]
// (Deduper.Keeper), which holds the store, lease, observer and clock. It
// claims the id with a short lease, runs the handler, then completes the
// record on success or releases it on error, so that the redelivery runs the
// handler again. It never marks an id before the work is done, so a failure
// never drops a message. Because the store and the handler's own effects are
// separate systems, the guarantee is at-least-once effects with no
// concurrent double execution: a consumer that dies after its side effect
// but before the record is completed leaves an in-progress record whose
// lease expires, and the redelivery then runs the handler again. Leases and
// fences make that window as small as the lease; make the side effect itself
// idempotent (or fenced with idem.FenceFromContext) when even that window
// matters.
//
// The transactional form, [OnceTx] and [BatchTx], is for handlers whose
// effects are writes to a SQL database: the claim is an
// INSERT ... ON CONFLICT DO NOTHING in the caller's own transaction, together
// with the handler's writes, and the broker is acknowledged only after that
// transaction commits. This gives effectively-once effects in that database:
// either the claim and the writes commit together, or neither does.
// [Claimer] is the small interface a transaction-bound claim satisfies (see
// pgxstore and examples/notifications).
//
// The store form runs the handler with a context carrying its *idem.Lease
// (idem.LeaseFromContext), in every integration; batches claim their ids
// through idem.Keeper.BeginBatch and keep only ordering and acknowledgement.
//
// Every form reports a [Status] the consumer acts on: [Executed],
// [Duplicate], [Mismatched] and [Poisoned] are acknowledged; [InFlight]
// (another consumer is processing the same id right now) is negatively
// acknowledged with a delay; [Failed] and [NotRun] are redelivered.
// [Status.Ack] says which is which.
//
// Consumer policy: [Deduper.MaxAttempts] with [Deduper.OnPoison] stops a
// message that always fails from blocking its partition (dead-letter or
// park it); [Deduper.FingerprintPayload] reports an id reused with another
// payload ([Mismatched]); [IDFunc] is the id extractor every integration
// takes.
//
// Retention is a correctness parameter: a duplicate that arrives after the
// record's retention has passed is processed again. The default,
// [DefaultMessageRetention] (30 days), covers the redelivery horizons of common
// brokers (Kafka's default 7-day log retention, JetStream and Redis Streams
// limits in days, webhook senders retrying for up to 3 days).
// It applies when neither [Deduper.Retention] nor the Keeper's Retention is
// set: a Keeper's zero Retention means 24 hours for HTTP
// ([idem.DefaultRetention]) but 30 days for messages. The Deduper never
// modifies the Keeper it is given.
//
// Broker integrations live in their own packages so that this package
// imports the standard library only: kafkadedup (franz-go), natsdedup
// (NATS JetStream), redisstreams (Redis Streams consumer groups) and webhook
// (net/http).
package idemmsg
