package idemgrpc_test

import (
	"context"
	"regexp"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// keyEcho serves the test service, answering every call with the key it
// carried, and records the keys.
type keyEcho struct {
	mu   sync.Mutex
	keys []string
}

func (e *keyEcho) handle(ctx context.Context, _ string, _ proto.Message) (proto.Message, error) {
	v := metadata.ValueFromIncomingContext(ctx, idemgrpc.MetadataKey)
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(v) > 1 {
		return nil, status.Errorf(codes.InvalidArgument, "%d keys", len(v))
	}
	k := ""
	if len(v) == 1 {
		k = v[0]
	}
	e.keys = append(e.keys, k)
	return wrapperspb.String(k), nil
}

func (e *keyEcho) reset() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.keys
	e.keys = nil
	return k
}

// keyOf calls method on cc and returns the key the server saw.
func keyOf(t *testing.T, ctx context.Context, cc *grpc.ClientConn, method string, req proto.Message) (string, error) {
	t.Helper()
	out := new(wrapperspb.StringValue)
	err := cc.Invoke(ctx, method, req, out)
	return out.GetValue(), err
}

func TestClientInterceptor(t *testing.T) {
	var echo keyEcho
	addr := serve(t, echo.handle, nil)
	cc := dial(t, addr, grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor(
		idemgrpc.ClientMethods(func(m string) bool { return m != mRefund }))))
	ctx := t.Context()
	must := func(k string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}

	k1 := must(keyOf(t, ctx, cc, mCharge, wrapperspb.String("1")))
	k2 := must(keyOf(t, ctx, cc, mCharge, wrapperspb.String("1")))
	if !uuidV4.MatchString(k1) || !uuidV4.MatchString(k2) || k1 == k2 {
		t.Fatalf("generated keys %q %q", k1, k2)
	}
	if k := must(keyOf(t, metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, "mine"), cc, mCharge, wrapperspb.String("1"))); k != "mine" {
		t.Fatalf("metadata key replaced by %q", k)
	}
	if k := must(keyOf(t, idemgrpc.WithKey(ctx, "explicit-1"), cc, mCharge, wrapperspb.String("1"))); k != "explicit-1" {
		t.Fatalf("WithKey: %q", k)
	}
	if k, ok := idemgrpc.KeyFromContext(idemgrpc.WithKey(ctx, "x")); !ok || k != "x" {
		t.Fatalf("KeyFromContext: %q %v", k, ok)
	}
	if k := must(keyOf(t, ctx, cc, mRefund, wrapperspb.String("1"))); k != "" {
		t.Fatalf("unselected method got key %q", k)
	}
	if k := must(keyOf(t, idemgrpc.WithKey(ctx, "explicit-2"), cc, mRefund, wrapperspb.String("1"))); k != "explicit-2" {
		t.Fatalf("WithKey on an unselected method: %q", k)
	}
	// AIP-155: the request's request_id is the key.
	if k := must(keyOf(t, ctx, cc, mCreate, createReq("req-7", 1))); k != "req-7" {
		t.Fatalf("request_id: %q", k)
	}
	if k := must(keyOf(t, idemgrpc.WithKey(ctx, "req-8"), cc, mCreate, createReq("req-8", 1))); k != "req-8" {
		t.Fatalf("WithKey = request_id: %q", k)
	}
	echo.reset()
	// Refused without being sent.
	for name, ctx := range map[string]context.Context{
		"invalid key":       idemgrpc.WithKey(ctx, "has space"),
		"differs from body": idemgrpc.WithKey(ctx, "req-1"),
	} {
		if _, err := keyOf(t, ctx, cc, mCreate, createReq("req-2", 1)); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if sent := echo.reset(); len(sent) != 0 {
		t.Fatalf("refused calls were sent: %v", sent)
	}

	// Options: no request key, a fixed generator.
	cc2 := dial(t, addr, grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor(
		idemgrpc.ClientRequestKey(nil), idemgrpc.ClientKeyGenerator(func() string { return "gen" }))))
	if k := must(keyOf(t, ctx, cc2, mCreate, createReq("req-9", 1))); k != "gen" {
		t.Fatalf("ClientRequestKey(nil): %q", k)
	}
}

// TestClientRetryPolicy: with grpc-go's service-config retry policy, every
// attempt of a call carries the key the interceptor added once: the retries
// happen below the interceptor. With the idempotency server behind, a call
// whose first attempts fail with a released status executes until it
// succeeds, and a later call with the same key replays.
func TestClientRetryPolicy(t *testing.T) {
	const cfg = `{"methodConfig":[{"name":[{"service":"idemtest.Pay"}],"retryPolicy":{
		"maxAttempts":4,"initialBackoff":"0.001s","maxBackoff":"0.01s","backoffMultiplier":2,
		"retryableStatusCodes":["UNAVAILABLE"]}}]}`
	var mu sync.Mutex
	var keys []string
	var fail int
	handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		keys = append(keys, incomingKey(ctx))
		if fail > 0 {
			fail--
			return nil, status.Error(codes.Unavailable, "flaky")
		}
		return wrapperspb.String("ok " + req.(*wrapperspb.StringValue).GetValue()), nil
	}
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
	for _, protected := range []bool{false, true} {
		var addr string
		if protected {
			addr = protect(t, s, handler)
		} else {
			addr = serve(t, handler, nil)
		}
		cc := dial(t, addr, grpc.WithDefaultServiceConfig(cfg), grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor()))
		mu.Lock()
		keys, fail = nil, 2
		mu.Unlock()
		ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer alice")
		var tr metadata.MD
		out := new(wrapperspb.StringValue)
		if err := cc.Invoke(ctx, mCharge, wrapperspb.String("1"), out, grpc.Trailer(&tr)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := append([]string(nil), keys...)
		mu.Unlock()
		if len(got) != 3 || got[0] == "" || got[0] != got[1] || got[1] != got[2] {
			t.Fatalf("protected=%v: attempts carried keys %q, want one key three times", protected, got)
		}
		if !protected {
			continue
		}
		// The same key again (as a retry loop of the caller's would send it):
		// the stored answer, no execution.
		tr = nil
		again := new(wrapperspb.StringValue)
		if err := cc.Invoke(idemgrpc.WithKey(ctx, got[0]), mCharge, wrapperspb.String("1"), again, grpc.Trailer(&tr)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		n := len(keys)
		mu.Unlock()
		if n != 3 || again.GetValue() != out.GetValue() || len(tr.Get(idemgrpc.ReplayedTrailer)) != 1 {
			t.Fatalf("replay with the retried key: %v (trailer %v), %d handler calls", again, tr, n)
		}
	}
}
