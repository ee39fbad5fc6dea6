package idemgrpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/idemkit/idem/idemgrpc"
)

// callCtx returns a server-side call context with the given metadata and,
// unless cert is nil, a TLS peer whose client certificate is cert
// (verified or not).
func callCtx(md metadata.MD, cert []byte, verified bool) context.Context {
	ctx := metadata.NewIncomingContext(context.Background(), md)
	if cert == nil {
		return ctx
	}
	c := &x509.Certificate{Raw: cert}
	st := tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
	if verified {
		st.VerifiedChains = [][]*x509.Certificate{{c}}
	}
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: st}})
}

func TestIdentityScope(t *testing.T) {
	s := &idemgrpc.IdentityScope{Secret: secret, Keys: []string{"X-Api-Key", "x-api-key", " "}}
	scope := func(ctx context.Context) string {
		t.Helper()
		sc, err := s.Scope(ctx, mCharge)
		if err != nil {
			t.Fatal(err)
		}
		if len(sc) != idemgrpc.ScopeSize {
			t.Fatalf("scope of %d bytes", len(sc))
		}
		return sc
	}
	alice := scope(callCtx(metadata.Pairs("authorization", "Bearer alice"), nil, false))
	distinct := map[string]string{"alice": alice}
	for name, ctx := range map[string]context.Context{
		"bob":              callCtx(metadata.Pairs("authorization", "Bearer bob"), nil, false),
		"alice+key":        callCtx(metadata.Pairs("authorization", "Bearer alice", "x-api-key", "k"), nil, false),
		"key only":         callCtx(metadata.Pairs("x-api-key", "k"), nil, false),
		"cert A":           callCtx(nil, []byte("cert-A"), true),
		"cert B":           callCtx(nil, []byte("cert-B"), true),
		"alice+cert A":     callCtx(metadata.Pairs("authorization", "Bearer alice"), []byte("cert-A"), true),
		"alice twice":      callCtx(metadata.Pairs("authorization", "Bearer alice", "authorization", "Bearer alice"), nil, false),
		"credentials case": callCtx(metadata.Pairs("authorization", "Bearer ALICE"), nil, false),
	} {
		sc := scope(ctx)
		for other, osc := range distinct {
			if sc == osc {
				t.Fatalf("%s shares a scope with %s", name, other)
			}
		}
		distinct[name] = sc
	}
	// Same caller, same scope: the auth-scheme is case-insensitive; the
	// method and unrelated metadata do not count; blank values are absent.
	for name, ctx := range map[string]context.Context{
		"scheme case": callCtx(metadata.Pairs("authorization", "BEARER alice"), nil, false),
		"other md":    callCtx(metadata.Pairs("authorization", "Bearer alice", "x-trace", "1"), nil, false),
		"blank key":   callCtx(metadata.Pairs("authorization", "Bearer alice", "x-api-key", " "), nil, false),
		"unverified":  callCtx(metadata.Pairs("authorization", "Bearer alice"), []byte("cert-A"), false),
	} {
		if sc := scope(ctx); sc != alice {
			t.Fatalf("%s: another scope than alice's", name)
		}
	}
	// No credential: no scope.
	for name, ctx := range map[string]context.Context{
		"none":            callCtx(nil, nil, false),
		"blank":           callCtx(metadata.Pairs("authorization", "  "), nil, false),
		"unverified cert": callCtx(nil, []byte("cert-A"), false),
		"no metadata":     context.Background(),
	} {
		if _, err := s.Scope(ctx, mCharge); !errors.Is(err, idemgrpc.ErrNoCredentials) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Another secret gives other scopes.
	o := &idemgrpc.IdentityScope{Secret: []byte("another secret of 32 bytes......")}
	if sc, _ := o.Scope(callCtx(metadata.Pairs("authorization", "Bearer alice"), nil, false), mCharge); sc == alice {
		t.Fatal("the secret does not key the scope")
	}
	if sc, _ := idemgrpc.MetadataScope(secret)(callCtx(metadata.Pairs("authorization", "Bearer alice"), nil, false), mCharge); sc == "" {
		t.Fatal("MetadataScope gave no scope")
	}
}
