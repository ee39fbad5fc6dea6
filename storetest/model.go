package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// SeedEnv names the environment variable that fixes the Model subtest's
// random seed, to replay a failure. The seed is logged on every run.
const SeedEnv = "IDEM_STORETEST_SEED"

// modelRec is the reference model's view of one record.
type modelRec struct {
	state    idem.State
	fp       []byte
	fence    uint64
	start    time.Duration // model time the current fence acquired it
	deadline time.Duration // lease end or retention end, model time
	result   []byte
}

// model is a deliberately simple reference implementation of the idem.Store
// contract, against which a store is checked step by step.
type model struct {
	now      time.Duration // time advanced since the model started
	recs     map[string]*modelRec
	issued   map[string][]uint64 // every fence handed out, per key
	maxFence map[string]uint64
}

// live returns key's record if it is not past retention.
func (m *model) live(key string) *modelRec {
	r := m.recs[key]
	if r != nil && r.state == idem.StateCompleted && m.now >= r.deadline {
		delete(m.recs, key)
		return nil
	}
	return r
}

func (m *model) held(key string, fence uint64) *modelRec {
	r := m.live(key)
	if r == nil || r.state != idem.StateInProgress || r.fence != fence {
		return nil
	}
	return r
}

func (m *model) issue(key string, fence uint64) {
	m.issued[key] = append(m.issued[key], fence)
	m.maxFence[key] = max(m.maxFence[key], fence)
}

// testModel runs a seeded random sequence of operations on a few keys and
// checks every answer against the model.
func testModel(t *testing.T, h *harness) {
	seed := rand.Uint64()
	if v := os.Getenv(SeedEnv); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, v, err)
		}
	}
	t.Logf("seed %d (set %s=%d to replay)", seed, SeedEnv, seed)
	ops := 300
	if h.fake {
		ops = 2000
	}
	runModel(t, h, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), ops, fmt.Sprintf("seed %d", seed))
}

// source supplies the model run's choices: a seeded generator, or the bytes
// of a fuzz input.
type source interface {
	// IntN returns a choice in [0, n).
	IntN(n int) int
}

// bytesSource draws choices from a fuzz input; it reports exhaustion so the
// run stops at the end of the input.
type bytesSource struct {
	b []byte
	i int
}

func (s *bytesSource) IntN(n int) int {
	if s.i >= len(s.b) {
		return 0
	}
	v := int(s.b[s.i])
	s.i++
	if n > 256 && s.i < len(s.b) {
		v = v<<8 | int(s.b[s.i])
		s.i++
	}
	return v % n
}

func (s *bytesSource) done() bool { return s.i >= len(s.b) }

// Fuzz checks the store against the reference model with operation
// sequences decoded from fuzz inputs (one or two bytes per choice), in
// addition to the seeded sequences of Run's Model subtest. Call it from a
// FuzzXxx function; it adds a seed corpus and calls f.Fuzz:
//
//	func FuzzModel(f *testing.F) {
//		clock := newFakeClock()
//		storetest.Fuzz(f, newStore, storetest.Features{Advance: clock.Advance})
//	}
//
// The clock rules are those of the Model subtest (see Run); with a fake
// clock the store is expected to be fresh for every input, or to share its
// clock only with stores that are not in use. Inputs longer than 4 KiB are
// cut.
func Fuzz(f *testing.F, newStore NewStore, feat Features) {
	for _, seed := range [][]byte{
		{},
		{0},
		[]byte("begin complete replay"),
		{0, 0, 0, 40, 0, 0, 0, 40, 0, 0, 0, 80, 0, 0, 0, 0},
		{0, 1, 0, 0, 80, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{3, 70, 3, 90, 3, 60, 3, 40, 3, 20, 3, 0, 3, 99, 3, 50},
	} {
		f.Add(seed)
	}
	h := newHarness(newStore, feat)
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 4096 {
			prog = prog[:4096]
		}
		runModel(t, h, &bytesSource{b: prog}, len(prog), fmt.Sprintf("fuzz input %x", prog))
	})
}

// runModel runs up to ops operations chosen by src and checks every answer
// against the model.
//
// With a fake clock it works on 8 keys, including clock advances that
// expire leases and retentions; leases and retentions are odd multiples of
// MinLease and advances even multiples, so no deadline ever falls within
// MinLease of the clock. With a real clock it works on 32 keys with one-hour
// leases and retentions and no advances: nothing expires, so no answer
// depends on timing.
func runModel(t *testing.T, h *harness, rng source, ops int, seed string) {
	t.Helper()
	s := h.newStore(t)
	ctx := context.Background()
	nkeys := 8
	if !h.fake {
		nkeys = 32 // nothing expires: spread the operations wider
	}
	ks := keys(t, nkeys)
	fps := [][]byte{fpA, fpB, nil, {}}
	m := &model{recs: map[string]*modelRec{}, issued: map[string][]uint64{}, maxFence: map[string]uint64{}}

	grid, half := 2*h.u, h.u
	lease, lease2, retention, retention2 := h.long, h.long, h.long, h.long
	maxTime := time.Duration(0)
	if h.fake {
		lease, lease2, retention, retention2 = 20*grid+half, 7*grid+half, 60*grid+half, 3*grid+half
		maxTime = 4000 * grid
		h.advance(half) // from here on the clock is on the half-grid
		m.now = half
	}
	x, isX := s.(idem.Extender)
	isX = isX && h.f.Extend
	in, isIn := s.(idem.Inspector)
	isIn = isIn && h.f.Inspect
	sw, isSw := s.(idem.Sweeper)
	// With a real clock the model runs beside the Sweep subtest, which
	// counts what Sweep removes, so only the sequential fake-clock run sweeps.
	isSw = isSw && h.f.Sweep && h.fake

	var log []string
	stats := map[string]int{}
	defer func() { t.Logf("outcomes: %v", stats) }()
	i := 0
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s, op %d: %s\nlast operations:\n  %s", seed, i, fmt.Sprintf(format, args...), strings.Join(log, "\n  "))
	}
	note := func(format string, args ...any) {
		if len(log) == 30 {
			log = log[1:]
		}
		log = append(log, fmt.Sprintf("%4d t=%-8v ", i, m.now)+fmt.Sprintf(format, args...))
	}
	near := func(got, want time.Duration) bool {
		if !h.fake {
			return got > 0 && got <= want+h.u
		}
		return got >= want-h.u && got <= want+h.u
	}
	pickFence := func(k string) uint64 {
		r := m.live(k)
		is := m.issued[k]
		switch n := rng.IntN(10); {
		case n < 6 && r != nil && r.state == idem.StateInProgress:
			return r.fence
		case n < 8 && len(is) > 0:
			return is[rng.IntN(len(is))]
		case n < 9:
			return 0
		default:
			return m.maxFence[k] + 1 + uint64(rng.IntN(3))
		}
	}
	wantLost := func(op string, err error, r *modelRec) {
		t.Helper()
		if r != nil {
			if err != nil {
				fail("%s: %v, want success", op, err)
			}
			return
		}
		if !errors.Is(err, idem.ErrLeaseLost) {
			fail("%s = %v, want idem.ErrLeaseLost", op, err)
		}
	}

	bs, _ := rng.(*bytesSource)
	for i = 0; i < ops && (bs == nil || !bs.done()); i++ {
		k := ks[rng.IntN(len(ks))]
		kn := k[strings.LastIndexByte(k, '/')+1:]
		n := rng.IntN(100)
		switch {
		case n < 35 || (n >= 65 && n < 75 && !isX) || (n >= 75 && n < 88 && !h.fake) ||
			(n >= 88 && n < 97 && !isIn) || (n >= 97 && !isSw):
			fp := fps[rng.IntN(len(fps))]
			if rng.IntN(10) < 6 {
				fp = fps[0] // favour one fingerprint so replays are common
			}
			// Pass a scratch copy and scribble on it afterwards: the store
			// must not retain the caller's buffer.
			in := bytes.Clone(fp) // keeps nil and empty apart
			b, err := s.Begin(ctx, k, in, lease)
			scribble(in)
			stats[b.Outcome.String()+takeoverSuffix(b)]++
			note("Begin(%s, fp %s) = %s, %v", kn, shortFP(fp), describe(b), err)
			if err != nil {
				fail("Begin: %v", err)
			}
			r := m.live(k)
			switch {
			case r == nil:
				if b.Outcome != idem.Acquired || b.Takeover || b.Fence <= m.maxFence[k] {
					fail("Begin on an absent record = %s, want acquired with fence > %d", describe(b), m.maxFence[k])
				}
				m.recs[k] = &modelRec{state: idem.StateInProgress, fp: bytes.Clone(fp), fence: b.Fence, start: m.now, deadline: m.now + lease}
				m.issue(k, b.Fence)
			case !bytes.Equal(r.fp, fp):
				if b.Outcome != idem.Mismatch || b.Fence != 0 || b.Result != nil {
					fail("Begin with fingerprint %s on a record with %s = %s, want mismatch", shortFP(fp), shortFP(r.fp), describe(b))
				}
			case r.state == idem.StateCompleted:
				if b.Outcome != idem.Replay || b.Result == nil || !bytes.Equal(b.Result, r.result) || b.Fence != 0 {
					fail("Begin on a completed record = %s, want replay of %s", describe(b), short(r.result))
				}
				scribble(b.Result)
			case m.now < r.deadline:
				if b.Outcome != idem.InFlight || b.Fence != r.fence || !near(b.LeaseLeft, r.deadline-m.now) {
					fail("Begin on a held record = %s, want in-flight, fence %d, lease left %v", describe(b), r.fence, r.deadline-m.now)
				}
			default:
				if b.Outcome != idem.Acquired || !b.Takeover || b.Fence != r.fence+1 || b.Result != nil {
					fail("Begin on an expired lease = %s, want takeover with fence %d", describe(b), r.fence+1)
				}
				r.fence, r.start, r.deadline = b.Fence, m.now, m.now+lease
				m.issue(k, b.Fence)
			}

		case n < 55:
			f := pickFence(k)
			var res []byte
			if l := rng.IntN(20); l > 0 || rng.IntN(2) == 0 {
				res = make([]byte, l)
				for j := range res {
					res[j] = byte(rng.IntN(256))
				}
			}
			ret := retention
			if h.fake && rng.IntN(3) == 0 {
				ret = retention2
			}
			want := append([]byte{}, res...)
			err := s.Complete(ctx, k, f, res, ret)
			scribble(res)
			note("Complete(%s, fence %d, %s, %v) = %v", kn, f, shortFP(want), ret, err)
			r := m.held(k, f)
			wantLost("Complete", err, r)
			if r != nil {
				stats["completed"]++
				r.state, r.result, r.deadline = idem.StateCompleted, want, m.now+ret
			}

		case n < 65:
			f := pickFence(k)
			err := s.Release(ctx, k, f)
			note("Release(%s, fence %d) = %v", kn, f, err)
			r := m.held(k, f)
			wantLost("Release", err, r)
			if r != nil {
				delete(m.recs, k)
			}

		case n < 75:
			f := pickFence(k)
			d := lease
			if rng.IntN(2) == 0 {
				d = lease2
			}
			err := x.Extend(ctx, k, f, d)
			note("Extend(%s, fence %d, %v) = %v", kn, f, d, err)
			r := m.held(k, f)
			wantLost("Extend", err, r)
			if r != nil {
				r.deadline = m.now + d
			}

		case n < 88:
			d := grid * time.Duration(1+rng.IntN(12))
			if rng.IntN(10) == 0 {
				d = retention + half
				d -= d % grid
			}
			if m.now+d > maxTime {
				note("Advance skipped: time budget spent")
				continue
			}
			h.advance(d)
			m.now += d
			note("Advance(%v)", d)

		case n < 97:
			rec, found, err := in.Get(ctx, k)
			note("Get(%s) = %v %+v, %v", kn, found, rec, err)
			if err != nil {
				fail("Get: %v", err)
			}
			r := m.live(k)
			if (r != nil) != found {
				fail("Get found = %v, want %v", found, r != nil)
			}
			if r == nil {
				continue
			}
			if rec.State != r.state || rec.Fence != r.fence || !bytes.Equal(rec.Fingerprint, r.fp) || !bytes.Equal(rec.Result, r.result) {
				fail("Get = %+v, want state %v fence %d fp %s result %s", rec, r.state, r.fence, shortFP(r.fp), short(r.result))
			}
			if r.state == idem.StateCompleted && rec.Result == nil {
				fail("Get of a completed record: nil Result, want non-nil")
			}
			remaining := max(r.deadline-m.now, 0)
			if h.fake && (!near(rec.Remaining, remaining) || !near(rec.Age, m.now-r.start)) {
				fail("Get Remaining %v, Age %v; want %v, %v", rec.Remaining, rec.Age, remaining, m.now-r.start)
			}

		default:
			removed, err := sw.Sweep(ctx)
			note("Sweep() = %d, %v", removed, err)
			if err != nil || removed < 0 {
				fail("Sweep = %d, %v", removed, err)
			}
			// Sweep must not change any outcome; the model is unchanged.
		}
	}
}

// scribble overwrites b, as a caller reusing its buffer would.
func scribble(b []byte) {
	for i := range b {
		b[i] ^= 0x5a
	}
}

func takeoverSuffix(b idem.Begun) string {
	if b.Takeover {
		return "(takeover)"
	}
	return ""
}

func shortFP(b []byte) string {
	switch {
	case b == nil:
		return "nil"
	case len(b) == 0:
		return "empty"
	case bytes.Equal(b, fpA):
		return "A"
	case bytes.Equal(b, fpB):
		return "B"
	}
	return short(b)
}
