package idemgrpc_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"
	"github.com/idemkit/idem/memstore"
)

// fakeStream is a grpc.ServerTransportStream that keeps the last metadata
// it was given (grpc-go's own stream joins it into its maps; that cost is
// the transport's, measured over TCP below).
type fakeStream struct{ header, trailer metadata.MD }

func (*fakeStream) Method() string                    { return mCharge }
func (s *fakeStream) SetHeader(md metadata.MD) error  { s.header = md; return nil }
func (s *fakeStream) SendHeader(md metadata.MD) error { s.header = md; return nil }
func (s *fakeStream) SetTrailer(md metadata.MD) error { s.trailer = md; return nil }

// benchHandler is the bare handler: it builds a small response.
func benchHandler(_ context.Context, req any) (any, error) {
	return wrapperspb.String("charged " + req.(*wrapperspb.StringValue).GetValue()), nil
}

// benchCtx is the context of a unary call as grpc-go builds it: incoming
// metadata (with the key and a credential) and the call's stream.
func benchCtx(key string) context.Context {
	md := metadata.MD{
		":authority":           {"127.0.0.1:50051"},
		"content-type":         {"application/grpc"},
		"user-agent":           {"grpc-go/1.85.0"},
		"grpc-accept-encoding": {"gzip"},
		"authorization":        {"Bearer sk_live_0123456789abcdef"},
		idemgrpc.MetadataKey:   {key},
	}
	ctx := metadata.NewIncomingContext(context.Background(), md)
	return grpc.NewContextWithServerTransportStream(ctx, &fakeStream{})
}

var benchInfo = &grpc.UnaryServerInfo{FullMethod: mCharge}

// sink keeps benchmark results alive, so that the compiler cannot drop
// the handler's allocations.
var sink any

// BenchmarkBare calls the bare handler: the baseline of BenchmarkReplay.
func BenchmarkBare(b *testing.B) {
	ctx := benchCtx("k")
	req := wrapperspb.String("42")
	b.ReportAllocs()
	for b.Loop() {
		resp, err := benchHandler(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		sink = resp
	}
}

// BenchmarkReplay calls the interceptor directly (no network) on memstore
// for a key whose call completed: what a replayed call costs, the scope
// from the authorization metadata (MetadataScope) or from a principal
// (a Scope function that returns a constant, as one reading an
// authentication result from the context would).
func BenchmarkReplay(b *testing.B) {
	for _, sc := range []struct {
		name  string
		scope func(context.Context, string) (string, error)
	}{
		{"metadata-scope", idemgrpc.MetadataScope(secret)},
		{"principal-scope", func(context.Context, string) (string, error) { return "acct_42", nil }},
	} {
		b.Run(sc.name, func(b *testing.B) {
			s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}, Scope: sc.scope}
			intercept := s.UnaryServerInterceptor()
			ctx := benchCtx("8e03978e-40d5-43e8-bc93-6894a57f9324")
			req := wrapperspb.String("42")
			first, err := intercept(ctx, req, benchInfo, benchHandler)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := intercept(ctx, req, benchInfo, benchHandler)
				if err != nil {
					b.Fatal(err)
				}
				sink = resp
			}
			b.StopTimer()
			resp, _ := intercept(ctx, req, benchInfo, benchHandler)
			if !proto.Equal(resp.(proto.Message), first.(proto.Message)) {
				b.Fatal("the replay differs")
			}
		})
	}
}

// BenchmarkExecute calls the interceptor directly on memstore with a new
// key each time: Begin, the handler, encoding and Complete.
func BenchmarkExecute(b *testing.B) {
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}, Scope: idemgrpc.MetadataScope(secret)}
	intercept := s.UnaryServerInterceptor()
	req := wrapperspb.String("42")
	keys := make([]context.Context, 0, 1<<16)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if len(keys) == 0 {
			for range cap(keys) {
				keys = append(keys, benchCtx(idemgrpc.NewKey()))
			}
		}
		ctx := keys[len(keys)-1]
		keys = keys[:len(keys)-1]
		b.StartTimer()
		if _, err := intercept(ctx, req, benchInfo, benchHandler); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTCP: one call at a time over loopback TCP with a real grpc-go
// server and client: no interceptor (bare), a first execution with a new
// key (first), and a replay (replay).
func BenchmarkTCP(b *testing.B) {
	handler := func(_ context.Context, _ string, req proto.Message) (proto.Message, error) {
		return wrapperspb.String("charged " + req.(*wrapperspb.StringValue).GetValue()), nil
	}
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})}, Scope: idemgrpc.MetadataScope(secret)}
	bare := dial(b, serve(b, handler, nil))
	prot := dial(b, protect(b, s, handler))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer sk_live_0123456789abcdef")
	req := wrapperspb.String("42")
	run := func(b *testing.B, cc *grpc.ClientConn, ctx func() context.Context) {
		out := new(wrapperspb.StringValue)
		b.ReportAllocs()
		for b.Loop() {
			if err := cc.Invoke(ctx(), mCharge, req, out); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("bare", func(b *testing.B) { run(b, bare, func() context.Context { return ctx }) })
	b.Run("first", func(b *testing.B) {
		run(b, prot, func() context.Context {
			return metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, idemgrpc.NewKey())
		})
	})
	b.Run("replay", func(b *testing.B) {
		rctx := metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, idemgrpc.NewKey())
		run(b, prot, func() context.Context { return rctx })
	})
}
