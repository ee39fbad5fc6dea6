package idemotel_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemotel"
)

const lease = 10 * time.Second

// keeper returns a Keeper on a test store with obs as its observer.
func keeper(obs idem.Observer) (*idem.Keeper, *testStore, *clock) {
	clk := newClock()
	s := newTestStore(clk)
	return &idem.Keeper{Store: s, Clock: clk, Lease: lease, Observer: obs}, s, clk
}

// inSpan runs f under a new recording span and returns the ended span.
func inSpan(t *testing.T, h *otelHarness, name string, f func(ctx context.Context)) sdktrace.ReadOnlySpan {
	t.Helper()
	ctx, span := h.tp.Tracer("test").Start(context.Background(), name)
	f(ctx)
	span.End()
	ro, ok := span.(sdktrace.ReadOnlySpan)
	if !ok {
		t.Fatalf("span %T is not a ReadOnlySpan", span)
	}
	return ro
}

// TestDo: idem.Do under a span reports its begin and its completion or
// release on that span, with the hashes of the scope and the record key.
func TestDo(t *testing.T) {
	h := newHarness(t)
	k, _, _ := keeper(h.observer(t, idemotel.Options{Key: true}))
	const scope, key = "tenant-42", "order-7"
	charge := func(ctx context.Context) (string, error) { return "ch_1", nil }

	first := inSpan(t, h, "first", func(ctx context.Context) {
		if _, replayed, err := idem.Do(ctx, k, scope, key, charge); err != nil || replayed {
			t.Fatalf("Do: %v %v", replayed, err)
		}
	})
	if got := eventNames(first); fmt.Sprint(got) != "[idem.acquired idem.complete]" {
		t.Fatalf("events %v", got)
	}
	for _, ev := range first.Events() {
		a := attrs(ev.Attributes)
		if a[idemotel.AttrScopeHash].AsString() != sha8(scope) {
			t.Errorf("%s: scope hash %q, want %q", ev.Name, a[idemotel.AttrScopeHash].AsString(), sha8(scope))
		}
		if a[idemotel.AttrKeyHash].AsString() != sha8(idem.RecordKey(scope, key)) {
			t.Errorf("%s: key hash %q, want the hash of the record key", ev.Name, a[idemotel.AttrKeyHash].AsString())
		}
		if a[idemotel.AttrKey].AsString() != key {
			t.Errorf("%s: key %q with Options.Key", ev.Name, a[idemotel.AttrKey].AsString())
		}
	}

	replay := inSpan(t, h, "replay", func(ctx context.Context) {
		if _, replayed, err := idem.Do(ctx, k, scope, key, charge); err != nil || !replayed {
			t.Fatalf("Do: %v %v", replayed, err)
		}
	})
	if got := eventNames(replay); fmt.Sprint(got) != "[idem.replayed]" {
		t.Fatalf("replay events %v", got)
	}

	failed := inSpan(t, h, "failed", func(ctx context.Context) {
		_, _, err := idem.Do(ctx, k, scope, "order-8", func(context.Context) (string, error) { return "", errors.New("card declined") })
		if err == nil {
			t.Fatal("Do: no error")
		}
	})
	if got := eventNames(failed); fmt.Sprint(got) != "[idem.acquired idem.release]" {
		t.Fatalf("failed events %v", got)
	}
	if failed.Status().Code != codes.Unset {
		t.Errorf("a released execution sets status %v", failed.Status())
	}
}

// TestDeduper: idemmsg.Deduper.Once under a span per message.
func TestDeduper(t *testing.T) {
	h := newHarness(t)
	k, _, _ := keeper(h.observer(t, idemotel.Options{}))
	d := &idemmsg.Deduper{Keeper: k}
	var names []string
	for range 2 {
		sp := inSpan(t, h, "message", func(ctx context.Context) {
			if _, err := d.Once(ctx, "notifications", "msg-1", func(context.Context) error { return nil }); err != nil {
				t.Fatal(err)
			}
		})
		names = append(names, strings.Join(eventNames(sp), "+"))
	}
	if fmt.Sprint(names) != "[idem.acquired+idem.complete idem.replayed]" {
		t.Errorf("events %v", names)
	}
}

// TestLeaseLostOnExtend: a stale executor's Extend is refused; the event
// marks its span an error, and its store span too.
func TestLeaseLostOnExtend(t *testing.T) {
	h := newHarness(t)
	k, s, clk := keeper(h.observer(t, idemotel.Options{StoreSpans: true}))
	ctx := context.Background()
	a, err := k.Begin(ctx, "s", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(lease + time.Second)
	if _, err := k.Begin(ctx, "s", "k", nil); err != nil {
		t.Fatal(err)
	}
	if n := len(h.spans.Ended()); n != 0 {
		t.Fatalf("%d spans without a span in the context, want none", n)
	}
	sp := inSpan(t, h, "stale", func(ctx context.Context) {
		if err := a.Lease.Extend(ctx); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("Extend: %v", err)
		}
	})
	if got := eventNames(sp); fmt.Sprint(got) != "[idem.lease_lost]" {
		t.Fatalf("events %v", got)
	}
	a2 := attrs(sp.Events()[0].Attributes)
	if a2[idemotel.AttrOp].AsString() != "extend" || a2[idemotel.AttrErrorType].AsString() != "lease_lost" || uint64(a2[idemotel.AttrFence].AsInt64()) != a.Lease.Fence() {
		t.Errorf("attributes %v", sp.Events()[0].Attributes)
	}
	if sp.Status().Code != codes.Error || sp.Status().Description != "idem: lease lost on extend" {
		t.Errorf("status %+v", sp.Status())
	}
	kids := childrenOf(h, sp)
	if len(kids) != 1 || kids[0].Name() != "idem.extend" || kids[0].Status().Code != codes.Error ||
		kids[0].EndTime().Sub(kids[0].StartTime()) != extendLat {
		t.Errorf("store spans %v", kids)
	}

	// A store failure of an Extend the caller made is an error of its span.
	s.fail = func(op, _ string) error {
		if op == "extend" {
			return fmt.Errorf("%w: %w", idem.ErrStoreUnavailable, context.DeadlineExceeded)
		}
		return nil
	}
	a, err = k.Begin(ctx, "s", "k2", nil)
	if err != nil {
		t.Fatal(err)
	}
	sp = inSpan(t, h, "extend", func(ctx context.Context) { _ = a.Lease.Extend(ctx) })
	a2 = attrs(sp.Events()[0].Attributes)
	if fmt.Sprint(eventNames(sp)) != "[idem.store_error]" || a2[idemotel.AttrErrorType].AsString() != "timeout" || sp.Status().Code != codes.Error {
		t.Errorf("events %v attributes %v status %v", eventNames(sp), sp.Events()[0].Attributes, sp.Status())
	}
}

func childrenOf(h *otelHarness, parent sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range h.spans.Ended() {
		if sp.Parent().SpanID() == parent.SpanContext().SpanID() {
			out = append(out, sp)
		}
	}
	return out
}

// TestNoRecordingSpan: without a recording span in the context, nothing is
// traced (not even with StoreSpans), and the metrics still count.
func TestNoRecordingSpan(t *testing.T) {
	h := newHarness(t)
	obs := h.observer(t, idemotel.Options{StoreSpans: true})
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()), sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() { _ = unsampled.Shutdown(context.Background()) })
	ctx, span := unsampled.Tracer("test").Start(context.Background(), "unsampled")
	if span.IsRecording() {
		t.Fatal("the span records")
	}
	e := idem.Event{Kind: idem.EventAcquired, Key: idem.RecordKey("s", "k"), Op: "begin", Fence: 1, StoreLatency: time.Millisecond}
	obs.Observe(context.Background(), e)
	obs.Observe(ctx, e)
	span.End()
	if n := len(h.spans.Ended()); n != 0 {
		t.Errorf("%d spans recorded", n)
	}
	rm := h.metrics(t)
	if c := counts(t, rm)["acquired/begin"]; c != 2 {
		t.Errorf("acquired count %d, want 2", c)
	}
	if g := histograms(t, rm, idemotel.MetricStoreDuration)["acquired/begin"]; g.count != 2 {
		t.Errorf("store duration %+v", g)
	}
}

// TestMarkCompleted: an execution the caller completed in its own
// transaction is reported without a store step: it is counted and its
// execution time recorded, but no store latency.
func TestMarkCompleted(t *testing.T) {
	h := newHarness(t)
	k, _, clk := keeper(h.observer(t, idemotel.Options{}))
	a, err := k.Begin(context.Background(), "s", "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	a.Lease.MarkCompleted()
	rm := h.metrics(t)
	if c := counts(t, rm)["executed/complete"]; c != 1 {
		t.Errorf("executed count %d", c)
	}
	if g, ok := histograms(t, rm, idemotel.MetricStoreDuration)["executed/complete"]; ok {
		t.Errorf("store duration recorded for MarkCompleted: %+v", g)
	}
	if g := histograms(t, rm, idemotel.MetricExecutionDuration)["executed/complete"]; g.count != 1 || !near(g.sum, (beginLat+time.Second).Seconds()) {
		t.Errorf("execution duration %+v", g)
	}
}

// observeIn records e on a new span and returns its one event's attributes.
func observeIn(t *testing.T, h *otelHarness, obs *idemotel.Observer, e idem.Event) (sdktrace.ReadOnlySpan, map[attribute.Key]attribute.Value) {
	t.Helper()
	sp := inSpan(t, h, "op", func(ctx context.Context) { obs.Observe(ctx, e) })
	if len(sp.Events()) != 1 {
		t.Fatalf("events %v", eventNames(sp))
	}
	return sp, attrs(sp.Events()[0].Attributes)
}

// TestErrorMessage: the store's message is recorded unless it shows the
// scope (or the key, when keys are not recorded).
func TestErrorMessage(t *testing.T) {
	h := newHarness(t)
	plain := h.observer(t, idemotel.Options{})
	withKey := h.observer(t, idemotel.Options{Key: true})
	const scope, key = "user\x00:bob", "pay-1"
	rk := idem.RecordKey(scope, key)
	for _, c := range []struct {
		obs  *idemotel.Observer
		err  error
		want string // "" when left out
	}{
		{plain, errors.New("conn reset"), "conn reset"},
		{plain, fmt.Errorf("store: key %s gone", rk), ""},
		{plain, fmt.Errorf("store: scope %q over quota", scope), ""},
		{plain, fmt.Errorf("store: key %q", key), ""},
		{withKey, fmt.Errorf("store: key %q", key), `store: key "pay-1"`},
		{withKey, fmt.Errorf("store: %s", scope), ""},
	} {
		_, a := observeIn(t, h, c.obs, idem.Event{Kind: idem.EventStoreError, Key: rk, Op: "begin", Err: c.err})
		v, ok := a[idemotel.AttrErrorMessage]
		if ok != (c.want != "") || v.AsString() != c.want {
			t.Errorf("error %q: message %q (%v), want %q", c.err, v.AsString(), ok, c.want)
		}
		if a[idemotel.AttrErrorType].AsString() != "_OTHER" {
			t.Errorf("error.type %v", a[idemotel.AttrErrorType])
		}
	}
	// A key that is not a record key: the whole of it is hidden.
	_, a := observeIn(t, h, plain, idem.Event{Kind: idem.EventStoreError, Key: "raw-key", Op: "begin", Err: errors.New("raw-key: gone")})
	if _, ok := a[idemotel.AttrErrorMessage]; ok {
		t.Error("message with the raw key recorded")
	}
	if _, ok := a[idemotel.AttrScopeHash]; ok {
		t.Error("scope hash of a key that is not a record key")
	}
	if a[idemotel.AttrKeyHash].AsString() != sha8("raw-key") {
		t.Errorf("key hash %v", a[idemotel.AttrKeyHash])
	}
}

func TestErrorTypes(t *testing.T) {
	h := newHarness(t)
	obs := h.observer(t, idemotel.Options{})
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("x: %w", idem.ErrLeaseLost), "lease_lost"},
		{fmt.Errorf("x: %w", idem.ErrStoreFull), "store_full"},
		{fmt.Errorf("x: %w: %w", idem.ErrStoreUnavailable, context.DeadlineExceeded), "timeout"},
		{fmt.Errorf("x: %w: %w", idem.ErrStoreUnavailable, context.Canceled), "canceled"},
		{fmt.Errorf("x: %w", idem.ErrStoreUnavailable), "store_unavailable"},
		{errors.New("x"), "_OTHER"},
	} {
		_, a := observeIn(t, h, obs, idem.Event{Kind: idem.EventStoreError, Key: idem.RecordKey("s", "k"), Op: "complete", Err: c.err})
		if got := a[idemotel.AttrErrorType].AsString(); got != c.want {
			t.Errorf("%v: error.type %q, want %q", c.err, got, c.want)
		}
	}
}

// TestHashSecret: with a HashSecret the hashes are HMACs under it.
func TestHashSecret(t *testing.T) {
	h := newHarness(t)
	secret := []byte("0123456789abcdef")
	obs := h.observer(t, idemotel.Options{HashSecret: secret})
	mac := func(s string) string {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(s))
		return hex.EncodeToString(m.Sum(nil)[:8])
	}
	rk := idem.RecordKey("acct-1", "k")
	_, a := observeIn(t, h, obs, idem.Event{Kind: idem.EventReplayed, Key: rk, Op: "begin"})
	if got := a[idemotel.AttrScopeHash].AsString(); got != mac("acct-1") || got == sha8("acct-1") || got != obs.Hash("acct-1") {
		t.Errorf("scope hash %q, want %q", got, mac("acct-1"))
	}
	if got := a[idemotel.AttrKeyHash].AsString(); got != mac(rk) {
		t.Errorf("key hash %q, want %q", got, mac(rk))
	}
}

// TestAttributesAndFence: Options.Attributes reach metrics and events;
// fences past the int64 range are strings; kinds and ops this package does
// not know are reported by name.
func TestAttributesAndFence(t *testing.T) {
	h := newHarness(t)
	route := attribute.String("route", "charges")
	obs := h.observer(t, idemotel.Options{Attributes: []attribute.KeyValue{route}})
	_, a := observeIn(t, h, obs, idem.Event{Kind: idem.EventConflict, Key: idem.RecordKey("s", "k"), Op: "begin", Fence: math.MaxUint64})
	if a["route"].AsString() != "charges" {
		t.Errorf("route %v", a["route"])
	}
	if v := a[idemotel.AttrFence]; v.Type() != attribute.STRING || v.AsString() != "18446744073709551615" {
		t.Errorf("fence %v", v.String())
	}
	sp, a := observeIn(t, h, obs, idem.Event{Kind: idem.EventKind(200), Key: idem.RecordKey("s", "k"), Op: "wait"})
	if sp.Events()[0].Name != "idem.unknown" || a[idemotel.AttrOp].AsString() != "wait" {
		t.Errorf("event %s %v", sp.Events()[0].Name, sp.Events()[0].Attributes)
	}
	rm := h.metrics(t)
	m, _ := findMetric(rm, idemotel.MetricEvents)
	n := 0
	for _, s := range allStrings(nil, rm) {
		if s == "charges" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("route on %d metric points, want 2 (%v)", n, m.Data)
	}
	if c := counts(t, rm); c["unknown/wait"] != 1 || c["conflict/begin"] != 1 {
		t.Errorf("counts %v", c)
	}
}

// TestConcurrent: one Observer used from many goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	h := newHarness(t)
	obs := h.observer(t, idemotel.Options{StoreSpans: true})
	const workers, each = 8, 100
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				rk := idem.RecordKey(fmt.Sprint("scope-", w), fmt.Sprint("k-", i))
				inSpan(t, h, "req", func(ctx context.Context) {
					obs.Observe(ctx, idem.Event{Kind: idem.EventAcquired, Key: rk, Op: "begin", Fence: 1, StoreLatency: time.Millisecond})
					obs.Observe(ctx, idem.Event{Kind: idem.EventExecuted, Key: rk, Op: "complete", Fence: 1, Duration: time.Second, StoreLatency: time.Millisecond})
				})
			}
		})
	}
	wg.Wait()
	rm := h.metrics(t)
	c := counts(t, rm)
	if c["acquired/begin"] != workers*each || c["executed/complete"] != workers*each {
		t.Errorf("counts %v", c)
	}
	if n := len(h.spans.Ended()); n != 3*workers*each {
		t.Errorf("%d spans, want %d", n, 3*workers*each)
	}
}

// TestDefaultsAndNoop: nil providers use the global ones (noop unless
// set), and noop providers record nothing and do not fail.
func TestDefaultsAndNoop(t *testing.T) {
	for _, o := range []idemotel.Options{{}, {TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider(), StoreSpans: true}} {
		obs, err := idemotel.NewObserver(o)
		if err != nil {
			t.Fatal(err)
		}
		obs.Observe(trace.ContextWithSpan(context.Background(), tracenoop.Span{}), idem.Event{Kind: idem.EventAcquired, Key: "1:sk", Op: "begin", StoreLatency: time.Millisecond})
	}
}
