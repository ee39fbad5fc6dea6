package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
)

// How flakyProxy breaks the next command that matches.
const (
	dropBefore = iota + 1 // close the connection; Redis never sees the command
	dropReply             // forward the command, let Redis run it, lose the reply
)

// flakyProxy forwards TCP connections to a Redis server and can break the
// connection that carries the next command containing a given string.
type flakyProxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu     sync.Mutex
	match  []byte
	mode   int
	broken int
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{t: t, ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *flakyProxy) addr() string { return p.ln.Addr().String() }

// breakNext arms the proxy: the next command containing match is broken
// the way mode says.
func (p *flakyProxy) breakNext(match string, mode int) {
	p.mu.Lock()
	p.match, p.mode = []byte(match), mode
	p.mu.Unlock()
}

// brokenCount returns how many commands were broken.
func (p *flakyProxy) brokenCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

// take returns the mode to apply to chunk, disarming the proxy if it applies.
func (p *flakyProxy) take(chunk []byte) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == 0 || !bytes.Contains(bytes.ToLower(chunk), p.match) {
		return 0
	}
	m := p.mode
	p.mode = 0
	p.broken++
	return m
}

func (p *flakyProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *flakyProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.track(client) || !p.track(server) {
			client.Close()
			server.Close()
			return
		}
		p.wg.Go(func() { p.pump(client, server) })
	}
}

// pump forwards one connection until either side closes or a command is
// broken.
func (p *flakyProxy) pump(client, server net.Conn) {
	defer client.Close()
	defer server.Close()
	replies := make(chan []byte, 64)
	var muted sync.Mutex
	mute := false
	p.wg.Go(func() {
		defer close(replies)
		buf := make([]byte, 64<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				muted.Lock()
				m := mute
				muted.Unlock()
				if m {
					replies <- nil // Redis answered: the command ran
				} else if _, werr := client.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				client.Close()
				return
			}
		}
	})
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			switch p.take(buf[:n]) {
			case dropBefore:
				return
			case dropReply:
				muted.Lock()
				mute = true
				muted.Unlock()
				if _, err := server.Write(buf[:n]); err != nil {
					return
				}
				select {
				case <-replies:
				case <-time.After(10 * time.Second):
					p.t.Errorf("flaky proxy: no reply from Redis")
				}
				return
			}
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *flakyProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// viaProxy returns a store whose client reaches IDEM_REDIS_ADDR through a
// flakyProxy, with go-redis's own retries set to maxRetries.
func viaProxy(t *testing.T, maxRetries int) (*redisstore.Store, *flakyProxy) {
	t.Helper()
	p := newFlakyProxy(t, testenv.Need(t, "IDEM_REDIS_ADDR"))
	c := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: maxRetries, MinRetryBackoff: -1})
	t.Cleanup(func() { c.Close() })
	s := newStore(t, c, redisstore.Options{})
	// Load every script once, so that a broken EVALSHA below is never
	// answered NOSCRIPT.
	ctx := context.Background()
	b, err := s.Begin(ctx, "warm", []byte("fp"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "warm", b.Fence, nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	return s, p
}

// TestGetRetriesOnBrokenConnection checks that Get, the Inspector, answers
// although its first attempt breaks on its connection, with no client-level
// retries (MaxRetries: -1, as the docs recommend).
func TestGetRetriesOnBrokenConnection(t *testing.T) {
	s, p := viaProxy(t, -1)
	ctx := context.Background()
	b, err := s.Begin(ctx, "k", []byte("fp"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "k", b.Fence, []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []int{dropBefore, dropReply} {
		before := p.brokenCount()
		p.breakNext("evalsha", mode)
		rec, ok, err := s.Get(ctx, "k")
		if err != nil || !ok || rec.State != idem.StateCompleted || rec.Fence != b.Fence || string(rec.Result) != "r" {
			t.Fatalf("Get with its first attempt broken (mode %d) = %+v, %v, %v", mode, rec, ok, err)
		}
		if p.brokenCount() != before+1 {
			t.Fatalf("mode %d: the proxy broke %d commands, want 1", mode, p.brokenCount()-before)
		}
	}
}

// TestLostCompletionReply shows why the docs ask for MaxRetries: -1. A
// Complete that Redis ran but whose reply was lost is, without client
// retries, reported as unavailable (outcome unknown), and Get then shows it
// applied. With go-redis's default retries, the client runs the script a
// second time, which finds the record completed and answers ErrLeaseLost:
// the caller is told its lease was lost although its completion was stored
// (idem.Keeper settles that too, by asking Get).
func TestLostCompletionReply(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxRetries int
		want       error
	}{
		{"MaxRetries=-1", -1, idem.ErrStoreUnavailable},
		{"MaxRetries=default", 0, idem.ErrLeaseLost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, p := viaProxy(t, tc.maxRetries)
			ctx := context.Background()
			b, err := s.Begin(ctx, "k", []byte("fp"), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			p.breakNext("evalsha", dropReply)
			err = s.Complete(ctx, "k", b.Fence, []byte("r"), time.Hour)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Complete whose reply was lost = %v, want %v", err, tc.want)
			}
			if p.brokenCount() != 1 {
				t.Fatalf("the proxy broke %d commands, want 1", p.brokenCount())
			}
			rec, ok, err := s.Get(ctx, "k")
			if err != nil || !ok || rec.State != idem.StateCompleted || rec.Fence != b.Fence || string(rec.Result) != "r" {
				t.Fatalf("Get after the lost reply = %+v, %v, %v; want completed under fence %d", rec, ok, err, b.Fence)
			}
		})
	}
}

// TestWaitTimeoutBelowMillisecond checks that a WaitTimeout under one
// millisecond is rounded up, not sent as WAIT's 0 (wait forever): on a
// server without replicas, Begin fails closed at once instead of hanging
// until the client's read timeout.
func TestWaitTimeoutBelowMillisecond(t *testing.T) {
	c := standalone(t)
	s := newStore(t, c, redisstore.Options{WaitReplicas: 1, WaitTimeout: 300 * time.Microsecond})
	start := time.Now()
	_, err := s.Begin(context.Background(), "k", []byte("fp"), time.Minute)
	if !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin without replicas = %v, want ErrStoreUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Begin took %v: WAIT was not bounded by the 300µs WaitTimeout", d)
	}
}
