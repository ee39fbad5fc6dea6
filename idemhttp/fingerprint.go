package idemhttp

import (
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"strings"
	"sync"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/jcs"
)

// DefaultFingerprint returns the SHA-256 fingerprint of what r asks for
// (SPEC §3): idem.Fingerprint of the method, r.URL.RequestURI() (path and
// query), the Content-Type header value as sent, and body. Two requests
// have the same fingerprint exactly when these four are byte-identical. It
// is what the middleware uses when Middleware.Fingerprint is nil, and has
// Middleware.Fingerprint's signature (its error is always nil).
func DefaultFingerprint(r *http.Request, body []byte) ([]byte, error) {
	return fingerprint(r, body, false), nil
}

// canonicalMarker is the fifth fingerprint part of a request whose JSON
// body was canonicalised, so a canonical fingerprint never equals a raw one.
const canonicalMarker = "rfc8785"

// CanonicalFingerprint is a Middleware.Fingerprint (its error is always
// nil) under which member order, insignificant white space, string escapes
// and number spelling of a JSON body do not matter. When the Content-Type is JSON
// (application/json or */*+json) and body is valid I-JSON, it is
// idem.Fingerprint of the method, r.URL.RequestURI(), the Content-Type, the
// RFC 8785 canonical form of body, and a fifth part marking the
// canonicalisation (so it never equals a raw fingerprint). Otherwise (not
// JSON, or invalid JSON) it is DefaultFingerprint: the raw bytes are
// fingerprinted, and the handler, which receives the raw bytes, decides what
// invalid JSON deserves.
func CanonicalFingerprint(r *http.Request, body []byte) ([]byte, error) {
	if !isJSON(r.Header.Get("Content-Type")) {
		return fingerprint(r, body, false), nil
	}
	c, err := jcs.Canonicalize(body)
	if err != nil {
		return fingerprint(r, body, false), nil
	}
	return fingerprint(r, c, true), nil
}

// isJSON reports whether the media type of ct is application/json or ends
// in +json (RFC 6839), case-insensitively.
func isJSON(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	return strings.EqualFold(ct, "application/json") ||
		(len(ct) > 5 && strings.EqualFold(ct[len(ct)-5:], "+json"))
}

var fpPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// fingerprint computes idem.Fingerprint(method, requestURI, contentType,
// body[, canonicalMarker]) without the intermediate allocations: the
// length-prefixed parts are laid out in a pooled buffer and hashed at once.
// TestFingerprintMatchesCore pins the equality with idem.Fingerprint.
func fingerprint(r *http.Request, body []byte, canonical bool) []byte {
	var sum [sha256.Size]byte
	if len(body) > 64<<10 {
		// Large bodies: stream them instead of copying.
		parts := [][]byte{[]byte(r.Method), []byte(requestURI(r)), []byte(r.Header.Get("Content-Type")), body}
		if canonical {
			parts = append(parts, []byte(canonicalMarker))
		}
		return idem.Fingerprint(parts...)
	}
	bp := fpPool.Get().(*[]byte)
	b := (*bp)[:0]
	b = appendPart(b, r.Method)
	b = appendRequestURI(b, r)
	b = appendPart(b, headerGet(r.Header, "Content-Type"))
	b = binary.BigEndian.AppendUint64(b, uint64(len(body)))
	b = append(b, body...)
	if canonical {
		b = appendPart(b, canonicalMarker)
	}
	sum = sha256.Sum256(b)
	*bp = b
	fpPool.Put(bp)
	out := make([]byte, sha256.Size)
	copy(out, sum[:])
	return out
}

func appendPart(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// headerGet is h.Get for a canonical name without canonicalising it again.
func headerGet(h http.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// requestURI is r.URL.RequestURI().
func requestURI(r *http.Request) string { return r.URL.RequestURI() }

// appendRequestURI appends the length-prefixed r.URL.RequestURI() without
// building the string in the common (non-opaque) case.
func appendRequestURI(b []byte, r *http.Request) []byte {
	u := r.URL
	if u.Opaque != "" {
		return appendPart(b, u.RequestURI())
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	n := len(p)
	q := u.ForceQuery || u.RawQuery != ""
	if q {
		n += 1 + len(u.RawQuery)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(n))
	b = append(b, p...)
	if q {
		b = append(b, '?')
		b = append(b, u.RawQuery...)
	}
	return b
}
