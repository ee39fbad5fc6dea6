package redisstore_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
	"github.com/redis/go-redis/v9"
)

// TestTakeoverAndStaleFence runs a lease takeover on the real server clock
// and checks that every fenced step of the stale holder is refused and
// changes nothing.
func TestTakeoverAndStaleFence(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{})
		fp := []byte("fp")
		const lease = 50 * time.Millisecond
		old, err := st.Begin(ctx, "k", fp, lease)
		if err != nil || old.Outcome != idem.Acquired || old.Takeover {
			t.Fatalf("Begin = %+v, %v; want acquired", old, err)
		}
		if b, err := st.Begin(ctx, "k", fp, lease); err != nil || b.Outcome != idem.InFlight ||
			b.Fence != old.Fence || b.LeaseLeft <= 0 || b.LeaseLeft > lease {
			t.Fatalf("Begin while held = %+v, %v; want in-flight, fence %d, 0 < lease left <= %v", b, err, old.Fence, lease)
		}
		time.Sleep(lease + 20*time.Millisecond)
		cur, err := st.Begin(ctx, "k", fp, time.Minute)
		if err != nil || cur.Outcome != idem.Acquired || !cur.Takeover || cur.Fence != old.Fence+1 {
			t.Fatalf("Begin after the lease = %+v, %v; want a takeover with fence %d", cur, err, old.Fence+1)
		}
		before, _, err := st.Get(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			err  error
		}{
			{"Complete", st.Complete(ctx, "k", old.Fence, []byte("stale"), time.Minute)},
			{"Release", st.Release(ctx, "k", old.Fence)},
			{"Extend", st.Extend(ctx, "k", old.Fence, time.Hour)},
			{"Complete(fence+2)", st.Complete(ctx, "k", cur.Fence+1, []byte("future"), time.Minute)},
			{"Complete(2^60)", st.Complete(ctx, "k", 1<<60, []byte("huge"), time.Minute)},
			{"Extend(0)", st.Extend(ctx, "k", 0, time.Hour)},
		} {
			if !errors.Is(tc.err, idem.ErrLeaseLost) {
				t.Errorf("%s with a stale fence: %v, want ErrLeaseLost", tc.name, tc.err)
			}
		}
		after, ok, err := st.Get(ctx, "k")
		if err != nil || !ok || after.State != idem.StateInProgress || after.Fence != cur.Fence ||
			after.Remaining > before.Remaining || after.Remaining < time.Minute-time.Second {
			t.Fatalf("record after stale steps = %+v, %v, %v; want in progress, fence %d, lease about 1m", after, ok, err, cur.Fence)
		}
		if err := st.Complete(ctx, "k", cur.Fence, []byte("r"), time.Minute); err != nil {
			t.Fatalf("Complete by the new holder: %v", err)
		}
		if b, err := st.Begin(ctx, "k", fp, lease); err != nil || b.Outcome != idem.Replay || string(b.Result) != "r" {
			t.Fatalf("replay = %+v, %v", b, err)
		}
	})
}

// TestRedisExpiresInProgress lets Redis expire an abandoned in-progress
// record by itself: the key is new again, its fresh fence is still larger,
// and the old holder is refused.
func TestRedisExpiresInProgress(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{Abandon: 20 * time.Millisecond})
		fp := []byte("fp")
		old, err := st.Begin(ctx, "k", fp, 20*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if ttl := c.PTTL(ctx, st.Key("k")).Val(); ttl <= 0 || ttl > 40*time.Millisecond {
			t.Fatalf("PTTL of an in-progress record = %v, want lease+Abandon (40ms)", ttl)
		}
		time.Sleep(60 * time.Millisecond)
		if n := c.Exists(ctx, st.Key("k")).Val(); n != 0 {
			t.Fatalf("record still exists after lease+Abandon")
		}
		// A different fingerprint is no mismatch any more: the key is new.
		b, err := st.Begin(ctx, "k", []byte("other"), time.Minute)
		if err != nil || b.Outcome != idem.Acquired || b.Takeover || b.Fence <= old.Fence {
			t.Fatalf("Begin after expiry = %+v, %v; want a fresh acquire with fence > %d", b, err, old.Fence)
		}
		if err := st.Complete(ctx, "k", old.Fence, nil, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("old holder's Complete: %v, want ErrLeaseLost", err)
		}
	})
}

// TestCompletedExpires checks that retention is a Redis PEXPIRE.
func TestCompletedExpires(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	st := newStore(t, c, redisstore.Options{})
	b, err := st.Begin(ctx, "k", []byte("fp"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx, "k", b.Fence, []byte("r"), 1500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ttl := c.PTTL(ctx, st.Key("k")).Val(); ttl <= time.Second || ttl > 1500*time.Millisecond {
		t.Fatalf("PTTL of a completed record = %v, want about the retention (1.5s)", ttl)
	}
	rec, ok, err := st.Get(ctx, "k")
	if err != nil || !ok || rec.State != idem.StateCompleted || string(rec.Result) != "r" ||
		rec.Remaining <= time.Second || rec.Remaining > 1500*time.Millisecond || rec.Fence != b.Fence {
		t.Fatalf("Get = %+v, %v, %v", rec, ok, err)
	}
}

// TestReleaseTombstone covers the release of a fence the server clock has
// not reached yet: the next fence must still be larger. It runs on a record
// in each layout, under its key: the compact one and the legacy one (as
// written by earlier versions), whose tombstones keep their layout.
func TestReleaseTombstone(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{})
		for _, layout := range []struct {
			name, pack, tomb string
			key              func(string) string
		}{
			{"compact", `struct.pack('>c1dddB', 'P', tonumber(ARGV[1]), tonumber(ARGV[1]), tonumber(ARGV[1]), 2)`, "R", st.Key},
			{"legacy", `struct.pack('>c1dddI4', 'p', tonumber(ARGV[1]), tonumber(ARGV[1]), tonumber(ARGV[1]), 2)`, "r", st.LegacyKey},
		} {
			key := "k-" + layout.name
			k := layout.key(key)
			now, err := c.Time(ctx).Result()
			if err != nil {
				t.Fatal(err)
			}
			// A fence 200ms ahead of the server clock, as a burst of
			// release/acquire cycles within one microsecond would produce.
			future := uint64(now.Add(200 * time.Millisecond).UnixMicro())
			f := strconv.FormatUint(future, 10)
			// Write the record in the store's format (see scripts.go).
			if err := c.Eval(ctx, `return redis.call('SET', KEYS[1], `+layout.pack+` .. 'fp')`, []string{k}, f).Err(); err != nil {
				t.Fatal(err)
			}
			if rec, ok, err := st.Get(ctx, key); err != nil || !ok || rec.Fence != future || string(rec.Fingerprint) != "fp" {
				t.Fatalf("%s: Get of the written record = %+v, %v, %v", layout.name, rec, ok, err)
			}
			if err := st.Release(ctx, key, future); err != nil {
				t.Fatal(err)
			}
			if s := c.GetRange(ctx, k, 0, 0).Val(); s != layout.tomb {
				t.Fatalf("%s: after the release: state %q, want a tombstone %q", layout.name, s, layout.tomb)
			}
			if _, ok, err := st.Get(ctx, key); ok || err != nil {
				t.Fatalf("%s: Get sees the tombstone as a record (%v, %v)", layout.name, ok, err)
			}
			b, err := st.Begin(ctx, key, []byte("other"), time.Minute)
			if err != nil || b.Outcome != idem.Acquired || b.Takeover || b.Fence != future+1 {
				t.Fatalf("%s: Begin = %+v, %v; want acquired with fence %d", layout.name, b, err, future+1)
			}
			if s := c.GetRange(ctx, k, 0, 0).Val(); s != map[string]string{"R": "P", "r": "p"}[layout.tomb] {
				t.Fatalf("%s: the new record is not where the tombstone was (state %q)", layout.name, s)
			}
			// The tombstone's own expiry: a few ms past the fence.
			if err := st.Release(ctx, key, b.Fence); err != nil {
				t.Fatal(err)
			}
			time.Sleep(250 * time.Millisecond)
			if n := c.Exists(ctx, k).Val(); n != 0 {
				t.Fatalf("%s: tombstone still there once the clock passed its fence", layout.name)
			}
		}
	})
}

// TestFencesGrow checks that fences keep growing through many
// release/acquire cycles (deleted records) on one key.
func TestFencesGrow(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{})
		var last uint64
		for i := range 200 {
			b, err := st.Begin(ctx, "k", []byte("fp"), time.Minute)
			if err != nil || b.Outcome != idem.Acquired || b.Fence <= last {
				t.Fatalf("cycle %d: Begin = %+v, %v; want a fence > %d", i, b, err, last)
			}
			last = b.Fence
			if err := st.Release(ctx, "k", b.Fence); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestBadArguments(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	st := redisstore.New(c, redisstore.Options{})
	defer st.Close()
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"Begin empty key", func() error { _, err := st.Begin(ctx, "", nil, time.Second); return err }(), idem.ErrInvalidKey},
		{"Complete empty key", st.Complete(ctx, "", 1, nil, time.Second), idem.ErrInvalidKey},
		{"Release empty key", st.Release(ctx, "", 1), idem.ErrInvalidKey},
		{"Extend empty key", st.Extend(ctx, "", 1, time.Second), idem.ErrInvalidKey},
		{"Get empty key", func() error { _, _, err := st.Get(ctx, ""); return err }(), idem.ErrInvalidKey},
		{"Wait empty key", st.Wait(ctx, "", time.Second), idem.ErrInvalidKey},
		{"Begin zero lease", func() error { _, err := st.Begin(ctx, "k", nil, 0); return err }(), nil},
		{"Extend zero lease", st.Extend(ctx, "k", 1, 0), nil},
		{"Complete zero retention", st.Complete(ctx, "k", 1, nil, 0), nil},
	} {
		if tc.err == nil {
			t.Errorf("%s: no error", tc.name)
		} else if tc.want != nil && !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		} else if errors.Is(tc.err, idem.ErrStoreUnavailable) {
			t.Errorf("%s: %v reached the server", tc.name, tc.err)
		}
	}
}
