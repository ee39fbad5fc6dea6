package storetest

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

func testAcquireNew(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	b := begin(t, s, k, fpA, h.long)
	wantAcquired(t, b, false, 0)
	if rec, found, ok := h.get(t, s, k); ok {
		if !found {
			t.Fatalf("Get after Begin: no record")
		}
		if rec.State != idem.StateInProgress || rec.Fence != b.Fence || !bytes.Equal(rec.Fingerprint, fpA) || len(rec.Result) != 0 {
			t.Fatalf("Get = %+v, want in-progress, fence %d, fingerprint %x, no result", rec, b.Fence, fpA)
		}
	}
	// A different key is independent.
	acquire(t, s, k+"/other", fpA, h.long)
}

func testAcquireHeld(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	f := acquire(t, s, k, fpA, h.long)
	for range 3 {
		h.wantInFlight(t, begin(t, s, k, fpA, h.long), f, h.long)
	}
	if h.fake {
		// The second Begin's lease argument changes nothing, and
		// LeaseLeft counts down. (On a real clock a stall could expire
		// the short lease between the calls, so this is fake-clock only.)
		k2 := key(t)
		f2 := acquire(t, s, k2, fpA, h.short)
		h.wantInFlight(t, begin(t, s, k2, fpA, h.long), f2, h.short)
		h.advance(h.nearShort)
		b := begin(t, s, k2, fpA, h.long)
		h.wantInFlight(t, b, f2, h.short-h.nearShort)
		if b.LeaseLeft < h.short-h.nearShort-h.u {
			t.Fatalf("LeaseLeft = %v after advancing %v of a %v lease, want about %v", b.LeaseLeft, h.nearShort, h.short, h.short-h.nearShort)
		}
	}
}

func testAcquireCompleted(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	f := acquire(t, s, k, fpA, h.long)
	res := []byte("HTTP/1.1 201 Created\r\n\r\n{\"id\":1}")
	complete(t, s, k, f, res, h.long)
	for range 3 {
		wantReplay(t, begin(t, s, k, fpA, h.long), res)
	}
	if rec, found, ok := h.get(t, s, k); ok {
		if !found || rec.State != idem.StateCompleted || rec.Fence != f || !bytes.Equal(rec.Result, res) || !bytes.Equal(rec.Fingerprint, fpA) {
			t.Fatalf("Get = %+v (found %v), want completed, fence %d, the stored result", rec, found, f)
		}
	}
}

func testMismatch(t *testing.T, h *harness) {
	s := h.newStore(t)
	ks := keys(t, 3)

	// In progress, lease live.
	f0 := acquire(t, s, ks[0], fpA, h.long)
	wantMismatch(t, begin(t, s, ks[0], fpB, h.long))
	h.wantInFlight(t, begin(t, s, ks[0], fpA, h.long), f0, h.long)

	// Completed.
	f1 := acquire(t, s, ks[1], fpA, h.long)
	complete(t, s, ks[1], f1, []byte("one"), h.long)
	wantMismatch(t, begin(t, s, ks[1], fpB, h.long))
	wantReplay(t, begin(t, s, ks[1], fpA, h.long), []byte("one"))

	// In progress, lease expired: a different fingerprint must not take
	// the record over, and must leave it as it was.
	f2 := acquire(t, s, ks[2], fpA, h.short)
	h.advance(h.expire)
	wantMismatch(t, begin(t, s, ks[2], fpB, h.long))
	wantMismatch(t, begin(t, s, ks[2], nil, h.long))
	wantAcquired(t, begin(t, s, ks[2], fpA, h.long), true, f2)

	// The live records are untouched by the mismatches.
	h.wantInFlight(t, begin(t, s, ks[0], fpA, h.long), f0, h.long)
}

func testTakeoverAfterLease(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	f := acquire(t, s, k, fpA, h.short)
	if h.fake {
		h.advance(h.nearShort)
		h.wantInFlight(t, begin(t, s, k, fpA, h.short), f, h.short)
		h.advance(h.expire - h.nearShort)
	} else {
		h.advance(h.expire)
	}
	b := begin(t, s, k, fpA, h.short)
	wantAcquired(t, b, true, f)
	if h.fake {
		// The takeover renewed the lease.
		h.wantInFlight(t, begin(t, s, k, fpA, h.short), b.Fence, h.short)
	}

	// A second takeover adds one again.
	h.advance(h.expire)
	b2 := begin(t, s, k, fpA, h.long)
	wantAcquired(t, b2, true, b.Fence)
	complete(t, s, k, b2.Fence, []byte("done"), h.long)
	wantReplay(t, begin(t, s, k, fpA, h.long), []byte("done"))
}

func testFencing(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	f1 := acquire(t, s, k, fpA, h.short)
	h.advance(h.expire)
	b := begin(t, s, k, fpA, h.long)
	wantAcquired(t, b, true, f1)
	f2 := b.Fence

	// The stale holder and made-up fences are refused, changing nothing.
	for _, stale := range []uint64{f1, 0, f2 + 1, f2 + 1000} {
		h.refused(t, s, k, stale)
	}
	h.wantInFlight(t, begin(t, s, k, fpA, h.long), f2, h.long)

	// An executor whose lease ended but was not taken over still holds
	// the record: fencing, not the lease clock, decides.
	k2 := key(t)
	g := acquire(t, s, k2, fpA, h.short)
	h.advance(h.expire)
	complete(t, s, k2, g, []byte("late but unchallenged"), h.long)
	wantReplay(t, begin(t, s, k2, fpA, h.long), []byte("late but unchallenged"))

	// Complete after complete, and Release or Extend of a completed record.
	complete(t, s, k, f2, []byte("first"), h.long)
	h.refused(t, s, k, f2)
	wantReplay(t, begin(t, s, k, fpA, h.long), []byte("first"))
	if rec, found, ok := h.get(t, s, k); ok && (!found || !bytes.Equal(rec.Result, []byte("first")) || rec.Fence != f2) {
		t.Fatalf("Get = %+v (found %v), want the first result with fence %d", rec, found, f2)
	}

	// Operations on a key that was never begun.
	h.refused(t, s, key(t), 1)
}

func testReleaseThenReacquire(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	prev := acquire(t, s, k, fpA, h.long)
	// Rapid cycles: the fence must grow even within one clock tick.
	for i := range 20 {
		release(t, s, k, prev)
		wantLeaseLost(t, "second Release", s.Release(context.Background(), k, prev))
		if _, found, ok := h.get(t, s, k); ok && found {
			t.Fatalf("Get after Release: record still present")
		}
		fp := fpA
		if i%2 == 1 {
			fp = fpB // the released record no longer owns the key
		}
		b := begin(t, s, k, fp, h.long)
		wantAcquired(t, b, false, prev)
		h.refused(t, s, k, prev)
		prev = b.Fence
	}
	complete(t, s, k, prev, []byte("ok"), h.long)
	wantReplay(t, begin(t, s, k, fpB, h.long), []byte("ok"))
}

func testRetentionExpiry(t *testing.T, h *harness) {
	s := h.newStore(t)
	ks := keys(t, 3)
	fs := make([]uint64, len(ks))
	for i, k := range ks {
		fs[i] = acquire(t, s, k, fpA, h.long)
		complete(t, s, k, fs[i], []byte("old"), h.short)
	}
	long := key(t)
	fl := acquire(t, s, long, fpA, h.long)
	complete(t, s, long, fl, []byte("kept"), h.long)
	if h.fake {
		h.advance(h.nearShort)
		wantReplay(t, begin(t, s, ks[0], fpA, h.long), []byte("old"))
		h.advance(h.expire - h.nearShort)
	} else {
		h.advance(h.expire)
	}
	if _, found, ok := h.get(t, s, ks[0]); ok && found {
		t.Fatalf("Get of a record past retention: found, want gone")
	}
	// Same fingerprint: executes again, with a fresh (not takeover) fence.
	wantAcquired(t, begin(t, s, ks[0], fpA, h.long), false, fs[0])
	// Different fingerprint: the key is new again, not a mismatch.
	wantAcquired(t, begin(t, s, ks[1], fpB, h.long), false, fs[1])
	// The dead record cannot be completed, released or extended.
	h.refused(t, s, ks[2], fs[2])
	wantAcquired(t, begin(t, s, ks[2], fpA, h.long), false, fs[2])
	// A longer retention is still replayed.
	wantReplay(t, begin(t, s, long, fpA, h.long), []byte("kept"))
}

func testConcurrentBegin(t *testing.T, h *harness) {
	s := h.newStore(t)
	k := key(t)
	const n = 64
	results := make([]idem.Begun, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = s.Begin(context.Background(), k, fpA, h.long)
		})
	}
	close(start)
	wg.Wait()
	var winner *idem.Begun
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Begin %d: %v", i, errs[i])
		}
		if results[i].Outcome == idem.Acquired {
			if winner != nil {
				t.Fatalf("two concurrent Begins acquired: %s and %s", describe(*winner), describe(results[i]))
			}
			winner = &results[i]
		}
	}
	if winner == nil {
		t.Fatalf("no concurrent Begin acquired")
	}
	wantAcquired(t, *winner, false, 0)
	for i := range n {
		if results[i].Outcome != idem.Acquired {
			h.wantInFlight(t, results[i], winner.Fence, h.long)
		}
	}

	// Once completed, every concurrent Begin replays; another fingerprint
	// always mismatches.
	res := []byte("concurrent result")
	complete(t, s, k, winner.Fence, res, h.long)
	start = make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			fp := fpA
			if i%4 == 0 {
				fp = fpB
			}
			results[i], errs[i] = s.Begin(context.Background(), k, fp, h.long)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Begin %d: %v", i, errs[i])
		}
		if i%4 == 0 {
			wantMismatch(t, results[i])
		} else {
			wantReplay(t, results[i], res)
		}
	}
}

func testConcurrentCompleteVsTakeover(t *testing.T, h *harness) {
	s := h.newStore(t)
	const rounds = 32
	ks := keys(t, rounds)
	fs := make([]uint64, rounds)
	for i, k := range ks {
		fs[i] = acquire(t, s, k, fpA, h.short)
	}
	h.advance(h.expire)

	type outcome struct {
		staleErr  error // the stale executor's Complete
		b         idem.Begun
		beginErr  error
		takerErr  error // the new executor's Complete, if it acquired
		takerDone bool
	}
	out := make([]outcome, rounds)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, k := range ks {
		wg.Go(func() {
			<-start
			out[i].staleErr = s.Complete(context.Background(), k, fs[i], []byte("stale"), h.long)
		})
		wg.Go(func() {
			<-start
			o := &out[i]
			o.b, o.beginErr = s.Begin(context.Background(), k, fpA, h.long)
			if o.beginErr == nil && o.b.Outcome == idem.Acquired {
				o.takerErr = s.Complete(context.Background(), k, o.b.Fence, []byte("taker"), h.long)
				o.takerDone = true
			}
		})
	}
	close(start)
	wg.Wait()

	for i, o := range out {
		if o.beginErr != nil {
			t.Fatalf("round %d: Begin: %v", i, o.beginErr)
		}
		var want []byte
		switch o.b.Outcome {
		case idem.Acquired:
			// The takeover won: the stale Complete must have been refused.
			wantAcquired(t, o.b, true, fs[i])
			wantLeaseLost(t, "stale Complete after takeover", o.staleErr)
			if o.takerErr != nil {
				t.Fatalf("round %d: taker's Complete: %v", i, o.takerErr)
			}
			want = []byte("taker")
		case idem.Replay:
			// The stale executor completed first; nobody took over.
			if o.staleErr != nil {
				t.Fatalf("round %d: Begin replayed but the stale Complete failed: %v", i, o.staleErr)
			}
			wantReplay(t, o.b, []byte("stale"))
			want = []byte("stale")
		default:
			t.Fatalf("round %d: Begin = %s, want acquired (takeover) or replay", i, describe(o.b))
		}
		wantReplay(t, begin(t, s, ks[i], fpA, h.long), want)
	}
}

func testKeyIsolation(t *testing.T, h *harness) {
	s := h.newStore(t)
	base := key(t)
	pad := func(n int, last byte) string {
		k := base + strings.Repeat("k", max(n-len(base)-1, 0))
		return k + string(last)
	}
	ks := []string{
		base + "a",
		base + "A",
		base + "ab",
		base + "a\x00",
		base + "a\x00b",
		base + "\x00",
		base + "ключ",
		base + "\xff\xfe",
		base + "a b",
		base + "a:b",
		base + "a/b",
		base + "%",
		base + "*",
		base + "a*",
		base + "[a]",
		pad(255, 'x'),
		pad(255, 'y'),
		pad(254, 'x'),
		pad(400, 'x'),
		idem.RecordKey(base, "k"),
		idem.RecordKey(base+"k", ""),
	}
	seen := map[string]bool{}
	for _, k := range ks {
		if seen[k] {
			t.Fatalf("test bug: duplicate key %q", k)
		}
		seen[k] = true
	}
	if n := len(pad(255, 'x')); n != 255 {
		t.Fatalf("test bug: padded key is %d bytes", n)
	}
	fences := make([]uint64, len(ks))
	for i, k := range ks {
		fences[i] = acquire(t, s, k, fpFor(i), h.long)
	}
	// Complete every other key; each must replay its own result.
	for i, k := range ks {
		if i%2 == 0 {
			complete(t, s, k, fences[i], resultFor(i), h.long)
		}
	}
	for i, k := range ks {
		b := begin(t, s, k, fpFor(i), h.long)
		if i%2 == 0 {
			wantReplay(t, b, resultFor(i))
		} else {
			h.wantInFlight(t, b, fences[i], h.long)
		}
		wantMismatch(t, begin(t, s, k, fpFor(i+1), h.long))
	}
	// Releasing one key leaves its neighbours alone.
	for i, k := range ks {
		if i%2 == 1 {
			release(t, s, k, fences[i])
		}
	}
	for i, k := range ks {
		if i%2 == 0 {
			wantReplay(t, begin(t, s, k, fpFor(i), h.long), resultFor(i))
		} else {
			wantAcquired(t, begin(t, s, k, fpFor(i), h.long), false, fences[i])
		}
	}
}

func fpFor(i int) []byte     { return idem.Fingerprint([]byte("fp"), []byte{byte(i)}) }
func resultFor(i int) []byte { return []byte{'r', byte(i), 0, byte(i)} }

func testValues(t *testing.T, h *harness) {
	s := h.newStore(t)

	t.Run("Fingerprints", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			first  []byte
			second []byte
			equal  bool
		}{
			{"nil-then-empty", nil, []byte{}, true},
			{"empty-then-nil", []byte{}, nil, true},
			{"nil-vs-NUL", nil, []byte{0}, false},
			{"trailing-NUL", []byte{1, 0, 2}, []byte{1, 0, 2, 0}, false},
			{"inner-NUL", []byte{1, 0, 2}, []byte{1, 0, 3}, false},
			{"binary-same", []byte{0, 0xff, 0x80, 0}, []byte{0, 0xff, 0x80, 0}, true},
			{"long-same", bytes.Repeat([]byte{0, 1, 2}, 100), bytes.Repeat([]byte{0, 1, 2}, 100), true},
			{"long-last-byte", bytes.Repeat([]byte{7}, 300), append(bytes.Repeat([]byte{7}, 299), 8), false},
		} {
			k := key(t) + c.name
			f := acquire(t, s, k, c.first, h.long)
			b := begin(t, s, k, c.second, h.long)
			if c.equal {
				h.wantInFlight(t, b, f, h.long)
			} else {
				wantMismatch(t, b)
			}
			if rec, found, ok := h.get(t, s, k); ok && (!found || !bytes.Equal(rec.Fingerprint, c.first)) {
				t.Fatalf("%s: Get fingerprint = %x, want %x", c.name, rec.Fingerprint, c.first)
			}
		}
	})

	t.Run("Results", func(t *testing.T) {
		all := make([]byte, 256)
		for i := range all {
			all[i] = byte(i)
		}
		big := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range big {
			big[i] = byte(rng.Uint32())
		}
		for _, c := range []struct {
			name   string
			result []byte
			want   []byte
		}{
			{"nil", nil, []byte{}},
			{"empty", []byte{}, []byte{}},
			{"NUL", []byte{0}, []byte{0}},
			{"NULs", []byte{0, 0, 0}, []byte{0, 0, 0}},
			{"all-bytes", all, all},
			{"invalid-UTF-8", []byte("\xff\xfe\xc3("), []byte("\xff\xfe\xc3(")},
			{"1MiB", big, big},
		} {
			k := key(t) + c.name
			f := acquire(t, s, k, fpA, h.long)
			complete(t, s, k, f, c.result, h.long)
			wantReplay(t, begin(t, s, k, fpA, h.long), c.want)
			if rec, found, ok := h.get(t, s, k); ok && (!found || !bytes.Equal(rec.Result, c.want)) {
				t.Fatalf("%s: Get result = %s, want %s", c.name, short(rec.Result), short(c.want))
			}
		}
	})

	t.Run("BuffersNotRetained", func(t *testing.T) {
		// Callers may reuse their buffers; the store must copy on the way
		// in and out.
		k := key(t)
		fp := bytes.Clone(fpA)
		f := acquire(t, s, k, fp, h.long)
		fp[0] ^= 0xff
		h.wantInFlight(t, begin(t, s, k, fpA, h.long), f, h.long)

		long := bytes.Repeat([]byte("long fingerprint "), 10)
		kl := key(t)
		fl := acquire(t, s, kl, long, h.long)
		fpl := bytes.Clone(long)
		long[0] ^= 0xff
		h.wantInFlight(t, begin(t, s, kl, fpl, h.long), fl, h.long)

		res := []byte("result bytes")
		complete(t, s, k, f, res, h.long)
		copy(res, "XXXXXXXXXXXX")
		b := begin(t, s, k, fpA, h.long)
		wantReplay(t, b, []byte("result bytes"))
		copy(b.Result, "YYYYYYYYYYYY")
		wantReplay(t, begin(t, s, k, fpA, h.long), []byte("result bytes"))

		if rec, found, ok := h.get(t, s, k); ok && found {
			rec.Fingerprint[0] ^= 0xff
			copy(rec.Result, "ZZZZ")
			rec2, _, _ := h.get(t, s, k)
			if !bytes.Equal(rec2.Fingerprint, fpA) || !bytes.Equal(rec2.Result, []byte("result bytes")) {
				t.Fatalf("Get returned slices that alias the stored record")
			}
		}
	})
}

func testCanceledContext(t *testing.T, h *harness) {
	s := h.newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	fresh, held, done := key(t), key(t), key(t)
	fh := acquire(t, s, held, fpA, h.long)
	fd := acquire(t, s, done, fpA, h.long)
	complete(t, s, done, fd, []byte("done"), h.long)

	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context = %v, want an error matching context.Canceled", op, err)
		}
	}
	_, err := s.Begin(ctx, fresh, fpA, h.long)
	check("Begin(new key)", err)
	_, err = s.Begin(ctx, held, fpA, h.long)
	check("Begin(held key)", err)
	check("Complete", s.Complete(ctx, held, fh, []byte("x"), h.long))
	check("Release", s.Release(ctx, held, fh))
	if x, ok := s.(idem.Extender); ok && h.f.Extend {
		check("Extend", x.Extend(ctx, held, fh, h.short))
	}
	if w, ok := s.(idem.Waiter); ok && h.f.Wait {
		check("Wait", w.Wait(ctx, held, h.long))
	}
	if in, ok := s.(idem.Inspector); ok && h.f.Inspect {
		_, _, err := in.Get(ctx, held)
		check("Get", err)
	}
	if sw, ok := s.(idem.Sweeper); ok && h.f.Sweep {
		_, err := sw.Sweep(ctx)
		check("Sweep", err)
	}

	// Nothing changed.
	wantAcquired(t, begin(t, s, fresh, fpB, h.long), false, 0)
	h.wantInFlight(t, begin(t, s, held, fpA, h.long), fh, h.long)
	wantReplay(t, begin(t, s, done, fpA, h.long), []byte("done"))
	complete(t, s, held, fh, []byte("held"), h.long)
	wantReplay(t, begin(t, s, held, fpA, h.long), []byte("held"))
}

func testExtend(t *testing.T, h *harness) {
	s := h.newStore(t)
	x := s.(idem.Extender)
	ctx := context.Background()
	k := key(t)
	f := acquire(t, s, k, fpA, h.short)
	if err := x.Extend(ctx, k, f, h.long); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	h.advance(h.expire)
	// Past the original lease, the extended lease still holds.
	b := begin(t, s, k, fpA, h.long)
	h.wantInFlight(t, b, f, h.long)
	if b.LeaseLeft <= h.long-h.expire-4*h.u && h.fake {
		t.Fatalf("LeaseLeft after Extend = %v, want about %v", b.LeaseLeft, h.long-h.expire)
	}
	// Extend can also shorten, and a lease that ended without takeover can
	// be extended again.
	if err := x.Extend(ctx, k, f, h.short); err != nil {
		t.Fatalf("Extend(short): %v", err)
	}
	h.advance(h.expire)
	if err := x.Extend(ctx, k, f, h.long); err != nil {
		t.Fatalf("Extend after the lease ended without takeover: %v", err)
	}
	h.wantInFlight(t, begin(t, s, k, fpA, h.long), f, h.long)

	// Wrong fences, missing keys and completed records are refused.
	wantLeaseLost(t, "Extend(wrong fence)", x.Extend(ctx, k, f+1, h.long))
	wantLeaseLost(t, "Extend(missing key)", x.Extend(ctx, key(t), 1, h.long))
	complete(t, s, k, f, []byte("done"), h.long)
	wantLeaseLost(t, "Extend(completed)", x.Extend(ctx, k, f, h.long))
	wantReplay(t, begin(t, s, k, fpA, h.long), []byte("done"))

	// After takeover, the old holder cannot extend.
	k2 := key(t)
	f2 := acquire(t, s, k2, fpA, h.short)
	h.advance(h.expire)
	wantAcquired(t, begin(t, s, k2, fpA, h.long), true, f2)
	wantLeaseLost(t, "Extend(stale fence)", x.Extend(ctx, k2, f2, h.long))
}

func testSweep(t *testing.T, h *harness) {
	s := h.newStore(t)
	sw := s.(idem.Sweeper)
	ctx := context.Background()
	ks := keys(t, 5)
	expired, kept, held, lapsed, released := ks[0], ks[1], ks[2], ks[3], ks[4]

	fe := acquire(t, s, expired, fpA, h.long)
	complete(t, s, expired, fe, []byte("expired"), h.short)
	fk := acquire(t, s, kept, fpA, h.long)
	complete(t, s, kept, fk, []byte("kept"), h.long)
	fh := acquire(t, s, held, fpA, h.long)
	fl := acquire(t, s, lapsed, fpA, h.short)
	fr := acquire(t, s, released, fpA, h.long)
	release(t, s, released, fr)

	h.advance(h.expire)
	n, err := sw.Sweep(ctx)
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if n < 1 {
		t.Fatalf("Sweep removed %d records, want at least 1 (a completed record past retention)", n)
	}
	// Sweep changes no outcome: the expired key is new, the rest as before.
	wantAcquired(t, begin(t, s, expired, fpB, h.long), false, fe)
	wantReplay(t, begin(t, s, kept, fpA, h.long), []byte("kept"))
	h.wantInFlight(t, begin(t, s, held, fpA, h.long), fh, h.long)
	// A lapsed lease is not dead: it still fences and mismatches.
	wantMismatch(t, begin(t, s, lapsed, fpB, h.long))
	wantAcquired(t, begin(t, s, lapsed, fpA, h.long), true, fl)
	wantAcquired(t, begin(t, s, released, fpA, h.long), false, fr)

	// Nothing left to sweep among this subtest's records; sweeping again
	// is harmless.
	if _, err := sw.Sweep(ctx); err != nil {
		t.Fatalf("second Sweep: %v", err)
	}
	wantReplay(t, begin(t, s, kept, fpA, h.long), []byte("kept"))
}

func testWait(t *testing.T, h *harness) {
	s := h.newStore(t)
	w := s.(idem.Waiter)
	const d = 10 * time.Second
	wake := func(t *testing.T, finish func(k string, f uint64)) {
		k := key(t)
		f := acquire(t, s, k, fpA, h.long)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- w.Wait(context.Background(), k, d) }()
		// Give the waiter time to block; a store may also wake it at once.
		time.Sleep(20*time.Millisecond + h.u)
		finish(k, f)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if el := time.Since(start); el > d/2 {
				t.Fatalf("Wait returned after %v, want soon after the record changed", el)
			}
		case <-time.After(d / 2):
			t.Errorf("Wait did not return within %v of the record changing", d/2)
			<-done
			t.FailNow()
		}
	}
	t.Run("Complete", func(t *testing.T) {
		t.Parallel()
		wake(t, func(k string, f uint64) { complete(t, s, k, f, []byte("r"), h.long) })
	})
	t.Run("Release", func(t *testing.T) {
		t.Parallel()
		wake(t, func(k string, f uint64) { release(t, s, k, f) })
	})
	t.Run("Timeout", func(t *testing.T) {
		t.Parallel()
		k := key(t)
		acquire(t, s, k, fpA, h.long)
		start := time.Now()
		if err := w.Wait(context.Background(), k, 50*time.Millisecond); err != nil {
			t.Fatalf("Wait until d elapses = %v, want nil", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("Wait(d = 50ms) returned after %v", el)
		}
	})
	t.Run("Cancel", func(t *testing.T) {
		t.Parallel()
		k := key(t)
		acquire(t, s, k, fpA, h.long)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Wait(ctx, k, d) }()
		time.Sleep(10 * time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Wait canceled while blocked = %v, want context.Canceled", err)
			}
		case <-time.After(d / 2):
			t.Errorf("Wait did not return within %v of its context being canceled", d/2)
			<-done
			t.FailNow()
		}
	})
	t.Run("NoRecord", func(t *testing.T) {
		t.Parallel()
		// A key with no in-progress record may return at once, and must
		// return by d.
		start := time.Now()
		if err := w.Wait(context.Background(), key(t), 50*time.Millisecond); err != nil {
			t.Fatalf("Wait(missing key) = %v, want nil", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("Wait(missing key, d = 50ms) returned after %v", el)
		}
	})
}

func testInspect(t *testing.T, h *harness) {
	s := h.newStore(t)
	in := s.(idem.Inspector)
	ctx := context.Background()
	k := key(t)
	if _, found, err := in.Get(ctx, k); err != nil || found {
		t.Fatalf("Get(never created) = found %v, err %v; want not found, nil", found, err)
	}
	// With a fake clock durations are checked to within MinLease. With a
	// real one, against the time measured around the calls (el), and with
	// a one-hour lease and retention so that no stall can expire them.
	lease := 4 * h.short
	if !h.fake {
		lease = h.long
	}
	within := func(what string, got, lo, hi time.Duration) {
		t.Helper()
		if got < lo-h.u || got > hi+h.u || got < 0 {
			t.Fatalf("%s = %v, want in [%v, %v] ± %v", what, got, lo, hi, h.u)
		}
	}
	t0 := time.Now()
	f := acquire(t, s, k, fpA, lease)
	rec, found, err := in.Get(ctx, k)
	el := time.Since(t0)
	if err != nil || !found {
		t.Fatalf("Get(in progress) = found %v, err %v", found, err)
	}
	if rec.State != idem.StateInProgress || rec.Fence != f || !bytes.Equal(rec.Fingerprint, fpA) || len(rec.Result) != 0 {
		t.Fatalf("Get = %+v, want in-progress, fence %d", rec, f)
	}
	if h.fake {
		el = 0
	}
	within("Age", rec.Age, 0, el)
	within("Remaining", rec.Remaining, lease-el, lease)

	step := h.short
	h.advance(step)
	rec, _, _ = in.Get(ctx, k)
	el = time.Since(t0)
	if h.fake {
		el = step
	}
	within("Age after advance", rec.Age, step, el)
	within("Remaining after advance", rec.Remaining, lease-el, lease-step)
	// Get changed nothing.
	h.wantInFlight(t, begin(t, s, k, fpA, lease), f, lease)

	t1 := time.Now()
	complete(t, s, k, f, []byte("result"), lease)
	rec, found, err = in.Get(ctx, k)
	el1 := time.Since(t1)
	if err != nil || !found || rec.State != idem.StateCompleted || rec.Fence != f || !bytes.Equal(rec.Result, []byte("result")) {
		t.Fatalf("Get(completed) = %+v, found %v, err %v", rec, found, err)
	}
	if h.fake {
		el1 = 0
		within("Age after Complete", rec.Age, step, step)
	}
	within("Remaining after Complete", rec.Remaining, lease-el1, lease)

	if h.fake {
		h.advance(lease + h.u)
		if _, found, err := in.Get(ctx, k); err != nil || found {
			t.Fatalf("Get(past retention) = found %v, err %v; want not found", found, err)
		}
	}

	k2 := key(t)
	f2 := acquire(t, s, k2, fpA, h.long)
	release(t, s, k2, f2)
	if _, found, err := in.Get(ctx, k2); err != nil || found {
		t.Fatalf("Get(released) = found %v, err %v; want not found", found, err)
	}
}
