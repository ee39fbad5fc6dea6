package redisstreams_test

import (
	"context"
	"fmt"
	"github.com/idemkit/idem"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/redisstreams"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
)

// BenchmarkConsume measures messages/s through one consumer of a group on
// the real Redis (IDEM_REDIS_ADDR): "nodedup" is XREADGROUP → handle → XACK
// without deduplication; "redisstore" is Consumer.Poll with a Deduper on
// redisstore in the same Redis (the claims of one read in one pipelined
// BeginBatch, completions 64 at a time). Each iteration reads the same
// 20,000 entries (30% duplicate event ids) through a fresh group, 500 per
// read.
func BenchmarkConsume(b *testing.B) {
	addr := testenv.Need(b, "IDEM_REDIS_ADDR")
	rc := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 64})
	defer rc.Close()
	ctx := context.Background()
	base := fmt.Sprintf("idemmsgbench:%d", time.Now().UnixNano())
	stream := base + ":stream"
	defer rc.Del(ctx, stream)
	const n = 20_000
	pipe := rc.Pipeline()
	for i := range n {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event-id", fmt.Sprintf("evt-%d", i%14_000), "body", "hello"}})
		if i%1000 == 999 {
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	handler := func(context.Context, redis.XMessage) error { return nil }
	group := 0
	run := func(b *testing.B, consume func(group string) int) {
		var total time.Duration
		for b.Loop() {
			group++
			g := fmt.Sprintf("g%d", group)
			if err := rc.XGroupCreate(ctx, stream, g, "0").Err(); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			got := 0
			for got < n {
				got += consume(g)
			}
			total += time.Since(start)
		}
		b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
	}
	b.Run("nodedup", func(b *testing.B) {
		run(b, func(g string) int {
			res, err := rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "c", Streams: []string{stream, ">"}, Count: 500, Block: -1}).Result()
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, 0, 500)
			for _, m := range res[0].Messages {
				_ = handler(ctx, m)
				ids = append(ids, m.ID)
			}
			if err := rc.XAck(ctx, stream, g, ids...).Err(); err != nil {
				b.Fatal(err)
			}
			return len(ids)
		})
	})
	b.Run("redisstore", func(b *testing.B) {
		var c *redisstreams.Consumer
		run(b, func(g string) int {
			if c == nil || c.Group != g {
				store := redisstore.New(rc, redisstore.Options{Prefix: base + ":" + g + ":"})
				c = &redisstreams.Consumer{Client: rc, Stream: stream, Group: g, Name: "c", Count: 500, Block: -1,
					Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: store}, Retention: time.Minute, Parallelism: 64}}
			}
			n, err := c.Poll(ctx, handler)
			if err != nil {
				b.Fatal(err)
			}
			return n
		})
	})
}
