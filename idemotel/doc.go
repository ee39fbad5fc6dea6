// Package idemotel reports the outcomes of an idem.Keeper to OpenTelemetry:
// span events on the caller's span, optional child spans for the store
// steps, and metrics.
//
// An Observer is an idem.Observer. Set it as Keeper.Observer; every outcome
// the Keeper reports (idem.Event) then becomes
//
//   - a span event on the span in the context the Keeper was called with
//     (idemhttp passes the request's context, so the span a server
//     instrumentation started around the handler; idem.Do and idemmsg pass
//     the caller's context), when that span is recording: "idem.acquired",
//     "idem.takeover", "idem.replayed", "idem.conflict", "idem.mismatch",
//     "idem.complete", "idem.release", "idem.lease_lost" or
//     "idem.store_error", with the attributes named by the Attr
//     constants;
//   - with Options.StoreSpans, a child span of that span per timed store
//     step ("idem.begin", "idem.complete", "idem.release", "idem.extend"),
//     back-dated by the step's latency;
//   - one increment of the counter idem.events, and observations of the
//     histograms idem.store.duration and idem.execution.duration.
//
// Nothing is recorded on a span, and no span is started, when the context
// holds no recording span: an outcome reported with no request in view
// (lease renewal in the background, Lease.MarkCompleted) is counted in the
// metrics only. With no recording span and noop providers an observation
// costs about 20 ns and allocates nothing.
//
// The record key (idem.RecordKey) is never recorded as such: its scope may
// be an identity (an account, a tenant, an HMAC of credentials). Spans carry
// idem.scope_hash and idem.key_hash, the first 8 bytes of a SHA-256 (or,
// with Options.HashSecret, of an HMAC-SHA-256) as 16 hex digits; the
// client's key itself only with Options.Key.
//
// docs/observability.md in the repository has the full table of events,
// attributes and instruments, and compares this package with the
// Prometheus metrics of idemproxy.
package idemotel
