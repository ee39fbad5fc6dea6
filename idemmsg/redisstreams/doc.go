// Package redisstreams runs Redis Streams consumer-group handlers once per
// event id (SPEC §4) with idemmsg, on go-redis.
//
// Consumer.Poll, for one consumer of a group:
//
//   - on its first call, re-reads the consumer's own pending entries (those
//     it read before a restart and never acknowledged);
//   - reclaims, with XAUTOCLAIM, entries pending for longer than ClaimIdle on
//     any consumer of the group: entries of a consumer that crashed, and
//     entries whose handler failed;
//   - reads new entries with XREADGROUP;
//   - claims their ids in one batch (idemmsg.Deduper.BatchMessages, with the
//     fields encoded by Payload as the payload), runs the handler for the
//     new ones with a context carrying the entry's *idem.Lease
//     (idem.LeaseFromContext), and XACKs every entry that can be
//     acknowledged (processed, duplicate, Poisoned or Mismatched; see
//     idemmsg.Deduper.MaxAttempts and FingerprintPayload), in one XACK.
//
// An entry that is not acknowledged (handler error, in flight on another
// consumer, store error) stays in the group's pending entries list and is
// reclaimed after ClaimIdle, by this consumer or another. Reclaiming an entry
// that another consumer is still processing is safe: the claim is in flight,
// so the entry is left pending, and the holder's XACK removes it whoever owns
// it by then.
//
// The id is the entry's "event-id" field by default (or IDField, or ID),
// falling back to the entry id, which is stable across reclaims of one entry
// (not across two XADDs of one event).
//
// With a Redis dedup store (redisstore) the guarantee is at-least-once
// effects guarded by lease and fence; a consumer that crashes after its side
// effect and before the record completes leaves an in-progress record whose
// lease expires before the entry is processed again.
package redisstreams
