package redisstore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
)

// TestConformanceNativeBegin runs the store suite with Options.NativeBegin,
// on the client's pipelines and on its deferred AutoPipeliner.
func TestConformanceNativeBegin(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		for _, ap := range []bool{false, true} {
			t.Run(fmt.Sprintf("AutoPipeline=%v", ap), func(t *testing.T) {
				storetest.Run(t, func(t testing.TB) idem.Store {
					return newStore(t, c, redisstore.Options{NativeBegin: true, AutoPipeline: ap})
				}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
			})
		}
	})
}

// nativeRecord decodes an "N" record (scripts.go) independently of the
// store: key TTL in ms, lease in µs, fingerprint.
func nativeRecord(t *testing.T, v string) (ttl, lease float64, fp string) {
	t.Helper()
	if len(v) < 18 || v[0] != 'N' || len(v) != 18+int(v[17]) {
		t.Fatalf("not an N record: %q", v)
	}
	f := func(off int) float64 { return math.Float64frombits(binary.BigEndian.Uint64([]byte(v[off : off+8]))) }
	return f(1), f(9), v[18:]
}

// TestNativeBegin checks what the native Begin writes and how the scripts
// read it: an "N" record whose fence is the millisecond of its creation
// (its expiry minus its TTL, in µs), seen by Get, completed, extended and
// released by its fence only, and taken over (fence+1) once its lease ended.
func TestNativeBegin(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{Abandon: time.Hour, NativeBegin: true})
		fp := idem.Fingerprint([]byte("request"))
		before, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		b, err := st.Begin(ctx, "k", fp, time.Minute)
		if err != nil || b.Outcome != idem.Acquired || b.Takeover {
			t.Fatalf("Begin = %+v, %v", b, err)
		}
		after, err := c.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		k := st.Key("k")
		ttl, lease, gotFP := nativeRecord(t, c.Get(ctx, k).Val())
		if ttl != float64((time.Minute+time.Hour)/time.Millisecond) || lease != float64(time.Minute/time.Microsecond) || gotFP != string(fp) {
			t.Fatalf("N record: ttl %v ms, lease %v µs, fp %x", ttl, lease, gotFP)
		}
		exp, err := c.Do(ctx, "pexpiretime", k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(exp-int64(ttl)) * 1000; b.Fence != want {
			t.Fatalf("fence %d, want (PEXPIRETIME − TTL) ms = %d", b.Fence, want)
		}
		if f := int64(b.Fence); f < before.UnixMilli()*1000 || f > after.UnixMicro() {
			t.Fatalf("fence %d is not the server's clock between %v and %v", f, before, after)
		}
		rec, ok, err := st.Get(ctx, "k")
		if err != nil || !ok || rec.State != idem.StateInProgress || rec.Fence != b.Fence || string(rec.Fingerprint) != string(fp) ||
			rec.Remaining <= 50*time.Second || rec.Remaining > time.Minute {
			t.Fatalf("Get = %+v, %v, %v", rec, ok, err)
		}
		if d, err := st.Begin(ctx, "k", fp, time.Minute); err != nil || d.Outcome != idem.InFlight || d.Fence != b.Fence ||
			d.LeaseLeft <= 50*time.Second || d.LeaseLeft > time.Minute {
			t.Fatalf("duplicate Begin = %+v, %v; want in flight with fence %d", d, err, b.Fence)
		}
		if d, err := st.Begin(ctx, "k", []byte("other"), time.Minute); err != nil || d.Outcome != idem.Mismatch {
			t.Fatalf("Begin with another fingerprint = %+v, %v; want mismatch", d, err)
		}
		for _, f := range []uint64{b.Fence - 1, b.Fence + 1} {
			if err := st.Complete(ctx, "k", f, []byte("r"), time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
				t.Fatalf("Complete with fence %d: %v, want ErrLeaseLost", f, err)
			}
			if err := st.Extend(ctx, "k", f, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
				t.Fatalf("Extend with fence %d: %v, want ErrLeaseLost", f, err)
			}
			if err := st.Release(ctx, "k", f); !errors.Is(err, idem.ErrLeaseLost) {
				t.Fatalf("Release with fence %d: %v, want ErrLeaseLost", f, err)
			}
		}
		// Extend rewrites it as a "P" with the same fence and a new expiry.
		if err := st.Extend(ctx, "k", b.Fence, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		if s := c.GetRange(ctx, k, 0, 0).Val(); s != "P" {
			t.Fatalf("after Extend: state %q, want P", s)
		}
		if rec, _, err := st.Get(ctx, "k"); err != nil || rec.Fence != b.Fence || rec.Remaining <= time.Minute {
			t.Fatalf("Get after Extend = %+v, %v", rec, err)
		}
		if err := st.Complete(ctx, "k", b.Fence, []byte("r"), time.Minute); err != nil {
			t.Fatal(err)
		}
		if r, err := st.Begin(ctx, "k", fp, time.Minute); err != nil || r.Outcome != idem.Replay || string(r.Result) != "r" {
			t.Fatalf("replay = %+v, %v", r, err)
		}

		// Completed straight from "N".
		b2, err := st.Begin(ctx, "k2", fp, time.Minute)
		if err != nil || b2.Outcome != idem.Acquired {
			t.Fatalf("Begin k2 = %+v, %v", b2, err)
		}
		if err := st.Complete(ctx, "k2", b2.Fence, []byte("r2"), time.Minute); err != nil {
			t.Fatal(err)
		}
		if rec, _, err := st.Get(ctx, "k2"); err != nil || rec.State != idem.StateCompleted || rec.Fence != b2.Fence || string(rec.Result) != "r2" {
			t.Fatalf("Get k2 = %+v, %v", rec, err)
		}

		// Taken over once its lease ended.
		old, err := st.Begin(ctx, "k3", fp, 30*time.Millisecond)
		if err != nil || old.Outcome != idem.Acquired {
			t.Fatalf("Begin k3 = %+v, %v", old, err)
		}
		time.Sleep(60 * time.Millisecond)
		cur, err := st.Begin(ctx, "k3", fp, time.Minute)
		if err != nil || cur.Outcome != idem.Acquired || !cur.Takeover || cur.Fence != old.Fence+1 {
			t.Fatalf("Begin after the lease = %+v, %v; want a takeover with fence %d", cur, err, old.Fence+1)
		}
		if err := st.Complete(ctx, "k3", old.Fence, nil, time.Minute); !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("old holder's Complete: %v, want ErrLeaseLost", err)
		}
		if err := st.Complete(ctx, "k3", cur.Fence, nil, time.Minute); err != nil {
			t.Fatal(err)
		}
	})
}

// TestNativeFencesGrowAcrossExpiry lets Redis expire records right after
// they are created or completed (2 ms, the least any record lives), and
// releases others within the millisecond of their fence, many times on one
// key: each fresh fence is still larger than the one before, although the
// native Begin's fences have millisecond steps.
func TestNativeFencesGrowAcrossExpiry(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		st := newStore(t, c, redisstore.Options{Abandon: time.Millisecond, NativeBegin: true})
		var last uint64
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 300; i++ {
			lease := time.Minute
			if i%3 == 0 {
				lease = time.Millisecond // the in-progress record expires after 2 ms
			}
			var b idem.Begun
			for {
				var err error
				b, err = st.Begin(ctx, "k", []byte("fp"), lease)
				if err != nil {
					t.Fatal(err)
				}
				if b.Outcome == idem.Acquired {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("cycle %d: still %v", i, b.Outcome)
				}
			}
			if b.Fence <= last {
				t.Fatalf("cycle %d: fence %d, want > %d", i, b.Fence, last)
			}
			last = b.Fence
			switch i % 3 {
			case 1:
				if err := st.Complete(ctx, "k", b.Fence, nil, time.Nanosecond); err != nil {
					t.Fatal(err)
				}
			case 2:
				if err := st.Release(ctx, "k", b.Fence); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}

// TestNativeBeginLegacyRecord covers a record under the legacy name (written
// before the compact records): the native Begin, which wrote an "N" under
// the compact name without seeing it, deletes that "N" again and lets the
// script decide, which acts on the legacy record. An "N" left behind (its
// deletion failed) does not hide the legacy record either.
func TestNativeBeginLegacyRecord(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		prefix := storetest.Prefix(t) + ":"
		old := newStore(t, c, redisstore.Options{Prefix: prefix, LegacyRecords: true})
		st := newStore(t, c, redisstore.Options{Prefix: prefix, NativeBegin: true})
		fp := []byte("fp")
		for _, key := range []string{"done", "held"} {
			b, err := old.Begin(ctx, key, fp, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if key == "done" {
				if err := old.Complete(ctx, key, b.Fence, []byte("r"), time.Minute); err != nil {
					t.Fatal(err)
				}
			}
		}
		if r, err := st.Begin(ctx, "done", fp, time.Minute); err != nil || r.Outcome != idem.Replay || string(r.Result) != "r" {
			t.Fatalf("Begin on a legacy completed record = %+v, %v; want replay", r, err)
		}
		if r, err := st.Begin(ctx, "held", fp, time.Minute); err != nil || r.Outcome != idem.InFlight {
			t.Fatalf("Begin on a legacy record in progress = %+v, %v; want in flight", r, err)
		}
		for _, key := range []string{"done", "held"} {
			if n := c.Exists(ctx, st.Key(key)).Val(); n != 0 {
				t.Fatalf("%s: the native Begin's N record was left under the compact name", key)
			}
		}
		// An "N" left behind under the compact name.
		if err := c.Set(ctx, st.Key("done"), "N\x40\xed\x4c\x00\x00\x00\x00\x00\x40\xed\x4c\x00\x00\x00\x00\x00\x02fp", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if r, err := st.Begin(ctx, "done", fp, time.Minute); err != nil || r.Outcome != idem.Replay || string(r.Result) != "r" {
			t.Fatalf("Begin with an N beside the legacy record = %+v, %v; want replay", r, err)
		}
		if rec, ok, err := st.Get(ctx, "done"); err != nil || !ok || rec.State != idem.StateCompleted {
			t.Fatalf("Get with an N beside the legacy record = %+v, %v, %v; want the completed legacy record", rec, ok, err)
		}
	})
}
