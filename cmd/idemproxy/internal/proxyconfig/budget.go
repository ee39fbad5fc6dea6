package proxyconfig

import (
	"fmt"
	"strconv"
	"strings"
)

// Store budgets (-max-records, -max-bytes, -max-scope-share and the config
// file's top-level max_records, max_bytes, max_scope_share) apply to the
// memory: and file: stores. "auto" (or empty) means the store's default,
// "off" no limit.

// ParseCount parses a record budget: a whole number > 0 (underscores
// allowed, 1_000_000), "auto" or "" (0: the store's default) or "off" (-1:
// no limit).
func ParseCount(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	switch t {
	case "", "auto":
		return 0, nil
	case "off":
		return -1, nil
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(t, "_", ""), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("must be a whole number > 0, auto or off, not %q", s)
	}
	return n, nil
}

// ParseSize parses a byte budget: a size > 0 in bytes or with a unit (KiB,
// MiB, GiB, KB, MB, GB, B; "256MiB"), "auto" or "" (0: the store's
// default) or "off" (-1: no limit).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	switch t {
	case "", "auto":
		return 0, nil
	case "off":
		return -1, nil
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(t, "_", ""), 10, 64)
	if err != nil || n <= 0 || n > maxSize/mult {
		return 0, fmt.Errorf("must be a size > 0 such as 268435456 or 256MiB, auto or off, not %q", s)
	}
	return n * mult, nil
}

// ParseShare parses a per-scope share of a budget: a fraction in (0, 1]
// ("0.1") or a percentage ("10%"); "" means 0 (the default share).
func ParseShare(s string) (float64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	div := 1.0
	if p, ok := strings.CutSuffix(t, "%"); ok {
		t, div = strings.TrimSpace(p), 100
	}
	f, err := strconv.ParseFloat(t, 64)
	if f /= div; err != nil || !(f > 0 && f <= 1) {
		return 0, fmt.Errorf("must be a fraction in (0, 1] such as 0.1 or a percentage such as 10%%, not %q", s)
	}
	return f, nil
}

// budget reads a top-level budget field: a number or a string, checked by
// parse.
func (d *decoder) budget(f string, v *node, parse func(string) error) string {
	if v.kind != kindScalar {
		d.fail(f, "must be a number or a string, not %v", describe(v))
		return ""
	}
	if err := parse(v.text); err != nil {
		d.fail(f, "%v", err)
		return ""
	}
	return v.text
}
