// Command pg benchmarks pgxstore against the floor PostgreSQL itself sets:
// begin+complete pairs per second, replays per second (next to a plain
// SELECT of the stored result by key, and with synchronous_commit off next
// to on), and processed-event claims per second (single, and batches of 100
// and 1000 ids), each next to a plain INSERT … ON CONFLICT DO NOTHING of the
// same rows, in one run on loopback.
//
//	eval "$(scripts/postgres.sh start)"
//	go run ./bench/pg -rounds 15 -dur 500ms -workers 4 [-tx] [-claims=false] [-result 256] [-costs 500] [-sizes]
//
// Every workload runs once per round for -dur with -workers goroutines on
// one pool; each of ours runs right next to its floor (in alternating order),
// so the per-round ratio cancels most of the load other processes put on a
// shared machine. The report gives median rates and the median of the
// per-round cost ratios, as a Markdown table (docs/bench/pgxstore.md holds
// runs). With -tx every claim, and every floor insert, runs in its own
// BEGIN … COMMIT, as a consumer does.
//
// -sizes reports, right after the load, the bytes per row of the records
// (and claims) table, heap and indexes, the share of HOT updates, and the
// size after VACUUM FULL. -costs n adds, per operation (first execution,
// replay, in-flight conflict, fingerprint conflict, takeover), the
// transaction ids assigned, WAL bytes written and WAL syncs made over n
// sequential operations on one connection: run it on a server of its own,
// since the WAL counters are the cluster's.
package main
