package idemclient

import (
	"context"
	"crypto/rand"
	"time"
)

// NewKey returns a fresh idempotency key: a random UUID version 4 in its
// canonical 36-character form, such as "0b6c4a9e-1f7a-4c2e-9d3b-5e8f6a7b8c9d".
// It reads 128 bits from crypto/rand, of which the UUID format keeps 122
// (the other 6 are the version and variant). NewKey never fails: since Go
// 1.24 crypto/rand aborts the program rather than return an error.
func NewKey() string {
	var b [16]byte
	var s [36]byte
	newKey(&b, &s)
	return string(s[:])
}

const hexDigits = "0123456789abcdef"

// newKey fills s with a UUIDv4 built from b, which it fills from crypto/rand.
func newKey(b *[16]byte, s *[36]byte) {
	_, _ = rand.Read(b[:])  // never fails (Go ≥ 1.24 crashes instead)
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10 (RFC 9562)
	j := 0
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			s[j] = '-'
			j++
		}
		s[j] = hexDigits[c>>4]
		s[j+1] = hexDigits[c&0x0f]
		j += 2
	}
}

type keyTimeKey struct{}

// WithKeyTime returns a copy of ctx saying that the idempotency key of the
// request made with it was first sent at t. Use it when retrying, in a later
// call or a later process, a request whose key you persisted: with
// Transport.KeyMaxAge set, the Transport then refuses (ErrKeyExpired) to send
// a key the server may already have forgotten, and stops retrying before the
// key gets that old. Without it, the key's age counts from the start of the
// RoundTrip call.
func WithKeyTime(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, keyTimeKey{}, t)
}

// keyTime returns the time set by WithKeyTime, if any.
func keyTime(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(keyTimeKey{}).(time.Time)
	return t, ok
}
