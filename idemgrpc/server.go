package idemgrpc

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkit/idem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	spb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/idemkit/idem/internal/waitlimit"
)

// Defaults of Server's zero-valued fields.
const (
	// DefaultMaxResult is the stored result cap when Server.MaxResult is 0:
	// 4 MiB, grpc-go's default limit on a received message, so a response
	// a default client can receive is never refused.
	DefaultMaxResult = 4 << 20
	// DefaultCompleteTimeout bounds the store call that completes or
	// releases a record when Server.CompleteTimeout is 0.
	DefaultCompleteTimeout = 10 * time.Second
	// DefaultMaxWaiters bounds the calls held in wait mode at once when
	// Server.MaxWaiters is 0.
	DefaultMaxWaiters = 1000
	// DefaultMaxWaitersPerKey bounds the calls held in wait mode for one
	// key when Server.MaxWaitersPerKey is 0.
	DefaultMaxWaitersPerKey = 16
)

// Server makes unary gRPC calls that carry an idempotency key safe to retry,
// with the contract of idemhttp (SPEC §3) on the same *idem.Keeper: the first
// call with a key runs the handler once; its answer (response message or
// error status, header and trailer metadata) is stored before it is sent, and
// every retry with the same key and the same request gets it back, with the
// trailer idempotency-replayed: true, without running the handler. A retry
// while the first still runs gets ABORTED (or waits, see Wait), a reuse of
// the key for a different request FAILED_PRECONDITION, and when the store
// is unreachable the handler does not run (UNAVAILABLE).
//
// Configure the exported fields, then call UnaryServerInterceptor, which
// reads the configuration once. Zero values give the documented defaults;
// Keeper is required, and so is Scope unless AllowAnonymous is set.
type Server struct {
	// Keeper runs the record state machine: store, lease, retention and
	// observer. Required. The call's context is passed to it, so an
	// Observer sees the spans and values of the call.
	Keeper *idem.Keeper

	// Scope returns the scope of a call's key: who the key belongs to (the
	// authenticated principal, tenant, account). Two scopes never share a
	// record, so a caller can never read another caller's stored answer.
	// Chain the interceptor after authentication and return the principal
	// your authentication put in the context, or use MetadataScope (an
	// HMAC of the authorization metadata and the verified TLS client
	// certificate). An error that is a gRPC status is answered as it is;
	// ErrNoCredentials, an empty scope, or another error are answered
	// UNAUTHENTICATED, except that with AllowAnonymous ErrNoCredentials
	// and the empty scope give the anonymous scope.
	//
	// UnaryServerInterceptor panics when Scope is nil and AllowAnonymous
	// is not set: there is no safe default (a shared scope would let one
	// caller read another's stored answers).
	Scope func(ctx context.Context, fullMethod string) (string, error)

	// AllowAnonymous lets calls without a scope use the anonymous scope,
	// which they all share (it is never one of a credentialed caller). With
	// Scope nil, every call is anonymous: set it only where all callers
	// are one principal (an internal service behind its own
	// authentication).
	AllowAnonymous bool

	// Key, if set, reads a key from the request message, such as
	// RequestIDField("request_id") for AIP-155's request_id field; ""
	// means none. A call carrying a key both in the idempotency-key
	// metadata and in the message must carry the same one
	// (INVALID_ARGUMENT otherwise).
	Key func(req any) string

	// RequireKey refuses calls of protected methods without a key
	// (INVALID_ARGUMENT, ReasonKeyMissing). If false (the default) they
	// pass through unprotected. An invalid key is refused either way.
	RequireKey bool

	// Protect selects the protected methods by full name
	// ("/pkg.Service/Method"); the others pass through untouched, even
	// with a key. If nil, every unary method is protected.
	Protect func(fullMethod string) bool

	// Fingerprint returns the fingerprint of a call: the same key with a
	// different fingerprint is answered FAILED_PRECONDITION. An error is
	// answered INVALID_ARGUMENT. If nil, DefaultFingerprint: SHA-256 over
	// the full method name and the deterministic marshalling of the
	// request.
	Fingerprint func(fullMethod string, req any) ([]byte, error)

	// Wait, if positive, turns on wait mode: a retry that arrives while the
	// first call still runs is held for up to Wait (idem.Keeper.BeginWait)
	// and answered with the replay when the first completes (or executes,
	// if the first released the key), instead of ABORTED. If the bound
	// passes it gets ABORTED.
	Wait time.Duration

	// MaxWaiters bounds the calls held in wait mode at once, in all and
	// per key (MaxWaitersPerKey); a duplicate past either bound is answered
	// ABORTED at once, as without wait mode. If zero, DefaultMaxWaiters
	// (1,000) and DefaultMaxWaitersPerKey (16).
	MaxWaiters       int
	MaxWaitersPerKey int

	// Stored reports whether an answer with the given status code completes
	// the record (and is replayed to retries). Otherwise the record is
	// released and a retry executes again. If nil, DefaultStored.
	Stored func(codes.Code) bool

	// MaxResult caps the stored result (the encoded response message or
	// status with the header and trailer metadata), in bytes. A larger
	// result is not sent: the record is completed with an INTERNAL status
	// (ReasonResultTooLarge) that every call with the key gets, the first
	// included, so that no client ever holds a response a retry could not
	// replay and the handler never runs twice. If 0 (or negative),
	// DefaultMaxResult (4 MiB).
	MaxResult int

	// Types resolves the stored response's message type on a replay: the
	// record holds the message's full name, and the replay is a new
	// message of the type Types finds for it, unmarshalled from the stored
	// bytes. Each name is looked up once and cached. If nil,
	// protoregistry.GlobalTypes (where generated code registers every
	// message). A response whose type Types does not
	// resolve is not stored as it is: the record is completed with an
	// INTERNAL status (ReasonResultNotReplayable) answered to every call.
	Types protoregistry.MessageTypeResolver

	// CompleteTimeout bounds the store call that completes or releases the
	// record after the handler returns, including its retries after store
	// failures. That call is detached from the call's cancellation, so it
	// happens even when the client has gone. If 0, DefaultCompleteTimeout
	// (10 s).
	CompleteTimeout time.Duration

	// Observe, if set, is called once per call that reaches the
	// interceptor, after the answer is decided, with what happened. It runs
	// on the call's goroutine and must be fast. Store-level events
	// (takeovers, lease losses, store errors) are reported by
	// Keeper.Observer as well.
	Observe func(ctx context.Context, o Outcome)
}

// DefaultStored is the default storage policy (Server.Stored): the codes a
// retry should get again, namely OK and the client's own errors
// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
// FAILED_PRECONDITION, OUT_OF_RANGE), are stored. The codes that say the call
// did not finish or may succeed if tried again are released, so that a retry
// executes: CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
// ABORTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS and
// UNAUTHENTICATED (see docs/grpc.md for the reason behind each), as idemhttp
// stores statuses below 500 except 429.
func DefaultStored(c codes.Code) bool {
	switch c {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
		codes.PermissionDenied, codes.FailedPrecondition, codes.OutOfRange:
		return true
	}
	return false
}

// interceptor is a configured Server.
type interceptor struct {
	keeper          *idem.Keeper
	scope           func(context.Context, string) (string, error)
	anonymous       bool
	key             func(any) string
	requireKey      bool
	protect         func(string) bool
	fingerprint     func(string, any) ([]byte, error)
	wait            time.Duration
	waiters         *waitlimit.Limiter
	stored          func(codes.Code) bool
	maxResult       int
	types           protoregistry.MessageTypeResolver
	completeTimeout time.Duration
	observe         func(context.Context, Outcome)

	// typesMu serialises the writers of typeCache, the message types found
	// by name for replays (copied on write, so that replays read it without
	// a lock).
	typesMu   sync.Mutex
	typeCache atomic.Pointer[map[string]protoreflect.MessageType]
}

// maxTypeCache bounds the cached message types.
const maxTypeCache = 1024

// findType returns the message type named name, from the cache or from
// i.types (whose answers are then cached).
func (i *interceptor) findType(name []byte) (protoreflect.MessageType, error) {
	if m := i.typeCache.Load(); m != nil {
		if mt, ok := (*m)[string(name)]; ok {
			return mt, nil
		}
	}
	mt, err := i.types.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		return nil, err
	}
	i.typesMu.Lock()
	defer i.typesMu.Unlock()
	old := i.typeCache.Load()
	if old == nil || len(*old) < maxTypeCache {
		m := make(map[string]protoreflect.MessageType, 1+lenOf(old))
		if old != nil {
			for k, v := range *old {
				m[k] = v
			}
		}
		m[string(name)] = mt
		i.typeCache.Store(&m)
	}
	return mt, nil
}

func lenOf(m *map[string]protoreflect.MessageType) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// UnaryServerInterceptor returns the interceptor. Install it with
// grpc.ChainUnaryInterceptor after your authentication interceptor, so
// that Scope sees the principal. It panics if s.Keeper (or its Store) is
// nil, or if s.Scope is nil and s.AllowAnonymous is not set: configuration
// errors found at start-up, as idemhttp.Middleware.Handler does.
func (s *Server) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	if s.Keeper == nil || s.Keeper.Store == nil {
		panic("idemgrpc: Server.Keeper with a Store is required")
	}
	if s.Scope == nil && !s.AllowAnonymous {
		panic("idemgrpc: set Server.Scope (preferably to a function returning the authenticated principal, " +
			"or to MetadataScope(secret) with at least 16 random bytes, the same on every instance and across restarts); " +
			"set Server.AllowAnonymous instead only if every caller may share one scope")
	}
	i := &interceptor{
		keeper:          s.Keeper,
		scope:           s.Scope,
		anonymous:       s.AllowAnonymous,
		key:             s.Key,
		requireKey:      s.RequireKey,
		protect:         s.Protect,
		fingerprint:     s.Fingerprint,
		wait:            s.Wait,
		waiters:         waitlimit.New(s.MaxWaiters, s.MaxWaitersPerKey, DefaultMaxWaiters, DefaultMaxWaitersPerKey),
		stored:          s.Stored,
		maxResult:       s.MaxResult,
		types:           s.Types,
		completeTimeout: s.CompleteTimeout,
		observe:         s.Observe,
	}
	if i.fingerprint == nil {
		i.fingerprint = DefaultFingerprint
	}
	if i.stored == nil {
		i.stored = DefaultStored
	}
	if i.maxResult <= 0 {
		i.maxResult = DefaultMaxResult
	}
	if i.types == nil {
		i.types = protoregistry.GlobalTypes
	}
	if i.completeTimeout <= 0 {
		i.completeTimeout = DefaultCompleteTimeout
	}
	return i.intercept
}

// StreamServerInterceptor returns a stream interceptor that passes every
// streaming call through untouched, key or not: a stream's messages are not
// held, stored or replayed, so streaming methods are outside the
// interceptor's guarantees. It exists so that a server can install both
// interceptors of a Server side by side and say so explicitly; make a
// streaming method idempotent in its handler (for example with idem.Do
// around each side effect).
func (s *Server) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, ss)
	}
}

// errNotProto is the fingerprint error for a request that is not a
// protobuf message.
var errNotProto = errors.New("idemgrpc: the request is not a protobuf message")

// fpVersion starts every fingerprint input, so that a future change of the
// fingerprint never matches an old record by accident.
const fpVersion = "idemgrpc-fp/1"

// fpPool holds fingerprint buffers.
var fpPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// DefaultFingerprint is the default Server.Fingerprint: SHA-256 over a
// version tag, the full method name and the deterministic protobuf
// marshalling of req (proto.MarshalOptions{Deterministic: true}), each
// length-prefixed. Two requests with equal messages therefore match; note
// that unknown fields count, and that the deterministic form is stable
// within one protobuf-go version (an upgrade that changed it would make
// retries across the upgrade mismatch, never replay a different request).
// It fails for a request that is not a proto.Message.
func DefaultFingerprint(fullMethod string, req any) ([]byte, error) {
	m, ok := req.(proto.Message)
	if !ok {
		return nil, errNotProto
	}
	bp := fpPool.Get().(*[]byte)
	b := append((*bp)[:0], fpVersion...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(fullMethod)))
	b = append(b, fullMethod...)
	at := len(b)
	b = binary.BigEndian.AppendUint64(b, 0) // the message's length, below
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, m)
	if err != nil {
		*bp = b[:0]
		fpPool.Put(bp)
		return nil, fmt.Errorf("idemgrpc: fingerprint: %w", err)
	}
	binary.BigEndian.PutUint64(b[at:], uint64(len(b)-at-8))
	sum := sha256.Sum256(b)
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		fpPool.Put(bp)
	}
	return sum[:], nil
}

func (i *interceptor) report(ctx context.Context, o Outcome) {
	if i.observe != nil {
		i.observe(ctx, o)
	}
}

// codeOf returns the status code grpc-go answers for a handler's error.
func codeOf(err error) codes.Code {
	return statusOf(err).Code()
}

// statusOf converts a handler's error to its status as grpc-go does: a
// status error as it is, a context error to its code, anything else to
// UNKNOWN. nil gives OK.
func statusOf(err error) *status.Status {
	if err == nil {
		return nil // a nil *Status is OK
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	return st
}

// intercept implements SPEC §3 for one unary call.
func (i *interceptor) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod
	if i.protect != nil && !i.protect(method) {
		return i.passthrough(ctx, req, method, handler)
	}
	key, err := callKey(ctx, req, i.key)
	if err != nil {
		i.report(ctx, Outcome{Kind: OutcomeKeyInvalid, Method: method, Code: codes.InvalidArgument, Err: err})
		return nil, errStatus(codes.InvalidArgument, ReasonKeyInvalid, err.Error(), 0)
	}
	if key == "" {
		if !i.requireKey {
			return i.passthrough(ctx, req, method, handler)
		}
		i.report(ctx, Outcome{Kind: OutcomeKeyMissing, Method: method, Code: codes.InvalidArgument, Err: ErrKeyMissing})
		return nil, errStatus(codes.InvalidArgument, ReasonKeyMissing,
			"idemgrpc: this method requires an idempotency key (the "+MetadataKey+" metadata or the request's own key)", 0)
	}
	scope, answer, err := i.scopeOf(ctx, method)
	if err != nil {
		i.report(ctx, Outcome{Kind: OutcomeScopeRefused, Method: method, Code: status.Code(answer), Err: err})
		return nil, answer
	}
	fp, err := i.fingerprint(method, req)
	if err != nil {
		i.report(ctx, Outcome{Kind: OutcomeBadRequest, Method: method, Code: codes.InvalidArgument, Err: err})
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	stream := grpc.ServerTransportStreamFromContext(ctx)
	a, err := i.waiters.Begin(ctx, i.keeper, scope, key, fp, i.wait)
	if err != nil {
		return i.refuse(ctx, stream, method, err)
	}
	if a.Lease == nil {
		return i.replay(ctx, stream, method, a.Result)
	}
	return i.execute(ctx, req, method, handler, a.Lease, stream)
}

// passthrough runs the handler unprotected.
func (i *interceptor) passthrough(ctx context.Context, req any, method string, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if i.observe != nil {
		i.observe(ctx, Outcome{Kind: OutcomePassthrough, Method: method, Code: codeOf(err)})
	}
	return resp, err
}

// scopeOf returns the call's scope, or the answer to a call whose scope is
// refused and the cause.
func (i *interceptor) scopeOf(ctx context.Context, method string) (scope string, answer, cause error) {
	if i.scope == nil {
		return "", nil, nil // AllowAnonymous: the anonymous scope
	}
	sc, err := i.scope(ctx, method)
	switch {
	case err == nil && sc != "":
		return sc, nil, nil
	case err == nil || errors.Is(err, ErrNoCredentials):
		if i.anonymous {
			return "", nil, nil
		}
		if err == nil {
			err = ErrNoCredentials
		}
		return "", errStatus(codes.Unauthenticated, ReasonCredentialsRequired,
			"idemgrpc: the call carries no credential to scope its idempotency key, and anonymous callers are not allowed (Server.AllowAnonymous)", 0), err
	}
	if st, ok := status.FromError(err); ok {
		return "", st.Err(), err
	}
	return "", status.Error(codes.Unauthenticated, "idemgrpc: scope: "+err.Error()), err
}

// refuse answers a call whose key could not be claimed.
func (i *interceptor) refuse(ctx context.Context, stream grpc.ServerTransportStream, method string, err error) (any, error) {
	var inflight *idem.InFlightError
	o := Outcome{Method: method, Err: err}
	var answer error
	switch {
	case errors.As(err, &inflight):
		left := max(inflight.LeaseLeft, time.Millisecond)
		setPushback(stream, left)
		o.Kind, o.Code = OutcomeConflict, codes.Aborted
		answer = errStatus(codes.Aborted, ReasonInProgress,
			fmt.Sprintf("idemgrpc: a call with this idempotency key is in progress; retry in %v", left.Round(time.Millisecond)), left)
	case errors.Is(err, idem.ErrMismatch):
		o.Kind, o.Code = OutcomeMismatch, codes.FailedPrecondition
		answer = errStatus(codes.FailedPrecondition, ReasonKeyReused,
			"idemgrpc: the idempotency key was used for a different request (another method or message); nothing was done, do not retry with this key", 0)
	case ctx.Err() != nil:
		st := status.FromContextError(ctx.Err())
		o.Kind, o.Code = OutcomeCanceled, st.Code()
		answer = st.Err()
	case errors.Is(err, idem.ErrStoreFull):
		// A budget or scope quota refused a new key: a policy limit.
		setPushback(stream, retryLater)
		o.Kind, o.Code = OutcomeStoreUnavailable, codes.ResourceExhausted
		answer = errStatus(codes.ResourceExhausted, ReasonStoreFull,
			"idemgrpc: the idempotency store is full; the call was not run", retryLater)
	default:
		setPushback(stream, retryLater)
		o.Kind, o.Code = OutcomeStoreUnavailable, codes.Unavailable
		answer = errStatus(codes.Unavailable, ReasonStoreUnavailable,
			"idemgrpc: the idempotency store is unavailable; the call was not run, a retry is safe", retryLater)
	}
	i.report(ctx, o)
	return nil, answer
}

// replay answers a stored result.
func (i *interceptor) replay(ctx context.Context, stream grpc.ServerTransportStream, method string, res []byte) (any, error) {
	r, derr := i.answer(stream, res)
	if derr != nil {
		i.report(ctx, Outcome{Kind: OutcomeReplayInvalid, Method: method, Code: codes.Internal, Err: derr})
		return nil, errStatus(codes.Internal, ReasonStoredResultInvalid,
			"idemgrpc: the stored result of this idempotency key cannot be decoded; the call was not run", 0)
	}
	i.report(ctx, Outcome{Kind: OutcomeReplayed, Method: method, Code: r.code})
	return r.resp, r.err
}

// reply is an answer to a call: a response message, or a status error, and
// its code.
type reply struct {
	resp any
	err  error
	code codes.Code
}

// answer decodes the stored result res and, when it is valid, sets its
// header and trailer metadata, with the replayed trailer, on stream. It
// returns the response message or the status error to answer, or an error
// when res cannot be decoded (nothing is set on stream then).
func (i *interceptor) answer(stream grpc.ServerTransportStream, res []byte) (reply, error) {
	var a reply
	r, err := decodeResult(res)
	if err != nil {
		return a, err
	}
	if r.isStatus {
		sp := new(spb.Status)
		if err := proto.Unmarshal(r.body, sp); err != nil {
			return a, fmt.Errorf("%w: status: %v", errCodec, err)
		}
		if sp.Code == 0 {
			return a, fmt.Errorf("%w: stored status with code OK", errCodec)
		}
		a.err, a.code = status.ErrorProto(sp), codes.Code(sp.Code)
	} else {
		mt, err := i.findType(r.name)
		if err != nil {
			return a, fmt.Errorf("%w: response type %s: %v", errCodec, r.name, err)
		}
		m := mt.New().Interface()
		if err := proto.Unmarshal(r.body, m); err != nil {
			return a, fmt.Errorf("%w: response %s: %v", errCodec, r.name, err)
		}
		a.resp = m
	}
	if stream != nil {
		if h := r.header.md("", ""); h != nil {
			_ = stream.SetHeader(h)
		}
		_ = stream.SetTrailer(r.trailer.md(ReplayedTrailer, "true"))
	}
	return a, nil
}

// resultPool holds result buffers: a store copies what it keeps.
var resultPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// execute runs the handler under lease, completes or releases the record,
// and only then answers (SPEC §3: acknowledged ⇒ replayable).
func (i *interceptor) execute(ctx context.Context, req any, method string, handler grpc.UnaryHandler, lease *idem.Lease, stream grpc.ServerTransportStream) (any, error) {
	lease.StartRenewal()
	c := &capture{method: method}
	if stream != nil {
		c.method = stream.Method()
	}
	hctx := lease.Context(grpc.NewContextWithServerTransportStream(ctx, c))
	finished := false
	defer func() {
		if finished {
			return
		}
		// The handler panicked (or called runtime.Goexit): release the
		// record so that a retry executes, and let the panic continue.
		c.finish()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.completeTimeout)
		err := lease.Release(rctx)
		cancel()
		i.report(ctx, Outcome{Kind: OutcomePanic, Method: method, Fence: lease.Fence(), Takeover: lease.Takeover(), Err: err})
	}()
	resp, herr := handler(hctx, req)
	finished = true
	header, trailer := c.finish()
	st := statusOf(herr)
	code := st.Code()
	o := Outcome{Kind: OutcomeExecuted, Method: method, Code: code, Fence: lease.Fence(), Takeover: lease.Takeover()}

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.completeTimeout)
	defer cancel()
	if !i.stored(code) {
		// Released first, then answered: a retry sent the instant the
		// answer is read executes again.
		o.Err = lease.Release(cctx)
		if o.Err != nil && (errors.Is(o.Err, idem.ErrLeaseLost) || lease.IsLost()) {
			a := i.notRecorded(ctx, stream, lease, o.Err)
			resp, herr, o.Code = a.resp, a.err, a.code
		} else {
			// A failed release only delays the retry until the lease ends.
			forward(stream, header, trailer)
		}
		i.report(ctx, o)
		return resp, herr
	}

	bp := resultPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 {
			*bp = (*bp)[:0]
			resultPool.Put(bp)
		}
	}()
	res, stand := i.encode((*bp)[:0], resp, st, header, trailer)
	*bp = res
	o.Err = lease.Complete(cctx, res)
	if errors.Is(o.Err, idem.ErrStoreFull) && stand == nil {
		// The store's budget refused the result: store the stand-in
		// instead, so that the handler does not run again.
		stand = standIn(ReasonResultTooLarge, fmt.Sprintf("its result (%d bytes) did not fit in the idempotency store", len(res)))
		res = encodeStandIn((*bp)[:0], stand)
		*bp = res
		o.Err = lease.Complete(cctx, res)
	}
	if o.Err != nil {
		a := i.notRecorded(ctx, stream, lease, o.Err)
		o.Code = a.code
		i.report(ctx, o)
		return a.resp, a.err
	}
	o.Stored = true
	if stand != nil {
		o.Replaced, o.Code = true, stand.Code()
		i.report(ctx, o)
		return nil, stand.Err()
	}
	forward(stream, header, trailer)
	i.report(ctx, o)
	return resp, herr
}

// forward sets the handler's header and trailer metadata on stream, without
// the replayed mark (which only replays carry).
func forward(stream grpc.ServerTransportStream, header, trailer metadata.MD) {
	if stream == nil {
		return
	}
	if len(header) > 0 {
		_ = stream.SetHeader(without(header, ReplayedTrailer))
	}
	if len(trailer) > 0 {
		_ = stream.SetTrailer(without(trailer, ReplayedTrailer))
	}
}

// detOpts is the deterministic marshalling used for stored results.
var detOpts = proto.MarshalOptions{Deterministic: true}

// encode appends to b the stored result of the handler's answer: resp, or
// the error status st, with the header and trailer metadata. When that
// answer cannot be stored as it is (larger than MaxResult, or a response
// that cannot be replayed), it returns the stand-in status stored instead,
// b then holding the stand-in's encoding.
func (i *interceptor) encode(b []byte, resp any, st *status.Status, header, trailer metadata.MD) ([]byte, *status.Status) {
	if st != nil {
		b = appendHead(b, kindStatus, header, trailer)
		var err error
		if b, err = detOpts.MarshalAppend(b, st.Proto()); err != nil {
			s := standIn(ReasonResultNotReplayable, fmt.Sprintf("its status could not be marshalled: %v", err))
			return encodeStandIn(b[:0], s), s
		}
	} else {
		m, ok := resp.(proto.Message)
		if !ok || m == nil {
			s := standIn(ReasonResultNotReplayable, fmt.Sprintf("its response (%T) is not a protobuf message", resp))
			return encodeStandIn(b[:0], s), s
		}
		name := m.ProtoReflect().Descriptor().FullName()
		if _, err := i.types.FindMessageByName(name); err != nil {
			s := standIn(ReasonResultNotReplayable, fmt.Sprintf("its response type %s is not registered (Server.Types)", name))
			return encodeStandIn(b[:0], s), s
		}
		b = appendHead(b, kindMessage, header, trailer)
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		var err error
		if b, err = detOpts.MarshalAppend(b, m); err != nil {
			s := standIn(ReasonResultNotReplayable, fmt.Sprintf("its response could not be marshalled: %v", err))
			return encodeStandIn(b[:0], s), s
		}
	}
	if len(b) > i.maxResult {
		s := standIn(ReasonResultTooLarge, fmt.Sprintf("its result (%d bytes) is larger than Server.MaxResult (%d)", len(b), i.maxResult))
		return encodeStandIn(b[:0], s), s
	}
	return b, nil
}

// standIn returns the INTERNAL status stored in place of a result that
// cannot be stored as it is.
func standIn(reason, why string) *status.Status {
	err := errStatus(codes.Internal, reason, "idemgrpc: the call was executed, but "+why+
		"; this status was stored in its place and answers every call with this idempotency key", 0)
	st, _ := status.FromError(err)
	return st
}

// encodeStandIn appends the encoding of the stand-in status s (no metadata).
func encodeStandIn(b []byte, s *status.Status) []byte {
	b = appendHead(b, kindStatus, nil, nil)
	b, _ = detOpts.MarshalAppend(b, s.Proto()) // a Status with known details always marshals
	return b
}

// notRecorded returns the answer, in place of the handler's, to a call
// whose record could not be completed (or released) because of err, and
// its code. When another executor took the key over (idem.ErrLeaseLost),
// the call gets that executor's stored result if there is one, as a replay,
// else UNAVAILABLE lease-lost: an executor whose lease was lost never
// answers with its own result. Otherwise the outcome is unknown (the store
// may or may not have applied the completion): UNAVAILABLE outcome-unknown,
// and a retry is safe (it replays, or executes again once the lease ends).
func (i *interceptor) notRecorded(ctx context.Context, stream grpc.ServerTransportStream, lease *idem.Lease, err error) reply {
	if errors.Is(err, idem.ErrLeaseLost) || lease.IsLost() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), i.completeTimeout)
		res, ok, _ := lease.Superseded(sctx)
		cancel()
		if ok {
			if a, err := i.answer(stream, res); err == nil {
				return a
			}
		}
		setPushback(stream, retryLater)
		return reply{err: errStatus(codes.Unavailable, ReasonLeaseLost,
			"idemgrpc: another executor took this idempotency key over while the call ran and has no result yet; retry with the same key", retryLater), code: codes.Unavailable}
	}
	setPushback(stream, retryLater)
	return reply{err: errStatus(codes.Unavailable, ReasonOutcomeUnknown,
		"idemgrpc: the call was executed but its result could not be recorded (outcome unknown); "+
			"a retry with the same idempotency key is safe: it gets the result if it was recorded, or runs again once the lease ends", retryLater), code: codes.Unavailable}
}
