// Command pg benchmarks pgxstore against the floor PostgreSQL itself sets:
// begin+complete pairs per second, and processed-event claims per second
// (single, and batches of 100 and 1000 ids), each next to a plain
// INSERT … ON CONFLICT DO NOTHING of the same rows, in one run on loopback.
//
//	eval "$(scripts/postgres.sh start)"
//	go run ./bench/pg -rounds 5 -dur 2s -workers 4
//
// Every workload runs once per round, interleaved, for -dur with -workers
// goroutines on one pool; the report gives the median rate over the rounds
// and the ratio of our cost per row to the floor's. Results are written as a
// Markdown table (docs/bench/pgxstore.md holds a run).
package main
