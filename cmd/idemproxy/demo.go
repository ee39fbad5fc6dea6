package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
)

// demoSlow is how long the demo's slow endpoint takes: long enough to send
// the duplicate that gets 409 by hand.
const demoSlow = 8 * time.Second

// demoUpstream is the -demo payments API: POST /v1/charges creates a
// charge (and counts it), POST /v1/slow-charges does the same slowly, and
// GET /v1/stats reports how many charges were really made.
type demoUpstream struct {
	url   string
	srv   *http.Server
	done  chan struct{}
	mu    sync.Mutex
	count int
}

func startDemo(log *slog.Logger) (*demoUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo upstream: %w", err)
	}
	d := &demoUpstream{url: "http://" + ln.Addr().String(), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/charges", d.charge(0))
	mux.HandleFunc("POST /v1/slow-charges", d.charge(demoSlow))
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		n := d.count
		d.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"charges_made\":%d}\n", n)
	})
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		defer close(d.done)
		_ = d.srv.Serve(ln)
	}()
	log.Info("demo upstream started", "addr", d.url)
	return d, nil
}

func (d *demoUpstream) charge(delay time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Amount   int64  `json:"amount"`
			Currency string `json:"currency"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Amount <= 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintln(w, `{"error":"send a JSON body such as {\"amount\":1000,\"currency\":\"eur\"}"}`)
			return
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		d.mu.Lock()
		d.count++
		n := d.count
		d.mu.Unlock()
		if req.Currency == "" {
			req.Currency = "eur"
		}
		var id [6]byte
		_, _ = rand.Read(id[:])
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"id": "ch_" + hex.EncodeToString(id[:]), "amount": req.Amount, "currency": req.Currency,
			"charge_number": n, "fence": r.Header.Get(HeaderFence), "created": time.Now().UTC().Format(time.RFC3339Nano),
		})
	}
}

func (d *demoUpstream) close() {
	_ = d.srv.Close()
	<-d.done
}

// demoRoutes are prepended to the configured routes in -demo: the slow
// endpoint keeps its lease long enough to show 409, with a short wait
// disabled so that the duplicate is refused at once.
func demoRoutes(c *proxyconfig.Config) []proxyconfig.Route {
	all := c.AllRoutes()
	r := all[len(all)-1]
	r.Name = "demo-slow"
	r.Prefix = "/v1/slow-charges"
	r.AnyMethod = true
	r.Wait = 0
	return []proxyconfig.Route{r}
}

func printDemo(w io.Writer, base string, admin net.Listener) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	k := hex.EncodeToString(b[:])
	postAs := func(who, path, key, body string) string {
		return fmt.Sprintf("curl -si -X POST %s%s -H 'Authorization: Bearer %s' -H 'Idempotency-Key: %s' -H 'Content-Type: application/json' -d '%s'", base, path, who, key, body)
	}
	post := func(path, key, body string) string { return postAs("demo-alice", path, key, body) }
	fmt.Fprintf(w, `
idemproxy demo: a payments API that counts the charges it makes, behind idemproxy at %s.
Try these in another terminal:

# 1. Create a charge. The upstream runs once; note "charge_number" and the id.
%s

# 2. Retry it with the same key: the stored response is replayed, byte for byte
#    (Idempotency-Replayed: true), and the upstream does not charge again.
%s

# 3. Reuse the key for a different request: 422 idempotency-key-reused.
%s

# 3b. Another caller (other credentials) with the same key and body: keys are
#     scoped to the caller (Host + Authorization, Cookie, …), so this is its own
#     charge, never the first caller's stored response.
%s

# 4. A slow charge (%v); the duplicate sent while it runs gets 409 request-in-progress
#    with Retry-After. Then retry once more after it finished: a replay.
%s & sleep 1; %s; wait
%s

# 5. No key on a POST: 400 idempotency-key-missing.
curl -si -X POST %s/v1/charges -H 'Authorization: Bearer demo-alice' -H 'Content-Type: application/json' -d '{"amount":1}'

# 5b. No credentials: 400 credentials-required (routes may allow anonymous
#     callers with "anonymous: allow" in -config).
curl -si -X POST %s/v1/charges -H 'Idempotency-Key: anon-%s' -H 'Content-Type: application/json' -d '{"amount":1}'

# 6. How many charges did the upstream really make?
curl -s %s/v1/stats
`, base,
		post("/v1/charges", "demo-"+k, `{"amount":1000,"currency":"eur"}`),
		post("/v1/charges", "demo-"+k, `{"amount":1000,"currency":"eur"}`),
		post("/v1/charges", "demo-"+k, `{"amount":9999,"currency":"eur"}`),
		postAs("demo-bob", "/v1/charges", "demo-"+k, `{"amount":1000,"currency":"eur"}`),
		demoSlow,
		post("/v1/slow-charges", "slow-"+k, `{"amount":500}`), post("/v1/slow-charges", "slow-"+k, `{"amount":500}`),
		post("/v1/slow-charges", "slow-"+k, `{"amount":500}`),
		base, base, k, base)
	if admin != nil {
		fmt.Fprintf(w, "\n# Admin: metrics.\ncurl -s http://%s/metrics | grep ^idemproxy_\n", admin.Addr())
	}
	fmt.Fprintln(w, "\nPress Ctrl-C to stop. Key suffix for this run: "+strconv.Quote(k))
}
