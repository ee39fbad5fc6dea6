// Package waitlimit bounds the duplicates held in wait mode, in all and per
// record, and begins a key with or without waiting accordingly. idemhttp and
// idemgrpc share it, so that their wait modes cannot drift apart.
package waitlimit

import (
	"context"
	"sync"
	"time"

	"github.com/idemkit/idem"
)

// Limiter counts the callers held in wait mode, in all and per record key.
// Its methods are safe for concurrent use.
type Limiter struct {
	max, perKey int
	mu          sync.Mutex
	total       int
	byKey       map[string]int
}

// New returns a Limiter of max callers in all and perKey per record key;
// values ≤ 0 take defMax and defPerKey.
func New(max, perKey, defMax, defPerKey int) *Limiter {
	if max <= 0 {
		max = defMax
	}
	if perKey <= 0 {
		perKey = defPerKey
	}
	return &Limiter{max: max, perKey: perKey, byKey: map[string]int{}}
}

// Acquire takes a waiting slot for key, or reports false when a bound is
// reached.
func (l *Limiter) Acquire(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || l.byKey[key] >= l.perKey {
		return false
	}
	l.total++
	l.byKey[key]++
	return true
}

// Release gives back a slot taken by Acquire.
func (l *Limiter) Release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.byKey[key] - 1; n > 0 {
		l.byKey[key] = n
	} else {
		delete(l.byKey, key)
	}
}

// Begin begins (scope, key) on k with one store call either way: with
// k.BeginWait bounded by wait when wait is positive and a slot is free (it
// waits only if the key is in flight), else with k.Begin, whose in-flight
// answer the caller reports at once.
func (l *Limiter) Begin(ctx context.Context, k *idem.Keeper, scope, key string, fp []byte, wait time.Duration) (idem.Attempt, error) {
	if wait <= 0 {
		return k.Begin(ctx, scope, key, fp)
	}
	rk := idem.RecordKey(scope, key)
	if !l.Acquire(rk) {
		return k.Begin(ctx, scope, key, fp)
	}
	defer l.Release(rk)
	return k.BeginWait(ctx, scope, key, fp, wait)
}
