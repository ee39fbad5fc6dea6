package redisstore

import (
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/redis/go-redis/v9"
)

// hashTag returns the part of a Redis key that Redis Cluster hashes: the
// bytes between the first "{" and the first "}" after it, if not empty.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

func TestKey(t *testing.T) {
	s := New(nil, Options{})
	for _, tc := range []struct {
		key, want, legacy string
	}{
		{"a", "idem:{ca978112ca1bbdca}-sIxs5oj3E2nhu_4FHxO", "idem:{ca978112ca1bbdca}a"},
		{"{x}", "", "idem:{d3ebeaf9670d728f}{x}"},
		{"}{", "", "idem:{c3ae149fe0039e4b}}{"},
		{strings.Repeat("k", 300), "", ""},
	} {
		got, legacy := s.Key(tc.key), s.LegacyKey(tc.key)
		if tc.want != "" && got != tc.want || tc.legacy != "" && legacy != tc.legacy {
			t.Errorf("Key(%q) = %q, LegacyKey = %q; want %q, %q", tc.key, got, legacy, tc.want, tc.legacy)
		}
		if len(got) != 43 {
			t.Errorf("Key(%q) = %q: %d bytes, want 43", tc.key, got, len(got))
		}
		if ks := s.keys(tc.key); len(ks) != 2 || ks[0] != got || ks[1] != legacy {
			t.Errorf("keys(%q) = %q, want [%q %q]", tc.key, ks, got, legacy)
		}
	}
	if got := New(nil, Options{Prefix: "app:"}).Key("a"); got != "app:{ca978112ca1bbdca}-sIxs5oj3E2nhu_4FHxO" {
		t.Errorf("with a prefix: %q", got)
	}
	if ks := New(nil, Options{SkipLegacyKeys: true}).keys("a"); len(ks) != 1 || ks[0] != s.Key("a") {
		t.Errorf("keys with SkipLegacyKeys = %q", ks)
	}
	if ks := New(nil, Options{SkipLegacyKeys: true, LegacyRecords: true}).keys("a"); len(ks) != 2 {
		t.Errorf("keys with LegacyRecords and SkipLegacyKeys = %q, want both names", ks)
	}
}

// FuzzKey checks that Key and LegacyKey are injective, that both share the
// cluster hash tag, always 16 hex digits whatever bytes the key holds, that
// Key has a fixed length and that LegacyKey keeps the key whole at the end.
func FuzzKey(f *testing.F) {
	for _, seed := range [][2]string{
		{"a", "b"}, {"{", "}"}, {"{a}", "a"}, {"12:scope{key}", "1:2scope{key}"},
		{"\x00", "\xff"}, {strings.Repeat("k", 255), "}}}}"},
	} {
		f.Add(seed[0], seed[1])
	}
	s := New(nil, Options{})
	f.Fuzz(func(t *testing.T, a, b string) {
		ka, kb := s.Key(a), s.Key(b)
		if (a == b) != (ka == kb) {
			t.Fatalf("Key(%q) = %q, Key(%q) = %q", a, ka, b, kb)
		}
		la, lb := s.LegacyKey(a), s.LegacyKey(b)
		if (a == b) != (la == lb) {
			t.Fatalf("LegacyKey(%q) = %q, LegacyKey(%q) = %q", a, la, b, lb)
		}
		tag := hashTag(ka)
		if len(tag) != 16 || strings.Trim(tag, "0123456789abcdef") != "" || hashTag(la) != tag {
			t.Fatalf("Key(%q) = %q, LegacyKey %q: hash tag %q is not 16 hex digits in both", a, ka, la, tag)
		}
		if len(ka) != len(DefaultPrefix)+38 || !strings.HasPrefix(ka, DefaultPrefix+"{") {
			t.Fatalf("Key(%q) = %q: not prefix, tag and 20 characters", a, ka)
		}
		if !strings.HasSuffix(la, "}"+a) || !strings.HasPrefix(la, DefaultPrefix+"{") {
			t.Fatalf("LegacyKey(%q) = %q does not keep the key whole", a, la)
		}
		if ks := s.keys(a); ks[0] != ka || ks[1] != la {
			t.Fatalf("keys(%q) = %q", a, ks)
		}
	})
}

// FuzzParseBegun feeds arbitrary reply shapes to the Begin reply parser: it
// never panics and accepts only well-formed replies.
func FuzzParseBegun(f *testing.F) {
	f.Add(int64(1), "17", false, int64(0), "", 3)
	f.Add(int64(1), "", true, int64(1732780000000001), "", 3)
	f.Add(int64(2), "17", false, int64(1500), "", 3)
	f.Add(int64(3), "", false, int64(0), "result", 4)
	f.Add(int64(4), "", false, int64(0), "", 1)
	f.Add(int64(1), "-1", false, int64(1), "", 3)
	f.Add(int64(9), "x", true, int64(-1), "\x00", 0)
	f.Fuzz(func(t *testing.T, code int64, fence string, intFence bool, n int64, res string, size int) {
		reply := []any{code, fence, n, res}
		if intFence {
			reply[1] = n
		}
		if size >= 0 && size < len(reply) {
			reply = reply[:size]
		}
		b, err := parseBegun(reply)
		if err != nil {
			return
		}
		switch b.Outcome {
		case idem.Acquired, idem.InFlight:
			if b.Fence == 0 {
				t.Fatalf("%v: accepted fence 0", reply)
			}
		case idem.Replay:
			if b.Result == nil || string(b.Result) != res {
				t.Fatalf("%v: result %q", reply, b.Result)
			}
		case idem.Mismatch:
		default:
			t.Fatalf("%v: outcome %v", reply, b.Outcome)
		}
	})
}

func TestParseBegun(t *testing.T) {
	for _, tc := range []struct {
		reply any
		want  idem.Begun
		ok    bool
	}{
		{[]any{int64(1), "42", int64(0)}, idem.Begun{Outcome: idem.Acquired, Fence: 42}, true},
		{[]any{int64(1), "43", int64(1)}, idem.Begun{Outcome: idem.Acquired, Fence: 43, Takeover: true}, true},
		{[]any{int64(2), "42", int64(1500)}, idem.Begun{Outcome: idem.InFlight, Fence: 42, LeaseLeft: 1500 * 1000}, true},
		{[]any{int64(1), int64(1732780000000001), int64(0)}, idem.Begun{Outcome: idem.Acquired, Fence: 1732780000000001}, true},
		{[]any{int64(2), int64(7), int64(20)}, idem.Begun{Outcome: idem.InFlight, Fence: 7, LeaseLeft: 20 * 1000}, true},
		{[]any{int64(4)}, idem.Begun{Outcome: idem.Mismatch}, true},
		{[]any{int64(1), int64(0), int64(0)}, idem.Begun{}, false},
		{[]any{int64(1), int64(-5), int64(0)}, idem.Begun{}, false},
		{[]any{int64(1), "0", int64(0)}, idem.Begun{}, false},
		{[]any{int64(1), 4.5, int64(0)}, idem.Begun{}, false},
		{[]any{int64(1), "x", int64(0)}, idem.Begun{}, false},
		{[]any{int64(1), "18446744073709551616", int64(0)}, idem.Begun{}, false},
		{[]any{}, idem.Begun{}, false},
		{"OK", idem.Begun{}, false},
		{nil, idem.Begun{}, false},
	} {
		got, err := parseBegun(tc.reply)
		if (err == nil) != tc.ok || (tc.ok && (got.Outcome != tc.want.Outcome || got.Fence != tc.want.Fence ||
			got.Takeover != tc.want.Takeover || got.LeaseLeft != tc.want.LeaseLeft)) {
			t.Errorf("parseBegun(%#v) = %+v, %v; want %+v, ok=%v", tc.reply, got, err, tc.want, tc.ok)
		}
	}
	b, err := parseBegun([]any{int64(3), "", int64(0), ""})
	if err != nil || b.Outcome != idem.Replay || b.Result == nil || len(b.Result) != 0 {
		t.Errorf("empty replay = %+v, %v; want a non-nil empty result", b, err)
	}
}

func TestWaitTimeoutCapped(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadTimeout: time.Second})
	defer c.Close()
	for _, tc := range []struct {
		in, want time.Duration
	}{
		{0, 500 * time.Millisecond}, // default 1s, capped
		{5 * time.Second, 500 * time.Millisecond},
		{100 * time.Millisecond, 100 * time.Millisecond},
	} {
		if got := New(c, Options{WaitTimeout: tc.in}).waitTO; got != tc.want {
			t.Errorf("WaitTimeout %v with ReadTimeout 1s: %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := New(nil, Options{}).waitTO; got != DefaultWaitTimeout {
		t.Errorf("default WaitTimeout = %v, want %v", got, DefaultWaitTimeout)
	}
}

// FuzzDecided feeds arbitrary values to the native Begin's reading of the
// record it found: it never panics, decides only on a well-formed compact
// completed record, and then returns its result or a mismatch.
func FuzzDecided(f *testing.F) {
	f.Add("C\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x02fpresult", []byte("fp"))
	f.Add("C\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x02fp", []byte("other"))
	f.Add("C\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\xff", []byte("fp"))
	f.Add("P", []byte("fp"))
	f.Add("", []byte(nil))
	f.Fuzz(func(t *testing.T, v string, fp []byte) {
		b, done, err := decided(v, fp)
		if err != nil {
			t.Fatal(err)
		}
		if !done {
			return
		}
		if len(v) < 18 || v[0] != 'C' || len(v) < 18+int(v[17]) {
			t.Fatalf("%q: decided on a value that is no compact completed record", v)
		}
		stored := v[18 : 18+int(v[17])]
		switch b.Outcome {
		case idem.Replay:
			if stored != string(fp) || string(b.Result) != v[18+len(stored):] || b.Result == nil {
				t.Fatalf("%q, %q: replay %+v", v, fp, b)
			}
		case idem.Mismatch:
			if stored == string(fp) {
				t.Fatalf("%q, %q: mismatch on the same fingerprint", v, fp)
			}
		default:
			t.Fatalf("%q: outcome %v", v, b.Outcome)
		}
	})
}
