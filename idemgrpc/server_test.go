package idemgrpc_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"
	"github.com/idemkit/idem/memstore"
)

// counter counts executions per key.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) inc(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[key]++
	return c.n[key]
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func (c *counter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

// TestReplay: the first call runs once; a retry gets the same response
// message, the handler's header and trailer metadata, and the replayed
// trailer; the handler ran with a lease and a fence in its context.
func TestReplay(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs counter
		var fenced atomic.Bool
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
		addr := protect(t, s, func(ctx context.Context, method string, req proto.Message) (proto.Message, error) {
			n := execs.inc(incomingKey(ctx))
			_, okF := idem.FenceFromContext(ctx)
			_, okL := idem.LeaseFromContext(ctx)
			fenced.Store(okF && okL)
			if err := grpc.SetHeader(ctx, metadata.Pairs("x-charge", "ch_1", "x-multi", "a", "x-multi", "b")); err != nil {
				return nil, err
			}
			if err := grpc.SetTrailer(ctx, metadata.Pairs("x-balance", "90", "x-bin-bin", "\x00\x01\xff")); err != nil {
				return nil, err
			}
			return structpb.NewStruct(map[string]any{
				"charge": "ch_" + req.(*wrapperspb.StringValue).GetValue(),
				"n":      float64(n),
				"nested": map[string]any{"z": 1.0, "a": []any{"x", true, nil}},
			})
		})
		cc := dial(t, addr)
		ctx := t.Context()
		key := randomKey()
		first := call(as(ctx, "alice", key), cc, mCharge, wrapperspb.String("42"))
		if first.err != nil {
			t.Fatal(first.err)
		}
		if first.replayed() {
			t.Fatal("the first answer is marked replayed")
		}
		if !fenced.Load() {
			t.Fatal("the handler had no fence or lease in its context")
		}
		for i := range 3 {
			again := call(as(ctx, "alice", key), cc, mCharge, wrapperspb.String("42"))
			if again.err != nil {
				t.Fatalf("retry %d: %v", i, again.err)
			}
			if !again.replayed() {
				t.Fatalf("retry %d: no %s trailer: %v", i, idemgrpc.ReplayedTrailer, again.trailer)
			}
			if !proto.Equal(first.resp, again.resp) {
				t.Fatalf("retry %d: response %v, first %v", i, again.resp, first.resp)
			}
			b1, _ := proto.MarshalOptions{Deterministic: true}.Marshal(first.resp)
			b2, _ := proto.MarshalOptions{Deterministic: true}.Marshal(again.resp)
			if string(b1) != string(b2) {
				t.Fatalf("retry %d: different bytes", i)
			}
			for _, k := range []string{"x-charge", "x-multi"} {
				if fmt.Sprint(again.header.Get(k)) != fmt.Sprint(first.header.Get(k)) || len(first.header.Get(k)) == 0 {
					t.Fatalf("retry %d: header %s = %v, first %v", i, k, again.header.Get(k), first.header.Get(k))
				}
			}
			for _, k := range []string{"x-balance", "x-bin-bin"} {
				if fmt.Sprint(again.trailer.Get(k)) != fmt.Sprint(first.trailer.Get(k)) || len(first.trailer.Get(k)) == 0 {
					t.Fatalf("retry %d: trailer %s = %q, first %q", i, k, again.trailer.Get(k), first.trailer.Get(k))
				}
			}
		}
		if n := execs.get(key); n != 1 {
			t.Fatalf("%d executions, want 1", n)
		}
	})
}

// TestStoredErrorReplay: an error status the policy stores (a client
// error) is replayed with its code, message and details.
func TestStoredErrorReplay(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs atomic.Int64
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
		addr := protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
			execs.Add(1)
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-why", "limit"))
			st, err := status.New(codes.FailedPrecondition, "card declined").WithDetails(
				&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "card", Description: "declined"}}},
				&errdetails.ErrorInfo{Reason: "CARD_DECLINED", Domain: "pay.example", Metadata: map[string]string{"b": "2", "a": "1"}},
			)
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		})
		cc := dial(t, addr)
		key := randomKey()
		first := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
		again := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
		if first.code() != codes.FailedPrecondition || first.replayed() {
			t.Fatalf("first: %v (replayed %v)", first.err, first.replayed())
		}
		if !again.replayed() {
			t.Fatalf("retry: not replayed: %v", again.err)
		}
		if !proto.Equal(status.Convert(first.err).Proto(), status.Convert(again.err).Proto()) {
			t.Fatalf("retry status %v, first %v", status.Convert(again.err).Proto(), status.Convert(first.err).Proto())
		}
		if len(status.Convert(again.err).Details()) != 2 {
			t.Fatalf("details lost: %v", status.Convert(again.err).Details())
		}
		if got := again.trailer.Get("x-why"); len(got) != 1 || got[0] != "limit" {
			t.Fatalf("trailer x-why = %v", got)
		}
		if n := execs.Load(); n != 1 {
			t.Fatalf("%d executions, want 1", n)
		}
	})
}

// TestStoredPolicy: released codes make a retry execute; stored ones
// replay; Server.Stored overrides the policy.
func TestStoredPolicy(t *testing.T) {
	stored := map[codes.Code]bool{
		codes.OK: true, codes.InvalidArgument: true, codes.NotFound: true, codes.AlreadyExists: true,
		codes.PermissionDenied: true, codes.FailedPrecondition: true, codes.OutOfRange: true,
		codes.Canceled: false, codes.Unknown: false, codes.DeadlineExceeded: false, codes.ResourceExhausted: false,
		codes.Aborted: false, codes.Unimplemented: false, codes.Internal: false, codes.Unavailable: false,
		codes.DataLoss: false, codes.Unauthenticated: false,
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if got := idemgrpc.DefaultStored(c); got != stored[c] {
			t.Errorf("DefaultStored(%v) = %v, want %v", c, got, stored[c])
		}
	}

	var execs counter
	var codeOf sync.Map // key → codes.Code to answer
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
	handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		key := incomingKey(ctx)
		execs.inc(key)
		c, _ := codeOf.Load(key)
		if c.(codes.Code) == codes.OK {
			return wrapperspb.String("ok"), nil
		}
		return nil, status.Error(c.(codes.Code), "x")
	}
	cc := dial(t, protect(t, s, handler))
	for c, keep := range stored {
		key := randomKey()
		codeOf.Store(key, c)
		for range 2 {
			if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.code() != c {
				t.Fatalf("%v: answered %v", c, a.err)
			}
		}
		want := 2
		if keep {
			want = 1
		}
		if n := execs.get(key); n != want {
			t.Errorf("%v: %d executions, want %d", c, n, want)
		}
	}

	// A custom policy: store nothing.
	s2 := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret), Stored: func(codes.Code) bool { return false }}
	cc2 := dial(t, protect(t, s2, handler))
	key := randomKey()
	codeOf.Store(key, codes.OK)
	for range 2 {
		if a := call(as(t.Context(), "alice", key), cc2, mCharge, wrapperspb.String("1")); a.err != nil || a.replayed() {
			t.Fatalf("answered %v (replayed %v)", a.err, a.replayed())
		}
	}
	if n := execs.get(key); n != 2 {
		t.Fatalf("Stored false: %d executions, want 2", n)
	}
}

// TestMismatch: the same key with another message or another method is
// answered FAILED_PRECONDITION without running the handler, and the record
// stays as it was.
func TestMismatch(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs atomic.Int64
		var seen outcomes
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newStore(t)}, Scope: idemgrpc.MetadataScope(secret), Observe: seen.observe}
		cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
			execs.Add(1)
			return wrapperspb.String("paid " + req.(*wrapperspb.StringValue).GetValue()), nil
		}))
		ctx := t.Context()
		key := randomKey()
		if a := call(as(ctx, "alice", key), cc, mCharge, wrapperspb.String("10")); a.err != nil {
			t.Fatal(a.err)
		}
		for _, tc := range []struct {
			method string
			req    proto.Message
		}{{mCharge, wrapperspb.String("11")}, {mRefund, wrapperspb.String("10")}} {
			a := call(as(ctx, "alice", key), cc, tc.method, tc.req)
			if a.code() != codes.FailedPrecondition || reason(a.err) != idemgrpc.ReasonKeyReused {
				t.Fatalf("%s %v: %v (reason %q)", tc.method, tc.req, a.err, reason(a.err))
			}
		}
		if a := call(as(ctx, "alice", key), cc, mCharge, wrapperspb.String("10")); a.err != nil || !a.replayed() {
			t.Fatalf("the original request after mismatches: %v (replayed %v)", a.err, a.replayed())
		}
		if n := execs.Load(); n != 1 {
			t.Fatalf("%d executions, want 1", n)
		}
		if n := seen.count(idemgrpc.OutcomeMismatch); n != 2 {
			t.Fatalf("%d mismatch outcomes, want 2", n)
		}
	})
}

// TestRace: 16 concurrent calls with one key execute once. Without wait
// mode the others get ABORTED with RetryInfo and the pushback trailer; in
// wait mode all get the one result.
func TestRace(t *testing.T) {
	const n = 16
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		for _, wait := range []bool{false, true} {
			t.Run(fmt.Sprintf("wait=%v", wait), func(t *testing.T) {
				var execs atomic.Int64
				var conflicts atomic.Int64
				gate := make(chan struct{})
				k := &idem.Keeper{Store: newStore(t), Lease: 5 * time.Second, Observer: idem.ObserverFunc(func(_ context.Context, e idem.Event) {
					if e.Kind == idem.EventConflict {
						conflicts.Add(1)
					}
				})}
				s := &idemgrpc.Server{Keeper: k, Scope: idemgrpc.MetadataScope(secret)}
				if wait {
					s.Wait = 20 * time.Second
				}
				cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
					m := execs.Add(1)
					select {
					case <-gate:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
					return structpb.NewStruct(map[string]any{"exec": float64(m), "at": time.Now().String()})
				}))
				key := randomKey()
				answers := make([]answer, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						answers[i] = call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("race"))
					})
				}
				// Open the gate once every other call has met the in-flight key.
				deadline := time.Now().Add(20 * time.Second)
				for conflicts.Load() < n-1 {
					if time.Now().After(deadline) {
						t.Fatalf("only %d conflicts", conflicts.Load())
					}
					time.Sleep(time.Millisecond)
				}
				close(gate)
				wg.Wait()
				if m := execs.Load(); m != 1 {
					t.Fatalf("%d executions, want 1", m)
				}
				var ok, aborted int
				var result *structpb.Struct
				for i, a := range answers {
					switch a.code() {
					case codes.OK:
						if result != nil && !proto.Equal(result, a.resp) {
							t.Fatalf("call %d got %v, another %v", i, a.resp, result)
						}
						result = a.resp
						ok++
					case codes.Aborted:
						aborted++
						if reason(a.err) != idemgrpc.ReasonInProgress {
							t.Fatalf("call %d: %v", i, a.err)
						}
						d, found := retryDelay(a.err)
						if !found || d <= 0 || d > k.Lease {
							t.Fatalf("call %d: RetryInfo %v %v", i, d, found)
						}
						pb := a.trailer.Get(idemgrpc.PushbackTrailer)
						ms, err := strconv.Atoi(strings.Join(pb, ""))
						if len(pb) != 1 || err != nil || ms <= 0 || time.Duration(ms)*time.Millisecond > k.Lease+time.Millisecond {
							t.Fatalf("call %d: pushback trailer %v", i, pb)
						}
					default:
						t.Fatalf("call %d: %v", i, a.err)
					}
				}
				if wait && ok != n {
					t.Fatalf("wait mode: %d results and %d ABORTED, want %d results", ok, aborted, n)
				}
				if !wait && (ok != 1 || aborted != n-1) {
					t.Fatalf("%d results and %d ABORTED, want 1 and %d", ok, aborted, n-1)
				}
				// Afterwards the key replays.
				a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("race"))
				if a.err != nil || !a.replayed() || !proto.Equal(a.resp, result) {
					t.Fatalf("after the race: %v %v (replayed %v)", a.resp, a.err, a.replayed())
				}
			})
		}
	})
}

// TestWaitBounds: a duplicate past MaxWaitersPerKey, or one whose wait
// bound passes, gets ABORTED.
func TestWaitBounds(t *testing.T) {
	gate := make(chan struct{})
	started := make(chan struct{}, 1)
	var seen outcomes
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret),
		Wait: 50 * time.Millisecond, MaxWaitersPerKey: 1, Observe: seen.observe}
	cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		started <- struct{}{}
		<-gate
		return wrapperspb.String("done"), nil
	}))
	key := randomKey()
	done := make(chan answer)
	go func() { done <- call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("w")) }()
	<-started
	// The bound passes: ABORTED after about 50 ms.
	if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("w")); a.code() != codes.Aborted {
		t.Fatalf("after the wait bound: %v", a.err)
	}
	close(gate)
	if a := <-done; a.err != nil {
		t.Fatal(a.err)
	}
	if n := seen.count(idemgrpc.OutcomeConflict); n != 1 {
		t.Fatalf("%d conflicts, want 1", n)
	}
}

// TestLossyConnection: a relay loses the server's answer to each key's
// first execution and closes the connection; the clients retry with the
// same key (their own loop, or grpc-go's retry policy on UNAVAILABLE) and
// every client of a key ends with the same response, the key having been
// executed once.
func TestLossyConnection(t *testing.T) {
	const keys = 6
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		for _, mode := range []string{"own-loop", "retry-policy"} {
			t.Run(mode, func(t *testing.T) {
				var execs counter
				var results sync.Map // key → the response the handler returned
				var r *relay
				s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newStore(t), Lease: 2 * time.Second}, Scope: idemgrpc.MetadataScope(secret)}
				addr := protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
					key := incomingKey(ctx)
					n := execs.inc(key)
					resp, err := structpb.NewStruct(map[string]any{"key": key, "exec": float64(n), "nonce": randomKey()})
					if err != nil {
						return nil, err
					}
					results.Store(key, resp)
					if n == 1 {
						// Executed: lose the answer.
						p, _ := peer.FromContext(ctx)
						if !r.arm(p.Addr.String()) {
							t.Errorf("no relay connection for %v", p.Addr)
						}
					}
					return resp, nil
				})
				r = newRelay(t, addr)
				clients := 2
				opts := []grpc.DialOption{grpc.WithChainUnaryInterceptor(idemgrpc.UnaryClientInterceptor())}
				if mode == "retry-policy" {
					clients = 1 // ABORTED's pushback (the lease left) would slow a second client down
					opts = append(opts, grpc.WithDefaultServiceConfig(`{"methodConfig":[{"name":[{"service":"idemtest.Pay"}],
						"retryPolicy":{"maxAttempts":5,"initialBackoff":"0.01s","maxBackoff":"0.1s","backoffMultiplier":2,
						"retryableStatusCodes":["UNAVAILABLE","ABORTED"]}}]}`))
				}
				type got struct {
					key  string
					resp *structpb.Struct
				}
				out := make(chan got, keys*clients)
				var wg sync.WaitGroup
				for i := range keys {
					key := fmt.Sprintf("lossy-%d-%s", i, randomKey())
					for range clients {
						cc := dial(t, r.addr(), opts...)
						wg.Go(func() {
							ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
							defer cancel()
							ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer alice")
							if mode == "retry-policy" {
								// The client interceptor adds the key once, above the
								// retries: every attempt carries it. The test reads it
								// back from the answer to group the clients.
								a := call(ctx, cc, mCharge, wrapperspb.String("pay"))
								if a.err != nil {
									t.Errorf("retry policy: %v", a.err)
									return
								}
								out <- got{a.resp.Fields["key"].GetStringValue(), a.resp}
								return
							}
							ctx = idemgrpc.WithKey(ctx, key)
							for attempt := 0; ; attempt++ {
								a := call(ctx, cc, mCharge, wrapperspb.String("pay"), grpc.WaitForReady(true))
								switch a.code() {
								case codes.OK:
									out <- got{key, a.resp}
									return
								case codes.Unavailable, codes.Aborted:
									if ctx.Err() != nil {
										t.Errorf("key %s: gave up after %d attempts: %v", key, attempt, a.err)
										return
									}
									time.Sleep(10 * time.Millisecond)
								default:
									t.Errorf("key %s: %v", key, a.err)
									return
								}
							}
						})
					}
				}
				wg.Wait()
				close(out)
				n := 0
				for g := range out {
					n++
					want, ok := results.Load(g.key)
					if !ok {
						t.Fatalf("no execution recorded for %s", g.key)
					}
					if !proto.Equal(g.resp, want.(*structpb.Struct)) {
						t.Fatalf("key %s: client got %v, the execution returned %v", g.key, g.resp, want)
					}
					if c := execs.get(g.key); c != 1 {
						t.Fatalf("key %s: %d executions, want 1", g.key, c)
					}
				}
				if n != keys*clients {
					t.Fatalf("%d answers, want %d", n, keys*clients)
				}
				if d := r.drops.Load(); d < keys {
					t.Fatalf("the relay lost %d answers, want %d", d, keys)
				}
				if e := execs.total(); e != keys {
					t.Fatalf("%d executions for %d keys", e, keys)
				}
			})
		}
	})
}

// TestStoreDown: when the store cannot be reached the handler does not run
// and the call gets UNAVAILABLE with the pushback trailer.
func TestStoreDown(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs atomic.Int64
		f := &faulty{Store: newStore(t)}
		f.failBegin.Store(true)
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: f}, Scope: idemgrpc.MetadataScope(secret)}
		cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
			execs.Add(1)
			return wrapperspb.String("ok"), nil
		}))
		key := randomKey()
		a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
		if a.code() != codes.Unavailable || reason(a.err) != idemgrpc.ReasonStoreUnavailable {
			t.Fatalf("store down: %v", a.err)
		}
		if pb := a.trailer.Get(idemgrpc.PushbackTrailer); len(pb) != 1 || pb[0] != "1000" {
			t.Fatalf("pushback %v", pb)
		}
		if execs.Load() != 0 {
			t.Fatal("the handler ran with the store down")
		}
		f.failBegin.Store(false)
		if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.err != nil || execs.Load() != 1 {
			t.Fatalf("store back: %v, %d executions", a.err, execs.Load())
		}
	})
}

// TestOutcomeUnknown: when the completion fails the client gets
// UNAVAILABLE outcome-unknown, never the unrecorded response; a retry is
// answered ABORTED while the lease lasts.
func TestOutcomeUnknown(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs atomic.Int64
		var seen outcomes
		f := &faulty{Store: newStore(t)}
		f.failComplete.Store(true)
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: f}, Scope: idemgrpc.MetadataScope(secret),
			CompleteTimeout: 100 * time.Millisecond, Observe: seen.observe}
		cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
			execs.Add(1)
			_ = grpc.SetHeader(ctx, metadata.Pairs("x-secret-result", "1"))
			return wrapperspb.String("charged"), nil
		}))
		key := randomKey()
		a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
		if a.code() != codes.Unavailable || reason(a.err) != idemgrpc.ReasonOutcomeUnknown {
			t.Fatalf("failed completion: %v", a.err)
		}
		if len(a.raw) != 0 || len(a.header.Get("x-secret-result")) != 0 {
			t.Fatalf("the unrecorded answer leaked: %q %v", a.raw, a.header)
		}
		if o := seen.last(); o.Kind != idemgrpc.OutcomeExecuted || o.Stored || o.Err == nil || o.Code != codes.Unavailable {
			t.Fatalf("outcome %+v", o)
		}
		if f.completes.Load() < 2 {
			t.Fatalf("the completion was tried %d times, want retries", f.completes.Load())
		}
		f.failComplete.Store(false)
		if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.code() != codes.Aborted {
			t.Fatalf("retry within the lease: %v", a.err)
		}
		if execs.Load() != 1 {
			t.Fatalf("%d executions", execs.Load())
		}
	})
}

// offsetClock is a store clock that tests move forward.
type offsetClock struct{ d atomic.Int64 }

func (c *offsetClock) now() time.Time      { return time.Now().Add(time.Duration(c.d.Load())) }
func (c *offsetClock) add(d time.Duration) { c.d.Add(int64(d)) }

// noExtend is a memstore without Extender (so that nothing renews a lease
// while the test moves the clock), with its Inspector.
type noExtend struct{ s *memstore.Store }

func (n noExtend) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	return n.s.Begin(ctx, key, fp, lease)
}
func (n noExtend) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	return n.s.Complete(ctx, key, fence, result, retention)
}
func (n noExtend) Release(ctx context.Context, key string, fence uint64) error {
	return n.s.Release(ctx, key, fence)
}
func (n noExtend) Get(ctx context.Context, key string) (idem.Record, bool, error) {
	return n.s.Get(ctx, key)
}

// TestLeaseLost: an executor whose lease was taken over answers the newer
// executor's stored result, as a replay, or UNAVAILABLE lease-lost while
// there is none; never its own result.
func TestLeaseLost(t *testing.T) {
	for _, newerDone := range []bool{true, false} {
		t.Run(fmt.Sprintf("newer-done=%v", newerDone), func(t *testing.T) {
			var clock offsetClock
			store := noExtend{memstore.New(memstore.Options{Now: clock.now})}
			var execs atomic.Int64
			gates := []chan struct{}{make(chan struct{}), make(chan struct{})}
			started := make(chan int, 2)
			s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: store, Lease: time.Second}, Scope: idemgrpc.MetadataScope(secret)}
			cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
				n := int(execs.Add(1))
				started <- n
				if n == 1 || !newerDone {
					<-gates[n-1]
				}
				return wrapperspb.String(fmt.Sprintf("execution %d", n)), nil
			}))
			key := randomKey()
			first := make(chan answer)
			go func() { first <- call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")) }()
			<-started
			clock.add(2 * time.Second) // the first lease expires
			second := make(chan answer)
			go func() { second <- call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")) }()
			<-started
			var b answer
			if newerDone {
				b = <-second
				if b.err != nil || b.replayed() {
					t.Fatalf("takeover: %v", b.err)
				}
			}
			close(gates[0])
			a := <-first
			if newerDone {
				if a.err != nil || !a.replayed() || a.str != b.str || a.str != "execution 2" {
					t.Fatalf("lost lease answered %q %v (replayed %v), the newer executor %q", a.str, a.err, a.replayed(), b.str)
				}
				return
			}
			if a.code() != codes.Unavailable || reason(a.err) != idemgrpc.ReasonLeaseLost {
				t.Fatalf("lost lease, newer running: %v", a.err)
			}
			close(gates[1])
			if b = <-second; b.err != nil {
				t.Fatal(b.err)
			}
		})
	}
}

// TestScopeIsolation: a key is scoped to its caller: the same key from
// another caller executes separately and never gets the first caller's
// answer; a call without credentials is refused unless anonymous callers
// are allowed, and then never shares with a credentialed one.
func TestScopeIsolation(t *testing.T) {
	forStores(t, func(t *testing.T, newStore func(testing.TB) idem.Store) {
		var execs atomic.Int64
		handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
			execs.Add(1)
			md, _ := metadata.FromIncomingContext(ctx)
			return wrapperspb.String(fmt.Sprint("for ", md.Get("authorization"))), nil
		}
		store := newStore(t)
		s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: store}, Scope: idemgrpc.MetadataScope(secret)}
		cc := dial(t, protect(t, s, handler))
		ctx := t.Context()
		key := randomKey()
		callS := func(ctx context.Context) (*wrapperspb.StringValue, metadata.MD, error) {
			out := new(wrapperspb.StringValue)
			var tr metadata.MD
			err := cc.Invoke(ctx, mCharge, wrapperspb.String("same"), out, grpc.Trailer(&tr))
			return out, tr, err
		}
		a1, _, err := callS(as(ctx, "alice", key))
		if err != nil {
			t.Fatal(err)
		}
		b1, tr, err := callS(as(ctx, "bob", key))
		if err != nil || len(tr.Get(idemgrpc.ReplayedTrailer)) != 0 || b1.GetValue() == a1.GetValue() {
			t.Fatalf("bob with alice's key: %v %v %v", b1, tr, err)
		}
		if execs.Load() != 2 {
			t.Fatalf("%d executions, want 2", execs.Load())
		}
		for _, c := range []struct {
			who  string
			want string
		}{{"alice", a1.GetValue()}, {"bob", b1.GetValue()}} {
			got, tr, err := callS(as(ctx, c.who, key))
			if err != nil || got.GetValue() != c.want || len(tr.Get(idemgrpc.ReplayedTrailer)) != 1 {
				t.Fatalf("%s's retry: %v %v %v", c.who, got, tr, err)
			}
		}
		// The auth-scheme is case-insensitive; the credentials are not.
		if got, _, err := callS(metadata.AppendToOutgoingContext(ctx, "authorization", "bearer alice", idemgrpc.MetadataKey, key)); err != nil || got.GetValue() != a1.GetValue() {
			t.Fatalf("alice with a lower-case scheme: %v %v", got, err)
		}
		// No credential: refused, the handler does not run.
		_, _, err = callS(as(ctx, "", key))
		if status.Code(err) != codes.Unauthenticated || reason(err) != idemgrpc.ReasonCredentialsRequired {
			t.Fatalf("anonymous call: %v", err)
		}
		if execs.Load() != 2 {
			t.Fatalf("%d executions after the anonymous call", execs.Load())
		}
		// AllowAnonymous: anonymous callers share their own scope.
		s2 := &idemgrpc.Server{Keeper: &idem.Keeper{Store: store}, Scope: idemgrpc.MetadataScope(secret), AllowAnonymous: true}
		cc2 := dial(t, protect(t, s2, handler))
		var anon [2]*wrapperspb.StringValue
		var trs [2]metadata.MD
		for i := range anon {
			anon[i] = new(wrapperspb.StringValue)
			if err := cc2.Invoke(as(ctx, "", key), mCharge, wrapperspb.String("same"), anon[i], grpc.Trailer(&trs[i])); err != nil {
				t.Fatal(err)
			}
		}
		if anon[0].GetValue() == a1.GetValue() || len(trs[0].Get(idemgrpc.ReplayedTrailer)) != 0 || len(trs[1].Get(idemgrpc.ReplayedTrailer)) != 1 {
			t.Fatalf("anonymous calls: %v %v / %v %v", anon[0], trs[0], anon[1], trs[1])
		}
		if execs.Load() != 3 {
			t.Fatalf("%d executions, want 3", execs.Load())
		}
	})
}

// TestScopeFunc: a custom Scope's errors and empty scopes.
func TestScopeFunc(t *testing.T) {
	var execs atomic.Int64
	handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		execs.Add(1)
		return wrapperspb.String("ok"), nil
	}
	scope := func(ctx context.Context, method string) (string, error) {
		if method != mCharge {
			t.Errorf("Scope got method %q", method)
		}
		switch who := metadata.ValueFromIncomingContext(ctx, "x-who"); strings.Join(who, "") {
		case "":
			return "", nil
		case "nobody":
			return "", idemgrpc.ErrNoCredentials
		case "denied":
			return "", status.Error(codes.PermissionDenied, "no")
		case "broken":
			return "", fmt.Errorf("lookup failed")
		default:
			return "tenant-" + who[0], nil
		}
	}
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: scope}
	cc := dial(t, protect(t, s, handler))
	for who, want := range map[string]codes.Code{"": codes.Unauthenticated, "nobody": codes.Unauthenticated, "denied": codes.PermissionDenied, "broken": codes.Unauthenticated, "acme": codes.OK} {
		ctx := metadata.AppendToOutgoingContext(t.Context(), "x-who", who, idemgrpc.MetadataKey, randomKey())
		if a := call(ctx, cc, mCharge, wrapperspb.String("1")); a.code() != want {
			t.Errorf("x-who %q: %v, want %v", who, a.err, want)
		}
	}
	if execs.Load() != 1 {
		t.Fatalf("%d executions, want 1", execs.Load())
	}
}

// TestKeys: where keys come from and which are refused.
func TestKeys(t *testing.T) {
	var execs atomic.Int64
	var seen outcomes
	handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		execs.Add(1)
		return wrapperspb.String(fmt.Sprint("exec ", execs.Load())), nil
	}
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret),
		Key: idemgrpc.RequestIDField("request_id"), Observe: seen.observe,
		Protect: func(m string) bool { return m != mRefund }}
	cc := dial(t, protect(t, s, handler))
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer alice")
	invalid := func(a answer, what string) {
		t.Helper()
		if a.code() != codes.InvalidArgument || reason(a.err) != idemgrpc.ReasonKeyInvalid {
			t.Fatalf("%s: %v (reason %q)", what, a.err, reason(a.err))
		}
	}
	before := execs.Load()
	invalid(call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, "has space"), cc, mCharge, wrapperspb.String("1")), "space")
	invalid(call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, strings.Repeat("k", 256)), cc, mCharge, wrapperspb.String("1")), "256 bytes")
	invalid(call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, ""), cc, mCharge, wrapperspb.String("1")), "empty")
	invalid(call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, "a", idemgrpc.MetadataKey, "b"), cc, mCharge, wrapperspb.String("1")), "two values")
	invalid(call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, "k1"), cc, mCreate, createReq("k2", 1)), "metadata and request_id differ")
	invalid(call(ctx, cc, mCreate, createReq("bad key", 1)), "invalid request_id")
	if execs.Load() != before {
		t.Fatal("the handler ran for an invalid key")
	}
	if n := seen.count(idemgrpc.OutcomeKeyInvalid); n != 6 {
		t.Fatalf("%d key_invalid outcomes", n)
	}

	// AIP-155: the request_id alone protects the call; the same value in the
	// metadata too is fine.
	id := idemgrpc.NewKey()
	r1 := call(ctx, cc, mCreate, createReq(id, 5))
	r2 := call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, id), cc, mCreate, createReq(id, 5))
	if r1.err != nil || r2.err != nil || r1.replayed() || !r2.replayed() {
		t.Fatalf("request_id: %v / %v (replayed %v %v)", r1.err, r2.err, r1.replayed(), r2.replayed())
	}
	if r3 := call(ctx, cc, mCreate, createReq(id, 6)); r3.code() != codes.FailedPrecondition {
		t.Fatalf("request_id reused for another amount: %v", r3.err)
	}

	// No key, keys optional: passthrough, runs each time.
	before = execs.Load()
	for range 2 {
		if a := call(ctx, cc, mCharge, wrapperspb.String("1")); a.err != nil || a.replayed() {
			t.Fatal(a.err)
		}
	}
	// Unprotected method: passthrough even with a key.
	key := randomKey()
	for range 2 {
		if a := call(metadata.AppendToOutgoingContext(ctx, idemgrpc.MetadataKey, key), cc, mRefund, wrapperspb.String("1")); a.err != nil || a.replayed() {
			t.Fatal(a.err)
		}
	}
	if execs.Load() != before+4 || seen.count(idemgrpc.OutcomePassthrough) != 4 {
		t.Fatalf("passthrough: %d executions, %d outcomes", execs.Load()-before, seen.count(idemgrpc.OutcomePassthrough))
	}

	// RequireKey: no key → INVALID_ARGUMENT.
	s2 := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret), RequireKey: true}
	cc2 := dial(t, protect(t, s2, handler))
	before = execs.Load()
	if a := call(ctx, cc2, mCharge, wrapperspb.String("1")); a.code() != codes.InvalidArgument || reason(a.err) != idemgrpc.ReasonKeyMissing {
		t.Fatalf("RequireKey without a key: %v", a.err)
	}
	if execs.Load() != before {
		t.Fatal("the handler ran without a required key")
	}
}

// TestConfiguration: building the interceptor without a scope (and without
// AllowAnonymous) or without a Keeper panics; so does MetadataScope with a
// short secret.
func TestConfiguration(t *testing.T) {
	mustPanic := func(what, want string, f func()) {
		t.Helper()
		defer func() {
			t.Helper()
			r := recover()
			if r == nil || !strings.Contains(fmt.Sprint(r), want) {
				t.Fatalf("%s: recovered %v, want a panic mentioning %q", what, r, want)
			}
		}()
		f()
	}
	k := &idem.Keeper{Store: newMemStore(t)}
	mustPanic("no scope", "Server.Scope", func() { (&idemgrpc.Server{Keeper: k}).UnaryServerInterceptor() })
	mustPanic("no keeper", "Keeper", func() { (&idemgrpc.Server{Scope: idemgrpc.MetadataScope(secret)}).UnaryServerInterceptor() })
	mustPanic("no store", "Keeper", func() { (&idemgrpc.Server{Keeper: &idem.Keeper{}, AllowAnonymous: true}).UnaryServerInterceptor() })
	mustPanic("short secret", "16 bytes", func() { idemgrpc.MetadataScope([]byte("short")) })
	if (&idemgrpc.Server{Keeper: k, AllowAnonymous: true}).UnaryServerInterceptor() == nil {
		t.Fatal("AllowAnonymous without Scope: no interceptor")
	}
	if _, err := (&idemgrpc.IdentityScope{Secret: []byte("short")}).Scope(t.Context(), mCharge); err == nil {
		t.Fatal("IdentityScope with a short secret: no error")
	}
}

// TestStreamingPassthrough: streaming calls are not protected: a key in the
// metadata changes nothing, the handler runs every time, nothing is
// replayed.
func TestStreamingPassthrough(t *testing.T) {
	var execs atomic.Int64
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
	addr := serve(t, func(context.Context, string, proto.Message) (proto.Message, error) { return nil, nil },
		func(in *wrapperspb.StringValue, ss grpc.ServerStream) error {
			n := execs.Add(1)
			if _, ok := idem.FenceFromContext(ss.Context()); ok {
				return status.Error(codes.Internal, "a streaming call ran under a lease")
			}
			for i := range 2 {
				if err := ss.SendMsg(wrapperspb.String(fmt.Sprintf("%s %d/%d", in.GetValue(), n, i))); err != nil {
					return err
				}
			}
			return nil
		},
		grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(s.StreamServerInterceptor()))
	cc := dial(t, addr)
	key := randomKey()
	for i := range 2 {
		ctx := as(t.Context(), "alice", key)
		st, err := cc.NewStream(ctx, &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true}, mWatch)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.SendMsg(wrapperspb.String("w")); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			m := new(wrapperspb.StringValue)
			if err := st.RecvMsg(m); err != nil {
				if status.Code(err) != codes.OK && err.Error() != "EOF" {
					t.Fatal(err)
				}
				break
			}
			got = append(got, m.GetValue())
		}
		if len(got) != 2 || !strings.HasPrefix(got[0], fmt.Sprintf("w %d/", i+1)) {
			t.Fatalf("stream %d: %v", i, got)
		}
		if len(st.Trailer().Get(idemgrpc.ReplayedTrailer)) != 0 {
			t.Fatalf("stream %d replayed", i)
		}
	}
	if execs.Load() != 2 {
		t.Fatalf("%d executions, want 2", execs.Load())
	}
}

// TestUnstorableResults: a result larger than MaxResult, one the store's
// budget refuses, and a response whose type is not registered are replaced
// by a stored INTERNAL status that every call gets, the first included; the
// handler runs once.
func TestUnstorableResults(t *testing.T) {
	big := strings.Repeat("x", 2000)
	unregistered := testFile.Messages().ByName("Unregistered")
	for _, tc := range []struct {
		name   string
		reason string
		setup  func(s *idemgrpc.Server, f *faulty)
		resp   func() proto.Message
	}{
		{"max-result", idemgrpc.ReasonResultTooLarge, func(s *idemgrpc.Server, _ *faulty) { s.MaxResult = 1000 },
			func() proto.Message { return wrapperspb.String(big) }},
		{"store-full", idemgrpc.ReasonResultTooLarge, func(_ *idemgrpc.Server, f *faulty) { f.maxComplete.Store(1000) },
			func() proto.Message { return wrapperspb.String(big) }},
		{"unregistered", idemgrpc.ReasonResultNotReplayable, func(*idemgrpc.Server, *faulty) {},
			func() proto.Message { return dynamicpb.NewMessage(unregistered) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var execs atomic.Int64
			var seen outcomes
			f := &faulty{Store: newMemStore(t)}
			s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: f}, Scope: idemgrpc.MetadataScope(secret), Observe: seen.observe}
			tc.setup(s, f)
			cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
				execs.Add(1)
				_ = grpc.SetHeader(ctx, metadata.Pairs("x-h", "1"))
				return tc.resp(), nil
			}))
			key := randomKey()
			var answers []answer
			for range 2 {
				answers = append(answers, call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")))
			}
			for i, a := range answers {
				if a.code() != codes.Internal || reason(a.err) != tc.reason {
					t.Fatalf("call %d: %v", i, a.err)
				}
				if len(a.header.Get("x-h")) != 0 {
					t.Fatalf("call %d: the handler's header was sent with the stand-in", i)
				}
			}
			if !proto.Equal(status.Convert(answers[0].err).Proto(), status.Convert(answers[1].err).Proto()) || !answers[1].replayed() || answers[0].replayed() {
				t.Fatalf("first %v, retry %v (replayed %v)", answers[0].err, answers[1].err, answers[1].replayed())
			}
			if execs.Load() != 1 {
				t.Fatalf("%d executions, want 1", execs.Load())
			}
			if o := seen.list[0]; o.Kind != idemgrpc.OutcomeExecuted || !o.Stored || !o.Replaced || o.Code != codes.Internal {
				t.Fatalf("outcome %+v", o)
			}
		})
	}
}

// TestPanic: a handler that panics releases the record (a retry executes)
// and the panic continues (to a recovery interceptor here).
func TestPanic(t *testing.T) {
	var execs atomic.Int64
	var seen outcomes
	recoverer := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = status.Errorf(codes.Internal, "panic: %v", r)
			}
		}()
		return h(ctx, req)
	}
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret), Observe: seen.observe}
	addr := serve(t, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		if execs.Add(1) == 1 {
			panic("boom")
		}
		return wrapperspb.String("ok"), nil
	}, nil, grpc.ChainUnaryInterceptor(recoverer, s.UnaryServerInterceptor()))
	cc := dial(t, addr)
	key := randomKey()
	if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.code() != codes.Internal {
		t.Fatalf("panic: %v", a.err)
	}
	if o := seen.last(); o.Kind != idemgrpc.OutcomePanic || o.Err != nil {
		t.Fatalf("outcome %+v", o)
	}
	if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.err != nil || a.replayed() {
		t.Fatalf("after the panic: %v", a.err)
	}
	if execs.Load() != 2 {
		t.Fatalf("%d executions, want 2", execs.Load())
	}
}

// ctxMark is a context value an outer interceptor sets (as a tracing
// interceptor puts its span).
type ctxMark struct{}

// TestObservability: Observe gets one outcome per call, and the Keeper's
// Observer gets the call's context (so a span in it gets the events).
func TestObservability(t *testing.T) {
	var mu sync.Mutex
	var events []idem.EventKind
	unmarked := 0
	k := &idem.Keeper{Store: newMemStore(t), Observer: idem.ObserverFunc(func(ctx context.Context, e idem.Event) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, e.Kind)
		if ctx.Value(ctxMark{}) != "span" {
			unmarked++
		}
	})}
	var seen outcomes
	mark := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(context.WithValue(ctx, ctxMark{}, "span"), req)
	}
	s := &idemgrpc.Server{Keeper: k, Scope: idemgrpc.MetadataScope(secret), Observe: func(ctx context.Context, o idemgrpc.Outcome) {
		if ctx.Value(ctxMark{}) != "span" {
			t.Errorf("Observe without the call's context")
		}
		seen.observe(ctx, o)
	}}
	addr := serve(t, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		return wrapperspb.String("ok"), nil
	}, nil, grpc.ChainUnaryInterceptor(mark, s.UnaryServerInterceptor()))
	cc := dial(t, addr)
	key := randomKey()
	for range 2 {
		if a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1")); a.err != nil {
			t.Fatal(a.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []idem.EventKind{idem.EventAcquired, idem.EventExecuted, idem.EventReplayed}
	if fmt.Sprint(events) != fmt.Sprint(want) || unmarked != 0 {
		t.Fatalf("events %v (%d without the call's context), want %v", events, unmarked, want)
	}
	if seen.count(idemgrpc.OutcomeExecuted) != 1 || seen.count(idemgrpc.OutcomeReplayed) != 1 {
		t.Fatalf("outcomes %+v", seen.list)
	}
	if o := seen.list[0]; !o.Stored || o.Fence == 0 || o.Method != mCharge || o.Code != codes.OK {
		t.Fatalf("executed outcome %+v", o)
	}
}

// TestHeaderRules: SendHeader fixes the header (a later SetHeader fails as
// on grpc-go's stream), and the handler cannot forge the replayed mark.
func TestHeaderRules(t *testing.T) {
	var setAfterSend error
	s := &idemgrpc.Server{Keeper: &idem.Keeper{Store: newMemStore(t)}, Scope: idemgrpc.MetadataScope(secret)}
	cc := dial(t, protect(t, s, func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		if err := grpc.SendHeader(ctx, metadata.Pairs("x-sent", "1")); err != nil {
			return nil, err
		}
		setAfterSend = grpc.SetHeader(ctx, metadata.Pairs("x-late", "1"))
		_ = grpc.SetTrailer(ctx, metadata.Pairs(idemgrpc.ReplayedTrailer, "forged"))
		if m, _ := grpc.Method(ctx); m != mCharge {
			return nil, status.Errorf(codes.Internal, "grpc.Method = %q", m)
		}
		return wrapperspb.String("ok"), nil
	}))
	key := randomKey()
	a := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
	if a.err != nil || setAfterSend == nil {
		t.Fatalf("%v; SetHeader after SendHeader: %v", a.err, setAfterSend)
	}
	if len(a.header.Get("x-sent")) != 1 || len(a.header.Get("x-late")) != 0 || len(a.trailer.Get(idemgrpc.ReplayedTrailer)) != 0 {
		t.Fatalf("first answer: header %v trailer %v", a.header, a.trailer)
	}
	b := call(as(t.Context(), "alice", key), cc, mCharge, wrapperspb.String("1"))
	if got := b.trailer.Get(idemgrpc.ReplayedTrailer); len(got) != 1 || got[0] != "true" || len(b.header.Get("x-sent")) != 1 {
		t.Fatalf("replay: header %v trailer %v", b.header, b.trailer)
	}
}

// blocking is a store whose Begin waits for its context to end.
type blocking struct{ idem.Store }

func (blocking) Begin(ctx context.Context, _ string, _ []byte, _ time.Duration) (idem.Begun, error) {
	<-ctx.Done()
	return idem.Begun{}, ctx.Err()
}

// TestStoreRefusals: a store that is full answers RESOURCE_EXHAUSTED, and a
// call canceled while its key is claimed is reported canceled; the handler
// runs in neither case.
func TestStoreRefusals(t *testing.T) {
	var execs atomic.Int64
	handler := func(ctx context.Context, _ string, req proto.Message) (proto.Message, error) {
		execs.Add(1)
		return wrapperspb.String("ok"), nil
	}
	full := &idemgrpc.Server{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{MaxRecords: 1})}, Scope: idemgrpc.MetadataScope(secret)}
	cc := dial(t, protect(t, full, handler))
	if a := call(as(t.Context(), "alice", randomKey()), cc, mCharge, wrapperspb.String("1")); a.err != nil {
		t.Fatal(a.err)
	}
	a := call(as(t.Context(), "alice", randomKey()), cc, mCharge, wrapperspb.String("1"))
	if a.code() != codes.ResourceExhausted || reason(a.err) != idemgrpc.ReasonStoreFull {
		t.Fatalf("store full: %v", a.err)
	}

	var seen outcomes
	slow := &idemgrpc.Server{Keeper: &idem.Keeper{Store: blocking{newMemStore(t)}}, Scope: idemgrpc.MetadataScope(secret), Observe: seen.observe}
	cc2 := dial(t, protect(t, slow, handler))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if a := call(as(ctx, "alice", randomKey()), cc2, mCharge, wrapperspb.String("1")); a.code() != codes.DeadlineExceeded {
		t.Fatalf("deadline while claiming: %v", a.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for seen.count(idemgrpc.OutcomeCanceled) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no canceled outcome: %+v", seen.list)
		}
		time.Sleep(time.Millisecond)
	}
	if execs.Load() != 1 {
		t.Fatalf("%d executions, want 1", execs.Load())
	}
}
