package idemhttp

import (
	"net/http"
	"sync"
	"time"
)

// waiters counts the requests held in wait mode, in all and per key.
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

// readBodyTimed reads the body as readBody does, within h.bodyTimeout when
// the writer supports read deadlines. After a successful read the deadline
// is lifted, so that net/http's watch for a client that goes away keeps
// working while the handler runs; after a failed one it is left in the
// past, so that net/http does not wait for the rest of the body either
// (the connection is closed after the answer).
func (h *handler) readBodyTimed(w http.ResponseWriter, r *http.Request) (*[]byte, error) {
	if h.bodyTimeout <= 0 || r.Body == nil || r.Body == http.NoBody {
		return h.readBody(r)
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(h.bodyTimeout)) != nil {
		return h.readBody(r) // not supported (a recorder, some wrappers)
	}
	bp, err := h.readBody(r)
	if err != nil {
		_ = rc.SetReadDeadline(time.Now())
		return bp, err
	}
	_ = rc.SetReadDeadline(time.Time{})
	return bp, err
}
