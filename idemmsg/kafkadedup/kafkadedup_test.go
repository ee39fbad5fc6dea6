package kafkadedup_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/kafkadedup"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const topic = "notifications"

var errBoom = errors.New("boom")

// cluster starts an in-process fake Kafka cluster with one topic.
func cluster(t *testing.T, partitions int32) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

type rec struct {
	id        string
	partition int32
}

func produce(t *testing.T, addrs []string, recs ...rec) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var rs []*kgo.Record
	for _, r := range recs {
		kr := &kgo.Record{Topic: topic, Partition: r.partition, Value: []byte("send " + r.id)}
		if r.id != "" {
			kr.Headers = []kgo.RecordHeader{{Key: "event-id", Value: []byte(r.id)}}
		}
		rs = append(rs, kr)
	}
	if err := cl.ProduceSync(context.Background(), rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func client(t *testing.T, addrs []string, group string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	opts = append([]kgo.Opt{
		kgo.SeedBrokers(addrs...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.FetchMaxWait(50 * time.Millisecond),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.CloseAllowingRebalance)
	return cl
}

// pollUntil polls until want records were acknowledged or 10 s passed.
func pollUntil(t *testing.T, c *kafkadedup.Consumer, h kafkadedup.Handler, want int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := 0
	for got < want {
		n, err := c.Poll(ctx, h)
		if err != nil {
			t.Fatalf("after %d of %d acknowledged: %v", got, want, err)
		}
		got += n
	}
	if got != want {
		t.Fatalf("acknowledged %d, want %d", got, want)
	}
}

// nothingLeft checks that a fresh member of group gets no record: every
// offset was committed.
func nothingLeft(t *testing.T, addrs []string, group string) {
	t.Helper()
	cl := client(t, addrs, group, kafkadedup.ClientOpts()...)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	for ctx.Err() == nil {
		f := cl.PollFetches(ctx)
		if n := f.NumRecords(); n > 0 {
			t.Fatalf("%d records were not committed; first at offset %d", n, f.Records()[0].Offset)
		}
		cl.AllowRebalance()
	}
}

// effects counts side effects per id and flags concurrent execution.
type effects struct {
	mu      sync.Mutex
	n       map[string]int
	order   []string
	running map[string]bool
	t       *testing.T
}

func newEffects(t *testing.T) *effects {
	return &effects{n: map[string]int{}, running: map[string]bool{}, t: t}
}

func (e *effects) handler(_ context.Context, r *kgo.Record) error {
	id := string(r.Headers[0].Value)
	e.mu.Lock()
	if e.running[id] {
		e.t.Errorf("%s runs twice at once", id)
	}
	e.running[id] = true
	e.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.running[id] = false
	e.n[id]++
	e.order = append(e.order, id)
	return nil
}

func (e *effects) exactlyOnce(ids ...string) {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		if e.n[id] != 1 {
			e.t.Errorf("%s executed %d times, want 1", id, e.n[id])
		}
	}
	if len(e.n) != len(ids) {
		e.t.Errorf("%d distinct ids executed, want %d", len(e.n), len(ids))
	}
}

func TestMisconfigured(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}
	for name, cl := range map[string]*kgo.Client{
		"autocommit on":     client(t, addrs, "g1", kgo.BlockRebalanceOnPoll()),
		"rebalance blocked": client(t, addrs, "g2", kgo.DisableAutoCommit()),
	} {
		c := &kafkadedup.Consumer{Client: cl, Deduper: d}
		if _, err := c.Poll(context.Background(), nil); !errors.Is(err, kafkadedup.ErrMisconfigured) {
			t.Errorf("%s: %v, want ErrMisconfigured", name, err)
		}
	}
	nogroup, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer nogroup.Close()
	c := &kafkadedup.Consumer{Client: nogroup, Deduper: d}
	if _, err := c.Poll(context.Background(), nil); !errors.Is(err, kafkadedup.ErrMisconfigured) {
		t.Errorf("no group: %v", err)
	}
	if _, err := (&kafkadedup.Consumer{}).Poll(context.Background(), nil); !errors.Is(err, kafkadedup.ErrMisconfigured) {
		t.Errorf("empty consumer: %v", err)
	}
}

func TestEventID(t *testing.T) {
	t.Parallel()
	r := &kgo.Record{Topic: "t", Partition: 3, Offset: 42, Headers: []kgo.RecordHeader{{Key: "x", Value: []byte("1")}, {Key: "event-id", Value: []byte("evt_9")}}}
	for _, tc := range []struct {
		c    *kafkadedup.Consumer
		r    *kgo.Record
		want string
	}{
		{&kafkadedup.Consumer{}, r, "evt_9"},
		{&kafkadedup.Consumer{Header: "x"}, r, "1"},
		{&kafkadedup.Consumer{Header: "missing"}, r, "t:3:42"},
		{&kafkadedup.Consumer{}, &kgo.Record{Topic: "t", Headers: []kgo.RecordHeader{{Key: "event-id"}}}, "t:0:0"},
		{&kafkadedup.Consumer{ID: func(r *kgo.Record) (string, error) { return string(r.Key), nil }}, &kgo.Record{Key: []byte("k")}, "k"},
	} {
		if got, err := tc.c.EventID(tc.r); err != nil || got != tc.want {
			t.Errorf("EventID = %q, want %q", got, tc.want)
		}
	}
}

func TestProcessCommitAndDuplicates(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 3)
	var recs []rec
	var distinct []string
	for i := range 100 {
		id := fmt.Sprintf("evt-%d", i%70) // 30 duplicates
		if i < 70 {
			distinct = append(distinct, id)
		}
		recs = append(recs, rec{id, int32(i % 3)})
	}
	produce(t, addrs, recs...)
	fx := newEffects(t)
	c := &kafkadedup.Consumer{Client: client(t, addrs, "mailer", kafkadedup.ClientOpts()...), Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fakestore.New(nil)}}}}
	pollUntil(t, c, fx.handler, 100)
	fx.exactlyOnce(distinct...)
	c.Client.CloseAllowingRebalance()
	nothingLeft(t, addrs, "mailer")
}

func TestCrashAfterEffectBeforeCommit(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	produce(t, addrs, rec{"a", 0}, rec{"b", 0}, rec{"c", 0})
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}}
	fx := newEffects(t)
	// The first consumer processes every record through the same Deduper
	// and scope, then dies before committing anything.
	dead := client(t, addrs, "mailer", kafkadedup.ClientOpts()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := 0
	for got < 3 {
		f := dead.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("records not delivered")
		}
		for _, r := range f.Records() {
			if st, err := d.Once(ctx, "mailer", string(r.Headers[0].Value), func(ctx context.Context) error { return fx.handler(ctx, r) }); st != idemmsg.Executed {
				t.Fatal(st, err)
			}
			got++
		}
	}
	dead.CloseAllowingRebalance() // crash: no commit

	c := &kafkadedup.Consumer{Client: client(t, addrs, "mailer", kafkadedup.ClientOpts()...), Deduper: d}
	var dups atomic.Int32
	pollUntil(t, c, func(ctx context.Context, r *kgo.Record) error {
		dups.Add(1) // must never run: every record is a duplicate
		return nil
	}, 3)
	if dups.Load() != 0 {
		t.Fatalf("the handler ran %d times on redelivered records", dups.Load())
	}
	fx.exactlyOnce("a", "b", "c")
	c.Client.CloseAllowingRebalance()
	nothingLeft(t, addrs, "mailer")
}

func TestCrashBeforeEffect(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	produce(t, addrs, rec{"a", 0}, rec{"b", 0})
	fs := fakestore.New(nil)
	const lease = 1500 * time.Millisecond // long enough to be seen in flight on a loaded machine
	// The dead consumer claimed "a" and died before its side effect.
	if _, err := fs.Begin(context.Background(), idem.RecordKey("mailer", "a"), []byte{}, lease); err != nil {
		t.Fatal(err)
	}
	var statuses []idemmsg.Status
	var mu sync.Mutex
	c := &kafkadedup.Consumer{
		Client:  client(t, addrs, "mailer", kafkadedup.ClientOpts()...),
		Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: lease}},
		OnError: func(_ *kgo.Record, st idemmsg.Status, _ error) {
			mu.Lock()
			statuses = append(statuses, st)
			mu.Unlock()
		},
	}
	fx := newEffects(t)
	start := time.Now()
	pollUntil(t, c, fx.handler, 2)
	fx.exactlyOnce("a", "b")
	if !slices.Contains(statuses, idemmsg.InFlight) || time.Since(start) < lease/2 {
		t.Fatalf("statuses %v after %v: want the record held in flight until the dead lease expired", statuses, time.Since(start))
	}
	if fx.order[0] != "a" {
		t.Fatalf("order %v: b overtook a", fx.order)
	}
}

func TestHandlerErrorRetriedInOrder(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	var recs []rec
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("e%d", i))
		recs = append(recs, rec{ids[i], 0})
	}
	produce(t, addrs, recs...)
	fx := newEffects(t)
	fails := 0
	c := &kafkadedup.Consumer{
		Client:       client(t, addrs, "mailer", kafkadedup.ClientOpts()...),
		Deduper:      &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}},
		RetryBackoff: 10 * time.Millisecond,
	}
	pollUntil(t, c, func(ctx context.Context, r *kgo.Record) error {
		if string(r.Headers[0].Value) == "e3" && fails < 2 {
			fails++
			return errBoom
		}
		return fx.handler(ctx, r)
	}, 10)
	fx.exactlyOnce(ids...)
	if !slices.Equal(fx.order, ids) || fails != 2 {
		t.Fatalf("order %v after %d failures; want %v", fx.order, fails, ids)
	}
	c.Client.CloseAllowingRebalance()
	nothingLeft(t, addrs, "mailer")
}

func TestConcurrentCopiesOneExecutes(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 2)
	// The producer sent the event twice, landing on two partitions that are
	// processed concurrently.
	produce(t, addrs, rec{"evt", 0}, rec{"evt", 1})
	inflight := make(chan struct{}, 8)
	var runs atomic.Int32
	c := &kafkadedup.Consumer{
		Client:          client(t, addrs, "mailer", kafkadedup.ClientOpts()...),
		Deduper:         &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil), Lease: 5 * time.Second}},
		MaxRetryBackoff: 50 * time.Millisecond,
		OnError: func(_ *kgo.Record, st idemmsg.Status, _ error) {
			if st == idemmsg.InFlight {
				inflight <- struct{}{}
			}
		},
	}
	sawInFlight := false
	pollUntil(t, c, func(ctx context.Context, r *kgo.Record) error {
		runs.Add(1)
		select { // hold the first copy until the second was seen in flight
		case <-inflight:
			sawInFlight = true
		case <-time.After(2 * time.Second):
		}
		return nil
	}, 2)
	if runs.Load() != 1 {
		t.Fatalf("the event ran %d times", runs.Load())
	}
	if !sawInFlight {
		t.Log("the two copies were not fetched in one poll; concurrency not exercised this run")
	}
}

// Two members of one group share the partitions; the second joins while the
// first is consuming (a rebalance). Every event runs exactly once and every
// offset is committed.
func TestRebalance(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 4)
	rng := rand.New(rand.NewPCG(3, 4))
	var recs []rec
	var distinct []string
	for range 400 {
		id := fmt.Sprintf("evt-%d", len(distinct))
		if len(distinct) > 0 && rng.IntN(100) < 30 {
			id = distinct[rng.IntN(len(distinct))]
		} else {
			distinct = append(distinct, id)
		}
		recs = append(recs, rec{id, int32(rng.IntN(4))})
	}
	produce(t, addrs, recs...)
	fx := newEffects(t)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fakestore.New(nil)}}}
	var acked atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	slow := func(ctx context.Context, r *kgo.Record) error {
		time.Sleep(200 * time.Microsecond)
		return fx.handler(ctx, r)
	}
	run := func(cl *kgo.Client) {
		c := &kafkadedup.Consumer{Client: cl, Deduper: d, MaxPollRecords: 20}
		for ctx.Err() == nil {
			n, err := c.Poll(ctx, slow)
			if err != nil {
				return
			}
			if acked.Add(int32(n)) >= int32(len(recs)) {
				cancel()
			}
		}
	}
	a := client(t, addrs, "mailer", kafkadedup.ClientOpts()...)
	b := client(t, addrs, "mailer", kafkadedup.ClientOpts()...)
	var wg sync.WaitGroup
	wg.Go(func() { run(a) })
	for acked.Load() < 50 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	wg.Go(func() { run(b) })
	wg.Wait()
	a.CloseAllowingRebalance()
	b.CloseAllowingRebalance()
	fx.exactlyOnce(distinct...)
	if acked.Load() < int32(len(recs)) {
		t.Fatalf("acknowledged %d of %d", acked.Load(), len(recs))
	}
	nothingLeft(t, addrs, "mailer")
}
