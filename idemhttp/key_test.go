package idemhttp_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		values []string // header field lines; nil = absent
		want   string
		err    error
	}{
		{"absent", nil, "", idemhttp.ErrKeyMissing},
		{"bare", []string{"abc-123"}, "abc-123", nil},
		{"bare with OWS", []string{" \tabc \t"}, "abc", nil},
		{"sf-string", []string{`"abc"`}, "abc", nil},
		{"sf-string escapes", []string{`"a\"b\\c"`}, `a"b\c`, nil},
		{"bare with quote inside", []string{`a"b`}, `a"b`, nil},
		{"bare comma is literal", []string{"a,b"}, "a,b", nil},
		{"255 bytes", []string{strings.Repeat("x", 255)}, strings.Repeat("x", 255), nil},
		{"255 bytes quoted", []string{`"` + strings.Repeat("x", 255) + `"`}, strings.Repeat("x", 255), nil},
		{"all visible ASCII", []string{"!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~"}, "!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~", nil},
		{"empty", []string{""}, "", idem.ErrInvalidKey},
		{"blank", []string{"  "}, "", idem.ErrInvalidKey},
		{"empty sf-string", []string{`""`}, "", idem.ErrInvalidKey},
		{"256 bytes", []string{strings.Repeat("x", 256)}, "", idem.ErrInvalidKey},
		{"256 bytes quoted", []string{`"` + strings.Repeat("x", 256) + `"`}, "", idem.ErrInvalidKey},
		{"inner space", []string{"a b"}, "", idem.ErrInvalidKey},
		{"sf-string inner space", []string{`"a b"`}, "", idem.ErrInvalidKey},
		{"control char", []string{"a\x01b"}, "", idem.ErrInvalidKey},
		{"DEL", []string{"a\x7fb"}, "", idem.ErrInvalidKey},
		{"tab inside", []string{"a\tb"}, "", idem.ErrInvalidKey},
		{"non-ASCII", []string{"caf\xc3\xa9"}, "", idem.ErrInvalidKey},
		{"sf-string non-ASCII", []string{"\"caf\xc3\xa9\""}, "", idem.ErrInvalidKey},
		{"unterminated", []string{`"abc`}, "", idem.ErrInvalidKey},
		{"unterminated escape", []string{`"abc\`}, "", idem.ErrInvalidKey},
		{"bad escape", []string{`"a\nb"`}, "", idem.ErrInvalidKey},
		{"after closing quote", []string{`"a"b`}, "", idem.ErrInvalidKey},
		{"parameters", []string{`"a";v=1`}, "", idem.ErrInvalidKey},
		{"list of strings", []string{`"a", "b"`}, "", idem.ErrInvalidKey},
		{"lone quote", []string{`"`}, "", idem.ErrInvalidKey},
		{"two lines same value", []string{"a", "a"}, "", idem.ErrInvalidKey},
		{"two lines", []string{"a", "b"}, "", idem.ErrInvalidKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.values != nil {
				h["Idempotency-Key"] = tc.values
			}
			got, err := idemhttp.ParseKey(h, "idempotency-key")
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("ParseKey(%q) = %q, %v; want error %v", tc.values, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseKey(%q) = %q, %v; want %q", tc.values, got, err, tc.want)
			}
		})
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"abc", `"abc"`, `"a\"b\\c"`, `"`, `"\`, "", " ", `"a";p`, "a,b", strings.Repeat("k", 256), "\x00", `"\x"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		key, err := idemhttp.ParseKey(http.Header{"Idempotency-Key": {v}}, "")
		if err != nil {
			if !errors.Is(err, idem.ErrInvalidKey) {
				t.Fatalf("ParseKey(%q): error %v does not wrap ErrInvalidKey", v, err)
			}
			return
		}
		if verr := idem.ValidateKey(key); verr != nil {
			t.Fatalf("ParseKey(%q) = %q, which ValidateKey rejects: %v", v, key, verr)
		}
		// Quoting the key as an sf-string gives it back.
		q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if k2, err := idemhttp.ParseKey(http.Header{"Idempotency-Key": {q}}, ""); err != nil || k2 != key {
			t.Fatalf("ParseKey(%q) = %q, %v; want %q", q, k2, err, key)
		}
		// A second field line always makes it invalid.
		if _, err := idemhttp.ParseKey(http.Header{"Idempotency-Key": {v, v}}, ""); !errors.Is(err, idem.ErrInvalidKey) {
			t.Fatalf("two lines of %q accepted", v)
		}
	})
}
