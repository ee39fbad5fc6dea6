package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dropUpstream is a raw HTTP/1.1 upstream that answers the first request on
// each connection (keep-alive) and, for every later one, reads it whole,
// counts it, and drops the connection without answering: an upstream that
// processed a request and died before its response.
type dropUpstream struct {
	ln    net.Listener
	mu    sync.Mutex
	seen  map[string]int // Idempotency-Key → requests received
	conns atomic.Int64
	wg    sync.WaitGroup
}

func newDropUpstream(t *testing.T) *dropUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &dropUpstream{ln: ln, seen: map[string]int{}}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *dropUpstream) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	for n := 0; ; n++ {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.seen[r.Header.Get("Idempotency-Key")]++
		u.mu.Unlock()
		if n > 0 {
			return // processed, then gone: no answer
		}
		fmt.Fprintf(c, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
	}
}

func (u *dropUpstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[key]
}

// TestOneUpstreamDelivery: an upstream that reads a request on a reused
// connection and drops it gets that request once, not a transport-level
// resend, and the client's 502 says the request may have been processed.
func TestOneUpstreamDelivery(t *testing.T) {
	u := newDropUpstream(t)
	for _, method := range []string{"POST", "PATCH"} {
		for _, body := range []string{`{"a":1}`, ""} {
			t.Run(fmt.Sprintf("%s/body=%v", method, body != ""), func(t *testing.T) {
				p := startProxy(t, "-upstream", "http://"+u.ln.Addr().String(), "-store", "memory:")
				c := client(t)
				warm := newKey()
				if r := do(t, c, method, p.addr+"/x", map[string]string{"Idempotency-Key": warm}, body); r.status != 201 {
					t.Fatalf("warm-up: %d %s", r.status, r.body)
				}
				k := newKey()
				r := do(t, c, method, p.addr+"/x", map[string]string{"Idempotency-Key": k}, body)
				if got := u.count(k); got != 1 {
					t.Fatalf("the upstream got the request %d times", got)
				}
				if r.status != 502 || problemCode(t, r) != codeUpstreamFailed || !strings.Contains(string(r.body), "may have been processed") {
					t.Fatalf("answer %d %s", r.status, r.body)
				}
			})
		}
	}
}

// TestSequentialRetriesReplay: through the real proxy, on every store, a
// retry sent the instant the first response has been read replays it, and
// a retry of a released 500 executes; 1,000 pairs in a row (fewer with
// -short).
func TestSequentialRetriesReplay(t *testing.T) {
	pairs := 1000
	if testing.Short() {
		pairs = 100
	}
	for _, sc := range storeCases() {
		t.Run(sc.name, func(t *testing.T) {
			store := sc.url(t)
			u := newUpstream(t)
			p := startProxy(t, append([]string{"-upstream", u.srv.URL}, storeArgs(t, store)...)...)
			c := client(t)
			for i := range pairs {
				fail := i%10 == 9
				path := "/ok"
				if fail {
					path = "/status/500"
				}
				k := newKey()
				r1 := do(t, c, "POST", p.addr+path, map[string]string{"Idempotency-Key": k}, `{"n":1}`)
				r2 := do(t, c, "POST", p.addr+path, map[string]string{"Idempotency-Key": k}, `{"n":1}`)
				rep := r2.header.Get("Idempotency-Replayed") == "true"
				switch {
				case fail && (r1.status != 500 || r2.status != 500 || rep || u.n(path, k) != 2):
					t.Fatalf("pair %d (500): %d then %d replayed=%v, %d executions", i, r1.status, r2.status, rep, u.n(path, k))
				case !fail && (r1.status != 201 || r2.status != 201 || !rep || string(r1.body) != string(r2.body) || u.n(path, k) != 1):
					t.Fatalf("pair %d: %d %q then %d %q replayed=%v", i, r1.status, r1.body, r2.status, r2.body, rep)
				}
			}
		})
	}
}
