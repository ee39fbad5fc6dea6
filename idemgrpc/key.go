package idemgrpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemclient"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// MetadataKey is the metadata key carrying a call's idempotency key, the
// gRPC spelling of HTTP's Idempotency-Key header.
const MetadataKey = "idempotency-key"

// ReplayedTrailer is the trailer set to "true" on every replayed answer.
const ReplayedTrailer = "idempotency-replayed"

// RequestIDField returns a Server.Key (or a client request key, see
// ClientRequestKey) that reads the key from the request message's string
// field name, as Google's AIP-155 asks of mutating requests:
//
//	string request_id = 3; // a UUID; the request is idempotent when set
//
// It returns "" (no key) when the request is not a protobuf message, has no
// singular string field of that name, or leaves it empty.
func RequestIDField(name protoreflect.Name) func(req any) string {
	return func(req any) string {
		m, ok := req.(proto.Message)
		if !ok || m == nil {
			return ""
		}
		r := m.ProtoReflect()
		fd := r.Descriptor().Fields().ByName(name)
		if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
			return ""
		}
		return r.Get(fd).String()
	}
}

// NewKey returns a fresh random key: a UUID version 4 from crypto/rand in
// its canonical 36-character form (idemclient.NewKey). It is what
// UnaryClientInterceptor sends when a call has no key; use it with WithKey
// for a retry loop of your own.
func NewKey() string { return idemclient.NewKey() }

// Errors of the key, wrapped in the INVALID_ARGUMENT answers and in
// Outcome.Err.
var (
	// ErrKeyMissing: the method requires a key (Server.RequireKey) and the
	// call carries none.
	ErrKeyMissing = errors.New("idemgrpc: idempotency key missing")
	// ErrKeyConflict: the metadata and the request message carry
	// different keys. It wraps idem.ErrInvalidKey.
	ErrKeyConflict = fmt.Errorf("%w: the %s metadata and the request's key differ", idem.ErrInvalidKey, MetadataKey)
)

// callKey returns the key of a call: the idempotency-key metadata, or what
// fromReq reads from the request. It returns "" and nil when the call has no
// key; an error wrapping idem.ErrInvalidKey or ErrKeyConflict when the key
// is invalid, sent twice, or different in the two places.
func callKey(ctx context.Context, req any, fromReq func(any) string) (string, error) {
	var key string
	vals := metadata.ValueFromIncomingContext(ctx, MetadataKey)
	switch len(vals) {
	case 0:
	case 1:
		key = vals[0]
		if err := idem.ValidateKey(key); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("%w: %d %s values", idem.ErrInvalidKey, len(vals), MetadataKey)
	}
	if fromReq == nil {
		return key, nil
	}
	rk := fromReq(req)
	switch {
	case rk == "":
		return key, nil
	case key == "":
		if err := idem.ValidateKey(rk); err != nil {
			return "", err
		}
		return rk, nil
	case rk != key:
		return "", ErrKeyConflict
	}
	return key, nil
}
