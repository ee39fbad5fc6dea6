package storetest_test

import (
	"context"
	"github.com/idemkit/idem/internal/leakcheck"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/storetest"
)

// clock is a fake clock shared by the stores of one Run.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// minimal hides every optional interface of the store it wraps.
type minimal struct{ s idem.Store }

func (m minimal) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	return m.s.Begin(ctx, key, fp, lease)
}

func (m minimal) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	return m.s.Complete(ctx, key, fence, result, retention)
}

func (m minimal) Release(ctx context.Context, key string, fence uint64) error {
	return m.s.Release(ctx, key, fence)
}

// TestMinimalStore runs the suite on a store with no optional interfaces:
// the required subtests must not depend on them.
func TestMinimalStore(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	storetest.Run(t, func(testing.TB) idem.Store {
		return minimal{memstore.New(memstore.Options{Now: c.Now})}
	}, storetest.Features{Advance: c.Advance})
}

func TestPrefix(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9_]{0,47}$`)
	seen := map[string]bool{}
	for range 100 {
		p := storetest.Prefix(t)
		if !valid.MatchString(p) {
			t.Fatalf("Prefix = %q, want [a-z][a-z0-9_]*, at most 48 bytes", p)
		}
		if seen[p] {
			t.Fatalf("Prefix returned %q twice", p)
		}
		seen[p] = true
	}
	t.Run("a very long subtest name with Ünïcode and/slashes/that goes on and on", func(t *testing.T) {
		if p := storetest.Prefix(t); !valid.MatchString(p) {
			t.Fatalf("Prefix = %q", p)
		}
	})
}

// broken wraps a memstore with one deliberate contract violation, selected
// by name. TestRunDetectsBrokenStores checks that Run fails for each.
type broken struct {
	*memstore.Store
	bug string
}

func (b *broken) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	switch b.bug {
	case "ignore-fingerprint":
		fp = nil
	case "ignore-context":
		ctx = context.Background()
	case "check-then-act":
		// A non-atomic Begin: two callers can both see no record.
		if _, ok, _ := b.Get(ctx, key); !ok {
			time.Sleep(time.Millisecond)
			bg, err := b.Store.Begin(ctx, key, fp, lease)
			if err == nil && bg.Outcome == idem.InFlight {
				bg = idem.Begun{Outcome: idem.Acquired, Fence: bg.Fence}
			}
			return bg, err
		}
	}
	bg, err := b.Store.Begin(ctx, key, fp, lease)
	if b.bug == "nil-empty-replay" && bg.Outcome == idem.Replay && len(bg.Result) == 0 {
		bg.Result = nil
	}
	return bg, err
}

func (b *broken) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	switch b.bug {
	case "complete-ignores-fence":
		if rec, ok, _ := b.Get(ctx, key); ok {
			fence = rec.Fence
		}
	case "retention-too-long":
		retention *= 1000
	}
	return b.Store.Complete(ctx, key, fence, result, retention)
}

func (b *broken) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	if b.bug == "extend-noop" {
		return nil
	}
	return b.Store.Extend(ctx, key, fence, lease)
}

func (b *broken) Sweep(ctx context.Context) (int, error) {
	n, err := b.Store.Sweep(ctx)
	if b.bug == "sweep-uncounted" {
		n = 0
	}
	return n, err
}

const brokenEnv = "STORETEST_BROKEN_BUG"

// TestBrokenStoreHelper runs the suite on a broken store when started by
// TestRunDetectsBrokenStores; otherwise it does nothing.
func TestBrokenStoreHelper(t *testing.T) {
	bug := os.Getenv(brokenEnv)
	if bug == "" {
		t.Skip("helper for TestRunDetectsBrokenStores")
	}
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	f := storetest.Features{Extend: true, Sweep: true, Inspect: true, Advance: c.Advance}
	if bug == "claims-missing-interface" {
		storetest.Run(t, func(testing.TB) idem.Store {
			return minimal{memstore.New(memstore.Options{Now: c.Now})}
		}, f)
		return
	}
	storetest.Run(t, func(testing.TB) idem.Store {
		return &broken{memstore.New(memstore.Options{Now: c.Now}), bug}
	}, f)
}

// TestRunDetectsBrokenStores checks that the suite can fail: each broken
// store must fail the named subtests.
func TestRunDetectsBrokenStores(t *testing.T) {
	if os.Getenv(brokenEnv) != "" {
		t.Skip("running as the helper")
	}
	for _, c := range []struct {
		bug  string
		want []string // subtests that must fail
	}{
		{"ignore-fingerprint", []string{"Mismatch", "KeyIsolation", "Model"}},
		{"ignore-context", []string{"CanceledContext"}},
		{"check-then-act", []string{"ConcurrentBegin"}},
		{"nil-empty-replay", []string{"Values"}},
		{"complete-ignores-fence", []string{"Fencing", "Model"}},
		{"retention-too-long", []string{"RetentionExpiry", "Sweep"}},
		{"extend-noop", []string{"Extend"}},
		{"sweep-uncounted", []string{"Sweep"}},
		{"claims-missing-interface", []string{"idem.Extender", "idem.Sweeper", "idem.Inspector"}},
	} {
		t.Run(c.bug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStoreHelper$", "-test.count=1")
			cmd.Env = append(os.Environ(), brokenEnv+"="+c.bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("Run passed a store with bug %q:\n%s", c.bug, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), "--- FAIL: TestBrokenStoreHelper/"+w) &&
					!strings.Contains(string(out), "Features declares "+w+" but") {
					t.Errorf("bug %q: subtest %s did not fail; output:\n%s", c.bug, w, out)
				}
			}
		})
	}
}

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
