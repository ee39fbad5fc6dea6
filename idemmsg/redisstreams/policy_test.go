package redisstreams_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/redisstreams"
)

// On the real Redis (records in redisstore, entries in a stream), an entry
// whose handler always fails is reclaimed and retried until MaxAttempts,
// then handed to OnPoison and acknowledged: it leaves the pending entries
// list. The handler sees its lease.
func TestPoisonEntryAcknowledged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.add(t, "a", "poison", "b")
	var mu sync.Mutex
	var poisoned []idemmsg.Poison
	d := e.deduper()
	d.MaxAttempts = 3
	d.OnPoison = func(_ context.Context, p idemmsg.Poison) error {
		mu.Lock()
		defer mu.Unlock()
		poisoned = append(poisoned, p)
		return nil
	}
	var fx effects
	tries := 0
	c := e.consumer("c1", d)
	pollUntil(t, c, func(ctx context.Context, m redis.XMessage) error {
		if l, ok := idem.LeaseFromContext(ctx); !ok || l.Key() != idem.RecordKey(e.stream+"/mailer", m.Values["event-id"].(string)) {
			t.Error("the handler's context carries no lease for its entry")
		}
		if m.Values["event-id"] == "poison" {
			tries++
			return errBoom
		}
		return fx.handler(ctx, m)
	}, 3)
	fx.exactlyOnce(t, "a", "b")
	mu.Lock()
	defer mu.Unlock()
	if tries != 3 || len(poisoned) != 1 || poisoned[0].ID != "poison" || !errors.Is(poisoned[0].Err, errBoom) {
		t.Fatalf("tries %d, OnPoison got %+v", tries, poisoned)
	}
	if want := redisstreams.Payload(redis.XMessage{Values: map[string]any{"event-id": "poison", "body": "hello"}}); string(poisoned[0].Payload) != string(want) {
		t.Fatalf("payload %q, want %q", poisoned[0].Payload, want)
	}
	if p := e.pending(t); p != 0 {
		t.Fatalf("%d entries pending", p)
	}
}

func TestPayload(t *testing.T) {
	t.Parallel()
	got := redisstreams.Payload(redis.XMessage{Values: map[string]any{"b": "2", "a": "xy"}})
	if string(got) != "1:a2:xy1:b1:2" {
		t.Fatalf("Payload = %q", got)
	}
}
