package idemhttp

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"

	"github.com/idemkit/idem/internal/wire"
)

// MinScopeSecret is the shortest scope secret accepted, in bytes.
const MinScopeSecret = 16

// Errors returned by IdentityScope.Scope. The middleware answers them with
// their own problems (CodeCredentialsRequired, CodeCredentialHopByHop); a
// custom Middleware.Scope may return them too.
var (
	// ErrNoCredentials: the request carries no credential and anonymous
	// callers are not allowed (IdentityScope.Anonymous unset).
	ErrNoCredentials = errors.New("idemhttp: the request carries no credential and anonymous callers are not allowed")
	// ErrHopByHopCredential: the request's Connection header names a
	// credential header that it carries. A proxy strips such a header
	// before the upstream, so the credential the scope would be derived
	// from is not the one the upstream authenticates.
	ErrHopByHopCredential = errors.New("idemhttp: the Connection header names a credential header (hop-by-hop credentials cannot scope a key)")
	// errShortSecret: IdentityScope.Secret is shorter than MinScopeSecret.
	errShortSecret = errors.New("idemhttp: the scope secret must be at least 16 bytes")
)

// IdentityScope derives the scope of a request from who sent it (SPEC §3):
// the request's authority (Host, lower-cased) and every credential carrier
// it can see, namely Authorization (its auth-scheme compared
// case-insensitively, the credentials as sent), Cookie, and the extra
// Headers (such as X-Api-Key). Each carrier's name and values are
// length-prefixed and the whole is keyed with HMAC-SHA-256 under Secret:
// the scope is the hex digest, never a raw credential, and it cannot be
// recomputed (or a credential guessed from it) without the secret.
//
// Two requests share a scope exactly when they have the same Host and send
// the same values for the same carriers. A request that carries no
// credential (no carrier, or only empty values) never shares a scope with
// one that does: it is refused with ErrNoCredentials unless Anonymous is
// set, and then every anonymous request to one Host shares one scope.
//
// A request whose Connection header names a credential header it carries is
// refused with ErrHopByHopCredential: a proxy would strip that header before
// the upstream, which would then see a different caller than the scope.
//
// Scoping by credential values is what a layer that does not authenticate
// can do; behind authentication, prefer a Middleware.Scope that returns the
// authenticated principal (tenant, account): the same caller then keeps its
// scope when its token rotates or a cookie it does not care about changes.
//
// The fields must not change after the first call to Scope. An
// IdentityScope is safe for concurrent use.
type IdentityScope struct {
	// Secret keys the HMAC. It must be at least MinScopeSecret (16) random
	// bytes, the same on every instance that shares a store and across
	// restarts: a different secret gives every caller a new scope, so
	// retries in flight would execute again.
	Secret []byte
	// Headers are extra credential headers (API keys, tenant tokens) on top
	// of Authorization and Cookie. Names are case-insensitive; the order
	// does not matter.
	Headers []string
	// Anonymous lets requests without any credential through: they share
	// one scope per Host. If false, they get ErrNoCredentials.
	Anonymous bool

	once    sync.Once
	headers []string // canonical extra header names, sorted, deduplicated
	pool    sync.Pool
}

// scopeState is a pooled HMAC and encoding buffer.
type scopeState struct {
	mac hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

// scopeVersion starts every encoded scope, so that a future encoding never
// collides with this one.
const scopeVersion = "idem-scope/1"

func (s *IdentityScope) init() {
	seen := map[string]bool{"Authorization": true, "Cookie": true}
	for _, h := range s.Headers {
		c := textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(h))
		if c == "" || seen[c] {
			continue
		}
		seen[c] = true
		s.headers = append(s.headers, c)
	}
	slices.Sort(s.headers)
	secret := slices.Clone(s.Secret)
	s.pool.New = func() any {
		return &scopeState{mac: hmac.New(sha256.New, secret), buf: make([]byte, 0, 512)}
	}
}

// ScopeSize is the length in bytes of the scopes IdentityScope returns.
const ScopeSize = 16

// Scope returns the scope of r: the first ScopeSize bytes of its
// HMAC-SHA-256, as a binary string (compact in every record key; print it
// with hex.EncodeToString), or ErrNoCredentials,
// ErrHopByHopCredential, or an error when Secret is shorter than
// MinScopeSecret. Its signature fits Middleware.Scope.
func (s *IdentityScope) Scope(r *http.Request) (string, error) {
	s.once.Do(s.init)
	if len(s.Secret) < MinScopeSecret {
		return "", errShortSecret
	}
	h := r.Header
	if conn := h["Connection"]; len(conn) > 0 {
		if hasCredential(h, "Authorization") && connectionNames(conn, "Authorization") ||
			hasCredential(h, "Cookie") && connectionNames(conn, "Cookie") {
			return "", ErrHopByHopCredential
		}
		for _, name := range s.headers {
			if hasCredential(h, name) && connectionNames(conn, name) {
				return "", ErrHopByHopCredential
			}
		}
	}
	st := s.pool.Get().(*scopeState)
	b := append(st.buf[:0], scopeVersion...)
	host := r.Host
	if host == "" && r.URL != nil {
		host = r.URL.Host
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(host)))
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	n := len(b)
	b = wire.AppendCarrier(b, "Authorization", h["Authorization"], true)
	b = wire.AppendCarrier(b, "Cookie", h["Cookie"], false)
	for _, name := range s.headers {
		b = wire.AppendCarrier(b, name, h[name], false)
	}
	if len(b) == n && !s.Anonymous {
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

// hasCredential reports whether h carries a non-blank value for name.
func hasCredential(h http.Header, name string) bool {
	for _, v := range h[name] {
		if strings.TrimSpace(v) != "" {
			return true
		}
	}
	return false
}

// connectionNames reports whether one of the comma-separated Connection
// values names the header name (case-insensitively).
func connectionNames(conn []string, name string) bool {
	for _, v := range conn {
		for v != "" {
			var tok string
			tok, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}
