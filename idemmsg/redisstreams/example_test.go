package redisstreams_test

import (
	"context"
	"github.com/idemkit/idem"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/redisstreams"
	"github.com/idemkit/idem/redisstore"
)

// A consumer-group member whose dedup records live in the same Redis. Run
// one such Consumer per process, each with its own Name; entries of a
// crashed member are reclaimed by the others. (Compiled, not run: it needs a
// Redis server.)
func ExampleConsumer() {
	rc := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rc.Close()
	c := &redisstreams.Consumer{
		Client: rc, Stream: "notifications", Group: "mailer", Name: "mailer-1",
		CreateGroup: true,
		Deduper:     &idemmsg.Deduper{Keeper: &idem.Keeper{Store: redisstore.New(rc, redisstore.Options{})}},
	}
	err := c.Run(context.Background(), func(ctx context.Context, m redis.XMessage) error {
		return sendEmail(ctx, m.Values["to"])
	})
	log.Print(err)
}

func sendEmail(context.Context, any) error { return nil }
