package idemgrpc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/idemkit/idem/internal/wire"
)

// MinScopeSecret is the shortest scope secret accepted, in bytes.
const MinScopeSecret = 16

// ScopeSize is the length in bytes of the scopes IdentityScope returns.
const ScopeSize = 16

// ErrNoCredentials is returned by IdentityScope.Scope (and may be returned by
// any Server.Scope) for a call that carries no credential. The interceptor
// answers it UNAUTHENTICATED, or, with Server.AllowAnonymous, gives the call
// the anonymous scope.
var ErrNoCredentials = errors.New("idemgrpc: the call carries no credential and anonymous callers are not allowed")

var errShortSecret = errors.New("idemgrpc: the scope secret must be at least 16 bytes")

// MetadataScope returns a Server.Scope that derives the scope of a call from
// who sent it: an HMAC-SHA-256 under secret of the call's authorization
// metadata and of its peer's verified TLS client certificate, if any (see
// IdentityScope). A call with neither gets ErrNoCredentials. secret must be
// at least MinScopeSecret (16) random bytes, kept secret, the same on every
// instance sharing the store and across restarts; MetadataScope panics when
// it is shorter, as Server.UnaryServerInterceptor panics on a missing scope:
// a configuration error found at start-up.
//
// Behind an authentication interceptor, prefer a Scope that returns the
// authenticated principal: a caller then keeps its scope when its token
// rotates.
func MetadataScope(secret []byte) func(ctx context.Context, fullMethod string) (string, error) {
	if len(secret) < MinScopeSecret {
		panic(errShortSecret.Error())
	}
	s := &IdentityScope{Secret: secret}
	return s.Scope
}

// IdentityScope derives the scope of a call from its credentials, as
// idemhttp.IdentityScope does for HTTP requests: the values of the
// authorization metadata (its auth-scheme compared case-insensitively, the
// credentials as sent), of the extra metadata Keys (such as x-api-key), and
// the DER bytes of the peer's TLS client certificate when the server
// verified it (credentials.TLSInfo with a verified chain). Each carrier's
// name and values are length-prefixed, and the whole is keyed with
// HMAC-SHA-256 under Secret: the scope is the first ScopeSize (16) bytes of
// the digest, never a raw credential, and it cannot be recomputed (or a
// credential guessed from it) without the secret.
//
// Two calls share a scope exactly when they present the same values for the
// same carriers. A call without any credential (no carrier, or only blank
// values) gets ErrNoCredentials, so it never shares a scope with one that
// has a credential. The full method is not part of the scope: the
// fingerprint covers it.
//
// The fields must not change after the first call to Scope. An
// IdentityScope is safe for concurrent use.
type IdentityScope struct {
	// Secret keys the HMAC: at least MinScopeSecret (16) random bytes,
	// the same on every instance that shares a store and across restarts
	// (a different secret gives every caller a new scope, so retries in
	// flight would execute again).
	Secret []byte
	// Keys are extra credential metadata keys on top of authorization.
	// Case-insensitive; the order does not matter.
	Keys []string

	once sync.Once
	keys []string // lower-cased extra keys, sorted, deduplicated
	pool sync.Pool
}

// scopeState is a pooled HMAC and encoding buffer.
type scopeState struct {
	mac hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

// scopeVersion starts every encoded scope, so that a future encoding (and
// idemhttp's, which starts differently) never collides with this one.
const scopeVersion = "idemgrpc-scope/1"

// tlsCarrier names the verified client certificate in the encoding; it is
// not a valid metadata key, so no metadata carrier can take its place.
const tlsCarrier = ":tls-client-certificate"

func (s *IdentityScope) init() {
	seen := map[string]bool{"authorization": true}
	for _, k := range s.Keys {
		k = strings.ToLower(strings.TrimSpace(k))
		if k == "" || seen[k] {
			continue
		}
		seen[k] = true
		s.keys = append(s.keys, k)
	}
	slices.Sort(s.keys)
	secret := slices.Clone(s.Secret)
	s.pool.New = func() any {
		return &scopeState{mac: hmac.New(sha256.New, secret), buf: make([]byte, 0, 512)}
	}
}

// Scope returns the scope of the call in ctx, as a binary string of
// ScopeSize bytes (print it with hex.EncodeToString), or ErrNoCredentials,
// or an error when Secret is shorter than MinScopeSecret. Its signature
// fits Server.Scope.
func (s *IdentityScope) Scope(ctx context.Context, _ string) (string, error) {
	s.once.Do(s.init)
	if len(s.Secret) < MinScopeSecret {
		return "", errShortSecret
	}
	st := s.pool.Get().(*scopeState)
	b := append(st.buf[:0], scopeVersion...)
	n := len(b)
	b = wire.AppendCarrier(b, "authorization", metadata.ValueFromIncomingContext(ctx, "authorization"), true)
	for _, k := range s.keys {
		b = wire.AppendCarrier(b, k, metadata.ValueFromIncomingContext(ctx, k), false)
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			der := ti.State.VerifiedChains[0][0].Raw
			b = binary.BigEndian.AppendUint64(b, uint64(len(tlsCarrier)))
			b = append(b, tlsCarrier...)
			b = binary.BigEndian.AppendUint64(b, uint64(len(der)))
			b = append(b, der...)
		}
	}
	if len(b) == n {
		st.buf = b
		s.pool.Put(st)
		return "", ErrNoCredentials
	}
	st.mac.Reset()
	st.mac.Write(b)
	st.mac.Sum(st.sum[:0])
	out := string(st.sum[:ScopeSize])
	if cap(b) > 64<<10 {
		b = nil // do not keep huge buffers in the pool
	}
	st.buf = b
	s.pool.Put(st)
	return out, nil
}
