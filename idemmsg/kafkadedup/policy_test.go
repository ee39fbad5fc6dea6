package kafkadedup_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/kafkadedup"
)

// A record whose handler always fails stops blocking its partition after
// MaxAttempts: OnPoison receives it, its offset is committed, and the
// records after it are processed. The handler sees its lease.
func TestPoisonRecordUnblocksPartition(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	produce(t, addrs, rec{"a", 0}, rec{"poison", 0}, rec{"b", 0})
	var (
		mu       sync.Mutex
		poisoned []idemmsg.Poison
		done     []string
		tries    int
	)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, MaxAttempts: 3, OnPoison: func(_ context.Context, p idemmsg.Poison) error {
		mu.Lock()
		defer mu.Unlock()
		poisoned = append(poisoned, p)
		return nil
	}}
	var reported []idemmsg.Status
	c := &kafkadedup.Consumer{
		Client: client(t, addrs, "g-poison", kafkadedup.ClientOpts()...), Deduper: d,
		RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond,
		OnError: func(_ *kgo.Record, st idemmsg.Status, _ error) {
			mu.Lock()
			reported = append(reported, st)
			mu.Unlock()
		},
	}
	h := func(ctx context.Context, r *kgo.Record) error {
		l, ok := idem.LeaseFromContext(ctx)
		if !ok || l.Key() != idem.RecordKey("g-poison", string(r.Headers[0].Value)) {
			t.Error("the handler's context carries no lease for its record")
		}
		mu.Lock()
		defer mu.Unlock()
		id := string(r.Headers[0].Value)
		if id == "poison" {
			tries++
			return errBoom
		}
		done = append(done, id)
		return nil
	}
	pollUntil(t, c, h, 3)
	mu.Lock()
	defer mu.Unlock()
	if tries != 3 || !slices.Equal(done, []string{"a", "b"}) {
		t.Fatalf("poison tried %d times, processed %v", tries, done)
	}
	if len(poisoned) != 1 || poisoned[0].ID != "poison" || string(poisoned[0].Payload) != "send poison" || !errors.Is(poisoned[0].Err, errBoom) {
		t.Fatalf("OnPoison got %+v", poisoned)
	}
	if !slices.Contains(reported, idemmsg.Poisoned) {
		t.Fatalf("OnError statuses %v, want Poisoned among them", reported)
	}
	nothingLeft(t, addrs, "g-poison")
}

// A reused id with another payload is acknowledged and reported Mismatched.
func TestMismatchedRecordReported(t *testing.T) {
	t.Parallel()
	addrs := cluster(t, 1)
	produce(t, addrs, rec{"a", 0})
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	r := &kgo.Record{Topic: topic, Value: []byte("other body"), Headers: []kgo.RecordHeader{{Key: "event-id", Value: []byte("a")}}}
	if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	var mu sync.Mutex
	var reported []error
	c := &kafkadedup.Consumer{
		Client: client(t, addrs, "g-mismatch", kafkadedup.ClientOpts()...), Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, FingerprintPayload: true},
		OnError: func(_ *kgo.Record, st idemmsg.Status, err error) {
			mu.Lock()
			defer mu.Unlock()
			if st == idemmsg.Mismatched {
				reported = append(reported, err)
			}
		},
	}
	runs := 0
	pollUntil(t, c, func(context.Context, *kgo.Record) error { runs++; return nil }, 2)
	mu.Lock()
	defer mu.Unlock()
	if runs != 1 || len(reported) != 1 || !errors.Is(reported[0], idem.ErrMismatch) {
		t.Fatalf("runs %d, mismatches reported %v", runs, reported)
	}
	nothingLeft(t, addrs, "g-mismatch")
}
