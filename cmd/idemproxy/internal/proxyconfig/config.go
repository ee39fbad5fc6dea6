package proxyconfig

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Built-in defaults of the policy (SPEC §1 and §3).
const (
	// DefaultTTL is the retention of completed records.
	DefaultTTL = 24 * time.Hour
	// DefaultLease is the lease of an executing request.
	DefaultLease = 30 * time.Second
	// DefaultMaxBody is the largest request body fingerprinted, in bytes.
	DefaultMaxBody = 1 << 20
	// DefaultMaxResult is the largest response body stored, in bytes.
	DefaultMaxResult = 1 << 20
	// DefaultUpstreamTimeout bounds one upstream request.
	DefaultUpstreamTimeout = 60 * time.Second
)

// KeyMode says whether a protected request must carry an idempotency key.
type KeyMode uint8

const (
	// KeyRequired answers 400 to a protected request without a key.
	KeyRequired KeyMode = iota
	// KeyOptional passes a protected request without a key through
	// unprotected; a request with a key is protected.
	KeyOptional
	// KeyOff passes every request of the route through unprotected, even
	// with a key.
	KeyOff
)

// String returns the mode as written in a config file.
func (m KeyMode) String() string {
	switch m {
	case KeyRequired:
		return "required"
	case KeyOptional:
		return "optional"
	case KeyOff:
		return "off"
	}
	return "unknown"
}

// FingerprintMode selects how a request body enters the fingerprint.
type FingerprintMode uint8

const (
	// FingerprintDefault hashes the body bytes as they are.
	FingerprintDefault FingerprintMode = iota
	// FingerprintCanonicalJSON hashes the RFC 8785 canonical form of a JSON
	// body, so that key order and insignificant white space do not matter.
	FingerprintCanonicalJSON
)

// String returns the mode as written in a config file.
func (m FingerprintMode) String() string {
	if m == FingerprintCanonicalJSON {
		return "canonical-json"
	}
	return "default"
}

// StatusSet is a set of HTTP status codes in 100–599. The zero value is
// empty.
type StatusSet struct{ bits [10]uint64 }

// DefaultStored returns the statuses stored by default: every status below
// 500 except 429 (SPEC §3).
func DefaultStored() StatusSet {
	var s StatusSet
	s.add(100, 499, true)
	s.add(429, 429, false)
	return s
}

func (s *StatusSet) add(lo, hi int, on bool) {
	for c := lo; c <= hi; c++ {
		i := c - 100
		if on {
			s.bits[i/64] |= 1 << (i % 64)
		} else {
			s.bits[i/64] &^= 1 << (i % 64)
		}
	}
}

// Contains reports whether status is in the set. Statuses outside 100–599
// are never in it.
func (s StatusSet) Contains(status int) bool {
	if status < 100 || status > 599 {
		return false
	}
	i := status - 100
	return s.bits[i/64]&(1<<(i%64)) != 0
}

// String lists the set as comma-separated ranges, e.g. "100-428,430-499".
func (s StatusSet) String() string {
	var parts []string
	for c := 100; c <= 599; c++ {
		if !s.Contains(c) {
			continue
		}
		end := c
		for end+1 <= 599 && s.Contains(end+1) {
			end++
		}
		if end == c {
			parts = append(parts, fmt.Sprint(c))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c, end))
		}
		c = end
	}
	return strings.Join(parts, ",")
}

// Policy is the idempotency policy applied to the requests of one route.
type Policy struct {
	// Methods are the protected methods. Default: POST and PATCH. For a
	// route that lists methods, they are also the methods it matches.
	Methods []string
	// Key says whether a key is required. Default: KeyRequired.
	Key KeyMode
	// TTL is the retention of a completed record. Default: 24 h.
	TTL time.Duration
	// Lease is how long an execution holds its key before another request
	// may take it over; it is renewed while the upstream runs. Default: 30 s.
	// Always shorter than TTL.
	Lease time.Duration
	// ScopeHeaders are extra credential headers (config: scope_headers),
	// such as X-Api-Key, that the scope covers on top of the ones it always
	// covers: the Host, Authorization (scheme case-insensitive) and Cookie.
	// The scope is an HMAC-SHA-256 of them under the scope secret; raw
	// values are never stored or logged. Default: none.
	ScopeHeaders []string
	// Anonymous lets requests that carry no credential (config: anonymous:
	// allow) share one scope per Host, never one with a credentialed
	// caller. Default: false (anonymous: refuse), such requests are
	// answered 400 credentials-required.
	Anonymous bool
	// Fingerprint selects how the body is fingerprinted. Default: raw bytes.
	Fingerprint FingerprintMode
	// Stored are the upstream statuses whose responses are stored and
	// replayed; any other status releases the record so a retry executes.
	// Default: every status below 500 except 429.
	Stored StatusSet
	// NeverReplay are response headers never replayed, in addition to the
	// built-in list (hop-by-hop headers, Set-Cookie, Authorization,
	// WWW-Authenticate, Proxy-Authenticate, Date), which cannot be shrunk.
	NeverReplay []string
	// MaxBody is the largest request body fingerprinted, in bytes; a larger
	// body is answered 413. Default: 1 MiB.
	MaxBody int64
	// MaxResult is the largest response body stored, in bytes; a larger
	// response is passed through whole and stored without its body.
	// Default: 1 MiB.
	MaxResult int64
	// Wait is how long a duplicate of an in-flight request is held waiting
	// for the first to finish (then answered with the replay) before it is
	// answered 409. Default: 0, answer 409 at once.
	Wait time.Duration
	// FailOpen passes requests through unprotected when the store is
	// unreachable. Default: false, answer 503 (fail closed).
	FailOpen bool
	// Stream sends the upstream's response to the client as it arrives and
	// completes the record afterwards (config: response: stream), for
	// routes that stream by nature (server-sent events, long polls). Such
	// routes are outside the acknowledgement guarantee: a client may get a
	// response whose record was never stored. Default: false (response:
	// hold): a response to be stored reaches the client only once its
	// record is completed.
	Stream bool
	// UpstreamTimeout bounds one upstream request executed under a lease;
	// past it the client gets 504 and the record is released. Pass-through
	// requests are bounded by their client only. Default: 60 s.
	UpstreamTimeout time.Duration
}

// DefaultPolicy returns the built-in policy.
func DefaultPolicy() Policy {
	return Policy{
		Methods:         []string{http.MethodPost, http.MethodPatch},
		Key:             KeyRequired,
		TTL:             DefaultTTL,
		Lease:           DefaultLease,
		Stored:          DefaultStored(),
		MaxBody:         DefaultMaxBody,
		MaxResult:       DefaultMaxResult,
		UpstreamTimeout: DefaultUpstreamTimeout,
	}
}

func (p Policy) clone() Policy {
	p.Methods = slices.Clone(p.Methods)
	p.ScopeHeaders = slices.Clone(p.ScopeHeaders)
	p.NeverReplay = slices.Clone(p.NeverReplay)
	return p
}

// Protects reports whether requests with method are protected by p.
func (p *Policy) Protects(method string) bool {
	return p.Key != KeyOff && slices.Contains(p.Methods, method)
}

// Route is one entry of the route table: a matcher and the policy of the
// requests it matches.
type Route struct {
	// Name labels the route in logs and metrics. Default: "routes[i]"; the
	// default policy's route is named "default".
	Name string
	// Prefix, if set, matches every path that starts with it.
	Prefix string
	// Path, if set, matches paths segment by segment: "*" matches exactly
	// one non-empty segment and a final "**" matches any rest (including
	// none). Other segments match literally.
	Path string
	// AnyMethod is true when the route lists no methods: it then matches
	// every method and protects the default policy's methods.
	AnyMethod bool
	// Policy applies to the matched requests.
	Policy

	pattern []string
}

// Match reports whether the route matches a request with method and the
// (unescaped) URL path.
func (r *Route) Match(method, path string) bool {
	if !r.AnyMethod && !slices.Contains(r.Methods, method) {
		return false
	}
	if r.Prefix != "" {
		return strings.HasPrefix(path, r.Prefix)
	}
	if r.pattern == nil {
		return true
	}
	return matchPattern(r.pattern, path)
}

func matchPattern(pat []string, path string) bool {
	if !strings.HasPrefix(path, "/") {
		return false
	}
	segs := strings.Split(path[1:], "/")
	for i, p := range pat {
		if p == "**" {
			return true
		}
		if i >= len(segs) {
			return false
		}
		switch {
		case p == "*":
			if segs[i] == "" {
				return false
			}
		case p != segs[i]:
			return false
		}
	}
	return len(segs) == len(pat)
}

// Config is a validated idemproxy configuration.
type Config struct {
	// Listen, Upstream, Store and Admin are the values given in the file, or
	// empty. The command line and the environment override them.
	Listen, Upstream, Store, Admin string
	// ScopeSecretFile is the file holding the scope secret (config:
	// scope_secret_file), or empty. The command line and the environment
	// override it.
	ScopeSecretFile string
	// MaxRecords, MaxBytes and MaxScopeShare are the store budget fields
	// as given (validated by ParseCount, ParseSize and ParseShare), or
	// empty. The command line and the environment override them.
	MaxRecords, MaxBytes, MaxScopeShare string
	// RequireStore is the file's require_store: exit at start when the
	// store cannot be reached instead of warning. The command line and the
	// environment override it.
	RequireStore bool
	// LegacyRecords is the file's legacy_records: store responses in the
	// encoding, and Redis records under the names and in the layout, that
	// versions before the compact records (2026-12) read, for a rolling
	// upgrade. The command line and the environment override it.
	LegacyRecords bool
	// OTelEndpoint is the file's otel_endpoint (validated by the command),
	// or empty. The command line and the environment override it.
	OTelEndpoint string
	// Default is the policy of requests that match no route, and the base
	// that routes inherit from.
	Default Policy
	// Routes are tried in order; the first match wins.
	Routes []Route
}

// Match returns the index of the route for a request: the index of the
// first route that matches, or len(c.Routes) (the default route, see
// AllRoutes) when none does.
func (c *Config) Match(method, path string) int {
	for i := range c.Routes {
		if c.Routes[i].Match(method, path) {
			return i
		}
	}
	return len(c.Routes)
}

// AllRoutes returns the routes followed by the default route (named
// "default", matching everything, with the default policy), so that the
// index Match returns selects the entry for a request.
func (c *Config) AllRoutes() []Route {
	out := make([]Route, 0, len(c.Routes)+1)
	for _, r := range c.Routes {
		r.Policy = r.Policy.clone()
		out = append(out, r)
	}
	return append(out, Route{Name: "default", AnyMethod: true, Policy: c.Default.clone()})
}
