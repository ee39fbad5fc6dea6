package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemkit/idem/pgxstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "notifications:", err)
		os.Exit(1)
	}
}

// run is the demo: it delivers -events events through a broker that
// redelivers (every event 1 to 3 times, in random order) and a consumer that
// crashes before some commits, then relays the outbox to a provider, and
// prints what happened.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("notifications", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("dsn", os.Getenv("IDEM_POSTGRES_DSN"), "PostgreSQL connection string (default $IDEM_POSTGRES_DSN)")
	schema := fs.String("schema", "notifications_demo", "schema for the claim and outbox tables (dropped and recreated)")
	events := fs.Int("events", 1000, "distinct events to deliver")
	seed := fs.Uint64("seed", 1, "random seed for redeliveries and crashes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" {
		return errors.New("no -dsn and IDEM_POSTGRES_DSN is unset")
	}
	pool, store, err := open(ctx, *dsn, *schema, true)
	if err != nil {
		return err
	}
	defer pool.Close()

	rng := rand.New(rand.NewPCG(*seed, 0))
	var deliveries []Event
	for i := range *events {
		ev := Event{ID: fmt.Sprintf("evt_%06d", i), To: fmt.Sprintf("user%d@example.com", i%97), Template: "order-shipped"}
		for range 1 + rng.IntN(3) {
			deliveries = append(deliveries, ev)
		}
	}
	rng.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })

	c := &Consumer{Pool: pool, Store: store, Scope: "notifications"}
	crashes := 0
	c.beforeCommit = func() error {
		if rng.IntN(10) == 0 { // one transaction in ten dies before its commit
			crashes++
			return errCrash
		}
		return nil
	}
	handled := 0
	for len(deliveries) > 0 {
		ev := deliveries[0]
		deliveries = deliveries[1:]
		st, err := c.Handle(ctx, ev)
		handled++
		if !st.Ack() || err != nil {
			deliveries = append(deliveries, ev) // not acknowledged: the broker redelivers it
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	provider := &fakeProvider{}
	sent, err := (&Relay{Pool: pool, Sender: provider}).Flush(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "events %d, deliveries handled %d, crashes before commit %d\n", *events, handled, crashes)
	fmt.Fprintf(stdout, "outbox rows sent %d, notifications the provider delivered %d\n", sent, provider.delivered())
	return nil
}

// open connects with search_path set to schema, optionally recreating it,
// and creates the tables.
func open(ctx context.Context, dsn, schema string, fresh bool) (*pgxpool.Pool, *pgxstore.Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, nil, err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if fresh {
		if _, err := pool.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, schema)); err != nil {
			pool.Close()
			return nil, nil, err
		}
	}
	store := pgxstore.New(pool, pgxstore.Options{Schema: schema})
	if err := Setup(ctx, pool, store); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, store, nil
}

// fakeProvider is a notification API that honours idempotency keys: a
// second Send with a key it has seen is accepted and not delivered again.
type fakeProvider struct {
	mu    sync.Mutex
	seen  map[string]int // key → Send calls
	fail  func(Notification) error
	sends int
}

func (p *fakeProvider) Send(_ context.Context, n Notification) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		if err := p.fail(n); err != nil {
			return err
		}
	}
	if p.seen == nil {
		p.seen = map[string]int{}
	}
	p.seen[n.Key]++
	p.sends++
	return nil
}

// delivered is the number of distinct notifications delivered.
func (p *fakeProvider) delivered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.seen)
}
