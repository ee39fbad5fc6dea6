package filestore

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		// Re-executed by TestKill9 as the writer that gets SIGKILLed.
		os.Exit(crashChild())
	}
	goleak.VerifyTestMain(m)
}

// fakeClock is a settable clock shared by the stores of one test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// open opens a store in a fresh file under t.TempDir and closes it at
// cleanup.
func open(t testing.TB, o Options) *Store {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "idem.db"), o)
}

func openAt(t testing.TB, path string, o Options) *Store {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// checkpointNow writes the overlay into the database, as the leader does
// when the log fills up.
func checkpointNow(t testing.TB, s *Store) {
	t.Helper()
	if err := s.write(context.Background(), func(w *wtx) error { w.checkpoint = true; return nil }); err != nil {
		t.Fatal(err)
	}
	s.omu.RLock()
	n := len(s.overlay)
	s.omu.RUnlock()
	if n != 0 {
		t.Fatalf("%d records left in the overlay after a checkpoint", n)
	}
}
