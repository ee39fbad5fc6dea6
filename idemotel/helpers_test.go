package idemotel_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock for the store (memstore.Options.Now) and the Keeper
// (idem.Keeper.Clock). Its timers never fire: lease renewal never runs, so
// a lease lapses when the test advances the clock past it, and the Keeper
// never sleeps (the tests make no transient store failure, which it would
// retry after a pause).
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func (c *clock) AfterFunc(time.Duration, func()) idem.Timer { return idleTimer{} }

type idleTimer struct{}

func (idleTimer) Stop() bool               { return false }
func (idleTimer) Reset(time.Duration) bool { return false }

// Store step latencies on the fake clock: each call of the test store
// advances the clock by its step's latency, so the Keeper measures exactly
// these.
const (
	beginLat    = 2 * time.Millisecond
	completeLat = 5 * time.Millisecond
	releaseLat  = 7 * time.Millisecond
	extendLat   = 3 * time.Millisecond
)

// testStore is a memstore (its Inspector and Waiter kept) whose steps take
// a fixed time on the fake clock and can be made to fail.
type testStore struct {
	*memstore.Store
	clk *clock
	// fail, if set, returns the error a step (op) on record key rk fails
	// with, or nil to let it through.
	fail func(op, rk string) error
}

func newTestStore(clk *clock) *testStore {
	return &testStore{Store: memstore.New(memstore.Options{Now: clk.Now}), clk: clk}
}

func (s *testStore) failure(op, rk string) error {
	if s.fail == nil {
		return nil
	}
	return s.fail(op, rk)
}

func (s *testStore) Begin(ctx context.Context, rk string, fp []byte, lease time.Duration) (idem.Begun, error) {
	s.clk.Advance(beginLat)
	if err := s.failure("begin", rk); err != nil {
		return idem.Begun{}, err
	}
	return s.Store.Begin(ctx, rk, fp, lease)
}

func (s *testStore) Complete(ctx context.Context, rk string, fence uint64, result []byte, retention time.Duration) error {
	s.clk.Advance(completeLat)
	if err := s.failure("complete", rk); err != nil {
		return err
	}
	return s.Store.Complete(ctx, rk, fence, result, retention)
}

func (s *testStore) Release(ctx context.Context, rk string, fence uint64) error {
	s.clk.Advance(releaseLat)
	if err := s.failure("release", rk); err != nil {
		return err
	}
	return s.Store.Release(ctx, rk, fence)
}

func (s *testStore) Extend(ctx context.Context, rk string, fence uint64, lease time.Duration) error {
	s.clk.Advance(extendLat)
	if err := s.failure("extend", rk); err != nil {
		return err
	}
	return s.Store.Extend(ctx, rk, fence, lease)
}

// otelHarness holds SDK providers with in-memory readers.
type otelHarness struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newHarness(t *testing.T) *otelHarness {
	h := &otelHarness{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	h.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	t.Cleanup(func() {
		_ = h.tp.Shutdown(context.Background())
		_ = h.mp.Shutdown(context.Background())
	})
	return h
}

func (h *otelHarness) observer(t *testing.T, o idemotel.Options) *idemotel.Observer {
	t.Helper()
	o.TracerProvider, o.MeterProvider = h.tp, h.mp
	obs, err := idemotel.NewObserver(o)
	if err != nil {
		t.Fatal(err)
	}
	return obs
}

// metrics collects the metrics once.
func (h *otelHarness) metrics(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// label is "outcome/op" of an attribute set.
func label(s attribute.Set) string {
	o, _ := s.Value(idemotel.AttrOutcome)
	p, _ := s.Value(idemotel.AttrOp)
	return o.AsString() + "/" + p.AsString()
}

// counts returns idem.events by "outcome/op".
func counts(t *testing.T, rm metricdata.ResourceMetrics) map[string]int64 {
	t.Helper()
	m, ok := findMetric(rm, idemotel.MetricEvents)
	if !ok {
		return map[string]int64{}
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
		t.Fatalf("%s: %T %+v, want a monotonic cumulative sum", m.Name, m.Data, m.Data)
	}
	if m.Unit != "{event}" {
		t.Errorf("%s unit %q", m.Name, m.Unit)
	}
	out := map[string]int64{}
	for _, dp := range sum.DataPoints {
		out[label(dp.Attributes)] += dp.Value
	}
	return out
}

// hist is one histogram data point: count and sum.
type hist struct {
	count uint64
	sum   float64
}

// histograms returns a histogram's points by "outcome/op".
func histograms(t *testing.T, rm metricdata.ResourceMetrics, name string) map[string]hist {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return map[string]hist{}
	}
	if m.Unit != "s" {
		t.Errorf("%s unit %q, want s", name, m.Unit)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s: %T, want a float64 histogram", name, m.Data)
	}
	out := map[string]hist{}
	for _, dp := range h.DataPoints {
		out[label(dp.Attributes)] = hist{dp.Count, dp.Sum}
	}
	return out
}

// eventNames returns the names of a span's events in order.
func eventNames(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, e := range s.Events() {
		out = append(out, e.Name)
	}
	return out
}

// attrs returns a list of attributes as a map.
func attrs(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

// allStrings returns every string the spans and metrics carry: names,
// attribute keys and values, event names, status descriptions.
func allStrings(spans []sdktrace.ReadOnlySpan, rm metricdata.ResourceMetrics) []string {
	var out []string
	add := func(kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			out = append(out, string(kv.Key), kv.Value.String())
		}
	}
	for _, s := range spans {
		out = append(out, s.Name(), s.Status().Description)
		add(s.Attributes())
		for _, e := range s.Events() {
			out = append(out, e.Name)
			add(e.Attributes)
		}
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes.ToSlice())
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					add(dp.Attributes.ToSlice())
				}
			}
		}
	}
	return out
}

// mustNotShow fails t if any string of the spans or metrics contains s.
func mustNotShow(t *testing.T, spans []sdktrace.ReadOnlySpan, rm metricdata.ResourceMetrics, s, what string) {
	t.Helper()
	for _, v := range allStrings(spans, rm) {
		if strings.Contains(v, s) {
			t.Errorf("%s %q appears in %q", what, s, v)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// near reports whether a and b agree to a nanosecond's worth of seconds.
func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// sha8 is the expected hash attribute of s without a HashSecret.
func sha8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}
