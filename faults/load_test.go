package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// loadConfig is the client side of a scenario.
type loadConfig struct {
	name     string        // key prefix
	clients  int           // client goroutines, each running operations one after another
	duration time.Duration // no operation starts after this
	twins    int           // 1 in twins operations is sent by two callers at once (0: never)
	opBound  time.Duration // an operation (or a final replay) gives up after this
	timeout  time.Duration // of every request
	seed     uint64
}

// recorder collects what clients saw. Safe for concurrent use.
type recorder struct {
	mu         sync.Mutex
	acks       []Ack
	unexpected []UnexpectedAnswer
	gaveUp     []GaveUp
	replays    []FinalReplay
	bodies     map[string]string // key → the request body of its operation
	order      []string          // keys in operation order
	log        []attempt         // every request of the load, in answer order

	ops, twinOps, attempts atomic.Int64
	retries                map[string]int // "409 request-in-progress", "conn: refused", …
}

func newRecorder() *recorder {
	return &recorder{bodies: map[string]string{}, retries: map[string]int{}}
}

func (r *recorder) op(key, body string, twin bool) {
	r.ops.Add(1)
	if twin {
		r.twinOps.Add(1)
	}
	r.mu.Lock()
	r.bodies[key] = body
	r.order = append(r.order, key)
	r.mu.Unlock()
}

func (r *recorder) attempt(a attempt) {
	r.mu.Lock()
	r.log = append(r.log, a)
	r.mu.Unlock()
}

// attemptLog returns a copy of the attempt log.
func (r *recorder) attemptLog() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attempt(nil), r.log...)
}

func (r *recorder) retry(class string) {
	r.mu.Lock()
	r.retries[class]++
	r.mu.Unlock()
}

// retrySummary is "409 request-in-progress ×12, conn refused ×3", most
// frequent first.
func (r *recorder) retrySummary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range r.retries {
		all = append(all, kv{k, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].k < all[j].k })
	var parts []string
	for _, e := range all {
		parts = append(parts, fmt.Sprintf("%s ×%d", e.k, e.n))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// answer is one response, read in full.
type answer struct {
	status           int
	body             []byte
	replayed, replay string
	code             string // problem code, if a problem
	at               time.Time
}

// retriable reports whether clients retry a status: in progress, a released
// 500 (the upstream fails some first executions on purpose), and the
// proxy's and the middleware's 502, 503 and 504.
func retriable(status int) bool {
	switch status {
	case http.StatusConflict, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// send posts body with key to the proxy at base, bounded by timeout.
func send(ctx context.Context, c *http.Client, base, key, body string, timeout time.Duration) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/payments", strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer faults-client") // the proxy refuses anonymous callers
	// Clients address the API by its name, not by the address of whichever
	// proxy instance answers (the Host is part of the scope): a restarted
	// proxy listens on a new port here, as a replaced instance would.
	req.Host = "payments.faults.test"
	res, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return answer{}, err
	}
	a := answer{status: res.StatusCode, body: b, at: time.Now(),
		replayed: res.Header.Get("Idempotency-Replayed"), replay: res.Header.Get("Idempotency-Replay")}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/problem+json") {
		var p struct{ Code string }
		if json.Unmarshal(b, &p) == nil {
			a.code = p.Code
		}
	}
	return a, nil
}

// errClass names a transport error for the retry statistics.
func errClass(err error) string {
	s := err.Error()
	switch {
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "Client.Timeout") || strings.Contains(s, "deadline exceeded"):
		return "conn timeout"
	case strings.Contains(s, "connection refused"):
		return "conn refused"
	case strings.Contains(s, "connection reset"):
		return "conn reset"
	case strings.Contains(s, "EOF"):
		return "conn EOF"
	}
	return "conn error"
}

// target is where clients send their requests: the current proxies'
// addresses, which change when a fault restarts a proxy. With more than one
// proxy, the attempts of an operation alternate between them.
type target struct{ p atomic.Pointer[[]string] }

func (t *target) set(addrs ...string) { t.p.Store(&addrs) }

// get returns the first address.
func (t *target) get() string { return (*t.p.Load())[0] }

// at returns the address for the i-th attempt (from any offset).
func (t *target) at(i int) string {
	a := *t.p.Load()
	return a[i%len(a)]
}

// attempt is one request of the load, as its client saw it.
type attempt struct {
	key      string
	sent, at time.Time
	status   int // 0: no answer (a transport error)
}

// retryUntil2xx sends the request until a 2xx, a status no client retries,
// or the bound. It returns the final answer (ok = 2xx), and a description
// of the last failure otherwise.
func retryUntil2xx(ctx context.Context, c *http.Client, to *target, key, body string, cfg loadConfig, rng *rand.Rand,
	rec *recorder) (a answer, ok bool, attempts int, last string) {
	deadline := time.Now().Add(cfg.opBound)
	backoff := 10 * time.Millisecond
	offset := rng.IntN(64) // which proxy the first attempt goes to
	for {
		attempts++
		rec.attempts.Add(1)
		sent := time.Now()
		ans, err := send(ctx, c, to.at(offset+attempts-1), key, body, cfg.timeout)
		rec.attempt(attempt{key: key, sent: sent, at: time.Now(), status: ans.status})
		switch {
		case err == nil && ans.status >= 200 && ans.status <= 299:
			return ans, true, attempts, ""
		case err == nil && retriable(ans.status):
			last = strings.TrimSpace(fmt.Sprintf("%d %s", ans.status, ans.code))
		case err == nil:
			return ans, false, attempts, fmt.Sprintf("%d %s", ans.status, ans.code)
		default:
			last = errClass(err)
			if ctx.Err() != nil {
				return answer{}, false, attempts, "canceled: " + err.Error()
			}
		}
		rec.retry(last)
		if time.Now().After(deadline) {
			return answer{}, false, attempts, last
		}
		// Full jitter, capped: a client does not honour Retry-After (a hint).
		sleep := time.Duration(rng.Int64N(int64(backoff))) + time.Millisecond
		backoff = min(backoff*2, 250*time.Millisecond)
		select {
		case <-time.After(sleep):
		case <-ctx.Done():
			return answer{}, false, attempts, "canceled"
		}
	}
}

// runLoad runs cfg.clients clients until cfg.duration has passed, each
// running logical operations one after another; every operation retries
// until a 2xx. It returns when every operation has ended.
func runLoad(ctx context.Context, cfg loadConfig, to *target, rec *recorder) {
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cfg.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each caller of an operation has its own connections.
			tr, ttr := &http.Transport{Proxy: nil}, &http.Transport{Proxy: nil}
			defer tr.CloseIdleConnections()
			defer ttr.CloseIdleConnections()
			clients := []*http.Client{{Transport: tr}, {Transport: ttr}}
			rng := rand.New(rand.NewPCG(cfg.seed, uint64(i)))
			for op := 0; time.Since(start) < cfg.duration && ctx.Err() == nil; op++ {
				key := fmt.Sprintf("%s-c%d-op%d-%08x", cfg.name, i, op, rng.Uint32())
				body := fmt.Sprintf(`{"client":%d,"op":%d,"amount":%d}`, i, op, 100+rng.IntN(9900))
				callers := 1
				if cfg.twins > 0 && rng.IntN(cfg.twins) == 0 {
					callers = 2
				}
				rec.op(key, body, callers > 1)
				var cw sync.WaitGroup
				for j := range callers {
					caller := fmt.Sprintf("client%d/op%d/caller%d", i, op, j)
					crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(j)))
					cc := clients[j]
					cw.Add(1)
					go func() {
						defer cw.Done()
						a, ok, n, last := retryUntil2xx(ctx, cc, to, key, body, cfg, crng, rec)
						rec.mu.Lock()
						defer rec.mu.Unlock()
						switch {
						case ok:
							rec.acks = append(rec.acks, Ack{Key: key, Caller: fmt.Sprintf("%s/attempt%d", caller, n),
								Status: a.status, Body: a.body, Replayed: a.replayed, Replay: a.replay, At: a.at})
						case a.status != 0:
							rec.unexpected = append(rec.unexpected, UnexpectedAnswer{Key: key, Caller: caller, Status: a.status, Body: a.body})
						default:
							rec.gaveUp = append(rec.gaveUp, GaveUp{Key: key, Caller: caller, Attempts: n, Last: last})
						}
					}()
				}
				cw.Wait()
			}
		}()
	}
	wg.Wait()
}

// replayAll sends every acknowledged key once more (retrying until a 2xx,
// as a client would) and records what came back.
func replayAll(ctx context.Context, cfg loadConfig, to *target, rec *recorder) {
	rec.mu.Lock()
	seen := map[string]bool{}
	var keys []string
	for _, a := range rec.acks {
		if !seen[a.Key] {
			seen[a.Key] = true
			keys = append(keys, a.Key)
		}
	}
	bodies := rec.bodies
	rec.mu.Unlock()

	work := make(chan string)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := &http.Transport{Proxy: nil}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			rng := rand.New(rand.NewPCG(cfg.seed+1, uint64(w)))
			for key := range work {
				a, ok, _, last := retryUntil2xx(ctx, c, to, key, bodies[key], cfg, rng, newRecorder())
				r := FinalReplay{Key: key, Status: a.status, Body: a.body, Replayed: a.replayed, Replay: a.replay, At: a.at}
				if !ok {
					r.Err = last
				}
				rec.mu.Lock()
				rec.replays = append(rec.replays, r)
				rec.mu.Unlock()
			}
		}()
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
}

// history assembles what was recorded with the upstream's log.
func (r *recorder) history(execs []Execution) History {
	r.mu.Lock()
	defer r.mu.Unlock()
	return History{
		Acks:       append([]Ack(nil), r.acks...),
		Executions: execs,
		Replays:    append([]FinalReplay(nil), r.replays...),
		Unexpected: append([]UnexpectedAnswer(nil), r.unexpected...),
		GaveUp:     append([]GaveUp(nil), r.gaveUp...),
	}
}
