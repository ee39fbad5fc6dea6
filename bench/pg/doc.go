// Command pg benchmarks pgxstore against the floor PostgreSQL itself sets:
// begin+complete pairs per second, and processed-event claims per second
// (single, and batches of 100 and 1000 ids), each next to a plain
// INSERT … ON CONFLICT DO NOTHING of the same rows, in one run on loopback.
//
//	eval "$(scripts/postgres.sh start)"
//	go run ./bench/pg -rounds 15 -dur 500ms -workers 4 [-tx]
//
// Every workload runs once per round for -dur with -workers goroutines on
// one pool; each of ours runs right next to its floor (in alternating order),
// so the per-round ratio cancels most of the load other processes put on a
// shared machine. The report gives median rates and the median of the
// per-round cost ratios, as a Markdown table (docs/bench/pgxstore.md holds
// runs). With -tx every claim, and every floor insert, runs in its own
// BEGIN … COMMIT, as a consumer does.
package main
