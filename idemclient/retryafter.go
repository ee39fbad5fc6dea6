package idemclient

import (
	"net/http"
	"strings"
	"time"
)

// maxDeltaSeconds is the value RFC 9111 §1.2.2 tells a recipient to use for
// a delta-seconds value too large to represent: 2^31 seconds.
const maxDeltaSeconds = 1 << 31

// ParseRetryAfter parses the value of a Retry-After header (RFC 9110
// §10.2.3) and returns how long to wait, measured from now. It accepts
// delta-seconds ("120") and an HTTP-date in any of the three formats of
// RFC 9110 §5.6.7 ("Fri, 31 Dec 1999 23:59:59 GMT" and the obsolete RFC 850
// and asctime forms). Surrounding spaces and tabs are ignored.
//
// A delta-seconds value larger than 2^31 is taken as 2^31 seconds, as RFC
// 9111 §1.2.2 prescribes for values that overflow. A date in the past gives
// 0, and one more than 2^31 seconds ahead gives 2^31 seconds. ok is false for anything else (empty, negative, fractional or signed
// numbers, other date formats), in which case the caller should fall back to
// its own backoff.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if c := v[0]; c >= '0' && c <= '9' {
		var n int64
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			if n < maxDeltaSeconds {
				n = n*10 + int64(c-'0')
			}
		}
		if n > maxDeltaSeconds {
			n = maxDeltaSeconds
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d = t.Sub(now)
	switch {
	case d < 0:
		d = 0
	case d > maxDeltaSeconds*time.Second:
		d = maxDeltaSeconds * time.Second
	}
	return d, true
}
