// Package natsdedup runs NATS JetStream message handlers once per message id
// (SPEC §4) with idemmsg, on the nats.go jetstream API.
//
// For every delivered message, Consumer.Handle:
//
//   - reads the id from the Nats-Msg-Id header (the id JetStream's own
//     publish-side dedup window uses), falling back to "<stream>:<stream
//     sequence>", which is stable across redeliveries of one stored message;
//   - runs the handler through Deduper.OnceMessage in the scope
//     "<stream>/<consumer>" (or Consumer.Scope), with a context carrying
//     its *idem.Lease (idem.LeaseFromContext);
//   - acks after the handler succeeded, and acks a duplicate of a message
//     already processed without running the handler;
//   - acks a message that Deduper.MaxAttempts made poison (after
//     Deduper.OnPoison took it) and one whose id was reused with other data
//     (Deduper.FingerprintPayload), and reports both to OnError;
//   - naks with a delay (the time left on the holder's lease, bounded by
//     MaxInFlightDelay) when another consumer is processing the same id right
//     now, so the copy comes back once the holder finished or died;
//   - naks (with RetryDelay) after a handler error, and (with StoreDelay) when
//     the dedup store is unreachable, so the message is redelivered and never
//     dropped.
//
// JetStream's publish dedup window (Duplicates, default 2 minutes) catches a
// publisher's retries; it does not replace consumer-side dedup: a
// redelivery after a lost ack, or a republish after the window, reaches the
// handler again. With the store form the guarantee is at-least-once effects
// with no concurrent double execution (see package idemmsg); for
// effectively-once effects in a SQL database, use idemmsg.OnceTx in the
// handler and ack after the commit.
//
// Set the consumer's AckWait longer than the handler's usual run time: a
// message not acked within AckWait is redelivered while still being
// processed; natsdedup then naks the copy as in flight, which is harmless
// but costs a round trip.
package natsdedup
