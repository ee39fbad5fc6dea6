package idemmsg_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
)

// poisons records OnPoison calls and fails them while fail is set.
type poisons struct {
	mu   sync.Mutex
	got  []idemmsg.Poison
	fail error
}

func (p *poisons) hook(_ context.Context, x idemmsg.Poison) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.got = append(p.got, x)
	return nil
}

func TestMaxAttemptsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := &poisons{fail: errors.New("dead-letter queue down")}
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, MaxAttempts: 3, OnPoison: p.hook}
	m := idemmsg.Message{ID: "m", Payload: []byte("body")}
	runs := 0
	fn := func(context.Context) error { runs++; return errBoom }
	for i := range 2 {
		if st, err := d.OnceMessage(ctx, "s", m, fn); st != idemmsg.Failed || !errors.Is(err, errBoom) {
			t.Fatalf("attempt %d: %v, %v", i+1, st, err)
		}
	}
	// The third failure reaches the limit; the hook fails: still Failed.
	if st, err := d.OnceMessage(ctx, "s", m, fn); st != idemmsg.Failed || !errors.Is(err, p.fail) || !errors.Is(err, errBoom) {
		t.Fatalf("attempt 3: %v, %v", st, err)
	}
	// The next delivery goes to the hook without running the handler.
	p.fail = nil
	st, err := d.OnceMessage(ctx, "s", m, fn)
	if st != idemmsg.Poisoned || !st.Ack() || !errors.Is(err, idemmsg.ErrPoisoned) || !errors.Is(err, errBoom) || runs != 3 {
		t.Fatalf("attempt 4: %v, %v after %d runs", st, err, runs)
	}
	want := []idemmsg.Poison{{Scope: "s", ID: "m", Payload: []byte("body"), Attempts: 3, Err: errBoom}}
	if !reflect.DeepEqual(p.got, want) {
		t.Fatalf("OnPoison got %+v, want %+v", p.got, want)
	}
	// The record is completed: a redelivery is a duplicate.
	if st, err := d.OnceMessage(ctx, "s", m, fn); st != idemmsg.Duplicate || err != nil {
		t.Fatalf("redelivery: %v, %v", st, err)
	}
}

// Without OnPoison, a poison message is acknowledged and reported; a
// success clears the count.
func TestMaxAttemptsWithoutHook(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, MaxAttempts: 2}
	fail := func(context.Context) error { return errBoom }
	ok := func(context.Context) error { return nil }
	if st, _ := d.Once(ctx, "s", "x", fail); st != idemmsg.Failed {
		t.Fatal(st)
	}
	if st, _ := d.Once(ctx, "s", "x", ok); st != idemmsg.Executed {
		t.Fatal(st)
	}
	if st, _ := d.Once(ctx, "s", "y", fail); st != idemmsg.Failed {
		t.Fatal(st)
	}
	if st, err := d.Once(ctx, "s", "y", fail); st != idemmsg.Poisoned || !errors.Is(err, idemmsg.ErrPoisoned) {
		t.Fatal(st, err)
	}
}

// A takeover of an unfinished lease (a crashed consumer) counts as an
// attempt.
func TestMaxAttemptsCountsTakeovers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newClock()
	fs := fakestore.New(c.Now)
	p := &poisons{}
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: time.Minute}, MaxAttempts: 2, OnPoison: p.hook}
	// A consumer claimed "m" and died.
	if _, err := fs.Begin(ctx, idem.RecordKey("s", "m"), []byte{}, time.Minute); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Minute)
	st, err := d.Once(ctx, "s", "m", func(context.Context) error { return errBoom })
	if st != idemmsg.Poisoned || len(p.got) != 1 || p.got[0].Attempts != 2 {
		t.Fatalf("%v, %v; poison %+v", st, err, p.got)
	}
}

func TestMaxAttemptsBatchInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := &poisons{}
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.Batch{Store: fakestore.New(nil)}}, MaxAttempts: 2, OnPoison: p.hook}
	msgs := []idemmsg.Message{{ID: "a"}, {ID: "poison", Payload: []byte("p")}, {ID: "c"}}
	var ran []string
	fn := func(ctx context.Context, i int) error {
		if _, ok := idem.LeaseFromContext(ctx); !ok {
			t.Error("no lease in the handler's context")
		}
		ran = append(ran, msgs[i].ID)
		if msgs[i].ID == "poison" {
			return errBoom
		}
		return nil
	}
	out := d.BatchMessagesInOrder(ctx, "s", msgs, fn)
	if got := statuses(out); !reflect.DeepEqual(got, []idemmsg.Status{idemmsg.Executed, idemmsg.Failed, idemmsg.NotRun}) {
		t.Fatalf("first delivery %v", got)
	}
	out = d.BatchMessagesInOrder(ctx, "s", msgs, fn)
	if got := statuses(out); !reflect.DeepEqual(got, []idemmsg.Status{idemmsg.Duplicate, idemmsg.Poisoned, idemmsg.Executed}) {
		t.Fatalf("second delivery %v (%+v)", got, out)
	}
	if !reflect.DeepEqual(ran, []string{"a", "poison", "poison", "c"}) || len(p.got) != 1 || string(p.got[0].Payload) != "p" {
		t.Fatalf("ran %v, poison %+v", ran, p.got)
	}
}

func TestFingerprintPayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, FingerprintPayload: true}
	ok := func(context.Context) error { return nil }
	if st, err := d.OnceMessage(ctx, "s", idemmsg.Message{ID: "m", Payload: []byte("v1")}, ok); st != idemmsg.Executed || err != nil {
		t.Fatal(st, err)
	}
	if st, err := d.OnceMessage(ctx, "s", idemmsg.Message{ID: "m", Payload: []byte("v1")}, ok); st != idemmsg.Duplicate || err != nil {
		t.Fatal(st, err)
	}
	st, err := d.OnceMessage(ctx, "s", idemmsg.Message{ID: "m", Payload: []byte("v2")}, ok)
	if st != idemmsg.Mismatched || !st.Ack() || !errors.Is(err, idem.ErrMismatch) {
		t.Fatal(st, err)
	}
	// Within a batch, too: a later occurrence with another payload.
	out := d.BatchMessages(ctx, "s", []idemmsg.Message{{ID: "m", Payload: []byte("v1")}, {ID: "m", Payload: []byte("v2")}, {ID: "n"}, {ID: "n"}, {ID: "o"}, {ID: "o", Payload: []byte("v3")}}, func(context.Context, int) error { return nil })
	M, D, E := idemmsg.Mismatched, idemmsg.Duplicate, idemmsg.Executed
	if got := statuses(out); !reflect.DeepEqual(got, []idemmsg.Status{D, M, E, D, E, M}) {
		t.Fatalf("batch %v", got)
	}
}
