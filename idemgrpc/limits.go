package idemgrpc

import "sync"

// waiters counts the calls held in wait mode, in all and per key.
type waiters struct {
	max, perKey int
	mu          sync.Mutex
	total       int
	byKey       map[string]int
}

func newWaiters(max, perKey int) *waiters {
	if max <= 0 {
		max = DefaultMaxWaiters
	}
	if perKey <= 0 {
		perKey = DefaultMaxWaitersPerKey
	}
	return &waiters{max: max, perKey: perKey, byKey: map[string]int{}}
}

// acquire takes a waiting slot for key, or reports false when a bound is
// reached.
func (w *waiters) acquire(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.total >= w.max || w.byKey[key] >= w.perKey {
		return false
	}
	w.total++
	w.byKey[key]++
	return true
}

// release gives back a slot taken by acquire.
func (w *waiters) release(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total--
	if n := w.byKey[key] - 1; n > 0 {
		w.byKey[key] = n
	} else {
		delete(w.byKey, key)
	}
}
