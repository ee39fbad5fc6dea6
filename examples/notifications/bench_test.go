package main

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkBatch100 measures messages/s through the transactional consumer
// on the real PostgreSQL (IDEM_POSTGRES_DSN), in batches of 100 events (30%
// duplicate ids), one transaction per batch: "plain" inserts the outbox rows
// without any claim (no dedup: duplicates get rows too), "claimed" is
// Consumer.HandleBatch (one ClaimBatch statement, then the rows of the new
// events, then commit). Each iteration handles 20,000 events with ids of its
// own, so every iteration does the same work.
func BenchmarkBatch100(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	const n, batch = 20_000, 100
	events := func(iter int) []Event {
		evs := make([]Event, n)
		for i := range evs {
			evs[i] = ev(fmt.Sprintf("i%d-evt-%d", iter, i%14_000))
		}
		return evs
	}
	plain := func(evs []Event) {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ids, tos, tpls := make([]string, len(evs)), make([]string, len(evs)), make([]string, len(evs))
		for i, ev := range evs {
			ids[i], tos[i], tpls[i] = ev.ID, ev.To, ev.Template
		}
		if _, err := tx.Exec(ctx, insertOutboxBatch, ids, tos, tpls); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	c := e.consumer()
	claimed := func(evs []Event) {
		if _, err := c.HandleBatch(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	iter := 0
	for _, bc := range []struct {
		name string
		fn   func([]Event)
	}{{"plain", plain}, {"claimed", claimed}} {
		b.Run(bc.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				iter++
				evs := events(iter)
				b.StartTimer()
				start := time.Now()
				for i := 0; i < n; i += batch {
					bc.fn(evs[i : i+batch])
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
		})
	}
}
