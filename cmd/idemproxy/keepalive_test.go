package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
	"github.com/idemkit/idem/memstore"
)

// deadShard is a store whose completions of keys containing "dead" fail as
// unreachable (a Redis Cluster shard whose master died) until revive is
// closed, like a shard served again after its replica's promotion.
type deadShard struct {
	idem.Store
	revive   chan struct{}
	failures atomic.Int64
}

func (s *deadShard) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	if strings.Contains(key, "dead") {
		select {
		case <-s.revive:
		default:
			s.failures.Add(1)
			return fmt.Errorf("dial tcp: connection refused: %w", idem.ErrStoreUnavailable)
		}
	}
	return s.Store.Complete(ctx, key, fence, result, retention)
}

// TestKeepAliveAfterStalledCompletion: while a completion retries against a
// dead shard, its response is held (nothing that will be stored is sent
// before the store has it), and once it is answered the next request on the
// same keep-alive connection, for a key of a healthy shard, is served at
// once. Before responses were held, the first response went out at once and
// the connection then stayed busy with the completion's retries, so the next
// request on it waited (10 s in the measurement, 2.7 ms on a fresh
// connection).
func TestKeepAliveAfterStalledCompletion(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	cfg, err := proxyconfig.New(proxyconfig.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	st := &deadShard{Store: memstore.New(memstore.Options{}), revive: make(chan struct{})}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	px, err := newProxy(cfg, u, st, newMetrics(), log, []byte("0123456789abcdef0123456789abcdef"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer px.abort()
	srv := httptest.NewServer(px)
	defer srv.Close()

	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var mu sync.Mutex
	var reused []bool
	post := func(key string) (*http.Response, string) {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { mu.Lock(); reused = append(reused, i.Reused); mu.Unlock() },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/charges/"+key, strings.NewReader(`{"amount":1}`))
		req.Header.Set("Idempotency-Key", key)
		req.Header.Set("Authorization", "Bearer alice")
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res, string(b)
	}

	// The shard comes back 400 ms after the first request starts.
	const down = 400 * time.Millisecond
	start := time.Now()
	time.AfterFunc(down, func() { close(st.revive) })
	res, body := post("dead-1")
	first := time.Since(start)
	if res.StatusCode != http.StatusCreated || res.Header.Get("Idempotency-Replayed") != "" {
		t.Fatalf("first request: %d %s %v", res.StatusCode, body, res.Header)
	}
	if st.failures.Load() == 0 || first < down {
		t.Fatalf("answered after %v with %d failed completions: the response went out before the store had it", first, st.failures.Load())
	}
	t0 := time.Now()
	res, body = post("healthy-1")
	next := time.Since(t0)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("next request on the connection: %d %s", res.StatusCode, body)
	}
	if next > 200*time.Millisecond {
		t.Errorf("the next request on the same keep-alive connection took %v after the held response; want it served at once", next)
	}
	res, body = post("dead-1") // the held response was stored: its retry replays
	if res.StatusCode != http.StatusCreated || res.Header.Get("Idempotency-Replayed") != "true" || body != `{"path":"/charges/dead-1"}` {
		t.Errorf("retry of the stalled key: %d %q %v", res.StatusCode, body, res.Header)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reused) != 3 || reused[0] || !reused[1] || !reused[2] {
		t.Errorf("connections reused per request = %v, want one keep-alive connection for all three", reused)
	}
	t.Logf("held response after %v (%d failed completions), next request on the connection %v", first.Round(time.Millisecond), st.failures.Load(), next.Round(time.Microsecond))
}
