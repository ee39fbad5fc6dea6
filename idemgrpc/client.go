package idemgrpc

import (
	"context"
	"fmt"

	"github.com/idemkit/idem"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ClientOption configures UnaryClientInterceptor.
type ClientOption func(*clientConfig)

type clientConfig struct {
	methods func(fullMethod string) bool
	fromReq func(req any) string
	newKey  func() string
}

// ClientMethods selects the methods for which the interceptor makes up a
// key when the call has none: pred gets the full method name
// ("/pkg.Service/Method"). By default every unary method. A key given with
// WithKey or read by ClientRequestKey is sent whatever pred says.
func ClientMethods(pred func(fullMethod string) bool) ClientOption {
	return func(c *clientConfig) { c.methods = pred }
}

// ClientRequestKey sets where a request message carries its own key (its
// AIP-155 request_id): when fn returns a non-empty key, the interceptor
// sends that key in the metadata too, so that the server never sees two
// different keys. The default is RequestIDField("request_id"); nil turns
// it off.
func ClientRequestKey(fn func(req any) string) ClientOption {
	return func(c *clientConfig) { c.fromReq = fn }
}

// ClientKeyGenerator replaces NewKey as the source of the keys the
// interceptor makes up.
func ClientKeyGenerator(fn func() string) ClientOption {
	return func(c *clientConfig) { c.newKey = fn }
}

// keyCtx is the context key of WithKey.
type keyCtx struct{}

// WithKey returns a copy of ctx whose unary calls, through
// UnaryClientInterceptor, carry key as their idempotency key. Use it to
// send a key you persisted, or to keep one key across a retry loop of your
// own (retries made by grpc-go's retry policy keep the key by themselves).
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyCtx{}, key)
}

// KeyFromContext returns the key set by WithKey, if any.
func KeyFromContext(ctx context.Context) (string, bool) {
	k, ok := ctx.Value(keyCtx{}).(string)
	return k, ok
}

// UnaryClientInterceptor returns a client interceptor that gives every
// unary call an idempotency key, in the idempotency-key metadata: the
// outgoing metadata's own (left alone), else the key of WithKey, else the
// request's own key (ClientRequestKey, by default an AIP-155 request_id
// field), else, for the methods ClientMethods selects (all by default), a
// fresh NewKey.
//
// The key is added once per call, above grpc-go's retry machinery, so every
// attempt that a service-config retryPolicy (or a transparent retry) makes
// carries the same key, and the server runs the call once. A retry loop of
// your own calls the interceptor again for each attempt: set the key with
// WithKey before the loop. A call whose explicit key is invalid (see
// idem.ValidateKey), or differs from the request's own, fails with
// INVALID_ARGUMENT without being sent.
func UnaryClientInterceptor(opts ...ClientOption) grpc.UnaryClientInterceptor {
	c := &clientConfig{fromReq: RequestIDField("request_id"), newKey: NewKey}
	for _, o := range opts {
		o(c)
	}
	if c.newKey == nil {
		c.newKey = NewKey
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if len(metadata.ValueFromOutgoingContext(ctx, MetadataKey)) > 0 {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		key, explicit := KeyFromContext(ctx)
		var rk string
		if c.fromReq != nil {
			rk = c.fromReq(req)
		}
		switch {
		case explicit:
			if err := idem.ValidateKey(key); err != nil {
				return status.Error(codes.InvalidArgument, fmt.Sprintf("idemgrpc: %v", err))
			}
			if rk != "" && rk != key {
				return status.Error(codes.InvalidArgument, fmt.Sprintf("idemgrpc: WithKey(%q) and the request's key %q differ", key, rk))
			}
		case rk != "":
			key = rk
		case c.methods == nil || c.methods(method):
			key = c.newKey()
		default:
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		return invoker(metadata.AppendToOutgoingContext(ctx, MetadataKey, key), method, req, reply, cc, opts...)
	}
}
