// Package wire holds the encoding pieces that idemhttp's stored responses
// and idemgrpc's stored results share: minimal uvarints, sorted
// multi-valued maps (HTTP headers, gRPC metadata), and the length-prefixed
// credential carriers of the identity scopes. Sharing them keeps both
// formats, and both scopes, built by the same code.
package wire

import (
	"encoding/binary"
	"slices"
	"strings"
)

// AppendMap appends m as a uvarint count of its names, then, in sorted
// order, each name and its values, all uvarint-length-prefixed. Names with
// no values, the empty name, and names for which skip (if not nil) reports
// true are left out.
func AppendMap(b []byte, m map[string][]string, skip func(string) bool) []byte {
	return AppendMapFunc(b, m, skip, AppendString, AppendString)
}

// AppendMapFunc is AppendMap with each name written by name and each value
// by value (AppendString writes a uvarint length and the bytes); the counts
// of names and of each name's values stay uvarints.
func AppendMapFunc(b []byte, m map[string][]string, skip func(string) bool, name, value func([]byte, string) []byte) []byte {
	var arr [24]string
	names := arr[:0]
	for k, vs := range m {
		if len(vs) == 0 || k == "" || (skip != nil && skip(k)) {
			continue
		}
		names = append(names, k)
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, k := range names {
		vs := m[k]
		b = name(b, k)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = value(b, v)
		}
	}
	return b
}

// AppendString appends s as a uvarint length and its bytes.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Uvarint reads a minimal uvarint from b at *off and advances *off.
func Uvarint(b []byte, off *int) (uint64, bool) {
	v, n := binary.Uvarint(b[*off:])
	if n <= 0 {
		return 0, false
	}
	if n > 1 && b[*off+n-1] == 0 { // non-minimal: a trailing zero group
		return 0, false
	}
	*off += n
	return v, true
}

// Length reads a uvarint length that fits in the rest of b.
func Length(b []byte, off *int) (int, bool) {
	v, ok := Uvarint(b, off)
	if !ok || v > uint64(len(b)-*off) {
		return 0, false
	}
	return int(v), true
}

// AppendCarrier appends a credential carrier of an identity scope: its
// name, its number of non-blank values and each value, length-prefixed (64
// bits, big-endian); nothing when it has no non-blank value. For an
// authorization carrier (auth) the auth-scheme (up to the first space) is
// lower-cased; the credentials are kept as sent.
func AppendCarrier(b []byte, name string, vs []string, auth bool) []byte {
	count := 0
	for _, v := range vs {
		if strings.TrimSpace(v) != "" {
			count++
		}
	}
	if count == 0 {
		return b
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint64(b, uint64(count))
	for _, v := range vs {
		if strings.TrimSpace(v) == "" {
			continue
		}
		b = binary.BigEndian.AppendUint64(b, uint64(len(v)))
		if !auth {
			b = append(b, v...)
			continue
		}
		i := 0
		for ; i < len(v) && v[i] != ' '; i++ {
			c := v[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b = append(b, c)
		}
		b = append(b, v[i:]...)
	}
	return b
}
