package natsdedup_test

import (
	"context"
	"github.com/idemkit/idem"
	"log"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/natsdedup"
	"github.com/idemkit/idem/memstore"
)

// A JetStream consumer that sends each notification once, however often the
// stream redelivers it. (Compiled, not run: it needs a nats-server.)
func ExampleConsumer() {
	ctx := context.Background()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cons, err := js.CreateOrUpdateConsumer(ctx, "NOTIFICATIONS", jetstream.ConsumerConfig{
		Durable:   "mailer",
		AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		log.Fatal(err)
	}

	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}}}
	cc, err := cons.Consume(c.MessageHandler(ctx, func(ctx context.Context, msg jetstream.Msg) error {
		return sendEmail(ctx, msg.Data()) // acked after it returns nil; nak'ed on error
	}))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Stop()
	<-ctx.Done()
}

func sendEmail(context.Context, []byte) error { return nil }
