package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

var _ idem.BatchBeginner = (*redisstore.Store)(nil)

func TestBeginBatch(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		h := &counter{}
		c.AddHook(h)
		st := newStore(t, c, redisstore.Options{})
		fp := []byte("fp")
		// done: completed; held: in flight; other: another fingerprint.
		done, err := st.Begin(ctx, "done", fp, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Complete(ctx, "done", done.Fence, []byte("r"), time.Minute); err != nil {
			t.Fatal(err)
		}
		held, err := st.Begin(ctx, "held", fp, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Begin(ctx, "other", []byte("fp2"), time.Minute); err != nil {
			t.Fatal(err)
		}
		keys := []string{"done", "held", "other"}
		for i := range 20 {
			keys = append(keys, fmt.Sprintf("new-%d", i))
		}
		// Load the script on every primary first.
		if _, err := st.BeginBatch(ctx, keys[:3], fpsOf(fp, 3), time.Minute); err != nil {
			t.Fatal(err)
		}
		var res []idem.Begun
		trips := h.trips(func() { res, err = st.BeginBatch(ctx, keys, fpsOf(fp, len(keys)), time.Minute) })
		if err != nil || len(res) != len(keys) {
			t.Fatalf("BeginBatch = %d results, %v", len(res), err)
		}
		if _, ok := c.(*redis.Client); ok && trips != 1 {
			t.Errorf("BeginBatch on one server: %d round trips, want 1", trips)
		}
		want := func(i int, o idem.BeginOutcome) {
			t.Helper()
			if res[i].Outcome != o {
				t.Errorf("%s: %+v, want %v", keys[i], res[i], o)
			}
		}
		want(0, idem.Replay)
		if string(res[0].Result) != "r" {
			t.Errorf("replay result %q", res[0].Result)
		}
		want(1, idem.InFlight)
		if res[1].Fence != held.Fence {
			t.Errorf("in-flight fence %d, want %d", res[1].Fence, held.Fence)
		}
		want(2, idem.Mismatch)
		for i := 3; i < len(keys); i++ {
			want(i, idem.Acquired)
			if err := st.Complete(ctx, keys[i], res[i].Fence, nil, time.Minute); err != nil {
				t.Errorf("Complete(%s): %v", keys[i], err)
			}
		}
		if res, err := st.BeginBatch(ctx, nil, nil, time.Minute); err != nil || len(res) != 0 {
			t.Errorf("empty batch = %v, %v", res, err)
		}
		if _, err := st.BeginBatch(ctx, []string{"a", ""}, fpsOf(fp, 2), time.Minute); !errors.Is(err, idem.ErrInvalidKey) {
			t.Errorf("batch with an empty key: %v, want ErrInvalidKey", err)
		}
	})
}

func TestBeginBatchRefusedReleases(t *testing.T) {
	// No replica can acknowledge: the batch fails closed and gives its
	// acquisitions back.
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{WaitReplicas: 1, WaitTimeout: 20 * time.Millisecond})
		keys := []string{"a", "b", "c", "d", "e", "f"}
		if _, err := st.BeginBatch(ctx, keys, fpsOf([]byte("fp"), len(keys)), time.Minute); !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Fatalf("BeginBatch: %v, want ErrStoreUnavailable", err)
		}
		for _, k := range keys {
			if _, ok, err := st.Get(ctx, k); err != nil || ok {
				t.Errorf("Get(%s) = %v, %v; want released", k, ok, err)
			}
		}
	})
}

// fpsOf returns n copies of fp, for BeginBatch.
func fpsOf(fp []byte, n int) [][]byte {
	fps := make([][]byte, n)
	for i := range fps {
		fps[i] = fp
	}
	return fps
}
