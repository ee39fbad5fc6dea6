package redisstore_test

import (
	"context"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
)

// TestConformanceLegacyRecords runs the store suite with LegacyRecords: new
// records under the legacy names, in the legacy layout.
func TestConformanceLegacyRecords(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		storetest.Run(t, func(t testing.TB) idem.Store {
			return newStore(t, c, redisstore.Options{LegacyRecords: true})
		}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
	})
}

// legacyRecord decodes a record in the layout of versions before the
// compact records (scripts.go): state, fence, lease end, acquired at,
// fingerprint and result, independently of the store's Lua.
func legacyRecord(t *testing.T, v string) (state byte, fence, lease float64, fp, result string) {
	t.Helper()
	if len(v) < 29 {
		t.Fatalf("legacy record of %d bytes", len(v))
	}
	f := func(off int) float64 { return math.Float64frombits(binary.BigEndian.Uint64([]byte(v[off : off+8]))) }
	n := int(binary.BigEndian.Uint32([]byte(v[25:29])))
	if len(v) < 29+n {
		t.Fatalf("legacy record: fingerprint of %d bytes in %d", n, len(v))
	}
	return v[0], f(1), f(9), v[29 : 29+n], v[29+n:]
}

// TestMixedFleet runs the two kinds of instance of a rolling upgrade on one
// Redis: a store with LegacyRecords (writing what earlier versions read)
// and a default one (compact records). Each replays, completes, extends and
// inspects what the other began, the record stays under the name and in the
// layout it was created with, and a duplicate waiting on either kind is
// woken by the other's completion.
func TestMixedFleet(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		prefix := storetest.Prefix(t) + ":"
		legacy := newStore(t, c, redisstore.Options{Prefix: prefix, LegacyRecords: true})
		compact := newStore(t, c, redisstore.Options{Prefix: prefix})
		fp := idem.Fingerprint([]byte("request"))
		for _, tc := range []struct {
			name        string
			first, then *redisstore.Store
			key         func(string) string
			other       func(string) string
		}{
			{"legacy first", legacy, compact, compact.LegacyKey, compact.Key},
			{"compact first", compact, legacy, compact.Key, compact.LegacyKey},
		} {
			key := "k-" + tc.name
			b, err := tc.first.Begin(ctx, key, fp, time.Minute)
			if err != nil || b.Outcome != idem.Acquired {
				t.Fatalf("%s: Begin = %+v, %v", tc.name, b, err)
			}
			if n := c.Exists(ctx, tc.other(key)).Val(); n != 0 {
				t.Fatalf("%s: a record under the other name too", tc.name)
			}
			// The other kind sees it in flight, extends it and inspects it.
			if d, err := tc.then.Begin(ctx, key, fp, time.Minute); err != nil || d.Outcome != idem.InFlight || d.Fence != b.Fence {
				t.Fatalf("%s: duplicate Begin = %+v, %v", tc.name, d, err)
			}
			if d, err := tc.then.Begin(ctx, key, []byte("other"), time.Minute); err != nil || d.Outcome != idem.Mismatch {
				t.Fatalf("%s: other fingerprint = %+v, %v", tc.name, d, err)
			}
			if err := tc.then.Extend(ctx, key, b.Fence, 2*time.Minute); err != nil {
				t.Fatalf("%s: Extend: %v", tc.name, err)
			}
			rec, ok, err := tc.then.Get(ctx, key)
			if err != nil || !ok || rec.State != idem.StateInProgress || rec.Fence != b.Fence || string(rec.Fingerprint) != string(fp) || rec.Remaining < time.Minute {
				t.Fatalf("%s: Get = %+v, %v, %v", tc.name, rec, ok, err)
			}
			// A duplicate waits on the first kind; the other kind completes.
			woken := make(chan error, 1)
			reads := getRanges(t, c, compact.Key(key))
			go func() { woken <- tc.first.Wait(ctx, key, 10*time.Second) }()
			// Complete only once the waiter has subscribed and read the
			// state (GETRANGE of both names): else it would see the
			// completion in the state, not be woken by the notification.
			subscribed(t, c, compact.Key(key))
			for getRanges(t, c, compact.Key(key)) < reads+2 {
				time.Sleep(time.Millisecond)
			}
			start := time.Now()
			if err := tc.then.Complete(ctx, key, b.Fence, []byte("result"), time.Hour); err != nil {
				t.Fatalf("%s: Complete: %v", tc.name, err)
			}
			if err := <-woken; err != nil || time.Since(start) > 5*time.Second {
				t.Fatalf("%s: Wait = %v after %v", tc.name, err, time.Since(start))
			}
			for _, st := range []*redisstore.Store{legacy, compact} {
				r, err := st.Begin(ctx, key, fp, time.Minute)
				if err != nil || r.Outcome != idem.Replay || string(r.Result) != "result" {
					t.Fatalf("%s: replay = %+v, %v", tc.name, r, err)
				}
			}
			v, err := c.Get(ctx, tc.key(key)).Result()
			if err != nil {
				t.Fatalf("%s: the record is not under its first name: %v", tc.name, err)
			}
			if n := c.Exists(ctx, tc.other(key)).Val(); n != 0 {
				t.Fatalf("%s: a record under the other name too", tc.name)
			}
			if tc.first == legacy {
				// Exactly what earlier versions read.
				s, fence, lease, gotFP, res := legacyRecord(t, v)
				if s != 'c' || uint64(fence) != b.Fence || lease != 0 || gotFP != string(fp) || res != "result" {
					t.Fatalf("%s: legacy record = %c %v %v %x %q", tc.name, s, fence, lease, gotFP, res)
				}
			} else if v[0] != 'C' || len(v) != 18+len(fp)+len("result") {
				t.Fatalf("%s: compact record = %q (%d bytes)", tc.name, v, len(v))
			}
		}
	})
}

// TestLongFingerprint checks that a fingerprint of 256 bytes or more, which
// the compact layout's one-byte length cannot hold, is kept whole (in the
// legacy layout under the compact name).
func TestLongFingerprint(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	st := newStore(t, c, redisstore.Options{})
	fp := make([]byte, 300)
	for i := range fp {
		fp[i] = byte(i)
	}
	b, err := st.Begin(ctx, "k", fp, time.Minute)
	if err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin = %+v, %v", b, err)
	}
	if err := st.Complete(ctx, "k", b.Fence, []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if d, err := st.Begin(ctx, "k", fp[:299], time.Minute); err != nil || d.Outcome != idem.Mismatch {
		t.Fatalf("a fingerprint one byte shorter = %+v, %v", d, err)
	}
	if r, err := st.Begin(ctx, "k", fp, time.Minute); err != nil || r.Outcome != idem.Replay || string(r.Result) != "r" {
		t.Fatalf("replay = %+v, %v", r, err)
	}
	v := c.Get(ctx, st.Key("k")).Val()
	if _, _, _, gotFP, res := legacyRecord(t, v); gotFP != string(fp) || res != "r" {
		t.Fatalf("record = %x, %q", gotFP, res)
	}
}

// getRanges returns how many GETRANGE commands the server that holds key
// has run.
func getRanges(t *testing.T, c redis.UniversalClient, key string) int {
	t.Helper()
	ctx := context.Background()
	var info string
	if cc, ok := c.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		info = node.Info(ctx, "commandstats").Val()
	} else {
		info = c.Info(ctx, "commandstats").Val()
	}
	_, rest, ok := strings.Cut(info, "cmdstat_getrange:calls=")
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
	return n
}

// subscribed waits until someone listens on channel ch (sharded on a
// Cluster), as Wait does before it reads the record's state.
func subscribed(t *testing.T, c redis.UniversalClient, ch string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int64
		if cc, ok := c.(*redis.ClusterClient); ok {
			node, err := cc.MasterForKey(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			n = node.PubSubShardNumSub(ctx, ch).Val()[ch]
		} else {
			n = c.PubSubNumSub(ctx, ch).Val()[ch]
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody subscribed to %q", ch)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestConformanceSkipLegacyKeys runs the store suite without the lookups
// under legacy names.
func TestConformanceSkipLegacyKeys(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		storetest.Run(t, func(t testing.TB) idem.Store {
			return newStore(t, c, redisstore.Options{SkipLegacyKeys: true})
		}, storetest.Features{Extend: true, Wait: true, Inspect: true, MinLease: 25 * time.Millisecond})
	})
}

// TestSkipLegacyKeys checks what SkipLegacyKeys gives up: a record under a
// legacy name is not seen (a new one is made under the compact name), and
// that LegacyRecords overrides it.
func TestSkipLegacyKeys(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	prefix := storetest.Prefix(t) + ":"
	legacy := newStore(t, c, redisstore.Options{Prefix: prefix, LegacyRecords: true, SkipLegacyKeys: true})
	skip := newStore(t, c, redisstore.Options{Prefix: prefix, SkipLegacyKeys: true})
	b, err := legacy.Begin(ctx, "k", []byte("fp"), time.Minute)
	if err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin = %+v, %v", b, err)
	}
	if r, err := legacy.Begin(ctx, "k", []byte("fp"), time.Minute); err != nil || r.Outcome != idem.InFlight {
		t.Fatalf("LegacyRecords with SkipLegacyKeys does not see its own record: %+v, %v", r, err)
	}
	if r, err := skip.Begin(ctx, "k", []byte("fp"), time.Minute); err != nil || r.Outcome != idem.Acquired {
		t.Fatalf("SkipLegacyKeys: Begin = %+v, %v; want a new record", r, err)
	}
	if n := c.Exists(ctx, skip.Key("k"), skip.LegacyKey("k")).Val(); n != 2 {
		t.Fatalf("%d records, want one under each name", n)
	}
}
