package filestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
)

var (
	fp1 = idem.Fingerprint([]byte("one"))
	fp2 = idem.Fingerprint([]byte("two"))
)

func mustBegin(t *testing.T, s *Store, key string, fp []byte, lease time.Duration, want idem.BeginOutcome) idem.Begun {
	t.Helper()
	b, err := s.Begin(context.Background(), key, fp, lease)
	if err != nil {
		t.Fatalf("Begin(%q): %v", key, err)
	}
	if b.Outcome != want {
		t.Fatalf("Begin(%q) = %v (%+v), want %v", key, b.Outcome, b, want)
	}
	return b
}

func TestReopenKeepsRecords(t *testing.T) {
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "idem.db")
	ctx := context.Background()
	s, err := Open(path, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	held := mustBegin(t, s, "held", fp1, time.Minute, idem.Acquired)
	done := mustBegin(t, s, "done", fp1, time.Minute, idem.Acquired)
	if err := s.Complete(ctx, "done", done.Fence, []byte("result\x00bytes"), time.Hour); err != nil {
		t.Fatal(err)
	}
	gone := mustBegin(t, s, "gone", fp1, time.Minute, idem.Acquired)
	if err := s.Release(ctx, "gone", gone.Fence); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(10 * time.Second)
	s = openAt(t, path, Options{Now: clock.Now})
	if got := s.Len(); got != 2 {
		t.Fatalf("Len after reopen = %d, want 2", got)
	}
	b := mustBegin(t, s, "held", fp1, time.Minute, idem.InFlight)
	if b.Fence != held.Fence || b.LeaseLeft != 50*time.Second {
		t.Fatalf("held after reopen = %+v, want fence %d with 50s left", b, held.Fence)
	}
	b = mustBegin(t, s, "done", fp1, time.Minute, idem.Replay)
	if !bytes.Equal(b.Result, []byte("result\x00bytes")) {
		t.Fatalf("replay after reopen = %q", b.Result)
	}
	mustBegin(t, s, "done", fp2, time.Minute, idem.Mismatch)
	// The clock has not moved past gone's first fence in microseconds, yet
	// the new fence is higher: the fence mark survived the restart.
	clock.Advance(-time.Hour)
	b = mustBegin(t, s, "gone", fp1, time.Minute, idem.Acquired)
	if b.Fence <= max(gone.Fence, done.Fence, held.Fence) {
		t.Fatalf("fresh fence after reopen = %d, want above %d", b.Fence, max(gone.Fence, done.Fence, held.Fence))
	}
	// The held lease still ends at its stored instant: 50s from the first
	// reopen, 1h10s later after the clock stepped back.
	clock.Advance(time.Hour + 50*time.Second)
	b = mustBegin(t, s, "held", fp1, time.Minute, idem.Acquired)
	if !b.Takeover || b.Fence != held.Fence+1 {
		t.Fatalf("takeover after reopen = %+v, want fence %d", b, held.Fence+1)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idem.db")
	s := openAt(t, path, Options{})
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if el := time.Since(start); el < 40*time.Millisecond || el > 5*time.Second {
		t.Fatalf("second Open gave up after %v, want about 100ms", el)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, bytes.Repeat([]byte("not a database "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	db, err := bolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(metaBucket)
		if err != nil {
			return err
		}
		return b.Put(metaFormat, u64(99))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, junk, other, filepath.Join(dir, "missing", "idem.db")} {
		if s, err := Open(path, Options{LockTimeout: 50 * time.Millisecond}); err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded, want an error", path)
		}
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "idem.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := mustBegin(t, s, "k", fp1, time.Hour, idem.Acquired)
	waited := make(chan error, 1)
	go func() { waited <- s.Wait(ctx, "k", time.Hour) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait blocked across Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Wait")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, ErrClosed) || !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Errorf("%s after Close = %v, want ErrClosed and idem.ErrStoreUnavailable", op, err)
		}
	}
	_, err = s.Begin(ctx, "k2", fp1, time.Hour)
	check("Begin", err)
	check("Complete", s.Complete(ctx, "k", b.Fence, nil, time.Hour))
	check("Release", s.Release(ctx, "k", b.Fence))
	check("Extend", s.Extend(ctx, "k", b.Fence, time.Hour))
	check("Wait", s.Wait(ctx, "k", time.Hour))
	_, _, err = s.Get(ctx, "k")
	check("Get", err)
	_, err = s.Sweep(ctx)
	check("Sweep", err)
}

// TestReadsDoNotCommit checks that outcomes that change nothing are answered
// from a snapshot, without a write transaction (and so without a sync).
func TestReadsDoNotCommit(t *testing.T) {
	s := open(t, Options{})
	ctx := context.Background()
	held := mustBegin(t, s, "held", fp1, time.Hour, idem.Acquired)
	done := mustBegin(t, s, "done", fp1, time.Hour, idem.Acquired)
	if err := s.Complete(ctx, "done", done.Fence, []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	before := s.commits.Load()
	if before != 3 {
		t.Fatalf("3 changes made %d commits", before)
	}
	mustBegin(t, s, "held", fp1, time.Hour, idem.InFlight)
	mustBegin(t, s, "held", fp2, time.Hour, idem.Mismatch)
	mustBegin(t, s, "done", fp1, time.Hour, idem.Replay)
	mustBegin(t, s, "done", fp2, time.Hour, idem.Mismatch)
	for _, err := range []error{
		s.Complete(ctx, "held", held.Fence+1, nil, time.Hour),
		s.Release(ctx, "done", done.Fence),
		s.Extend(ctx, "missing", 1, time.Hour),
	} {
		if !errors.Is(err, idem.ErrLeaseLost) {
			t.Fatalf("stale fence = %v, want ErrLeaseLost", err)
		}
	}
	if _, _, err := s.Get(ctx, "done"); err != nil {
		t.Fatal(err)
	}
	if got := s.commits.Load(); got != before {
		t.Fatalf("read-only outcomes made %d commits", got-before)
	}
}

// TestGroupCommit checks that concurrent writers share commits.
func TestGroupCommit(t *testing.T) {
	s := open(t, Options{MaxBatchDelay: 5 * time.Millisecond})
	const n = 32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k := "k" + strconv.Itoa(i)
			b, err := s.Begin(context.Background(), k, fp1, time.Hour)
			if err != nil || b.Outcome != idem.Acquired {
				t.Errorf("Begin(%s) = %+v, %v", k, b, err)
				return
			}
			if err := s.Complete(context.Background(), k, b.Fence, []byte(k), time.Hour); err != nil {
				t.Errorf("Complete(%s): %v", k, err)
			}
		})
	}
	wg.Wait()
	if c := s.commits.Load(); c >= n {
		t.Fatalf("%d concurrent writers (%d writes) made %d commits; want them shared", n, 2*n, c)
	} else {
		t.Logf("%d writes in %d commits", 2*n, c)
	}
	for i := range n {
		k := "k" + strconv.Itoa(i)
		if b := mustBegin(t, s, k, fp1, time.Hour, idem.Replay); string(b.Result) != k {
			t.Fatalf("replay of %s = %q", k, b.Result)
		}
	}
}

// TestCanceledWhileQueued checks that a write whose context ends while it
// waits for its batch changes nothing and reports the context's error.
func TestCanceledWhileQueued(t *testing.T) {
	s := open(t, Options{MaxBatchDelay: 300 * time.Millisecond})
	leader := make(chan error, 1)
	go func() {
		_, err := s.Begin(context.Background(), "leader", fp1, time.Hour)
		leader <- err
	}()
	time.Sleep(50 * time.Millisecond) // the leader is now waiting for its batch
	ctx, cancel := context.WithCancel(context.Background())
	follower := make(chan error, 1)
	go func() {
		_, err := s.Begin(ctx, "follower", fp1, time.Hour)
		follower <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-leader; err != nil {
		t.Fatalf("leader Begin: %v", err)
	}
	if err := <-follower; !errors.Is(err, context.Canceled) {
		t.Fatalf("follower Begin canceled while queued = %v, want context.Canceled", err)
	}
	if _, ok, _ := s.Get(context.Background(), "follower"); ok {
		t.Fatal("a canceled Begin created a record")
	}
	mustBegin(t, s, "leader", fp1, time.Hour, idem.InFlight)
}

func TestMaxRecords(t *testing.T) {
	clock := newFakeClock()
	s := open(t, Options{Now: clock.Now, MaxRecords: 2})
	ctx := context.Background()
	a := mustBegin(t, s, "a", fp1, time.Hour, idem.Acquired)
	if err := s.Complete(ctx, "a", a.Fence, []byte("a"), time.Minute); err != nil {
		t.Fatal(err)
	}
	mustBegin(t, s, "b", fp1, time.Hour, idem.Acquired)
	_, err := s.Begin(ctx, "c", fp1, time.Hour)
	if !errors.Is(err, idem.ErrStoreFull) || !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin on a full store = %v, want ErrStoreFull", err)
	}
	// Keys that have a record are still served.
	mustBegin(t, s, "a", fp1, time.Hour, idem.Replay)
	mustBegin(t, s, "b", fp1, time.Hour, idem.InFlight)
	// Once a record dies, Begin reclaims its room.
	clock.Advance(2 * time.Minute)
	mustBegin(t, s, "c", fp1, time.Hour, idem.Acquired)
	if s.Len() != 2 {
		t.Fatalf("Len = %d, want 2", s.Len())
	}
	_, err = s.Begin(ctx, "d", fp1, time.Hour)
	if !errors.Is(err, idem.ErrStoreFull) {
		t.Fatalf("Begin on a full store of live records = %v, want ErrStoreFull", err)
	}
}

func TestAbandoned(t *testing.T) {
	clock := newFakeClock()
	s := open(t, Options{Now: clock.Now, Abandon: time.Hour})
	ctx := context.Background()
	b := mustBegin(t, s, "k", fp1, time.Minute, idem.Acquired)
	clock.Advance(time.Minute + 59*time.Minute)
	// Lapsed but not yet abandoned: still fences and mismatches.
	mustBegin(t, s, "k", fp2, time.Minute, idem.Mismatch)
	if n, err := s.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("Sweep of a lapsed lease = %d, %v; want 0", n, err)
	}
	clock.Advance(time.Minute)
	if _, ok, _ := s.Get(ctx, "k"); ok {
		t.Fatal("Get found an abandoned record")
	}
	if err := s.Complete(ctx, "k", b.Fence, nil, time.Hour); !errors.Is(err, idem.ErrLeaseLost) {
		t.Fatalf("Complete of an abandoned record = %v, want ErrLeaseLost", err)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("Sweep of an abandoned record = %d, %v; want 1", n, err)
	}
	nb := mustBegin(t, s, "k", fp2, time.Minute, idem.Acquired)
	if nb.Fence <= b.Fence || nb.Takeover {
		t.Fatalf("Begin after abandonment = %+v, want a fresh fence above %d", nb, b.Fence)
	}
}

// TestSweepBatches sweeps more dead records than one batch holds, among
// live ones, and checks that only the dead ones go.
func TestSweepBatches(t *testing.T) {
	clock := newFakeClock()
	s := open(t, Options{Now: clock.Now, SweepBatch: 7, NoSync: true})
	ctx := context.Background()
	const n = 100
	for i := range n {
		k := "k" + strconv.Itoa(i)
		b := mustBegin(t, s, k, fp1, time.Hour, idem.Acquired)
		ret := time.Minute
		if i%3 == 0 {
			ret = 3 * time.Hour
		}
		if err := s.Complete(ctx, k, b.Fence, []byte(k), ret); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Minute)
	before := s.commits.Load()
	got, err := s.Sweep(ctx)
	if err != nil || got != n-34 {
		t.Fatalf("Sweep = %d, %v; want %d", got, err, n-34)
	}
	if c := s.commits.Load() - before; c < (n-34)/7 {
		t.Fatalf("Sweep of %d records in batches of 7 made %d commits", got, c)
	}
	if s.Len() != 34 {
		t.Fatalf("Len after Sweep = %d, want 34", s.Len())
	}
	for i := range n {
		k := "k" + strconv.Itoa(i)
		want := idem.Acquired
		if i%3 == 0 {
			want = idem.Replay
		}
		mustBegin(t, s, k, fp1, time.Hour, want)
	}
}

// TestCorruptRecord checks that a damaged record fails closed for its own
// key only.
func TestCorruptRecord(t *testing.T) {
	s := open(t, Options{})
	ctx := context.Background()
	b := mustBegin(t, s, "bad", fp1, time.Hour, idem.Acquired)
	mustBegin(t, s, "good", fp1, time.Hour, idem.Acquired)
	checkpointNow(t, s) // the records leave the overlay for the database
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).Put([]byte("bad"), []byte("garbage"))
	}); err != nil {
		t.Fatal(err)
	}
	wantCorrupt := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, ErrCorrupt) || !errors.Is(err, idem.ErrStoreUnavailable) {
			t.Errorf("%s of a corrupt record = %v, want ErrCorrupt and idem.ErrStoreUnavailable", op, err)
		}
	}
	_, err := s.Begin(ctx, "bad", fp1, time.Hour)
	wantCorrupt("Begin", err)
	wantCorrupt("Complete", s.Complete(ctx, "bad", b.Fence, nil, time.Hour))
	wantCorrupt("Release", s.Release(ctx, "bad", b.Fence))
	_, _, err = s.Get(ctx, "bad")
	wantCorrupt("Get", err)
	mustBegin(t, s, "good", fp1, time.Hour, idem.InFlight)
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatalf("Sweep with a corrupt record: %v", err)
	}
}

func TestInvalidInput(t *testing.T) {
	s := open(t, Options{NoSync: true})
	ctx := context.Background()
	for _, k := range []string{"", string(make([]byte, bolt.MaxKeySize+1))} {
		if _, err := s.Begin(ctx, k, fp1, time.Hour); !errors.Is(err, idem.ErrInvalidKey) {
			t.Errorf("Begin(key of %d bytes) = %v, want ErrInvalidKey", len(k), err)
		}
		if err := s.Complete(ctx, k, 1, nil, time.Hour); !errors.Is(err, idem.ErrInvalidKey) {
			t.Errorf("Complete(key of %d bytes) = %v, want ErrInvalidKey", len(k), err)
		}
	}
	k := string(bytes.Repeat([]byte{0xff, 0}, bolt.MaxKeySize/2))
	mustBegin(t, s, k, nil, time.Hour, idem.Acquired)
	mustBegin(t, s, k, []byte{}, time.Hour, idem.InFlight)
}

// TestCommitPanic checks that a panic inside a commit fails that batch only:
// the writers queued behind it and later writes still go through.
func TestCommitPanic(t *testing.T) {
	s := open(t, Options{NoSync: true})
	ctx := context.Background()
	err := s.write(ctx, func(w *wtx) error {
		if err := w.put([]byte("half"), &record{state: idem.StateInProgress, fence: 1, fp: []byte{}, result: []byte{}}, nil); err != nil {
			return err
		}
		panic("boom")
	})
	if err == nil {
		t.Fatal("a panicking commit reported success")
	}
	if _, ok, err := s.Get(ctx, "half"); ok || err != nil {
		t.Fatalf("the panicking commit's write is visible: %v, %v", ok, err)
	}
	if s.Len() != 0 {
		t.Fatalf("Len after a rolled-back commit = %d", s.Len())
	}
	b := mustBegin(t, s, "after", fp1, time.Hour, idem.Acquired)
	if err := s.Complete(ctx, "after", b.Fence, []byte("ok"), time.Hour); err != nil {
		t.Fatal(err)
	}
}

// TestWaitLeavesNothing checks that every way a Wait ends removes its
// registration: woken, timed out, canceled, or on a key with no record.
func TestWaitLeavesNothing(t *testing.T) {
	s := open(t, Options{NoSync: true})
	ctx := context.Background()
	b := mustBegin(t, s, "k", fp1, time.Hour, idem.Acquired)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := s.Wait(ctx, "k", 10*time.Second); err != nil {
				t.Errorf("Wait: %v", err)
			}
		})
	}
	for range 4 {
		wg.Go(func() { s.Wait(ctx, "k", time.Millisecond) })
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Millisecond)
			defer cancel()
			s.Wait(cctx, "k", time.Hour)
		})
		wg.Go(func() { s.Wait(ctx, "missing", time.Hour) })
	}
	time.Sleep(50 * time.Millisecond)
	if err := s.Complete(ctx, "k", b.Fence, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s.wmu.Lock()
	n := len(s.waits)
	s.wmu.Unlock()
	if n != 0 {
		t.Fatalf("%d wait registrations left after every Wait returned", n)
	}
}
