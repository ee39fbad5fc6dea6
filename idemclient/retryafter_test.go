package idemclient

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	cases := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"0", 0, true},
		{"1", time.Second, true},
		{"120", 2 * time.Minute, true},
		{" 7\t", 7 * time.Second, true},
		{"007", 7 * time.Second, true},
		{"2147483648", maxDeltaSeconds * time.Second, true},
		{"2147483649", maxDeltaSeconds * time.Second, true},
		{"99999999999999999999999999", maxDeltaSeconds * time.Second, true},
		{"Sat, 28 Nov 2026 08:00:30 GMT", 30 * time.Second, true}, // IMF-fixdate
		{"Saturday, 28-Nov-26 08:01:00 GMT", time.Minute, true},   // RFC 850
		{"Sat Nov 28 08:00:05 2026", 5 * time.Second, true},       // asctime
		{"Sat, 28 Nov 2026 07:00:00 GMT", 0, true},                // past
		{"Fri, 31 Dec 9999 23:59:59 GMT", maxDeltaSeconds * time.Second, true},
		{"", 0, false},
		{"   ", 0, false},
		{"-1", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"5s", 0, false},
		{"1 2", 0, false},
		{"soon", 0, false},
		{"2026-11-28T08:00:30Z", 0, false},
		{"Sat, 28 Nov 2026 08:00:30", 0, false},
	}
	for _, c := range cases {
		got, ok := ParseRetryAfter(c.in, now)
		if got != c.want || ok != c.wantOK {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.wantOK)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", " 3 ", "2147483648", "99999999999999999999", "-1", "1.5", "",
		"Sat, 28 Nov 2026 08:00:30 GMT", "Saturday, 28-Nov-26 08:01:00 GMT", "Sat Nov 28 08:00:05 2026",
		"Mon, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"} {
		f.Add(s, int64(1795766400))
	}
	f.Fuzz(func(t *testing.T, v string, unix int64) {
		now := time.Unix(unix%(1<<40), 0).UTC()
		d, ok := ParseRetryAfter(v, now)
		if !ok {
			if d != 0 {
				t.Fatalf("ParseRetryAfter(%q) = %v, false; want 0 when not ok", v, d)
			}
			return
		}
		if d < 0 || d > maxDeltaSeconds*time.Second {
			t.Fatalf("ParseRetryAfter(%q) = %v, outside [0, 2^31 s]", v, d)
		}
		trimmed := strings.Trim(v, " \t")
		if trimmed != "" && strings.Trim(trimmed, "0123456789") == "" {
			// Delta-seconds: exact, clamped at 2^31.
			n, err := strconv.ParseUint(trimmed, 10, 64)
			if err != nil {
				n = maxDeltaSeconds // overflow
			}
			if want := time.Duration(min(n, maxDeltaSeconds)) * time.Second; d != want {
				t.Fatalf("ParseRetryAfter(%q) = %v, want %v", v, d, want)
			}
			return
		}
		date, err := http.ParseTime(trimmed)
		if err != nil {
			t.Fatalf("ParseRetryAfter(%q) accepted something that is neither delta-seconds nor an HTTP-date", v)
		}
		want := date.Sub(now)
		want = max(0, min(want, maxDeltaSeconds*time.Second))
		if d != want {
			t.Fatalf("ParseRetryAfter(%q) = %v, want %v", v, d, want)
		}
		// Round trip: formatting the date again parses to the same wait.
		if d2, ok2 := ParseRetryAfter(date.Format(http.TimeFormat), now); !ok2 || d2 != d {
			t.Fatalf("round trip of %q: %v, %v; want %v", v, d2, ok2, d)
		}
	})
}
