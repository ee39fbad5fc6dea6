package faults

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"
)

// headerFence is the request header carrying the lease's fence from
// idemproxy to the upstream.
const headerFence = "Idempotency-Fence"

// upstream is the API behind the proxy. It logs every execution (key,
// fence, a unique execution id, start time) the moment a request reaches
// it, and answers 201 with a small body unique to the execution. An
// execution is never canceled: once started it runs to its end, as a real
// payment would, even if the proxy went away.
type upstream struct {
	srv *httptest.Server
	// delay is how long an execution takes (nil: none).
	delay func(key string) time.Duration
	// fail reports whether the n-th execution (from 1) of key answers 500
	// (nil: never).
	fail func(key string, n int) bool

	next  atomic.Uint64
	mu    sync.Mutex
	execs []Execution
	per   map[string]int
}

func newUpstream(delay func(string) time.Duration, fail func(string, int) bool) *upstream {
	u := &upstream{delay: delay, fail: fail, per: map[string]int{}}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	return u
}

// response is the upstream's answer, in JSON.
type response struct {
	Key   string `json:"key"`
	Exec  uint64 `json:"exec"`
	Fence string `json:"fence"`
	Body  int    `json:"body_len"`
	At    int64  `json:"at_ns"`
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	key := r.Header.Get("Idempotency-Key")
	fence := r.Header.Get(headerFence)
	id := u.next.Add(1)
	u.mu.Lock()
	u.per[key]++
	status := http.StatusCreated
	if u.fail != nil && u.fail(key, u.per[key]) {
		status = http.StatusInternalServerError
	}
	u.execs = append(u.execs, Execution{Key: key, ID: id, Fence: fence, Start: start, Status: status})
	u.mu.Unlock()

	if u.delay != nil {
		if d := u.delay(key); d > 0 {
			time.Sleep(d) // not canceled: an execution that started finishes
		}
	}
	b, _ := json.Marshal(response{Key: key, Exec: id, Fence: fence, Body: len(body), At: start.UnixNano()})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Execution", "1")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// executions returns a copy of the execution log.
func (u *upstream) executions() []Execution {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Execution(nil), u.execs...)
}

// close stops the server after every execution has ended.
func (u *upstream) close() { u.srv.Close() }
