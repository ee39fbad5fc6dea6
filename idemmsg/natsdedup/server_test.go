package natsdedup_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/natsdedup"
	"github.com/idemkit/idem/internal/testenv"
)

const ackWait = 300 * time.Millisecond

type env struct {
	js      jetstream.JetStream
	stream  string
	subject string
	cons    jetstream.Consumer
}

// newEnv creates a fresh stream and durable pull consumer on the real
// nats-server (IDEM_NATS_URL) and deletes them at the end of the test.
func newEnv(t *testing.T) *env {
	t.Helper()
	url := testenv.Need(t, "IDEM_NATS_URL")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := fmt.Sprintf("T%d_%s", time.Now().UnixNano(), strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	e := &env{js: js, stream: name, subject: "idemtest." + name}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{e.subject}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	e.cons, err = js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "mailer", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	return e
}

func (e *env) publish(t *testing.T, hdr ...string) {
	t.Helper()
	m := nats.NewMsg(e.subject)
	m.Data = []byte("notify")
	for i := 0; i+1 < len(hdr); i += 2 {
		m.Header.Set(hdr[i], hdr[i+1])
	}
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// next fetches one message, waiting up to wait; nil if none came.
func (e *env) next(t *testing.T, wait time.Duration) jetstream.Msg {
	t.Helper()
	b, err := e.cons.Fetch(1, jetstream.FetchMaxWait(wait))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		return m
	}
	return nil
}

func (e *env) drained(t *testing.T) {
	t.Helper()
	if m := e.next(t, 2*ackWait); m != nil {
		md, _ := m.Metadata()
		t.Fatalf("unexpected delivery %+v of %v", md, m.Headers())
	}
}

type effects struct{ n atomic.Int32 }

func (f *effects) handler(context.Context, jetstream.Msg) error { f.n.Add(1); return nil }

func TestServerCrashAfterEffectBeforeAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}}
	var fx effects
	e.publish(t, "Nats-Msg-Id", "evt-1")
	if st, _ := c.Handle(ctx, noAck{e.next(t, time.Second)}, fx.handler); st != idemmsg.Executed {
		t.Fatal(st)
	}
	m := e.next(t, 3*ackWait) // redelivered after AckWait
	if m == nil {
		t.Fatal("no redelivery")
	}
	if st, err := c.Handle(ctx, m, fx.handler); st != idemmsg.Duplicate || err != nil {
		t.Fatalf("redelivery: %v %v", st, err)
	}
	e.drained(t)
	if fx.n.Load() != 1 {
		t.Fatalf("side effect ran %d times", fx.n.Load())
	}
}

func TestServerCrashBeforeEffect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	fs := fakestore.New(nil)
	const lease = 1500 * time.Millisecond // long enough to be seen in flight on a loaded machine
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: lease}}}
	var fx effects
	e.publish(t, "Nats-Msg-Id", "evt-1")
	m := e.next(t, time.Second)
	md, _ := m.Metadata()
	// The first consumer claimed the id and died before its side effect:
	// nothing completes, releases or acks.
	if _, err := fs.Begin(ctx, idem.RecordKey(md.Stream+"/"+md.Consumer, "evt-1"), []byte{}, lease); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(8 * time.Second)
	var seen []idemmsg.Status
	for time.Now().Before(deadline) && fx.n.Load() == 0 {
		m := e.next(t, time.Second)
		if m == nil {
			continue
		}
		st, _ := c.Handle(ctx, m, fx.handler)
		seen = append(seen, st)
	}
	if fx.n.Load() != 1 || seen[0] != idemmsg.InFlight || seen[len(seen)-1] != idemmsg.Executed {
		t.Fatalf("effects %d, statuses %v; want in-flight naks, then one execution", fx.n.Load(), seen)
	}
	e.drained(t)
}

func TestServerHandlerErrorRedelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}}
	e.publish(t, "Nats-Msg-Id", "evt-1")
	tries := 0
	h := func(context.Context, jetstream.Msg) error {
		tries++
		if tries == 1 {
			return errBoom
		}
		return nil
	}
	if st, _ := c.Handle(ctx, e.next(t, time.Second), h); st != idemmsg.Failed {
		t.Fatal(st)
	}
	m := e.next(t, time.Second) // plain Nak: redelivered at once
	if m == nil {
		t.Fatal("a failed message was not redelivered")
	}
	if st, err := c.Handle(ctx, m, h); st != idemmsg.Executed || err != nil {
		t.Fatal(st, err)
	}
	e.drained(t)
}

func TestServerConcurrentDuplicatesOneExecutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	// Two publishes of one event (the publisher retried after the server's
	// dedup window): same event-id, no Nats-Msg-Id.
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}, IDHeader: "event-id", MaxInFlightDelay: 200 * time.Millisecond}
	e.publish(t, "event-id", "evt-1")
	e.publish(t, "event-id", "evt-1")
	var fx effects
	started, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	first := e.next(t, time.Second)
	wg.Go(func() {
		_, _ = c.Handle(ctx, first, func(ctx context.Context, m jetstream.Msg) error {
			close(started)
			<-release
			return fx.handler(ctx, m)
		})
	})
	<-started
	second := e.next(t, time.Second) // a second consumer gets the copy meanwhile
	if st, _ := c.Handle(ctx, second, fx.handler); st != idemmsg.InFlight {
		t.Fatalf("concurrent copy: %v, want in-flight", st)
	}
	close(release)
	wg.Wait()
	again := e.next(t, 2*time.Second) // nak'ed copy returns after the delay
	if again == nil {
		t.Fatal("nak'ed copy not redelivered")
	}
	if st, _ := c.Handle(ctx, again, fx.handler); st != idemmsg.Duplicate {
		t.Fatalf("copy after completion: %v", st)
	}
	e.drained(t)
	if fx.n.Load() != 1 {
		t.Fatalf("executed %d times", fx.n.Load())
	}
}

func TestServerConsumeWithDuplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const distinct, dups = 70, 30
	for i := range distinct + dups {
		e.publish(t, "event-id", fmt.Sprintf("evt-%d", i%distinct))
	}
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}, IDHeader: "event-id", MaxInFlightDelay: 100 * time.Millisecond}
	var mu sync.Mutex
	ran := map[string]int{}
	acked := make(chan struct{}, distinct+dups)
	h := func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		defer mu.Unlock()
		ran[m.Headers().Get("event-id")]++
		return nil
	}
	cc, err := e.cons.Consume(func(m jetstream.Msg) {
		if st, _ := c.Handle(ctx, m, h); st.Ack() {
			acked <- struct{}{}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	for range distinct + dups {
		select {
		case <-acked:
		case <-ctx.Done():
			t.Fatal("not every message was acknowledged")
		}
	}
	cc.Stop()
	<-cc.Closed()
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != distinct {
		t.Fatalf("%d distinct events ran, want %d", len(ran), distinct)
	}
	for id, n := range ran {
		if n != 1 {
			t.Errorf("%s ran %d times", id, n)
		}
	}
}
