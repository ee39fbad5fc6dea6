package filestore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/storetest"
)

func TestBudget(t *testing.T) {
	c := newFakeClock()
	storetest.RunBudget(t, func(t testing.TB, b storetest.Budget) idem.Store {
		return open(t, Options{
			Now:                c.Now,
			NoSync:             true,
			MaxRecords:         b.MaxRecords,
			MaxBytes:           b.MaxBytes,
			MaxRecordsPerScope: b.MaxRecordsPerScope,
			MaxBytesPerScope:   b.MaxBytesPerScope,
		})
	}, c.Advance)
}

// TestBudgetReopen checks that the byte and per-scope counts are rebuilt
// when the file is opened again, also when it was written without limits.
func TestBudgetReopen(t *testing.T) {
	ctx := context.Background()
	c := newFakeClock()
	path := filepath.Join(t.TempDir(), "idem.db")
	const quota = 4
	res := make([]byte, 10_000)
	// Written without limits: 3 records of scope a (2 completed with 10 kB),
	// 1 of scope b.
	s, err := Open(path, Options{Now: c.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		k := idem.RecordKey("a", fmt.Sprint(i))
		b, err := s.Begin(ctx, k, nil, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := s.Complete(ctx, k, b.Fence, res, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Begin(ctx, idem.RecordKey("b", "0"), nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopen := func(o Options) *Store {
		t.Helper()
		o.Now, o.NoSync = c.Now, true
		s, err := Open(path, o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	begin := func(s *Store, scope, key string) error {
		_, err := s.Begin(ctx, idem.RecordKey(scope, key), nil, time.Minute)
		return err
	}

	s = reopen(Options{MaxRecordsPerScope: quota})
	if err := begin(s, "a", "3"); err != nil { // a: 4th record
		t.Fatalf("Begin within the quota after reopen = %v", err)
	}
	if err := begin(s, "a", "4"); err == nil {
		t.Fatal("scope a took a 5th record after reopen: counts not rebuilt")
	}
	if err := begin(s, "b", "1"); err != nil {
		t.Fatalf("scope b refused = %v", err)
	}
	s.Close()

	// Bytes: a holds 2×10 kB + 2 in progress; a budget of 25 kB for the
	// scope is already used up beyond one more in-progress record.
	s = reopen(Options{MaxBytesPerScope: 2*10_000 + 3*CompletionReserve})
	if err := begin(s, "a", "5"); err == nil {
		t.Fatalf("scope a took a record beyond its byte quota after reopen (bytes %d)", s.bytes.Load())
	}
	if err := begin(s, "b", "2"); err != nil {
		t.Fatalf("scope b refused = %v", err)
	}
	want := s.bytes.Load()
	s.Close()
	s = reopen(Options{MaxBytes: 1 << 30})
	defer s.Close()
	if got := s.bytes.Load(); got != want {
		t.Fatalf("bytes after reopen = %d, want %d", got, want)
	}
	// Released and swept records give their bytes back, and the count after
	// a reopen matches the running count.
	c.Advance(2 * time.Hour)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	got := s.bytes.Load()
	s.Close()
	s = reopen(Options{MaxBytes: 1 << 30})
	defer s.Close()
	if s.bytes.Load() != got {
		t.Fatalf("bytes after sweep %d, after reopen %d", got, s.bytes.Load())
	}
}
