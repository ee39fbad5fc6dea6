package idem

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
)

// MaxKeyLen is the longest key accepted, in bytes (SPEC §3).
const MaxKeyLen = 255

// ValidateKey reports whether key is 1 to MaxKeyLen bytes of visible ASCII
// (0x21–0x7E). The error wraps ErrInvalidKey and says what is wrong.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: byte 0x%02x at offset %d is not visible ASCII", ErrInvalidKey, c, i)
		}
	}
	return nil
}

// RecordKey returns the store key of key within scope. The encoding is
// length-prefixed ("<len(scope)>:<scope><key>"), so distinct (scope, key)
// pairs never share a record whatever bytes they contain.
func RecordKey(scope, key string) string {
	b := make([]byte, 0, 4+len(scope)+len(key))
	b = strconv.AppendInt(b, int64(len(scope)), 10)
	b = append(b, ':')
	b = append(b, scope...)
	b = append(b, key...)
	return string(b)
}

// SplitRecordKey is the inverse of RecordKey: it returns the scope and key
// that rk was made from, and ok == false when rk is not a RecordKey
// encoding (a decimal length without leading zeros, ':', then at least that
// many bytes). When ok, RecordKey(scope, key) == rk. Stores use it to
// account records per scope (per-scope quotas); it allocates nothing.
func SplitRecordKey(rk string) (scope, key string, ok bool) {
	n := 0
	i := 0
	for ; i < len(rk) && rk[i] != ':'; i++ {
		c := rk[i]
		if c < '0' || c > '9' || i >= 10 || (i > 0 && rk[0] == '0') {
			return "", "", false
		}
		n = n*10 + int(c-'0')
	}
	if i == 0 || i == len(rk) || n > len(rk)-i-1 {
		return "", "", false
	}
	rest := rk[i+1:]
	return rest[:n], rest[n:], true
}

// Fingerprint returns the SHA-256 digest of parts, each length-prefixed so
// that moving bytes from one part to the next changes the digest.
func Fingerprint(parts ...[]byte) []byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}
