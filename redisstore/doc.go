// Package redisstore is an idem.Store on Redis (github.com/redis/go-redis/v9),
// for a single server, Sentinel or Redis Cluster (any redis.UniversalClient).
//
//	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", MaxRetries: -1})
//	st := redisstore.New(rdb, redisstore.Options{})
//	defer st.Close()
//	k := &idem.Keeper{Store: st}
//
// # One round trip per step
//
// Every step of the record state machine (SPEC §2) is one Lua script, run
// atomically by the server with EVALSHA (falling back to EVAL when the
// server lost its script cache, e.g. after a restart). Begin decides
// acquired, in flight (with the lease time left), replay (with the stored
// result) or mismatch in that single round trip. A first execution costs
// exactly two round trips (Begin, Complete); a replay, a conflict and a
// mismatch cost one.
//
// BeginBatch (idem.BatchBeginner) pipelines the begin script for many
// keys: one round trip on a single server, one per primary on a Cluster.
//
// # Clock
//
// Lease and retention deadlines are judged by the Redis server's clock: the
// scripts read TIME and Redis ≥ 7 replicates their effects, not the scripts
// themselves, so replicas store the same deadlines. Client clocks never
// matter.
//
// # Records, expiry and fences
//
// A record is one string value (a header with state, fence and acquire
// time, and while in progress the lease end, then the fingerprint and the
// result: 18 bytes of header for a completed record) under the key returned
// by Store.Key, so each step is one read and one SET with PX. A completed
// record expires after its retention (PX), after which the key is new
// again.
//
// Versions before the compact records (2026-12) wrote a 29-byte header
// under Store.LegacyKey (the prefix, the hash tag and the whole store key).
// Such records are still found and changed in place, in their layout;
// Options.LegacyRecords writes new records that way, for a rolling upgrade
// in which older versions still run, and Options.SkipLegacyKeys stops
// looking for them. See CHANGELOG.md.
// An in-progress record expires Options.Abandon after its lease ended; until
// then an expired lease is taken over (fence+1, reported as a takeover) and
// the old holder's Complete still succeeds if nobody took over.
//
// Complete, Release and Extend carrying a fence that no longer holds the
// record return idem.ErrLeaseLost and change nothing. A fresh record (no
// record, or one Redis expired, or one released) gets the fence
// max(previous+1, server time in µs). When Redis expired the key by itself
// there is no previous fence, but the server clock has by then moved past
// it: a fence never exceeds the server time (µs) at which it was issued by
// more than a few units (a takeover adds one but needs a whole lease to
// pass), and Redis expires a key at least a lease after its last fence was
// issued. Release deletes
// the record, except in the rare case where the server clock has not yet
// passed the fence; it then leaves a tombstone holding the fence for the
// few milliseconds until it has. Fences therefore only grow as long as the
// server clock does not jump back (see docs/redis.md on failover).
//
// # Redis Cluster
//
// Keys carry a hash tag made of 16 hex digits of the SHA-256 of the store
// key, followed by more of that SHA-256 (Key) or by the store key itself
// (LegacyKey), so every key a script touches, under both names, is in one
// slot whatever bytes the store key holds (including "{" and "}"), and no
// command fails with CROSSSLOT.
//
// # Waiting across instances
//
// Complete and Release publish on the record's channel from inside their
// script (PUBLISH; SPUBLISH, sharded pub/sub, on a Cluster), when PUBSUB
// NUMSUB (SHARDNUMSUB) counts a subscriber: only when a Wait is listening,
// which subscribes before it reads the record's state. Wait, used by
// idem.Keeper.BeginWait, listens through one subscription per Store (per
// primary on a Cluster), started lazily by the first Wait and stopped by
// Close. It polls only when notifications are off or the subscription is
// down.
//
// # Failures
//
// Connection failures, timeouts, a restarting or loading server, a replica
// that refuses writes and the like are returned wrapped with
// idem.ErrStoreUnavailable, so that callers fail closed; Redis refusing a
// write for lack of memory is idem.ErrStoreFull. go-redis reconnects by
// itself, so service resumes when Redis is back. A context that is already
// done gives its error and changes nothing. Use maxmemory-policy noeviction:
// an evicted record lets a duplicate execute.
//
// # Client retries: set MaxRetries to -1
//
// Give the store a client that does not resend commands: MaxRetries: -1 in
// redis.Options (redis.ClusterOptions already defaults to it). go-redis
// otherwise (MaxRetries default 3) runs a command again after a network
// error or a read timeout, including a script that Redis ran but whose
// reply was lost. The resent script then sees the first run's effect: a
// resent Complete finds its own completed record and reports
// idem.ErrLeaseLost, a resent Release finds nothing and reports
// idem.ErrLeaseLost, a resent Begin finds its own in-progress record and
// reports in flight (the key waits for the lease to end). Nothing runs
// twice, but the caller is told the wrong thing; idem.Keeper corrects a
// refused completion by asking Get, at the cost of one more round trip.
// Without client retries such a step returns idem.ErrStoreUnavailable (the
// outcome is unknown) and the caller settles it with Get, the
// idem.Inspector, which runs again by itself on a broken connection since
// it only reads. A Cluster client also resends a command after a network
// error or timeout within its MaxRedirects budget (default 3), which it
// needs to follow MOVED and ASK redirections. The store therefore sends its
// scripts on a Cluster through the client of the key's primary, which
// inherits MaxRetries, and sends one again only when the answer proves it
// did not run (a failed dial, or a MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
// LOADING, MASTERDOWN or READONLY reply; MOVED and ASK are then followed by
// the cluster client). A custom Options.Scripter is used as it is.
//
// # Durability
//
// Redis replication is asynchronous: a failover can lose the last
// acknowledged writes, and with them a record, so a retry would execute
// again. Options.WaitReplicas pipelines WAIT after Begin's and Complete's
// script (same round trip) and fails closed when too few replicas
// acknowledged. docs/redis.md says what this protects and what it cannot.
package redisstore
