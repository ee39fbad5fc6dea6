package idemotel_test

import (
	"context"
	"fmt"
	"net/http"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/idemotel"
	"github.com/idemkit/idem/memstore"
)

// The Observer on a Keeper, with an SDK TracerProvider (here exporting to
// memory; in a service, an OTLP exporter behind a batch processor).
// idem.Do runs under the caller's span, which gets one event per outcome.
func ExampleNewObserver() {
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }()

	obs, err := idemotel.NewObserver(idemotel.Options{TracerProvider: tp, MeterProvider: mp})
	if err != nil {
		panic(err)
	}
	k := &idem.Keeper{Store: memstore.New(memstore.Options{}), Observer: obs}

	for range 2 {
		ctx, span := tp.Tracer("payments").Start(context.Background(), "charge")
		_, _, _ = idem.Do(ctx, k, "tenant-42", "order-7", func(ctx context.Context) (string, error) {
			return "ch_1", nil
		})
		span.End()
	}

	for _, s := range exporter.GetSpans() {
		fmt.Print(s.Name, ":")
		for _, e := range s.Events {
			fmt.Print(" ", e.Name)
		}
		fmt.Println()
	}
	// Output:
	// charge: idem.acquired idem.complete
	// charge: idem.replayed
}

// The Observer behind idemhttp: put the server instrumentation (otelhttp,
// or any handler that starts a span) outside the middleware, so the
// request's span is in the context the middleware passes to the Keeper.
func ExampleNewObserver_http() {
	obs, err := idemotel.NewObserver(idemotel.Options{}) // the global providers
	if err != nil {
		panic(err)
	}
	mw := &idemhttp.Middleware{
		Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{}), Observer: obs},
		Scope:  func(r *http.Request) (string, error) { return r.Header.Get("X-Account"), nil },
	}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })
	// With otelhttp: otelhttp.NewHandler(mw.Handler(api), "payments").
	_ = mw.Handler(api)
}
