package idemotel_test

import (
	"context"
	"testing"
	"time"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
)

// benchEvent is a completion, the event with the most attributes.
var benchEvent = idem.Event{
	Kind: idem.EventExecuted, Key: idem.RecordKey("acct:alice@example.com", "2f1d0c6e-charge"),
	Fence: 7, Op: "complete", Duration: 40 * time.Millisecond, StoreLatency: time.Millisecond,
}

func benchObserver(b *testing.B, o idemotel.Options) *idemotel.Observer {
	obs, err := idemotel.NewObserver(o)
	if err != nil {
		b.Fatal(err)
	}
	return obs
}

// BenchmarkObserveNoSpan: tracing and metrics off (noop providers), no
// span in the context: the cost for a service that does not use OTel.
func BenchmarkObserveNoSpan(b *testing.B) {
	obs := benchObserver(b, idemotel.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider(), StoreSpans: true})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		obs.Observe(ctx, benchEvent)
	}
}

// BenchmarkObserveNoSpanSDKMetrics: SDK metrics, no span in the context
// (a request that is not sampled, or a renewal).
func BenchmarkObserveNoSpanSDKMetrics(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	obs := benchObserver(b, idemotel.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: mp})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		obs.Observe(ctx, benchEvent)
	}
}

// benchRecording observes on a recording SDK span, replaced every 64
// events so that spans stay under the SDK's event limit (1/64 of a span's
// start and end is in each figure).
func benchRecording(b *testing.B, storeSpans bool) {
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }()
	obs := benchObserver(b, idemotel.Options{TracerProvider: tp, MeterProvider: mp, StoreSpans: storeSpans})
	tracer := tp.Tracer("bench")
	ctx, span := tracer.Start(context.Background(), "request")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i++; i%64 == 0 {
			span.End()
			ctx, span = tracer.Start(context.Background(), "request")
		}
		obs.Observe(ctx, benchEvent)
	}
	span.End()
}

// BenchmarkObserveRecording: SDK tracer and metrics, a recording span.
func BenchmarkObserveRecording(b *testing.B) { benchRecording(b, false) }

// BenchmarkObserveRecordingStoreSpans: the same with a store span per
// event.
func BenchmarkObserveRecordingStoreSpans(b *testing.B) { benchRecording(b, true) }
