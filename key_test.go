package idem_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

func TestValidateKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		key  string
		ok   bool
	}{
		{"simple", "abc", true},
		{"uuid", "8e03978e-40d5-43e8-bc93-6894a57f9324", true},
		{"all visible", "!~\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`{|}", true},
		{"one byte", "a", true},
		{"255 bytes", strings.Repeat("k", 255), true},
		{"empty", "", false},
		{"256 bytes", strings.Repeat("k", 256), false},
		{"space", "a b", false},
		{"tab", "a\tb", false},
		{"newline", "a\n", false},
		{"NUL", "a\x00", false},
		{"DEL", "a\x7f", false},
		{"non-ASCII", "clé", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := idem.ValidateKey(tt.key)
			if tt.ok && err != nil {
				t.Fatalf("ValidateKey(%q) = %v, want nil", tt.key, err)
			}
			if !tt.ok && !errors.Is(err, idem.ErrInvalidKey) {
				t.Fatalf("ValidateKey(%q) = %v, want ErrInvalidKey", tt.key, err)
			}
		})
	}
}

func TestRecordKeyDistinct(t *testing.T) {
	t.Parallel()
	pairs := [][2]string{
		{"", "ab"}, {"a", "b"}, {"ab", ""}, {"1:", "a"}, {"1", ":a"}, {"", "1:a"},
		{"a\x00", "b"}, {"a", "\x00b"}, {"10", ":abcdefghij"}, {"", "10:abcdefghij"},
	}
	seen := map[string][2]string{}
	for _, p := range pairs {
		k := idem.RecordKey(p[0], p[1])
		if prev, ok := seen[k]; ok {
			t.Fatalf("RecordKey%q and RecordKey%q both give %q", prev, p, k)
		}
		seen[k] = p
	}
}

// FuzzRecordKey checks that RecordKey is injective: two different
// (scope, key) pairs never map to the same store key.
func FuzzRecordKey(f *testing.F) {
	f.Add("a", "b", "ab", "")
	f.Add("1:", "x", "1", ":x")
	f.Add("", "2:ab", "2", ":ab")
	f.Fuzz(func(t *testing.T, s1, k1, s2, k2 string) {
		same := s1 == s2 && k1 == k2
		if (idem.RecordKey(s1, k1) == idem.RecordKey(s2, k2)) != same {
			t.Fatalf("RecordKey(%q,%q) vs RecordKey(%q,%q): collision or instability", s1, k1, s2, k2)
		}
	})
}

func TestSplitRecordKey(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		rk, scope, key string
		ok             bool
	}{
		{"0:k", "", "k", true},
		{"3:abck", "abc", "k", true},
		{"3:abc", "abc", "", true},
		{"2:a", "", "", false},
		{"", "", "", false},
		{":k", "", "", false},
		{"03:abck", "", "", false},
		{"x:k", "", "", false},
		{"12345678901:k", "", "", false},
		{"5", "", "", false},
	} {
		scope, key, ok := idem.SplitRecordKey(tt.rk)
		if scope != tt.scope || key != tt.key || ok != tt.ok {
			t.Errorf("SplitRecordKey(%q) = %q, %q, %v; want %q, %q, %v", tt.rk, scope, key, ok, tt.scope, tt.key, tt.ok)
		}
	}
}

// FuzzSplitRecordKey checks that SplitRecordKey inverts RecordKey, and that
// whatever it accepts re-encodes to the same bytes.
func FuzzSplitRecordKey(f *testing.F) {
	f.Add("scope", "key", "3:abc")
	f.Add("", "k", "0:")
	f.Add("1:", ":", "01:x")
	f.Fuzz(func(t *testing.T, scope, key, raw string) {
		s, k, ok := idem.SplitRecordKey(idem.RecordKey(scope, key))
		if !ok || s != scope || k != key {
			t.Fatalf("SplitRecordKey(RecordKey(%q, %q)) = %q, %q, %v", scope, key, s, k, ok)
		}
		if s, k, ok := idem.SplitRecordKey(raw); ok && idem.RecordKey(s, k) != raw {
			t.Fatalf("SplitRecordKey(%q) = %q, %q, which re-encodes to %q", raw, s, k, idem.RecordKey(s, k))
		}
	})
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	a := idem.Fingerprint([]byte("ab"), []byte("c"))
	b := idem.Fingerprint([]byte("a"), []byte("bc"))
	if bytes.Equal(a, b) {
		t.Fatal("moving a byte between parts did not change the fingerprint")
	}
	if !bytes.Equal(a, idem.Fingerprint([]byte("ab"), []byte("c"))) {
		t.Fatal("fingerprint is not deterministic")
	}
	if len(a) != 32 {
		t.Fatalf("len = %d, want 32 (SHA-256)", len(a))
	}
	if bytes.Equal(idem.Fingerprint(), idem.Fingerprint(nil)) {
		t.Fatal("zero parts and one empty part share a fingerprint")
	}
}

func TestInFlightError(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		left time.Duration
		want int
	}{{0, 1}, {-time.Second, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {30 * time.Second, 30}} {
		e := &idem.InFlightError{LeaseLeft: tt.left}
		if got := e.RetryAfter(); got != tt.want {
			t.Errorf("RetryAfter(%v) = %d, want %d", tt.left, got, tt.want)
		}
		var err error = e
		if !errors.Is(err, idem.ErrInFlight) {
			t.Errorf("errors.Is(%v, ErrInFlight) = false", err)
		}
		if errors.Is(err, idem.ErrMismatch) {
			t.Errorf("InFlightError matches ErrMismatch")
		}
	}
	if !errors.Is(idem.ErrStoreFull, idem.ErrStoreUnavailable) {
		t.Fatal("ErrStoreFull must match ErrStoreUnavailable (fail closed)")
	}
}
