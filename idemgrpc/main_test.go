package idemgrpc_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemgrpc"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/pgxstore"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
)

// quiet drops go-redis's log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// The PostgreSQL tests share one pool, closed before the leak check.
var (
	poolOnce sync.Once
	pool     *pgxpool.Pool
	poolErr  error
)

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	code := m.Run()
	if pool != nil {
		pool.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newMemStore returns a memstore.
func newMemStore(testing.TB) idem.Store { return memstore.New(memstore.Options{}) }

// newRedisStore returns a redisstore on IDEM_REDIS_ADDR with a prefix unique
// to t (skip, or fail under CI=true, when unset).
func newRedisStore(t testing.TB) idem.Store {
	t.Helper()
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("IDEM_REDIS_ADDR=%s: %v", addr, err)
	}
	s := redisstore.New(c, redisstore.Options{Prefix: storetest.Prefix(t) + ":"})
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// newPGStore returns a migrated pgxstore on IDEM_POSTGRES_DSN in a schema of
// its own, dropped when t ends.
func newPGStore(t testing.TB) idem.Store {
	t.Helper()
	dsn := testenv.Need(t, "IDEM_POSTGRES_DSN")
	poolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			poolErr = err
			return
		}
		cfg.MaxConns = 40
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pool, poolErr = pgxpool.NewWithConfig(ctx, cfg)
		if poolErr == nil {
			poolErr = pool.Ping(ctx)
		}
	})
	if poolErr != nil {
		t.Fatalf("postgres at IDEM_POSTGRES_DSN: %v", poolErr)
	}
	schema := strings.ReplaceAll(storetest.Prefix(t), "-", "_")
	s := pgxstore.New(pool, pgxstore.Options{Schema: schema})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return s
}

// forStores runs f, in parallel, on memstore, redisstore and pgxstore.
func forStores(t *testing.T, f func(t *testing.T, newStore func(testing.TB) idem.Store)) {
	for _, k := range []struct {
		name string
		new  func(testing.TB) idem.Store
	}{{"memory", newMemStore}, {"redis", newRedisStore}, {"postgres", newPGStore}} {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			f(t, k.new)
		})
	}
}

// The test service, registered by hand (no generated code): idemtest.Pay
// with unary Charge (google.protobuf.StringValue → any registered message),
// unary Create (a dynamic idemtest.CreateRequest with an AIP-155 request_id
// → any message) and server-streaming Watch (StringValue → StringValue).
const (
	svcName = "idemtest.Pay"
	mCharge = "/idemtest.Pay/Charge"
	mRefund = "/idemtest.Pay/Refund"
	mCreate = "/idemtest.Pay/Create"
	mWatch  = "/idemtest.Pay/Watch"
)

// testFile holds idemtest.CreateRequest and idemtest.Unregistered, built at
// run time and not registered in protoregistry.GlobalTypes.
var testFile = func() protoreflect.FileDescriptor {
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("idemtest/pay.proto"),
		Package: proto.String("idemtest"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("CreateRequest"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("request_id"), JsonName: proto.String("requestId"), Number: proto.Int32(1), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
				{Name: proto.String("amount"), JsonName: proto.String("amount"), Number: proto.Int32(2), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_INT64.Enum()},
				{Name: proto.String("tags"), JsonName: proto.String("tags"), Number: proto.Int32(3), Label: descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
			},
		}, {
			Name: proto.String("Unregistered"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("note"), JsonName: proto.String("note"), Number: proto.Int32(1), Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		panic(err)
	}
	return fd
}()

// createReq returns an idemtest.CreateRequest.
func createReq(requestID string, amount int64) *dynamicpb.Message {
	md := testFile.Messages().ByName("CreateRequest")
	m := dynamicpb.NewMessage(md)
	if requestID != "" {
		m.Set(md.Fields().ByName("request_id"), protoreflect.ValueOfString(requestID))
	}
	m.Set(md.Fields().ByName("amount"), protoreflect.ValueOfInt64(amount))
	return m
}

// handlerFunc is the body of every unary method of the test service.
type handlerFunc func(ctx context.Context, method string, req proto.Message) (proto.Message, error)

// serviceDesc describes idemtest.Pay with fn behind its unary methods and
// watch behind Watch.
func serviceDesc(fn handlerFunc, watch func(*wrapperspb.StringValue, grpc.ServerStream) error) *grpc.ServiceDesc {
	unary := func(name string, newReq func() proto.Message) grpc.MethodDesc {
		full := "/" + svcName + "/" + name
		return grpc.MethodDesc{MethodName: name, Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := newReq()
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				out, err := fn(ctx, full, req.(proto.Message))
				if out == nil {
					return nil, err
				}
				return out, err
			}
			if ic == nil {
				return h(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, h)
		}}
	}
	return &grpc.ServiceDesc{
		ServiceName: svcName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			unary("Charge", func() proto.Message { return new(wrapperspb.StringValue) }),
			unary("Refund", func() proto.Message { return new(wrapperspb.StringValue) }),
			unary("Create", func() proto.Message { return dynamicpb.NewMessage(testFile.Messages().ByName("CreateRequest")) }),
		},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Watch",
			ServerStreams: true,
			Handler: func(_ any, ss grpc.ServerStream) error {
				in := new(wrapperspb.StringValue)
				if err := ss.RecvMsg(in); err != nil {
					return err
				}
				return watch(in, ss)
			},
		}},
	}
}

// serve starts a gRPC server on a loopback TCP port with the given
// options and the test service, and returns its address. It stops at
// cleanup.
func serve(t testing.TB, fn handlerFunc, watch func(*wrapperspb.StringValue, grpc.ServerStream) error, opts ...grpc.ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if watch == nil {
		watch = func(*wrapperspb.StringValue, grpc.ServerStream) error { return nil }
	}
	g := grpc.NewServer(opts...)
	g.RegisterService(serviceDesc(fn, watch), nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(ln)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-done
	})
	return ln.Addr().String()
}

// protect starts a server whose unary calls go through s's interceptor
// (and its stream interceptor), with fn behind them.
func protect(t testing.TB, s *idemgrpc.Server, fn handlerFunc, opts ...grpc.ServerOption) string {
	t.Helper()
	opts = append(opts,
		grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.StreamServerInterceptor()))
	return serve(t, fn, nil, opts...)
}

// dial returns a client connection to addr, closed at cleanup.
func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// secret is the scope secret of the tests.
var secret = []byte("0123456789abcdef0123456789abcdef")

// as returns ctx with the authorization metadata of caller and, unless
// key is empty, the idempotency-key metadata.
func as(ctx context.Context, caller, key string) context.Context {
	kv := []string{}
	if caller != "" {
		kv = append(kv, "authorization", "Bearer "+caller)
	}
	if key != "" {
		kv = append(kv, idemgrpc.MetadataKey, key)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// answer is what a client got from one call.
type answer struct {
	raw     []byte           // the response message's bytes
	resp    *structpb.Struct // raw as a Struct, if it is one (else empty)
	str     string           // raw as a StringValue's value, if it is one
	err     error
	header  metadata.MD
	trailer metadata.MD
}

func (a answer) code() codes.Code { return status.Code(a.err) }

func (a answer) replayed() bool {
	v := a.trailer.Get(idemgrpc.ReplayedTrailer)
	return len(v) == 1 && v[0] == "true"
}

// call invokes method with req on cc. The response is read into an Empty,
// whose unknown fields keep its bytes, then decoded as a Struct and as a
// StringValue where it is one.
func call(ctx context.Context, cc *grpc.ClientConn, method string, req proto.Message, opts ...grpc.CallOption) answer {
	var a answer
	out := new(emptypb.Empty)
	opts = append(opts, grpc.Header(&a.header), grpc.Trailer(&a.trailer))
	a.err = cc.Invoke(ctx, method, req, out, opts...)
	a.raw = out.ProtoReflect().GetUnknown()
	a.resp = new(structpb.Struct)
	if proto.Unmarshal(a.raw, a.resp) != nil {
		a.resp = new(structpb.Struct)
	}
	sv := new(wrapperspb.StringValue)
	if proto.Unmarshal(a.raw, sv) == nil {
		a.str = sv.GetValue()
	}
	return a
}

// reason returns the ErrorInfo reason of err's status ("" if none).
func reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Domain == idemgrpc.ErrorDomain {
			return ei.Reason
		}
	}
	return ""
}

// retryDelay returns the RetryInfo delay of err's status.
func retryDelay(err error) (time.Duration, bool) {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// outcomes records what the interceptor reports (Server.Observe).
type outcomes struct {
	mu   sync.Mutex
	list []idemgrpc.Outcome
}

func (r *outcomes) observe(_ context.Context, o idemgrpc.Outcome) {
	r.mu.Lock()
	r.list = append(r.list, o)
	r.mu.Unlock()
}

func (r *outcomes) count(k idemgrpc.OutcomeKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, o := range r.list {
		if o.Kind == k {
			n++
		}
	}
	return n
}

func (r *outcomes) last() idemgrpc.Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.list) == 0 {
		return idemgrpc.Outcome{}
	}
	return r.list[len(r.list)-1]
}

// faulty wraps a store (hiding its optional interfaces) and fails on
// demand.
type faulty struct {
	idem.Store
	failBegin    atomic.Bool
	failComplete atomic.Bool
	maxComplete  atomic.Int64 // > 0: results longer than this are refused as full
	completes    atomic.Int64
}

func (f *faulty) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	if f.failBegin.Load() {
		return idem.Begun{}, fmt.Errorf("faulty: %w", idem.ErrStoreUnavailable)
	}
	return f.Store.Begin(ctx, key, fp, lease)
}

func (f *faulty) Complete(ctx context.Context, key string, fence uint64, result []byte, retention time.Duration) error {
	f.completes.Add(1)
	if f.failComplete.Load() {
		return fmt.Errorf("faulty: %w", idem.ErrStoreUnavailable)
	}
	if n := f.maxComplete.Load(); n > 0 && int64(len(result)) > n {
		return fmt.Errorf("faulty: %w", idem.ErrStoreFull)
	}
	return f.Store.Complete(ctx, key, fence, result, retention)
}

// relay is a TCP proxy between clients and a server that can lose a
// server's answer: arm(addr) makes the connection whose server side has
// the local address addr (the peer address the server sees) discard the
// next bytes the server sends and close both of its sides.
type relay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	pairs  map[string]*pair
	drops  atomic.Int64
}

type pair struct {
	client, server net.Conn
	armed          atomic.Bool
	once           sync.Once
}

func (p *pair) close() {
	p.once.Do(func() {
		_ = p.client.Close()
		_ = p.server.Close()
	})
}

// newRelay starts a relay to target, closed at cleanup.
func newRelay(t testing.TB, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, pairs: map[string]*pair{}}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", r.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p := &pair{client: c, server: s}
		r.mu.Lock()
		r.pairs[s.LocalAddr().String()] = p
		r.mu.Unlock()
		r.wg.Add(2)
		go func() {
			defer r.wg.Done()
			_, _ = io.Copy(s, c)
			p.close()
		}()
		go func() {
			defer r.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					if p.armed.Load() {
						r.drops.Add(1)
						p.close()
						return
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						p.close()
						return
					}
				}
				if err != nil {
					p.close()
					return
				}
			}
		}()
	}
}

// arm makes the connection of the server-side peer address addr lose the
// next answer. It reports whether it found the connection.
func (r *relay) arm(addr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.pairs[addr]
	if ok {
		p.armed.Store(true)
	}
	return ok
}

func (r *relay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for _, p := range r.pairs {
		p.close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// incomingKey returns the idempotency-key metadata of a server call.
func incomingKey(ctx context.Context) string {
	v := metadata.ValueFromIncomingContext(ctx, idemgrpc.MetadataKey)
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// randomKey returns a fresh key for a test.
func randomKey() string { return fmt.Sprintf("k-%016x", rand.Uint64()) }
