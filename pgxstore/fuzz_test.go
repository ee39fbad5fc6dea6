package pgxstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/pgxstore"
)

// FuzzRoundTrip checks that keys, fingerprints and results of any bytes
// (NUL, invalid UTF-8, long) round-trip through PostgreSQL exactly, and that
// the state machine holds for them.
func FuzzRoundTrip(f *testing.F) {
	f.Add("k", []byte("fp"), []byte("result"))
	f.Add("\x00", []byte{}, []byte{})
	f.Add("\xff\xfe\x00key", []byte{0, 1, 2}, []byte{0})
	f.Add("é/ключ/鍵", []byte(nil), []byte(strings.Repeat("r", 4096)))
	f.Add(strings.Repeat("k", 255), bytes.Repeat([]byte{0xff}, 32), []byte("\r\n\x00"))
	f.Add("", []byte("fp"), []byte("r"))
	s := newStore(f, pgxstore.Options{})
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, key string, fp, result []byte) {
		if key == "" {
			if _, err := s.Begin(ctx, key, fp, time.Minute); !errors.Is(err, idem.ErrInvalidKey) {
				t.Fatalf("Begin(empty key) = %v, want ErrInvalidKey", err)
			}
			return
		}
		k := fmt.Sprintf("%016x", rand.Uint64()) + key // unique per iteration
		b, err := s.Begin(ctx, k, fp, time.Minute)
		if err != nil || b.Outcome != idem.Acquired {
			t.Fatalf("Begin = %+v, %v", b, err)
		}
		rec, found, err := s.Get(ctx, k)
		if err != nil || !found || !bytes.Equal(rec.Fingerprint, fp) || rec.Fence != b.Fence {
			t.Fatalf("Get = %+v, %v, %v; want fingerprint %x", rec, found, err, fp)
		}
		if err := s.Complete(ctx, k, b.Fence, result, time.Minute); err != nil {
			t.Fatal(err)
		}
		r, err := s.Begin(ctx, k, fp, time.Minute)
		if err != nil || r.Outcome != idem.Replay || !bytes.Equal(r.Result, result) || r.Result == nil {
			t.Fatalf("Begin after Complete = %+v, %v; want replay of %x", r, err, result)
		}
		if m, err := s.Begin(ctx, k, append(bytes.Clone(fp), 0), time.Minute); err != nil || m.Outcome != idem.Mismatch {
			t.Fatalf("Begin(other fingerprint) = %+v, %v; want mismatch", m, err)
		}
		if first, err := s.Claim(ctx, sharedPool(t), key, k); err != nil || !first {
			t.Fatalf("Claim = %v, %v", first, err)
		}
		if first, err := s.Claim(ctx, sharedPool(t), key, k); err != nil || first {
			t.Fatalf("Claim again = %v, %v", first, err)
		}
	})
}
