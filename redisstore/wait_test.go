package redisstore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
	"github.com/redis/go-redis/v9"
)

// second returns another client for the same backend as c, so that two
// Stores share nothing but the Redis servers.
func second(t *testing.T, c redis.UniversalClient) redis.UniversalClient {
	switch c := c.(type) {
	case *redis.ClusterClient:
		return cluster(t)
	case *redis.Client:
		return standalone(t)
	default:
		t.Fatalf("unexpected client %T", c)
		return nil
	}
}

// TestWaitAcrossInstances: a duplicate waiting on one Store is woken by the
// completion made through another Store, by notification (PollInterval is an
// hour, so polling cannot be what wakes it).
func TestWaitAcrossInstances(t *testing.T) {
	ctx := context.Background()
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		prefix := "wait-" + fmt.Sprint(time.Now().UnixNano()) + ":"
		o := redisstore.Options{Prefix: prefix, PollInterval: time.Hour}
		a := &idem.Keeper{Store: newStore(t, c, o), Lease: time.Minute}
		b := &idem.Keeper{Store: newStore(t, second(t, c), o), Lease: time.Minute}
		for _, end := range []string{"complete", "release"} {
			t.Run(end, func(t *testing.T) {
				first, err := a.Begin(ctx, "scope", end, []byte("fp"))
				if err != nil {
					t.Fatal(err)
				}
				const waiters = 20
				type answer struct {
					at  idem.Attempt
					err error
				}
				answers := make(chan answer, waiters)
				for range waiters {
					go func() {
						at, err := b.BeginWait(ctx, "scope", end, []byte("fp"), 30*time.Second)
						answers <- answer{at, err}
					}()
				}
				time.Sleep(100 * time.Millisecond) // let them subscribe
				start := time.Now()
				if end == "complete" {
					err = first.Lease.Complete(ctx, []byte("result"))
				} else {
					err = first.Lease.Release(ctx)
				}
				if err != nil {
					t.Fatal(err)
				}
				acquired := 0
				for range waiters {
					ans := <-answers
					switch {
					case ans.err != nil:
						t.Fatalf("BeginWait: %v", ans.err)
					case ans.at.Lease != nil:
						// After a release one waiter executes; its
						// completion wakes the others with its result.
						acquired++
						if err := ans.at.Lease.Complete(ctx, []byte("result")); err != nil {
							t.Fatal(err)
						}
					case string(ans.at.Result) != "result":
						t.Fatalf("replay %q, want %q", ans.at.Result, "result")
					}
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("waiters answered %v after the %s; want a prompt wake-up", d, end)
				}
				if want := map[string]int{"complete": 0, "release": 1}[end]; acquired != want {
					t.Errorf("%d waiters acquired the key after %s, want %d", acquired, end, want)
				}
			})
		}
	})
}

func TestWaitPolling(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	st := newStore(t, c, redisstore.Options{DisableNotify: true, PollInterval: 20 * time.Millisecond})
	b, err := st.Begin(ctx, "k", []byte("fp"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := st.Wait(ctx, "k", time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 15*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("polling Wait returned after %v, want about PollInterval (20ms)", d)
	}
	if err := st.Complete(ctx, "k", b.Fence, nil, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestWaitAfterClose: Close stops the subscription (leakcheck checks the
// goroutines) and Wait falls back to polling.
func TestWaitAfterClose(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	st := redisstore.New(c, redisstore.Options{Prefix: storetest.Prefix(t) + ":", PollInterval: 10 * time.Millisecond})
	if _, err := st.Begin(ctx, "held", []byte("fp"), time.Minute); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- st.Wait(ctx, "held", time.Minute) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Wait on a held key returned early: %v", err)
	default:
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done: // woken by Close
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Wait")
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	start := time.Now()
	if err := st.Wait(ctx, "held", time.Minute); err != nil || time.Since(start) > time.Second {
		t.Errorf("Wait after Close = %v after %v; want a poll of PollInterval", err, time.Since(start))
	}
}

// TestTwoMiddlewareInstances: two HTTP servers, each with its own Store and
// client, share one Redis; 200 concurrent requests with one key spread over
// both run the handler exactly once and all get its response (wait mode).
func TestTwoMiddlewareInstances(t *testing.T) {
	backends(t, func(t *testing.T, c redis.UniversalClient) {
		prefix := "mw-" + fmt.Sprint(time.Now().UnixNano()) + ":"
		var ran atomic.Int64
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := ran.Add(1)
			time.Sleep(50 * time.Millisecond)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, `{"charge":%d}`, n)
		})
		var urls []string
		for _, cl := range []redis.UniversalClient{c, second(t, c)} {
			st := newStore(t, cl, redisstore.Options{Prefix: prefix})
			mw := &idemhttp.Middleware{Keeper: &idem.Keeper{Store: st, Lease: 10 * time.Second}, Wait: 10 * time.Second,
				ScopeSecret: []byte("redisstore-test-scope-secret"), AllowAnonymous: true, MaxWaitersPerKey: 1000}
			ts := httptest.NewServer(mw.Handler(handler))
			t.Cleanup(ts.Close)
			urls = append(urls, ts.URL)
		}
		tr := &http.Transport{MaxIdleConnsPerHost: 100}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

		const n = 200
		var wg sync.WaitGroup
		statuses := make([]int, n)
		bodies := make([]string, n)
		replayed := make([]bool, n)
		errs := make([]error, n)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req, _ := http.NewRequest(http.MethodPost, urls[i%2], strings.NewReader(`{"amount":1000}`))
				req.Header.Set("Idempotency-Key", "pay-1")
				req.Header.Set("Content-Type", "application/json")
				req.Host = "api.test" // one public name for both instances (the Host is in the scope)
				resp, err := client.Do(req)
				if err != nil {
					errs[i] = err
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				statuses[i], bodies[i] = resp.StatusCode, string(b)
				replayed[i] = resp.Header.Get("Idempotency-Replayed") == "true"
			}()
		}
		close(start)
		wg.Wait()
		if got := ran.Load(); got != 1 {
			t.Errorf("handler ran %d times, want exactly 1", got)
		}
		fresh := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("request %d: %v", i, errs[i])
			}
			if statuses[i] != http.StatusCreated || bodies[i] != `{"charge":1}` {
				t.Errorf("request %d: %d %s, want 201 {\"charge\":1}", i, statuses[i], bodies[i])
			}
			if !replayed[i] {
				fresh++
			}
		}
		if fresh != 1 {
			t.Errorf("%d answers without Idempotency-Replayed, want 1", fresh)
		}
	})
}

// TestPublishOnlyWhenWaited: Complete and Release publish a notification
// only when a Wait is subscribed to the record's channel. A pattern
// subscriber (which PUBLISH reaches but PUBSUB NUMSUB does not count) sees
// every notification: the first it receives must be the one for the key
// somebody waited on, although two unwaited keys were completed and
// released before it.
func TestPublishOnlyWhenWaited(t *testing.T) {
	ctx := context.Background()
	c := standalone(t)
	prefix := storetest.Prefix(t) + ":"
	st := newStore(t, c, redisstore.Options{Prefix: prefix, PollInterval: time.Hour})
	ps := c.PSubscribe(ctx, prefix+"*")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the psubscribe confirmation
		t.Fatal(err)
	}
	quiet, err := st.Begin(ctx, "quiet", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Complete(ctx, "quiet", quiet.Fence, []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	gone, err := st.Begin(ctx, "released", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Release(ctx, "released", gone.Fence); err != nil {
		t.Fatal(err)
	}
	waited, err := st.Begin(ctx, "waited", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() { woke <- st.Wait(ctx, "waited", time.Minute) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n, err := c.PubSubNumSub(ctx, st.Key("waited")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n[st.Key("waited")] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Wait did not subscribe within 5s")
		}
	}
	if err := st.Complete(ctx, "waited", waited.Fence, []byte("r"), time.Minute); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := ps.ReceiveMessage(mctx)
	if err != nil {
		t.Fatalf("no notification for the waited key: %v", err)
	}
	if msg.Channel != st.Key("waited") {
		t.Errorf("first notification on %q; want only %q (nobody waited on the others)", msg.Channel, st.Key("waited"))
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait was not woken by the completion")
	}
}
