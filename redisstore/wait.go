package redisstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Wait blocks until the record for key may have changed (completed or
// released anywhere, by any Store on the same Redis), ctx is done, or d
// elapses, whichever is first; it implements idem.Waiter. It returns ctx's
// error when ctx ends first and nil otherwise. Spurious wake-ups happen (on
// a reconnection, for instance); callers call Begin again.
//
// Complete and Release publish on the record's channel from inside their
// scripts (PUBLISH, or SPUBLISH on a Redis Cluster). Wait listens through one
// subscription connection per Store (per primary on a Cluster), started by
// the first Wait and stopped by Close, subscribing to the key's channel only
// while someone waits on it. Once subscribed it reads the record's state
// (one round trip), so a completion that happened between the caller's
// Begin and the subscription is not missed. When notifications are disabled,
// the Store is closed, or the subscription cannot be made, Wait sleeps for
// PollInterval (or d, if shorter) instead.
func (s *Store) Wait(ctx context.Context, key string, d time.Duration) error {
	if err := check(ctx, "wait", key); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	ks := s.keys(key)
	var reg *registration
	if s.notify != "" {
		if h := s.getHub(); h != nil {
			reg, _ = h.register(ctx, ks[0]) // the compact key's channel (see luaPublish)
		}
	}
	if reg == nil {
		return sleep(ctx, timer, min(d, s.poll))
	}
	defer reg.unregister()
	select {
	case <-reg.ready:
	case <-reg.w:
		return nil
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	// The state byte under both names (one slot, one round trip).
	var st [2]*redis.StringCmd
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range ks {
			st[i] = p.GetRange(ctx, k, 0, 0)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil // let the caller's Begin report the failure
	}
	v := st[0].Val()
	if st[1] != nil {
		v += st[1].Val()
	}
	if v != "P" && v != "p" && v != "N" {
		return nil // completed or released before we subscribed
	}
	select {
	case <-reg.w:
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// sleep waits for d (bounded by timer, which fires at the caller's limit) or
// ctx.
func sleep(ctx context.Context, timer *time.Timer, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Close stops the subscription goroutines and connections that Wait started
// and waits for them to exit. It does not close the Redis client. After
// Close, Wait polls; the other methods keep working. Close is idempotent and
// always returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	h := s.hub
	s.hub, s.off = nil, true
	s.mu.Unlock()
	if h != nil {
		h.close()
	}
	return nil
}

// getHub returns the Store's hub, creating it on first use, or nil after
// Close.
func (s *Store) getHub() *hub {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.off {
		return nil
	}
	if s.hub == nil {
		s.hub = &hub{s: s, conns: make(map[string]*psConn)}
	}
	return s.hub
}

// Timing of the subscription loop.
const (
	// pingEvery is how long the loop waits for a message before it pings
	// the server to detect a silently dead connection.
	pingEvery = 30 * time.Second
	// Reconnection backoff after a failed receive.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// hub multiplexes the waiters of one Store over its subscriptions: a single
// connection for a standalone or Sentinel client, one per primary for a
// Cluster client (sharded channels live on the primary that owns their
// slot). All its state is guarded by mu.
type hub struct {
	s      *Store
	mu     sync.Mutex
	closed bool
	conns  map[string]*psConn // by primary address; "" for non-Cluster clients
}

// psConn is one subscription connection and its receive loop.
type psConn struct {
	h       *hub
	ps      *redis.PubSub
	sharded bool
	chans   map[string]*chanState // channels with at least one waiter
	pend    map[string]int        // subscribe commands not yet confirmed
	stop    chan struct{}
	done    chan struct{}
}

// chanState is the set of waiters on one channel.
type chanState struct {
	waiters map[chan struct{}]struct{}
	ready   chan struct{} // closed once the server confirmed the subscription
	isReady bool
}

// registration is one Wait's interest in one channel.
type registration struct {
	pc    *psConn
	ch    string
	cs    *chanState
	w     chan struct{} // receives a token on every notification
	ready chan struct{}
}

// register subscribes (if needed) to channel ch and returns a registration
// that is woken by messages on it.
func (h *hub) register(ctx context.Context, ch string) (*registration, error) {
	addr := ""
	var node *redis.Client
	if h.s.cluster != nil {
		var err error
		node, err = h.s.cluster.MasterForKey(ctx, ch)
		if err != nil {
			return nil, err
		}
		addr = node.Options().Addr
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errClosed
	}
	pc := h.conns[addr]
	if pc == nil {
		pc = &psConn{
			h:     h,
			chans: make(map[string]*chanState),
			pend:  make(map[string]int),
			stop:  make(chan struct{}),
			done:  make(chan struct{}),
		}
		if node != nil {
			pc.ps, pc.sharded = node.SSubscribe(ctx), true
		} else {
			pc.ps = h.s.c.Subscribe(ctx)
		}
		h.conns[addr] = pc
		go pc.loop()
	}
	cs := pc.chans[ch]
	if cs == nil {
		cs = &chanState{waiters: make(map[chan struct{}]struct{}), ready: make(chan struct{})}
		pc.pend[ch]++
		var err error
		if pc.sharded {
			err = pc.ps.SSubscribe(ctx, ch)
		} else {
			err = pc.ps.Subscribe(ctx, ch)
		}
		if err != nil {
			if pc.pend[ch]--; pc.pend[ch] <= 0 {
				delete(pc.pend, ch)
			}
			pc.unsubscribe(ch)
			return nil, err
		}
		pc.chans[ch] = cs
	}
	w := make(chan struct{}, 1)
	cs.waiters[w] = struct{}{}
	return &registration{pc: pc, ch: ch, cs: cs, w: w, ready: cs.ready}, nil
}

var errClosed = errors.New("redisstore: store closed")

// unregister removes the registration and unsubscribes from the channel
// when nobody else waits on it.
func (r *registration) unregister() {
	h := r.pc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(r.cs.waiters, r.w)
	if h.closed || r.pc.chans[r.ch] != r.cs || len(r.cs.waiters) > 0 {
		return
	}
	delete(r.pc.chans, r.ch)
	r.pc.unsubscribe(r.ch)
}

// unsubscribe sends UNSUBSCRIBE (SUNSUBSCRIBE) for ch. Called with h.mu held.
func (pc *psConn) unsubscribe(ch string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if pc.sharded {
		_ = pc.ps.SUnsubscribe(ctx, ch)
	} else {
		_ = pc.ps.Unsubscribe(ctx, ch)
	}
}

// loop receives messages until the hub closes.
func (pc *psConn) loop() {
	defer close(pc.done)
	backoff := time.Duration(0)
	for {
		msg, err := pc.ps.ReceiveTimeout(context.Background(), pingEvery)
		select {
		case <-pc.stop:
			return
		default:
		}
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = pc.ps.Ping(ctx)
				cancel()
				continue
			}
			// The connection broke (go-redis reconnects and resubscribes
			// on the next receive): notifications may have been lost, so
			// wake everyone to look again.
			pc.broken()
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			t := time.NewTimer(backoff)
			select {
			case <-pc.stop:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		backoff = 0
		pc.dispatch(msg)
	}
}

// dispatch handles one message from the server.
func (pc *psConn) dispatch(msg any) {
	h := pc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	switch m := msg.(type) {
	case *redis.Message:
		if cs := pc.chans[m.Channel]; cs != nil {
			cs.wake()
		}
	case *redis.Subscription:
		switch m.Kind {
		case "subscribe", "ssubscribe":
			n := pc.pend[m.Channel] - 1
			if n > 0 {
				pc.pend[m.Channel] = n
				return
			}
			delete(pc.pend, m.Channel)
			if cs := pc.chans[m.Channel]; cs != nil && !cs.isReady {
				cs.isReady = true
				close(cs.ready)
			}
		case "unsubscribe", "sunsubscribe":
			// Our own unsubscribe (nobody waits, or a newer subscription is
			// pending), or the server dropped the channel (its slot moved):
			// then wake the waiters so they subscribe again.
			if cs := pc.chans[m.Channel]; cs != nil && pc.pend[m.Channel] == 0 {
				delete(pc.chans, m.Channel)
				cs.wake()
			}
		}
	}
}

// broken wakes every waiter after a connection failure and forgets which
// subscriptions were confirmed: go-redis subscribes again on reconnect.
func (pc *psConn) broken() {
	h := pc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(pc.pend)
	for ch, cs := range pc.chans {
		cs.wake()
		pc.pend[ch] = 1
		if cs.isReady {
			cs.isReady = false
			cs.ready = make(chan struct{})
		}
	}
}

// wake sends a token to every waiter. Called with h.mu held.
func (cs *chanState) wake() {
	for w := range cs.waiters {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// close stops every subscription loop and waits for them.
func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	conns := h.conns
	h.conns = nil
	for _, pc := range conns {
		for _, cs := range pc.chans {
			cs.wake()
		}
	}
	h.mu.Unlock()
	for _, pc := range conns {
		close(pc.stop)
		_ = pc.ps.Close()
		<-pc.done
	}
}
