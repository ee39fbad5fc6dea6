package natsdedup_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/natsdedup"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errBoom = errors.New("boom")

// fakeMsg is a jetstream.Msg that records how it was acknowledged.
type fakeMsg struct {
	jetstream.Msg // nil: unused methods panic
	hdr           nats.Header
	md            *jetstream.MsgMetadata
	acks          []string
	nakDelay      time.Duration
}

func (m *fakeMsg) Headers() nats.Header { return m.hdr }
func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	if m.md == nil {
		return nil, jetstream.ErrNotJSMessage
	}
	return m.md, nil
}
func (m *fakeMsg) Ack() error                      { m.acks = append(m.acks, "ack"); return nil }
func (m *fakeMsg) DoubleAck(context.Context) error { m.acks = append(m.acks, "doubleack"); return nil }
func (m *fakeMsg) Nak() error                      { m.acks = append(m.acks, "nak"); return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error {
	m.acks = append(m.acks, "nakdelay")
	m.nakDelay = d
	return nil
}

func msg(id string, seq uint64) *fakeMsg {
	m := &fakeMsg{hdr: nats.Header{}, md: &jetstream.MsgMetadata{Stream: "ORDERS", Consumer: "mailer", Sequence: jetstream.SequencePair{Stream: seq}}}
	if id != "" {
		m.hdr.Set("Nats-Msg-Id", id)
	}
	return m
}

func TestHandleOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fs := fakestore.New(nil)
	c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs, Lease: 5 * time.Second}}, RetryDelay: time.Second}
	ok := func(context.Context, jetstream.Msg) error { return nil }
	fail := func(context.Context, jetstream.Msg) error { return errBoom }

	for _, tc := range []struct {
		name      string
		m         *fakeMsg
		h         natsdedup.Handler
		failStore bool
		want      idemmsg.Status
		ack       string
		delay     time.Duration
	}{
		{"first", msg("a", 1), ok, false, idemmsg.Executed, "ack", 0},
		{"duplicate", msg("a", 2), ok, false, idemmsg.Duplicate, "ack", 0},
		{"handler error naks with RetryDelay", msg("b", 3), fail, false, idemmsg.Failed, "nakdelay", time.Second},
		{"then processed", msg("b", 4), ok, false, idemmsg.Executed, "ack", 0},
		{"no header: stream sequence", msg("", 5), ok, false, idemmsg.Executed, "ack", 0},
		{"same sequence redelivered", msg("", 5), ok, false, idemmsg.Duplicate, "ack", 0},
		{"store down naks with StoreDelay", msg("c", 6), ok, true, idemmsg.NotRun, "nakdelay", time.Second},
		{"no header, no metadata", &fakeMsg{hdr: nats.Header{}}, ok, false, idemmsg.NotRun, "nakdelay", time.Second},
	} {
		if tc.failStore {
			fs.FailNext("begin", errors.New("down"))
		}
		st, err := c.Handle(ctx, tc.m, tc.h)
		if st != tc.want || len(tc.m.acks) != 1 || tc.m.acks[0] != tc.ack || tc.m.nakDelay != tc.delay {
			t.Errorf("%s: %v %v, acks %v delay %v; want %v %s %v", tc.name, st, err, tc.m.acks, tc.m.nakDelay, tc.want, tc.ack, tc.delay)
		}
	}
	// The default scope is "<stream>/<consumer>".
	if _, ok, _ := fs.Get(ctx, idem.RecordKey("ORDERS/mailer", "a")); !ok {
		t.Error("no record in scope ORDERS/mailer")
	}
	if _, ok, _ := fs.Get(ctx, idem.RecordKey("ORDERS/mailer", "ORDERS:5")); !ok {
		t.Error("no record for the stream-sequence id")
	}
}

func TestHandleInFlightDelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	frozen := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fs := fakestore.New(func() time.Time { return frozen })
	for _, tc := range []struct {
		lease, max, wantMin, wantMax time.Duration
	}{
		{5 * time.Second, 0, 4 * time.Second, 5 * time.Second},
		{time.Minute, 0, 30 * time.Second, 30 * time.Second},
		{time.Minute, 2 * time.Second, 2 * time.Second, 2 * time.Second},
		{time.Millisecond, 0, 100 * time.Millisecond, 100 * time.Millisecond},
	} {
		id := tc.lease.String() + tc.max.String()
		if _, err := fs.Begin(ctx, idem.RecordKey("s", id), []byte{}, tc.lease); err != nil {
			t.Fatal(err)
		}
		c := &natsdedup.Consumer{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}, Scope: "s", MaxInFlightDelay: tc.max}
		m := msg(id, 1)
		st, err := c.Handle(ctx, m, func(context.Context, jetstream.Msg) error { t.Error("ran"); return nil })
		if st != idemmsg.InFlight || m.acks[0] != "nakdelay" {
			t.Fatalf("%v %v %v", st, err, m.acks)
		}
		if m.nakDelay < tc.wantMin || m.nakDelay > tc.wantMax {
			t.Errorf("lease %v max %v: nak delay %v, want in [%v, %v]", tc.lease, tc.max, m.nakDelay, tc.wantMin, tc.wantMax)
		}
	}
}

func TestHandleDoubleAckAndCustomID(t *testing.T) {
	t.Parallel()
	var reported []idemmsg.Status
	c := &natsdedup.Consumer{
		Deduper:   &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}},
		DoubleAck: true,
		ID:        func(m jetstream.Msg) (string, error) { return m.Headers().Get("event-id"), nil },
		OnError:   func(_ jetstream.Msg, st idemmsg.Status, _ error) { reported = append(reported, st) },
	}
	m := msg("ignored", 1)
	m.hdr.Set("event-id", "e1")
	if st, err := c.Handle(context.Background(), m, func(context.Context, jetstream.Msg) error { return nil }); st != idemmsg.Executed || err != nil || m.acks[0] != "doubleack" {
		t.Fatalf("%v %v %v", st, err, m.acks)
	}
	m2 := msg("other", 2) // no event-id header: empty id
	if st, _ := c.Handle(context.Background(), m2, func(context.Context, jetstream.Msg) error { return nil }); st != idemmsg.NotRun {
		t.Fatalf("empty id: %v", st)
	}
	if len(reported) != 1 || reported[0] != idemmsg.NotRun {
		t.Fatalf("OnError saw %v", reported)
	}
}

// noAck simulates a consumer that crashes after processing, before its ack
// reaches the server.
type noAck struct{ jetstream.Msg }

func (noAck) Ack() error { return nil }
