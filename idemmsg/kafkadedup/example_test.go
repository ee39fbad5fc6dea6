package kafkadedup_test

import (
	"context"
	"github.com/idemkit/idem"
	"log"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/kafkadedup"
	"github.com/idemkit/idem/memstore"
)

// A consumer-group member that sends each notification once. Offsets are
// committed only after the records were processed (or found duplicate).
// (Compiled, not run: it needs a Kafka broker.)
func ExampleConsumer() {
	opts := append([]kgo.Opt{
		kgo.SeedBrokers("localhost:9092"),
		kgo.ConsumerGroup("mailer"),
		kgo.ConsumeTopics("notifications"),
	}, kafkadedup.ClientOpts()...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.CloseAllowingRebalance()

	c := &kafkadedup.Consumer{
		Client:  cl,
		Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}},
		OnError: func(r *kgo.Record, st idemmsg.Status, err error) { log.Printf("%v: %v", st, err) },
	}
	err = c.Run(context.Background(), func(ctx context.Context, r *kgo.Record) error {
		return sendEmail(ctx, r.Value)
	})
	log.Print(err)
}

func sendEmail(context.Context, []byte) error { return nil }
