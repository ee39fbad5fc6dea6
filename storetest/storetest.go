package storetest

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
)

// Features declares what the store under test supports and how Run drives
// its clock.
type Features struct {
	// Extend, Sweep, Wait and Inspect declare that the store implements
	// idem.Extender, idem.Sweeper, idem.Waiter and idem.Inspector. Run
	// fails when a declared interface is missing, and runs the matching
	// subtests only when it is declared.
	Extend, Sweep, Wait, Inspect bool

	// Advance moves the clock of every store returned by NewStore forward
	// by d (fake-clock stores). If nil, Run sleeps real time instead, uses
	// fewer and shorter time-dependent checks, and runs every subtest in
	// parallel. When Advance is set, the subtests that advance the clock
	// run one at a time, and the others in parallel afterwards.
	Advance func(d time.Duration)

	// MinLease is the shortest lease the backend honours precisely, and
	// the tolerance Run allows on durations the store reports (LeaseLeft,
	// Record.Remaining, Record.Age). If zero, 1ms. Real-clock runs use
	// leases and retentions of 3×MinLease that they let expire, and sleep
	// at most about 30×MinLease per subtest, the subtests overlapping
	// (about 1.5 s of wall time in all for MinLease = 50ms).
	MinLease time.Duration
}

// NewStore returns a store for one subtest: fresh and empty, or sharing a
// backend with other subtests (Run's keys are unique per subtest and run).
// It registers its own cleanup with t.Cleanup.
type NewStore func(t testing.TB) idem.Store

// Prefix returns a string unique to this call, derived from t.Name(), for
// use as a key prefix, schema or table name by a NewStore that shares one
// server between tests. It consists of [a-z0-9_], starts with a letter and
// is at most 48 bytes long.
func Prefix(t testing.TB) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, c := range strings.ToLower(t.Name()) {
		if b.Len() >= 30 {
			break
		}
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	fmt.Fprintf(&b, "_%016x", rand.Uint64())
	return b.String()
}

// harness carries the normalised features to every subtest.
type harness struct {
	newStore NewStore
	f        Features
	u        time.Duration // MinLease
	fake     bool          // Advance is set

	// Durations used by the subtests.
	long      time.Duration // never expires during a run
	short     time.Duration // a lease or retention a subtest lets expire
	expire    time.Duration // advancing/sleeping this long expires short
	nearShort time.Duration // just before short ends (fake clock only)
}

func newHarness(newStore NewStore, f Features) *harness {
	h := &harness{newStore: newStore, f: f, u: f.MinLease, fake: f.Advance != nil}
	if h.u <= 0 {
		h.u = time.Millisecond
	}
	h.long = time.Hour
	if h.fake {
		h.short = 10 * h.u
		h.expire = h.short + h.u
		h.nearShort = h.short - h.u
	} else {
		h.short = 3 * h.u
		h.expire = h.short + 2*h.u
	}
	return h
}

// advance moves the store clock forward by d: Features.Advance, or a sleep.
func (h *harness) advance(d time.Duration) {
	if h.fake {
		h.f.Advance(d)
		return
	}
	time.Sleep(d)
}

// keys returns n keys unique to this subtest and run. They start with the
// end of t.Name() (at most 64 bytes of it, so that KeyIsolation can build
// 255-byte keys) to help whoever reads a shared backend.
func keys(t testing.TB, n int) []string {
	name := t.Name()
	name = name[max(len(name)-64, 0):]
	base := fmt.Sprintf("%s/%016x/", name, rand.Uint64())
	ks := make([]string, n)
	for i := range ks {
		ks[i] = fmt.Sprintf("%s%d", base, i)
	}
	return ks
}

// key returns one key unique to this subtest and run.
func key(t testing.TB) string { return keys(t, 1)[0] }

// Fingerprints and results used across the subtests.
var (
	fpA = idem.Fingerprint([]byte("request A"))
	fpB = idem.Fingerprint([]byte("request B"))
)

// Run checks that the store honours the contract documented on idem.Store
// and on the optional interfaces declared in f. Each check is a named
// subtest; see the package documentation for the list and for what Run
// assumes about the store.
//
// Most subtests call t.Parallel, so they run after the test function that
// called Run has returned: release shared resources (clients, servers,
// clocks) with t.Cleanup, not with defer.
func Run(t *testing.T, newStore NewStore, f Features) {
	t.Helper()
	h := newHarness(newStore, f)
	s := newStore(t)
	for _, c := range []struct {
		claimed bool
		name    string
		ok      bool
	}{
		{f.Extend, "idem.Extender", is[idem.Extender](s)},
		{f.Sweep, "idem.Sweeper", is[idem.Sweeper](s)},
		{f.Wait, "idem.Waiter", is[idem.Waiter](s)},
		{f.Inspect, "idem.Inspector", is[idem.Inspector](s)},
	} {
		if c.claimed && !c.ok {
			t.Errorf("Features declares %s but %T does not implement it", c.name, s)
		}
	}
	if t.Failed() {
		return
	}
	for _, c := range cases(f) {
		t.Run(c.name, func(t *testing.T) {
			if !c.timed || !h.fake {
				t.Parallel()
			}
			c.run(t, h)
		})
	}
}

func is[I any](s idem.Store) bool {
	_, ok := s.(I)
	return ok
}

// testCase is one named subtest. timed marks subtests that advance the
// clock; with a fake clock they must not run beside others.
type testCase struct {
	name  string
	timed bool
	run   func(t *testing.T, h *harness)
}

func cases(f Features) []testCase {
	cs := []testCase{
		{"AcquireNew", false, testAcquireNew},
		{"AcquireHeld", true, testAcquireHeld},
		{"AcquireCompleted", false, testAcquireCompleted},
		{"Mismatch", true, testMismatch},
		{"TakeoverAfterLease", true, testTakeoverAfterLease},
		{"Fencing", true, testFencing},
		{"ReleaseThenReacquire", false, testReleaseThenReacquire},
		{"RetentionExpiry", true, testRetentionExpiry},
		{"ConcurrentBegin", false, testConcurrentBegin},
		{"ConcurrentCompleteVsTakeover", true, testConcurrentCompleteVsTakeover},
		{"KeyIsolation", false, testKeyIsolation},
		{"Values", false, testValues},
		{"CanceledContext", false, testCanceledContext},
	}
	if f.Extend {
		cs = append(cs, testCase{"Extend", true, testExtend})
	}
	if f.Sweep {
		cs = append(cs, testCase{"Sweep", true, testSweep})
	}
	if f.Wait {
		cs = append(cs, testCase{"Wait", false, testWait})
	}
	if f.Inspect {
		cs = append(cs, testCase{"Inspect", true, testInspect})
	}
	cs = append(cs, testCase{"Model", true, testModel})
	return cs
}

// Helpers. Each reports the caller's line and stops the subtest on failure.

func describe(b idem.Begun) string {
	return fmt.Sprintf("{%v fence=%d takeover=%v leaseLeft=%v result=%s}",
		b.Outcome, b.Fence, b.Takeover, b.LeaseLeft, short(b.Result))
}

// short formats b for failure messages.
func short(b []byte) string {
	if b == nil {
		return "nil"
	}
	if len(b) > 24 {
		return fmt.Sprintf("%q…(%d bytes)", b[:24], len(b))
	}
	return fmt.Sprintf("%q", b)
}

func begin(t testing.TB, s idem.Store, key string, fp []byte, lease time.Duration) idem.Begun {
	t.Helper()
	b, err := s.Begin(context.Background(), key, fp, lease)
	if err != nil {
		t.Fatalf("Begin(%q): %v", key, err)
	}
	return b
}

// acquire begins key and requires a fresh (not takeover) acquisition.
func acquire(t testing.TB, s idem.Store, key string, fp []byte, lease time.Duration) uint64 {
	t.Helper()
	b := begin(t, s, key, fp, lease)
	if b.Outcome != idem.Acquired || b.Takeover || b.Fence == 0 || b.Result != nil {
		t.Fatalf("Begin(%q) on a new key = %s, want acquired, fresh, fence > 0, no result", key, describe(b))
	}
	return b.Fence
}

// wantAcquired requires an acquisition: a takeover with fence prev+1 when
// takeover, otherwise a fresh one with a fence above prev.
func wantAcquired(t testing.TB, b idem.Begun, takeover bool, prev uint64) {
	t.Helper()
	if b.Outcome != idem.Acquired || b.Takeover != takeover || b.Result != nil {
		t.Fatalf("Begin = %s, want acquired with takeover=%v", describe(b), takeover)
	}
	if takeover && b.Fence != prev+1 {
		t.Fatalf("takeover fence = %d, want previous fence %d + 1", b.Fence, prev)
	}
	if !takeover && b.Fence <= prev {
		t.Fatalf("fresh fence = %d, want > previous fence %d", b.Fence, prev)
	}
}

// wantInFlight requires InFlight with the holder's fence and a lease left in
// (0, max].
func (h *harness) wantInFlight(t testing.TB, b idem.Begun, fence uint64, max time.Duration) {
	t.Helper()
	if b.Outcome != idem.InFlight || b.Fence != fence || b.Takeover || b.Result != nil {
		t.Fatalf("Begin = %s, want in-flight with the holder's fence %d", describe(b), fence)
	}
	if b.LeaseLeft <= 0 || b.LeaseLeft > max+h.u {
		t.Fatalf("in-flight LeaseLeft = %v, want in (0, %v]", b.LeaseLeft, max)
	}
}

func wantReplay(t testing.TB, b idem.Begun, result []byte) {
	t.Helper()
	if b.Outcome != idem.Replay || b.Fence != 0 || b.Takeover {
		t.Fatalf("Begin = %s, want replay with fence 0", describe(b))
	}
	if b.Result == nil {
		t.Fatalf("replay Result is nil, want non-nil %s", short(result))
	}
	if !bytes.Equal(b.Result, result) {
		t.Fatalf("replay Result = %s, want %s", short(b.Result), short(result))
	}
}

// wantMismatch requires Mismatch with no fence and no result: a result here
// would hand one request's stored response to a different request.
func wantMismatch(t testing.TB, b idem.Begun) {
	t.Helper()
	if b.Outcome != idem.Mismatch || b.Fence != 0 || b.Takeover || b.Result != nil {
		t.Fatalf("Begin = %s, want mismatch with fence 0 and no result", describe(b))
	}
}

func complete(t testing.TB, s idem.Store, key string, fence uint64, result []byte, retention time.Duration) {
	t.Helper()
	if err := s.Complete(context.Background(), key, fence, result, retention); err != nil {
		t.Fatalf("Complete(%q, fence %d): %v", key, fence, err)
	}
}

func release(t testing.TB, s idem.Store, key string, fence uint64) {
	t.Helper()
	if err := s.Release(context.Background(), key, fence); err != nil {
		t.Fatalf("Release(%q, fence %d): %v", key, fence, err)
	}
}

func wantLeaseLost(t testing.TB, op string, err error) {
	t.Helper()
	if !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("%s = %v, want an error matching idem.ErrLeaseLost", op, err)
	}
}

// refused runs Complete, Release and Extend (if supported) with fence and
// requires ErrLeaseLost from each.
func (h *harness) refused(t testing.TB, s idem.Store, key string, fence uint64) {
	t.Helper()
	ctx := context.Background()
	wantLeaseLost(t, fmt.Sprintf("Complete(fence %d)", fence), s.Complete(ctx, key, fence, []byte("stale"), h.long))
	wantLeaseLost(t, fmt.Sprintf("Release(fence %d)", fence), s.Release(ctx, key, fence))
	if x, ok := s.(idem.Extender); ok && h.f.Extend {
		wantLeaseLost(t, fmt.Sprintf("Extend(fence %d)", fence), x.Extend(ctx, key, fence, h.long))
	}
}

// get returns key's record via Inspector, or ok == false when the store is
// not declared an Inspector.
func (h *harness) get(t testing.TB, s idem.Store, key string) (rec idem.Record, found, ok bool) {
	t.Helper()
	in, isIn := s.(idem.Inspector)
	if !h.f.Inspect || !isIn {
		return idem.Record{}, false, false
	}
	rec, found, err := in.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return rec, found, true
}
