package kafkadedup_test

import (
	"context"
	"fmt"
	"github.com/idemkit/idem"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/kafkadedup"
	"github.com/idemkit/idem/memstore"
)

// BenchmarkConsume measures messages/s through one consumer-group member on
// the in-process kfake broker: "nodedup" is the same poll → handle → commit
// → allow-rebalance loop without deduplication, "memstore" is
// Consumer.Poll with a memstore Deduper (batched in-order claims), each with
// a no-op handler and with one that works 20 µs per record. Each
// iteration consumes the same 20,000 records with a fresh group and a fresh
// store; the event ids are distinct, so both variants run the handler
// equally often and the difference is the cost of deduplication. msgs/s is
// timed from the first poll to the last commit, after the group join.
func BenchmarkConsume(b *testing.B) {
	const n = 20_000
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topic))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	addrs := c.ListenAddrs()
	prod, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		b.Fatal(err)
	}
	var rs []*kgo.Record
	for i := range n {
		id := fmt.Sprintf("evt-%d", i)
		rs = append(rs, &kgo.Record{Topic: topic, Value: make([]byte, 200), Headers: []kgo.RecordHeader{{Key: "event-id", Value: []byte(id)}}})
	}
	if err := prod.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		b.Fatal(err)
	}
	prod.Close()
	// work busy-waits d per record: 0 is a no-op handler, 20 µs stands for
	// a handler doing a little real work (a small write, an RPC on loopback).
	work := func(d time.Duration) kafkadedup.Handler {
		return func(context.Context, *kgo.Record) error {
			for start := time.Now(); time.Since(start) < d; {
			}
			return nil
		}
	}

	group := 0
	// newClient joins a fresh group and returns once partitions are
	// assigned, so that the timed part is consumption only.
	newClient := func(b *testing.B) *kgo.Client {
		group++
		assigned := make(chan struct{}, 1)
		opts := append([]kgo.Opt{
			kgo.SeedBrokers(addrs...), kgo.ConsumerGroup(fmt.Sprintf("bench-%d", group)), kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(10 * time.Millisecond),
			kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
				select {
				case assigned <- struct{}{}:
				default:
				}
			}),
		}, kafkadedup.ClientOpts()...)
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-assigned:
		case <-time.After(10 * time.Second):
			b.Fatal("no partitions assigned")
		}
		return cl
	}
	// run times consume over the n records; setup (untimed) builds the
	// consume function for a fresh client.
	run := func(b *testing.B, setup func(cl *kgo.Client) func() int) {
		var total time.Duration
		for b.Loop() {
			b.StopTimer()
			cl := newClient(b)
			consume := setup(cl)
			b.StartTimer()
			start := time.Now()
			got := 0
			for got < n {
				got += consume()
			}
			total += time.Since(start)
			b.StopTimer()
			cl.CloseAllowingRebalance()
			b.StartTimer()
		}
		b.ReportMetric(float64(n*b.N)/total.Seconds(), "msgs/s")
	}
	for _, d := range []time.Duration{0, 20 * time.Microsecond} {
		handler := work(d)
		b.Run(fmt.Sprintf("handler=%v/nodedup", d), func(b *testing.B) {
			run(b, func(cl *kgo.Client) func() int {
				return func() int { return consumePlain(b, cl, handler) }
			})
		})
		b.Run(fmt.Sprintf("handler=%v/memstore", d), func(b *testing.B) {
			run(b, func(cl *kgo.Client) func() int {
				c := &kafkadedup.Consumer{Client: cl, Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}, Parallelism: 1}}
				return func() int {
					n, err := c.Poll(context.Background(), handler)
					if err != nil {
						b.Fatal(err)
					}
					return n
				}
			})
		})
	}
}

// consumePlain is one poll of the no-dedup baseline: poll, handle (the
// partitions concurrently, each in order, as Consumer does), commit, allow
// rebalance.
func consumePlain(b *testing.B, cl *kgo.Client, handler kafkadedup.Handler) int {
	f := cl.PollRecords(context.Background(), 1000)
	var wg sync.WaitGroup
	f.EachPartition(func(p kgo.FetchTopicPartition) {
		wg.Go(func() {
			for _, r := range p.Records {
				_ = handler(context.Background(), r)
			}
		})
	})
	wg.Wait()
	recs := f.Records()
	if len(recs) > 0 {
		if err := cl.CommitRecords(context.Background(), recs...); err != nil {
			b.Fatal(err)
		}
	}
	cl.AllowRebalance()
	return len(recs)
}
