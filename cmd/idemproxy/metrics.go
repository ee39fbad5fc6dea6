package main

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/idemkit/idem"
)

// metrics are the proxy's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec   // route, outcome
	events    *prometheus.CounterVec   // route, kind: executions, replays, …
	storeErrs *prometheus.CounterVec   // op
	storeTime *prometheus.HistogramVec // op, result
	upstreamT *prometheus.HistogramVec // route
	upstreamE *prometheus.CounterVec   // route, kind
	inflight  *inflight
}

// newMetrics registers the proxy's metrics on a new registry.
func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), inflight: newInflight()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_requests_total",
		Help: "Requests by route and outcome (executed, replayed, conflict, mismatch, key_missing, key_invalid, too_large, bad_request, store_unavailable, fail_open, passthrough, canceled, replay_invalid, panic).",
	}, []string{"route", "outcome"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_events_total",
		Help: "Record events by route and kind: executed (an execution ended with complete or release), replayed, conflict, mismatch, takeover, lease_lost, store_error.",
	}, []string{"route", "kind"})
	m.storeErrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_store_errors_total",
		Help: "Store calls that failed (not counting fencing refusals), by operation.",
	}, []string{"op"})
	m.storeTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "idemproxy_store_duration_seconds",
		Help:    "Latency of store calls by operation (begin, complete, release, extend, wait) and result (ok, error).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"op", "result"})
	m.upstreamT = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "idemproxy_upstream_duration_seconds",
		Help:    "Time to the end of the upstream response for executed requests, by route.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	m.upstreamE = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "idemproxy_upstream_errors_total",
		Help: "Upstream round trips that failed, by route and kind: unreachable (502), timeout (504), canceled (the client left an unprotected request).",
	}, []string{"route", "kind"})
	inflightG := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "idemproxy_inflight_executions",
		Help: "Requests executing at the upstream under a lease right now.",
	}, func() float64 { n, _ := m.inflight.stats(); return float64(n) })
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "idemproxy_oldest_inflight_seconds",
		Help: "Age of the oldest execution still running at the upstream (0 when none).",
	}, func() float64 { _, age := m.inflight.stats(); return age.Seconds() })
	m.reg.MustRegister(m.requests, m.events, m.storeErrs, m.storeTime, m.upstreamT, m.upstreamE, inflightG, oldest,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observer returns the Keeper observer of one route.
func (m *metrics) observer(route string, log func(context.Context, idem.Event)) idem.Observer {
	counters := map[idem.EventKind]prometheus.Counter{}
	for k := idem.EventExecuted; k <= idem.EventAcquired; k++ {
		counters[k] = m.events.WithLabelValues(route, k.String())
	}
	return idem.ObserverFunc(func(ctx context.Context, e idem.Event) {
		if c := counters[e.Kind]; c != nil {
			c.Inc()
		}
		if log != nil {
			log(ctx, e)
		}
	})
}

// inflight tracks executions running at the upstream.
type inflight struct {
	mu    sync.Mutex
	next  uint64
	start map[uint64]time.Time
}

func newInflight() *inflight { return &inflight{start: map[uint64]time.Time{}} }

func (f *inflight) add(t time.Time) uint64 {
	f.mu.Lock()
	f.next++
	id := f.next
	f.start[id] = t
	f.mu.Unlock()
	return id
}

func (f *inflight) done(id uint64) {
	f.mu.Lock()
	delete(f.start, id)
	f.mu.Unlock()
}

func (f *inflight) stats() (n int, oldest time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	for _, t := range f.start {
		oldest = max(oldest, now.Sub(t))
	}
	return len(f.start), oldest
}

// instrumentStore wraps s so that every call is timed. The wrapper keeps the
// optional Extender and Waiter interfaces of s, which the Keeper uses;
// Inspector and Sweeper are used on the unwrapped store.
func (m *metrics) instrumentStore(s idem.Store) idem.Store {
	b := &timedStore{s: s, m: m}
	for _, op := range []string{"begin", "complete", "release", "extend", "wait"} {
		b.ok[opIndex(op)] = m.storeTime.WithLabelValues(op, "ok")
		b.bad[opIndex(op)] = m.storeTime.WithLabelValues(op, "error")
		b.errs[opIndex(op)] = m.storeErrs.WithLabelValues(op)
	}
	x, isX := s.(idem.Extender)
	w, isW := s.(idem.Waiter)
	switch {
	case isX && isW:
		return &timedXW{timedStore: b, x: x, w: w}
	case isX:
		return &timedX{timedStore: b, x: x}
	case isW:
		return &timedW{timedStore: b, w: w}
	}
	return b
}

func opIndex(op string) int {
	switch op {
	case "begin":
		return 0
	case "complete":
		return 1
	case "release":
		return 2
	case "extend":
		return 3
	}
	return 4
}

type timedStore struct {
	s    idem.Store
	m    *metrics
	ok   [5]prometheus.Observer
	bad  [5]prometheus.Observer
	errs [5]prometheus.Counter
}

func (t *timedStore) observe(op int, start time.Time, err error) {
	d := time.Since(start).Seconds()
	if err == nil || errors.Is(err, idem.ErrLeaseLost) {
		t.ok[op].Observe(d)
		return
	}
	t.bad[op].Observe(d)
	if !errors.Is(err, context.Canceled) {
		t.errs[op].Inc()
	}
}

func (t *timedStore) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	start := time.Now()
	b, err := t.s.Begin(ctx, key, fp, lease)
	t.observe(0, start, err)
	return b, err
}

func (t *timedStore) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	start := time.Now()
	err := t.s.Complete(ctx, key, fence, result, retention)
	t.observe(1, start, err)
	return err
}

func (t *timedStore) Release(ctx context.Context, key string, fence uint64) error {
	start := time.Now()
	err := t.s.Release(ctx, key, fence)
	t.observe(2, start, err)
	return err
}

func (t *timedStore) extend(x idem.Extender, ctx context.Context, key string, fence uint64, lease time.Duration) error {
	start := time.Now()
	err := x.Extend(ctx, key, fence, lease)
	t.observe(3, start, err)
	return err
}

func (t *timedStore) wait(w idem.Waiter, ctx context.Context, key string, d time.Duration) error {
	start := time.Now()
	err := w.Wait(ctx, key, d)
	merr := err
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		merr = nil // waiting out the bound is the normal case
	}
	t.observe(4, start, merr)
	return err
}

type timedX struct {
	*timedStore
	x idem.Extender
}

func (t *timedX) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	return t.extend(t.x, ctx, key, fence, lease)
}

type timedW struct {
	*timedStore
	w idem.Waiter
}

func (t *timedW) Wait(ctx context.Context, key string, d time.Duration) error {
	return t.wait(t.w, ctx, key, d)
}

type timedXW struct {
	*timedStore
	x idem.Extender
	w idem.Waiter
}

func (t *timedXW) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	return t.extend(t.x, ctx, key, fence, lease)
}

func (t *timedXW) Wait(ctx context.Context, key string, d time.Duration) error {
	return t.wait(t.w, ctx, key, d)
}
