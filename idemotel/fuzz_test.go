package idemotel_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemotel"
)

// FuzzObserveKey: whatever the record key and the store's error message,
// Observe does not panic, records a scope hash exactly when the key is a
// record key, and never records the scope (or the key, with Options.Key
// off) in the error message; keys that are not record keys are hidden
// whole.
func FuzzObserveKey(f *testing.F) {
	f.Add(idem.RecordKey("acct:alice", "k-1"), "store: acct:alice over quota")
	f.Add(idem.RecordKey("s\x00c", "k"), `store: "s\x00c" gone`)
	f.Add("not a record key", "not a record key: gone")
	f.Add("3:ab", "conn reset")
	f.Add("", "")
	tp := sdktrace.NewTracerProvider()
	f.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	obs, err := idemotel.NewObserver(idemotel.Options{TracerProvider: tp, StoreSpans: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, rk, msg string) {
		ctx, span := tp.Tracer("fuzz").Start(context.Background(), "op")
		obs.Observe(ctx, idem.Event{Kind: idem.EventStoreError, Key: rk, Op: "begin", StoreLatency: 1, Err: errors.New(msg)})
		span.End()
		ev := span.(sdktrace.ReadOnlySpan).Events()
		if len(ev) != 1 {
			t.Fatalf("%d events", len(ev))
		}
		a := attrs(ev[0].Attributes)
		scope, key, split := idem.SplitRecordKey(rk)
		if _, ok := a[idemotel.AttrScopeHash]; ok != split {
			t.Errorf("scope hash present %v for a record key %v", ok, split)
		}
		m, ok := a[idemotel.AttrErrorMessage]
		if !ok {
			return
		}
		if m.AsString() != msg {
			t.Errorf("message %q, want %q", m.AsString(), msg)
		}
		for _, secret := range []string{scope, key} {
			if !split {
				secret = rk
			}
			if secret != "" && strings.Contains(msg, secret) {
				t.Errorf("message %q recorded with %q in it", msg, secret)
			}
		}
	})
}
