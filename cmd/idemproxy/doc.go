// Command idemproxy is a reverse proxy that makes retries safe for an
// unmodified upstream API: it applies the HTTP contract of SPEC §3 (the
// Idempotency-Key header with Stripe semantics) in front of it.
//
// Usage:
//
//	idemproxy -listen ADDR -upstream URL -store URL [-ttl DURATION] [-lease DURATION] [-admin ADDR] [-config FILE]
//	idemproxy -demo
//
// A POST or PATCH carrying an Idempotency-Key reaches the upstream once,
// with an Idempotency-Fence header; retries get the stored response byte
// for byte (Idempotency-Replayed: true); a duplicate that arrives while the
// first still runs gets 409 with Retry-After (or waits, in wait mode); a
// reused key with a different request gets 422. Records live in the store
// named by -store: memory:, file:PATH (the default, file:idem.db),
// redis://…, rediss://…, redis+cluster://host1,host2,
// redis+sentinel://s1,s2/master, or postgres://….
//
// Every flag can also be set by an IDEMPROXY_* environment variable
// (IDEMPROXY_LISTEN for -listen); the command line wins. -config names a
// YAML or JSON file with per-route policy (see cmd/idemproxy/internal/proxyconfig). The
// admin listener (-admin) serves /healthz, /readyz, /metrics and, with
// -admin-token, /keys. SIGTERM or SIGINT shuts down gracefully.
//
// At start the store is checked once: one that cannot be reached is a
// warning (requests get 503 until it is back; PostgreSQL's tables are
// migrated once it answers), or with -require-store an exit; one that
// answers and refuses (credentials, permissions) is an exit. Every log
// line, the dependencies' (go-redis, pgx notices, OpenTelemetry, the log
// package) included, goes through one log/slog handler (-log-format).
// -otel-endpoint sends a server span per request, with the idempotency
// events, to an OTLP/HTTP collector and passes the trace context on to the
// upstream.
//
// The full manual is docs/idemproxy.md; benchmarks are in
// docs/bench/idemproxy.md and bench/load.
package main
