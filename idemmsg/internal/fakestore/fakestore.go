// Package fakestore is an in-memory idem.Store for the tests of idemmsg and
// its broker integrations. It follows SPEC §2 with an injectable clock, and
// lets a test inject failures, count calls, and pause Complete to widen race
// windows. It is not for production use (see memstore).
package fakestore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

type rec struct {
	completed bool
	fp        []byte
	fence     uint64
	deadline  time.Time // lease end (in progress) or retention end (completed)
	result    []byte
}

// Store is an in-memory idem.Store. The zero value is not usable; call New.
type Store struct {
	mu    sync.Mutex
	now   func() time.Time
	recs  map[string]*rec
	fence uint64
	calls map[string]int
	fail  map[string]error // op → error returned by the next calls of op
	failN map[string]int   // op → how many more calls fail

	// BeforeComplete, if set, is called (without the lock) at the start of
	// every Complete. Tests use it to block or crash between side effect
	// and completion.
	BeforeComplete func(key string)
}

var (
	_ idem.Store     = (*Store)(nil)
	_ idem.Extender  = (*Store)(nil)
	_ idem.Inspector = (*Store)(nil)
)

// New returns an empty store using now as its clock (time.Now if nil).
func New(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{now: now, recs: map[string]*rec{}, calls: map[string]int{}, fail: map[string]error{}, failN: map[string]int{}}
}

// FailNext makes the next call of op ("begin", "complete", "release",
// "extend") return err wrapped with idem.ErrStoreUnavailable, changing nothing.
func (s *Store) FailNext(op string, err error) { s.FailN(op, 1, err) }

// FailN makes the next n calls of op fail as FailNext does.
func (s *Store) FailN(op string, n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[op], s.failN[op] = err, n
}

// Calls returns how many times op was called.
func (s *Store) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Len returns the number of records held (live or not).
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs)
}

func (s *Store) enter(ctx context.Context, op string) error {
	s.calls[op]++
	if err := ctx.Err(); err != nil {
		return err
	}
	if err, ok := s.fail[op]; ok && s.failN[op] > 0 {
		s.failN[op]--
		return fmt.Errorf("fakestore %s: %w: %w", op, idem.ErrStoreUnavailable, err)
	}
	return nil
}

// Begin implements idem.Store.
func (s *Store) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx, "begin"); err != nil {
		return idem.Begun{}, err
	}
	now := s.now()
	r := s.recs[key]
	if r != nil && r.completed && !now.Before(r.deadline) {
		delete(s.recs, key)
		r = nil
	}
	if r == nil {
		s.fence++
		s.recs[key] = &rec{fp: append([]byte{}, fp...), fence: s.fence, deadline: now.Add(lease)}
		return idem.Begun{Outcome: idem.Acquired, Fence: s.fence}, nil
	}
	if string(r.fp) != string(fp) {
		return idem.Begun{Outcome: idem.Mismatch}, nil
	}
	if r.completed {
		return idem.Begun{Outcome: idem.Replay, Result: append([]byte{}, r.result...)}, nil
	}
	if now.Before(r.deadline) {
		return idem.Begun{Outcome: idem.InFlight, Fence: r.fence, LeaseLeft: r.deadline.Sub(now)}, nil
	}
	r.fence++
	if r.fence > s.fence {
		s.fence = r.fence
	}
	r.deadline = now.Add(lease)
	return idem.Begun{Outcome: idem.Acquired, Fence: r.fence, Takeover: true}, nil
}

func (s *Store) held(key string, fence uint64) (*rec, error) {
	r := s.recs[key]
	if r == nil || r.completed || r.fence != fence {
		return nil, fmt.Errorf("fakestore: %w", idem.ErrLeaseLost)
	}
	return r, nil
}

// Complete implements idem.Store.
func (s *Store) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if f := s.BeforeComplete; f != nil {
		f(key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx, "complete"); err != nil {
		return err
	}
	r, err := s.held(key, fence)
	if err != nil {
		return err
	}
	r.completed, r.result, r.deadline = true, append([]byte{}, result...), s.now().Add(retention)
	return nil
}

// Release implements idem.Store.
func (s *Store) Release(ctx context.Context, key string, fence uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx, "release"); err != nil {
		return err
	}
	if _, err := s.held(key, fence); err != nil {
		return err
	}
	delete(s.recs, key)
	return nil
}

// Extend implements idem.Extender.
func (s *Store) Extend(ctx context.Context, key string, fence uint64, lease time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enter(ctx, "extend"); err != nil {
		return err
	}
	r, err := s.held(key, fence)
	if err != nil {
		return err
	}
	r.deadline = s.now().Add(lease)
	return nil
}

// Get implements idem.Inspector.
func (s *Store) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return idem.Record{}, false, err
	}
	r := s.recs[key]
	now := s.now()
	if r == nil || (r.completed && !now.Before(r.deadline)) {
		return idem.Record{}, false, nil
	}
	st := idem.StateInProgress
	if r.completed {
		st = idem.StateCompleted
	}
	return idem.Record{State: st, Fingerprint: r.fp, Fence: r.fence, Remaining: r.deadline.Sub(now), Result: r.result}, true, nil
}

// Batch wraps a Store and adds BeginBatch (one call for many keys), as a
// store with batch primitives would.
type Batch struct {
	*Store
}

// BeginBatch begins every key in order and counts one "beginbatch" call.
func (b Batch) BeginBatch(ctx context.Context, keys []string, fps [][]byte, lease time.Duration) ([]idem.Begun, error) {
	b.mu.Lock()
	b.calls["beginbatch"]++
	b.mu.Unlock()
	out := make([]idem.Begun, len(keys))
	for i, k := range keys {
		r, err := b.Begin(ctx, k, fps[i], lease)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}
