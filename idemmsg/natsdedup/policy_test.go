package natsdedup_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/natsdedup"
)

// On the real server, a message whose handler always fails is redelivered
// until MaxAttempts, then handed to OnPoison and acknowledged: it is not
// delivered again. The handler sees its lease.
func TestServerPoisonMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	var mu sync.Mutex
	var poisoned []idemmsg.Poison
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, MaxAttempts: 3, OnPoison: func(_ context.Context, p idemmsg.Poison) error {
		mu.Lock()
		defer mu.Unlock()
		poisoned = append(poisoned, p)
		return nil
	}}
	c := &natsdedup.Consumer{Deduper: d}
	runs := 0
	h := func(ctx context.Context, msg jetstream.Msg) error {
		if l, ok := idem.LeaseFromContext(ctx); !ok || l.Fence() == 0 {
			t.Error("the handler's context carries no lease")
		}
		runs++
		return errBoom
	}
	e.publish(t, "Nats-Msg-Id", "evt-poison")
	var seen []idemmsg.Status
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && len(seen) < 3 {
		m := e.next(t, time.Second)
		if m == nil {
			continue
		}
		st, _ := c.Handle(ctx, m, h)
		seen = append(seen, st)
	}
	want := []idemmsg.Status{idemmsg.Failed, idemmsg.Failed, idemmsg.Poisoned}
	if len(seen) != 3 || seen[0] != want[0] || seen[1] != want[1] || seen[2] != want[2] || runs != 3 {
		t.Fatalf("statuses %v after %d runs, want %v", seen, runs, want)
	}
	mu.Lock()
	if len(poisoned) != 1 || poisoned[0].ID != "evt-poison" || string(poisoned[0].Payload) != "notify" || !errors.Is(poisoned[0].Err, errBoom) {
		t.Fatalf("OnPoison got %+v", poisoned)
	}
	mu.Unlock()
	e.drained(t)
}
