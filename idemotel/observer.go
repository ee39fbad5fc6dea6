package idemotel

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemkit/idem"
)

// ScopeName is the instrumentation scope (tracer and meter name) of this
// package.
const ScopeName = "github.com/idemkit/idem/idemotel"

// Attribute keys of span events, store spans and metrics. Durations are in
// seconds, as float64.
const (
	// AttrOutcome is the event kind: "acquired", "takeover", "replayed",
	// "conflict", "mismatch", "executed", "lease_lost" or "store_error"
	// (idem.EventKind.String). On span events, store spans and every metric.
	AttrOutcome = attribute.Key("idem.outcome")
	// AttrOp is the store step: "begin", "complete", "release" or "extend".
	// On span events, store spans and every metric.
	AttrOp = attribute.Key("idem.op")
	// AttrFence is the fence of the lease involved (an int64), when the
	// event has one.
	AttrFence = attribute.Key("idem.fence")
	// AttrScopeHash identifies the scope of the record without revealing
	// it: 16 hex digits, the first 8 bytes of SHA-256(scope), or of
	// HMAC-SHA-256(Options.HashSecret, scope).
	AttrScopeHash = attribute.Key("idem.scope_hash")
	// AttrKeyHash identifies the record: the same hash of the whole record
	// key (idem.RecordKey(scope, key)), so that one client key used by two
	// callers gives two values.
	AttrKeyHash = attribute.Key("idem.key_hash")
	// AttrKey is the idempotency key as the client sent it; recorded only
	// with Options.Key.
	AttrKey = attribute.Key("idem.key")
	// AttrStoreLatency is the latency of the store step reported, in
	// seconds (idem.Event.StoreLatency), when the Keeper timed one.
	AttrStoreLatency = attribute.Key("idem.store.latency")
	// AttrExecutionDuration is how long the operation ran, in seconds, from
	// the Begin that acquired the key to the end of its completion or
	// release (idem.Event.Duration of an EventExecuted).
	AttrExecutionDuration = attribute.Key("idem.execution.duration")
	// AttrErrorType classifies the error of "idem.lease_lost" and
	// "idem.store_error" (the OpenTelemetry semantic convention error.type):
	// "lease_lost", "store_full", "timeout", "canceled",
	// "store_unavailable", or "_OTHER".
	AttrErrorType = attribute.Key("error.type")
	// AttrErrorMessage is the store's error message. It is left out when it
	// contains the scope, or the key while Options.Key is off.
	AttrErrorMessage = attribute.Key("idem.error.message")
)

// Metric instrument names.
const (
	// MetricEvents is the counter of outcomes (unit "{event}"), with the
	// attributes idem.outcome and idem.op: one increment per idem.Event.
	MetricEvents = "idem.events"
	// MetricStoreDuration is the histogram of store step latencies (unit
	// "s"), with idem.op and idem.outcome: one observation per timed store
	// step (see Observer.Observe).
	MetricStoreDuration = "idem.store.duration"
	// MetricExecutionDuration is the histogram of execution times (unit
	// "s"), with idem.op ("complete" or "release") and idem.outcome
	// ("executed"): one observation per execution.
	MetricExecutionDuration = "idem.execution.duration"
)

// Bucket boundaries, in seconds, of the two histograms (advisory: a view in
// the MeterProvider may override them). The store buckets are those of
// idemproxy's idemproxy_store_duration_seconds.
var (
	storeBuckets     = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	executionBuckets = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10, 30, 60}
)

// Options configure an Observer. The zero value uses the global providers
// and records no store spans and no keys.
type Options struct {
	// TracerProvider gives the tracer of the store spans. If nil,
	// otel.GetTracerProvider(). Span events are added to the span found in
	// the context, whatever its provider.
	TracerProvider trace.TracerProvider
	// MeterProvider gives the meter of the instruments. If nil,
	// otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// StoreSpans also records one child span of the span in the context per
	// timed store step: "idem.begin", "idem.complete", "idem.release",
	// "idem.extend", back-dated by the step's StoreLatency with
	// trace.WithTimestamp (the Keeper reports a step after it returned).
	// Like span events, store spans are made only under a recording span.
	StoreSpans bool
	// Key also records the idempotency key itself (idem.key). Off by
	// default: keys can be sensitive (a client may put an order number or
	// an e-mail address in one); idem.key_hash always identifies the record.
	Key bool
	// HashSecret, if set, makes idem.scope_hash and idem.key_hash
	// HMAC-SHA-256 digests under it instead of plain SHA-256 digests, so
	// that a low-entropy scope (an account number) cannot be found by
	// hashing guesses. Hashes stay comparable across processes and
	// restarts as long as the secret does.
	HashSecret []byte
	// Attributes are added to every metric measurement, span event and
	// store span (for example the route of idemproxy). Keep them few and of
	// low cardinality: each distinct set is a metric stream.
	Attributes []attribute.KeyValue
}

// Observer turns the outcomes of an idem.Keeper into OpenTelemetry span
// events, store spans and metrics (see the package documentation). Make it
// with NewObserver; it is safe for concurrent use.
type Observer struct {
	tracer     trace.Tracer
	storeSpans bool
	key        bool
	hashSecret []byte
	extra      []attribute.KeyValue

	events  metric.Int64Counter
	storeD  metric.Float64Histogram
	execD   metric.Float64Histogram
	entries [numKinds][numOps]entry
}

var _ idem.Observer = (*Observer)(nil)

// The ops with precomputed entries, by index; other ops are computed per
// event.
var ops = [...]string{"begin", "complete", "release", "extend"}

const (
	numKinds = int(idem.EventAcquired) + 1 // index 0 is an unknown kind
	numOps   = len(ops)
)

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
	return -1
}

// entry is what an observation of one (kind, op) needs, made once.
type entry struct {
	event    string               // span event name
	span     string               // store span name
	attrs    []attribute.KeyValue // Options.Attributes, idem.outcome, idem.op
	add      []metric.AddOption
	rec      []metric.RecordOption
	status   string // span status description; "" leaves the status alone
	spanErr  string // store span status description; "" for none
	isError  bool   // the event carries an error (lease_lost, store_error)
	executed bool
}

func (o *Observer) newEntry(kind idem.EventKind, op string) entry {
	outcome := kind.String()
	attrs := make([]attribute.KeyValue, 0, len(o.extra)+2)
	attrs = append(attrs, o.extra...)
	attrs = append(attrs, AttrOutcome.String(outcome), AttrOp.String(op))
	set := attribute.NewSet(attrs...)
	mo := metric.WithAttributeSet(set)
	e := entry{
		event: "idem." + outcome,
		span:  "idem." + op,
		attrs: attrs[:len(attrs):len(attrs)],
		add:   []metric.AddOption{mo},
		rec:   []metric.RecordOption{mo},
	}
	switch kind {
	case idem.EventExecuted:
		e.executed = true
		if op == "complete" || op == "release" {
			e.event = "idem." + op
		}
	case idem.EventLeaseLost:
		e.isError = true
		e.status = "idem: lease lost on " + op
		e.spanErr = e.status
	case idem.EventStoreError:
		e.isError = true
		e.spanErr = "idem: store error on " + op
		// The Keeper retries a failed complete or release (a transient
		// failure is reported and tried again), and the caller learns of
		// a final failure (idemhttp answers 503, Do returns the error): the
		// request's own instrumentation marks it. A failed begin or extend
		// is final for the request that made it.
		if op != "complete" && op != "release" {
			e.status = e.spanErr
		}
	}
	return e
}

// NewObserver returns an Observer that reports to the providers of o. It
// creates the metric instruments once; an error is the MeterProvider's
// refusal to create one.
func NewObserver(o Options) (*Observer, error) {
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	mp := o.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	obs := &Observer{
		tracer:     tp.Tracer(ScopeName),
		storeSpans: o.StoreSpans,
		key:        o.Key,
		extra:      append([]attribute.KeyValue(nil), o.Attributes...),
	}
	if o.HashSecret != nil {
		obs.hashSecret = append([]byte{}, o.HashSecret...)
	}
	m := mp.Meter(ScopeName)
	var err error
	obs.events, err = m.Int64Counter(MetricEvents,
		metric.WithUnit("{event}"),
		metric.WithDescription("Outcomes reported by idem Keepers, by outcome (acquired, takeover, replayed, conflict, mismatch, executed, lease_lost, store_error) and store step."))
	if err != nil {
		return nil, fmt.Errorf("idemotel: %s: %w", MetricEvents, err)
	}
	obs.storeD, err = m.Float64Histogram(MetricStoreDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Latency of the store steps of idem Keepers (begin, complete, release, extend), by step and outcome."),
		metric.WithExplicitBucketBoundaries(storeBuckets...))
	if err != nil {
		return nil, fmt.Errorf("idemotel: %s: %w", MetricStoreDuration, err)
	}
	obs.execD, err = m.Float64Histogram(MetricExecutionDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Time idempotent operations ran, from the begin that acquired the key to the end of their completion (complete) or release (release)."),
		metric.WithExplicitBucketBoundaries(executionBuckets...))
	if err != nil {
		return nil, fmt.Errorf("idemotel: %s: %w", MetricExecutionDuration, err)
	}
	for k := range numKinds {
		for i, op := range ops {
			obs.entries[k][i] = obs.newEntry(idem.EventKind(k), op)
		}
	}
	return obs, nil
}

// entry returns the entry of e's kind and op: a precomputed one, or (for an
// op or kind this package does not know) a new one.
func (o *Observer) entry(e *idem.Event) *entry {
	if i := opIndex(e.Op); i >= 0 && int(e.Kind) < numKinds {
		return &o.entries[e.Kind][i]
	}
	en := o.newEntry(e.Kind, e.Op)
	return &en
}

// timedStep reports whether e ends a store step that the Keeper timed and
// that no other event reports: every Begin outcome, a failed Extend, and
// the execution's completing or releasing step (retries included), which
// the Keeper reports as EventExecuted, before a lease_lost or store_error
// event of the same step. A zero StoreLatency is a step the Keeper did
// not time: Lease.MarkCompleted (the caller completed the record in its
// own transaction). A failed attempt that the Keeper retries
// (idem.Event.Retrying) carries its own latency as a span event attribute,
// but is not a step of its own: the step's EventExecuted times them all.
func timedStep(e *idem.Event) bool {
	return e.StoreLatency > 0 && (e.Kind == idem.EventExecuted || e.Op != "complete" && e.Op != "release")
}

// Observe records e: it implements idem.Observer. It counts e in
// idem.events; records the latency of a timed store step (see below) in
// idem.store.duration and the execution time of an EventExecuted in
// idem.execution.duration; and, when the span in ctx is recording, adds the
// span event of e to it, sets its status to Error for a lease loss and a
// failed begin or extend, and with Options.StoreSpans starts and ends a
// child span for a timed store step.
//
// A timed store step is an event with a nonzero StoreLatency that ends a
// store call: each Begin outcome, a failed Extend, and the execution
// reported when a record is completed or released (EventExecuted, whose
// StoreLatency spans every attempt of that step). The lease_lost or
// store_error event that follows a refused or failed completion or release
// reports the same step again and is not timed a second time.
func (o *Observer) Observe(ctx context.Context, e idem.Event) {
	en := o.entry(&e)
	o.events.Add(ctx, 1, en.add...)
	step := timedStep(&e)
	if step {
		o.storeD.Record(ctx, e.StoreLatency.Seconds(), en.rec...)
	}
	if en.executed {
		o.execD.Record(ctx, e.Duration.Seconds(), en.rec...)
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	o.record(ctx, span, &e, en, step)
}

// record adds e's span event to span and, if asked, e's store span.
func (o *Observer) record(ctx context.Context, span trace.Span, e *idem.Event, en *entry, step bool) {
	attrs := make([]attribute.KeyValue, 0, len(en.attrs)+8)
	attrs = append(attrs, en.attrs...)
	scope, key, split := idem.SplitRecordKey(e.Key)
	if split {
		attrs = append(attrs, AttrScopeHash.String(o.hash(scope)))
	}
	attrs = append(attrs, AttrKeyHash.String(o.hash(e.Key)))
	if split && o.key {
		attrs = append(attrs, AttrKey.String(key))
	}
	if e.Fence != 0 {
		attrs = append(attrs, fenceAttr(e.Fence))
	}
	if e.StoreLatency > 0 {
		attrs = append(attrs, AttrStoreLatency.Float64(e.StoreLatency.Seconds()))
	}
	if en.executed {
		attrs = append(attrs, AttrExecutionDuration.Float64(e.Duration.Seconds()))
	}
	if en.isError || e.Err != nil {
		attrs = append(attrs, AttrErrorType.String(errorType(e.Err)))
		if msg, ok := o.errorMessage(e, scope, key, split); ok {
			attrs = append(attrs, AttrErrorMessage.String(msg))
		}
	}
	now := time.Now()
	span.AddEvent(en.event, trace.WithTimestamp(now), trace.WithAttributes(attrs...))
	if en.status != "" {
		span.SetStatus(codes.Error, en.status)
	}
	if !o.storeSpans || !step {
		return
	}
	_, s := o.tracer.Start(ctx, en.span,
		trace.WithTimestamp(now.Add(-e.StoreLatency)),
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrs...))
	if en.spanErr != "" {
		s.SetStatus(codes.Error, en.spanErr)
	}
	s.End(trace.WithTimestamp(now))
}

// hash returns the first 8 bytes of SHA-256(s), or of
// HMAC-SHA-256(HashSecret, s), as 16 hex digits.
func (o *Observer) hash(s string) string {
	var sum [sha256.Size]byte
	if o.hashSecret != nil {
		m := hmac.New(sha256.New, o.hashSecret)
		m.Write([]byte(s))
		m.Sum(sum[:0])
	} else {
		sum = sha256.Sum256([]byte(s))
	}
	return hex.EncodeToString(sum[:8])
}

// Hash returns the value that idem.scope_hash has for scope, and
// idem.key_hash for idem.RecordKey(scope, key) when given that record key:
// the first 8 bytes of SHA-256(s) (or of HMAC-SHA-256(Options.HashSecret,
// s)) as 16 hex digits. Use it to find a caller's events in a trace
// backend.
func (o *Observer) Hash(s string) string { return o.hash(s) }

// fenceAttr returns the fence as an int64 attribute (OpenTelemetry has no
// unsigned integers), or as a decimal string past the int64 range.
func fenceAttr(f uint64) attribute.KeyValue {
	if f > math.MaxInt64 {
		return AttrFence.String(strconv.FormatUint(f, 10))
	}
	return AttrFence.Int64(int64(f))
}

// errorType classifies err for error.type, most specific first.
func errorType(err error) string {
	switch {
	case errors.Is(err, idem.ErrLeaseLost):
		return "lease_lost"
	case errors.Is(err, idem.ErrStoreFull):
		return "store_full"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, idem.ErrStoreUnavailable):
		return "store_unavailable"
	}
	return "_OTHER"
}

// errorMessage returns e.Err's message, unless it shows the scope, or the
// key when keys are not recorded, as is or quoted: the stores of this
// repository never put keys in their errors, but a store is free to.
func (o *Observer) errorMessage(e *idem.Event, scope, key string, split bool) (string, bool) {
	if e.Err == nil {
		return "", false
	}
	msg := e.Err.Error()
	if !split {
		// Which part is the scope is unknown: hide the whole key.
		return msg, !shows(msg, e.Key)
	}
	if shows(msg, scope) || !o.key && shows(msg, key) {
		return "", false
	}
	return msg, true
}

// shows reports whether msg contains s, or s as %q would print it.
func shows(msg, s string) bool {
	if s == "" {
		return false
	}
	if strings.Contains(msg, s) {
		return true
	}
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	return q != s && strings.Contains(msg, q)
}
