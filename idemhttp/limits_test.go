package idemhttp_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/idemkit/idem/idemhttp"
)

// TestWaitersBounded: past MaxWaitersPerKey, a duplicate in wait mode is
// answered 409 at once instead of being held.
func TestWaitersBounded(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(30 * time.Second)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k,
		Wait: 10 * time.Second, MaxWaitersPerKey: 1}).Handler(g))
	defer srv.Close()
	first := goSend(t, srv, req{hdr: []string{key1}})
	waitStarted(t, g.started)
	held := goSend(t, srv, req{hdr: []string{key1}})
	time.Sleep(50 * time.Millisecond) // let it start waiting
	start := time.Now()
	r := send(t, srv, req{hdr: []string{key1}})
	if r.status != http.StatusConflict || r.problemCode() != idemhttp.CodeInProgress || time.Since(start) > 5*time.Second {
		t.Fatalf("duplicate past the bound: %d %s after %v, want 409 at once", r.status, r.body, time.Since(start))
	}
	close(g.release)
	f, h := recv(t, first), recv(t, held)
	if !h.replayed() || h.wire() != f.wire() {
		t.Errorf("the held duplicate did not get the replay: %d", h.status)
	}
}

// TestBodyTimeout: a client that sends its body too slowly is answered 400
// after BodyTimeout; the handler does not run.
func TestBodyTimeout(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	g := newGate()
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k,
		BodyTimeout: 100 * time.Millisecond}).Handler(g))
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST /pay HTTP/1.1\r\nHost: test\r\nIdempotency-Key: slow\r\nContent-Length: 10\r\n\r\n{}")
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || time.Since(start) > 5*time.Second || g.calls.Load() != 0 {
		t.Fatalf("slow body: %d after %v, handler ran %d times", resp.StatusCode, time.Since(start), g.calls.Load())
	}
}
