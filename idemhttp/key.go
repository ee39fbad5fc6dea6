package idemhttp

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"

	"github.com/idemkit/idem"
)

// DefaultHeader is the request header that carries the idempotency key when
// Middleware.Header is empty.
const DefaultHeader = "Idempotency-Key"

// ErrKeyMissing is returned by ParseKey when the header is absent.
var ErrKeyMissing = errors.New("idemhttp: idempotency key missing")

// ParseKey returns the idempotency key carried by the header name in h
// (SPEC §3). The value is either an RFC 9651 sf-string ("abc", with the
// escapes \" and \\) or a bare value (abc); after unquoting it must be 1 to
// idem.MaxKeyLen bytes of visible ASCII (idem.ValidateKey). Leading and
// trailing spaces and tabs are ignored.
//
// ParseKey returns ErrKeyMissing when the header is absent, and an error
// wrapping idem.ErrInvalidKey when it is empty, too long, contains control
// or non-ASCII bytes, is a malformed sf-string (unterminated, a bad escape,
// anything after the closing quote, including RFC 9651 parameters), or when
// the header is given more than once (two field lines). The key is an RFC
// 9651 Item, not a List, so a single field line is never split at commas: a
// bare a,b is the four-byte key "a,b", and "a", "b" is invalid because
// something follows the closing quote.
//
// name is canonicalised with textproto.CanonicalMIMEHeaderKey; if empty,
// DefaultHeader is used.
func ParseKey(h http.Header, name string) (string, error) {
	if name == "" {
		name = DefaultHeader
	} else {
		name = textproto.CanonicalMIMEHeaderKey(name)
	}
	return parseKeyValues(h[name])
}

func parseKeyValues(vs []string) (string, error) {
	switch len(vs) {
	case 0:
		return "", ErrKeyMissing
	case 1:
		return parseKeyValue(vs[0])
	}
	return "", fmt.Errorf("%w: header given %d times", idem.ErrInvalidKey, len(vs))
}

// parseKeyValue parses one field value.
func parseKeyValue(v string) (string, error) {
	v = trimOWS(v)
	if len(v) == 0 || v[0] != '"' {
		if err := idem.ValidateKey(v); err != nil {
			return "", err
		}
		return v, nil
	}
	key, err := parseSFString(v)
	if err != nil {
		return "", err
	}
	if err := idem.ValidateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// parseSFString parses v, which starts with a double quote, as exactly one
// RFC 9651 sf-string (§4.2.5) and returns its unescaped content.
func parseSFString(v string) (string, error) {
	// Fast path: no escapes, so the content is a substring (no allocation).
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"':
			if i != len(v)-1 {
				return "", fmt.Errorf("%w: characters after the closing quote", idem.ErrInvalidKey)
			}
			return v[1:i], nil
		case c == '\\':
			return parseSFStringEscaped(v)
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: byte 0x%02x in sf-string", idem.ErrInvalidKey, c)
		}
	}
	return "", fmt.Errorf("%w: unterminated sf-string", idem.ErrInvalidKey)
}

func parseSFStringEscaped(v string) (string, error) {
	out := make([]byte, 0, len(v))
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) {
				return "", fmt.Errorf("%w: unterminated sf-string", idem.ErrInvalidKey)
			}
			if e := v[i]; e == '"' || e == '\\' {
				out = append(out, e)
				continue
			}
			return "", fmt.Errorf("%w: bad escape in sf-string", idem.ErrInvalidKey)
		case c == '"':
			if i != len(v)-1 {
				return "", fmt.Errorf("%w: characters after the closing quote", idem.ErrInvalidKey)
			}
			return string(out), nil
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: byte 0x%02x in sf-string", idem.ErrInvalidKey, c)
		}
		out = append(out, c)
	}
	return "", fmt.Errorf("%w: unterminated sf-string", idem.ErrInvalidKey)
}

func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
