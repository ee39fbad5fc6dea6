package filestore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// blockingWrite starts a write whose apply signals started and then blocks
// until release is called; release returns the write's result.
func blockingWrite(t *testing.T, s *Store) (started <-chan struct{}, release func() error) {
	t.Helper()
	start, unblock, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- s.write(context.Background(), func(w *wtx) error {
			close(start)
			<-unblock
			return nil
		})
	}()
	var once sync.Once
	release = func() error {
		once.Do(func() { close(unblock) })
		return <-done
	}
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	return start, release
}

// stallLeader starts a blocking write and waits until it is inside its
// commit: from then on every other write queues behind it.
func stallLeader(t *testing.T, s *Store) (release func() error) {
	t.Helper()
	started, release := blockingWrite(t, s)
	<-started
	return release
}

// waitQueued waits until n writes are queued behind the running commit.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.qmu.Lock()
		got := len(s.queue)
		s.qmu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkIdle checks that no commit runs and nothing is queued.
func checkIdle(t *testing.T, s *Store) {
	t.Helper()
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if s.busy || len(s.queue) != 0 {
		t.Fatalf("after every write returned: busy=%v, %d queued", s.busy, len(s.queue))
	}
}

// TestQueuedWriterHonoursContext checks that writes queued behind a stalled
// commit return their context's error as soon as it ends, without waiting
// for the commit, change nothing, and leave the writes queued with them
// unharmed.
func TestQueuedWriterHonoursContext(t *testing.T) {
	s := open(t, Options{NoSync: true})
	bg := context.Background()
	held := mustBegin(t, s, "held", fp1, time.Hour, idem.Acquired)
	release := stallLeader(t, s)

	bctx, bcancel := context.WithCancel(bg)
	defer bcancel()
	begun := make(chan error, 1)
	go func() {
		_, err := s.Begin(bctx, "canceled-begin", fp1, time.Hour)
		begun <- err
	}()
	waitQueued(t, s, 1)
	kept := make(chan error, 1)
	go func() {
		_, err := s.Begin(bg, "kept", fp1, time.Hour)
		kept <- err
	}()
	waitQueued(t, s, 2)
	cctx, ccancel := context.WithTimeout(bg, time.Hour)
	defer ccancel()
	completed := make(chan error, 1)
	go func() { completed <- s.Complete(cctx, "held", held.Fence, []byte("r"), time.Hour) }()
	waitQueued(t, s, 3)

	// The commit ahead is still stalled: only the contexts can end these.
	bcancel()
	select {
	case err := <-begun:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("queued Begin whose context was canceled = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a queued Begin whose context was canceled waited for the stalled commit")
	}
	ccancel()
	select {
	case err := <-completed:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("queued Complete whose context was canceled = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a queued Complete whose context was canceled waited for the stalled commit")
	}
	waitQueued(t, s, 1) // only "kept" is left
	select {
	case err := <-kept:
		t.Fatalf("a queued Begin returned (%v) before the stalled commit ended", err)
	default:
	}

	if err := release(); err != nil {
		t.Fatalf("stalled write: %v", err)
	}
	if err := <-kept; err != nil {
		t.Fatalf("Begin queued with the canceled writes: %v", err)
	}
	checkIdle(t, s)
	if _, ok, err := s.Get(bg, "canceled-begin"); ok || err != nil {
		t.Fatalf("the canceled Begin left a record (%v, %v)", ok, err)
	}
	if r, ok, err := s.Get(bg, "held"); err != nil || !ok || r.State != idem.StateInProgress {
		t.Fatalf("the canceled Complete changed the record: %+v, %v, %v", r, ok, err)
	}
	mustBegin(t, s, "kept", fp1, time.Hour, idem.InFlight)
	if err := s.Complete(bg, "held", held.Fence, []byte("r"), time.Hour); err != nil {
		t.Fatalf("Complete after the canceled one: %v", err)
	}
}

// TestChosenLeaderPassesOn checks that a queued write chosen to lead the
// next batch whose context ended first passes the leadership on to the
// next queued write instead of leading (and committing) a batch.
func TestChosenLeaderPassesOn(t *testing.T) {
	s := open(t, Options{NoSync: true})
	bg := context.Background()
	release := stallLeader(t, s)

	// a is queued by hand so that the test decides when it looks at its
	// channel: after it was chosen to lead and after its context ended.
	actx, acancel := context.WithCancel(bg)
	defer acancel()
	var applied atomic.Bool
	a := &op{ctx: actx, apply: func(w *wtx) error { applied.Store(true); return nil }, ch: make(chan bool, 1)}
	if leader, err := s.enqueue(a); leader || err != nil {
		t.Fatalf("enqueue behind a running commit = %v, %v", leader, err)
	}
	b := make(chan error, 1)
	go func() {
		_, err := s.Begin(bg, "b", fp1, time.Hour)
		b <- err
	}()
	waitQueued(t, s, 2)
	acancel()
	if err := release(); err != nil {
		t.Fatalf("stalled write: %v", err)
	}
	// The stalled commit is over and hands the leadership to a (queue[0]).
	for deadline := time.Now().Add(10 * time.Second); len(a.ch) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queued write was never chosen to lead")
		}
	}
	if s.await(a) {
		t.Fatal("a chosen leader whose context ended was told to lead")
	}
	if !errors.Is(a.err, context.Canceled) {
		t.Fatalf("chosen leader's result = %v, want context.Canceled", a.err)
	}
	if err := <-b; err != nil {
		t.Fatalf("Begin queued behind the chosen leader: %v", err)
	}
	if applied.Load() {
		t.Fatal("the canceled chosen leader's write was applied")
	}
	checkIdle(t, s)
	mustBegin(t, s, "b", fp1, time.Hour, idem.InFlight)
}

// TestTakenWriterWaitsForCommit checks the other side of the bound: a write
// that a leader already took into a batch waits for that batch's commit
// even when its context ends, and then reports what the commit did: applied
// (nil, stored) when the transaction had applied it before its context
// ended, its context's error (nothing stored) otherwise.
func TestTakenWriterWaitsForCommit(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied=%v", applied), func(t *testing.T) {
			s := open(t, Options{NoSync: true})
			bg := context.Background()
			release := stallLeader(t, s)
			// The next batch is [first, taken, (last)]: a blocking write
			// before taken stalls the commit before taken is applied, one
			// after it stalls the commit after.
			var started <-chan struct{}
			var unblock func() error
			first := make(chan error, 1)
			if !applied {
				started, unblock = blockingWrite(t, s)
				waitQueued(t, s, 1)
			} else {
				go func() { first <- s.write(bg, func(w *wtx) error { return nil }) }() // leads the batch
				waitQueued(t, s, 1)
			}
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := s.Begin(ctx, "taken", fp1, time.Hour)
				done <- err
			}()
			waitQueued(t, s, 2)
			if applied {
				started, unblock = blockingWrite(t, s)
				waitQueued(t, s, 3)
			}
			if err := release(); err != nil {
				t.Fatalf("stalled write: %v", err)
			}
			<-started // the batch holding taken is in its commit, stalled
			cancel()
			select {
			case err := <-done:
				t.Fatalf("a write taken into a stalled batch returned (%v) before its commit ended", err)
			case <-time.After(50 * time.Millisecond):
			}
			if err := unblock(); err != nil {
				t.Fatalf("blocking write: %v", err)
			}
			err := <-done
			_, ok, gerr := s.Get(bg, "taken")
			if gerr != nil {
				t.Fatal(gerr)
			}
			if applied {
				if err := <-first; err != nil {
					t.Fatalf("first write of the batch: %v", err)
				}
			}
			if applied && (err != nil || !ok) {
				t.Fatalf("Begin applied before its context ended = %v (stored: %v), want nil and stored", err, ok)
			}
			if !applied && (!errors.Is(err, context.Canceled) || ok) {
				t.Fatalf("Begin whose context ended before it was applied = %v (stored: %v), want context.Canceled and nothing stored", err, ok)
			}
			checkIdle(t, s)
		})
	}
}

// TestQueueCancelStress runs many writers whose contexts end at random
// moments (queued, chosen to lead, inside a batch, after it) behind commits
// that sometimes stall, with small batches so that leadership changes hands
// often. Every write must return; one that returned nil must be stored and
// one that returned its context's error must have changed nothing.
func TestQueueCancelStress(t *testing.T) {
	s := open(t, Options{NoSync: true, MaxBatchSize: 3})
	bg := context.Background()
	const writers, each = 8, 60
	stop := make(chan struct{})
	var staller sync.WaitGroup
	staller.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.write(bg, func(w *wtx) error { time.Sleep(200 * time.Microsecond); return nil }); err != nil {
				t.Errorf("stalling write: %v", err)
				return
			}
		}
	})
	type result struct {
		key string
		err error
	}
	results := make(chan result, writers*each)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				key := fmt.Sprintf("w%d-%d", w, i)
				ctx, cancel := context.WithCancel(bg)
				if rand.IntN(4) > 0 {
					timer := time.AfterFunc(time.Duration(rand.IntN(400))*time.Microsecond, cancel)
					defer timer.Stop()
				}
				_, err := s.Begin(ctx, key, fp1, time.Hour)
				cancel()
				results <- result{key, err}
			}
		})
	}
	wg.Wait()
	close(stop)
	staller.Wait()
	close(results)
	var stored, canceled int
	for r := range results {
		_, ok, err := s.Get(bg, r.key)
		if err != nil {
			t.Fatalf("Get(%s): %v", r.key, err)
		}
		switch {
		case r.err == nil:
			stored++
			if !ok {
				t.Errorf("Begin(%s) succeeded but left no record", r.key)
			}
		case errors.Is(r.err, context.Canceled):
			canceled++
			if ok {
				t.Errorf("Begin(%s) = %v but its record is stored", r.key, r.err)
			}
		default:
			t.Errorf("Begin(%s) = %v", r.key, r.err)
		}
	}
	checkIdle(t, s)
	t.Logf("%d stored, %d canceled", stored, canceled)
	if stored == 0 || canceled == 0 {
		t.Fatalf("%d stored, %d canceled: the test did not exercise both outcomes", stored, canceled)
	}
}
