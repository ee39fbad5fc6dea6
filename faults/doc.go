// Package faults is the fault suite of idem (issue 10, docs/reliability.md):
// it runs the real idemproxy binary against real stores (a file: database,
// dedicated redis-server and PostgreSQL processes), drives it with clients
// that retry every logical operation until they get a 2xx, injects faults
// (kill -9 and SIGTERM of the proxy, SIGSTOP and kill -9 of Redis, an
// immediate PostgreSQL restart, a table lock and a slow upstream beyond the
// lease; kill -9 of a master of a Redis Cluster or of a Sentinel-managed
// Redis, with one or two proxies, timing the failover), replays every key
// at the end, and checks the history with Check (Lost counts the
// acknowledged responses a failover lost where that is measured instead of
// failed).
//
// The scenarios live in the package's tests:
//
//	go test -race -count=1 ./faults/ -v           # short form (seconds per scenario)
//	IDEM_SOAK=1 go test -race -count=1 -timeout 30m ./faults/ -v   # long form
//
// The package itself only holds the history types and the checker, so that
// the checker can be tested on synthetic histories and reused.
package faults
