package idem

import (
	"context"
	"encoding/json"
	"errors"
)

// Codec encodes the results of Do for storage.
type Codec[T any] interface {
	Encode(v T) ([]byte, error)
	Decode(b []byte) (T, error)
}

// JSONCodec is the default Codec: encoding/json.
type JSONCodec[T any] struct{}

// Encode returns the JSON encoding of v.
func (JSONCodec[T]) Encode(v T) ([]byte, error) { return json.Marshal(v) }

// Decode parses the JSON in b.
func (JSONCodec[T]) Decode(b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

// Call describes one idempotent call of a plain Go function for DoCall.
type Call[T any] struct {
	Scope string
	Key   string
	// Fingerprint identifies the arguments. If nil, an empty fingerprint is
	// used and any reuse of the key replays.
	Fingerprint []byte
	// Codec encodes the result. If nil, JSONCodec is used.
	Codec Codec[T]
}

// Do runs fn at most once per (scope, key) within the Keeper's retention
// and returns its result. A later call with the same scope and key returns
// the stored result and replayed == true without running fn. A call while
// another is in flight returns an error matching ErrInFlight. When fn returns
// an error the record is released (a later call runs fn again) and the error
// is returned. fn's context carries the fence (FenceFromContext); the lease
// is renewed while fn runs.
func Do[T any](ctx context.Context, k *Keeper, scope, key string, fn func(context.Context) (T, error)) (result T, replayed bool, err error) {
	return DoCall(ctx, k, Call[T]{Scope: scope, Key: key}, fn)
}

// DoCall is Do with a fingerprint and a codec.
func DoCall[T any](ctx context.Context, k *Keeper, c Call[T], fn func(context.Context) (T, error)) (result T, replayed bool, err error) {
	codec := c.Codec
	if codec == nil {
		codec = JSONCodec[T]{}
	}
	fp := c.Fingerprint
	if fp == nil {
		fp = []byte{}
	}
	a, err := k.Begin(ctx, c.Scope, c.Key, fp)
	if err != nil {
		return result, false, err
	}
	if a.Replayed() {
		v, err := codec.Decode(a.Result)
		return v, true, err
	}
	l := a.Lease
	l.StartRenewal()
	done := false
	defer func() {
		if !done { // fn panicked: release, then re-panic
			_ = l.Release(context.WithoutCancel(ctx))
		}
	}()
	v, ferr := fn(l.Context(ctx))
	done = true
	if ferr != nil {
		return v, false, releaseAfter(ctx, l, ferr)
	}
	b, err := codec.Encode(v)
	if err != nil {
		return v, false, releaseAfter(ctx, l, err)
	}
	if err := l.Complete(context.WithoutCancel(ctx), b); err != nil {
		return v, false, err
	}
	return v, false, nil
}

// releaseAfter releases l after cause made the call fail. It returns cause
// itself, or cause joined with the release's error when that failed too.
func releaseAfter(ctx context.Context, l *Lease, cause error) error {
	if err := l.Release(context.WithoutCancel(ctx)); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}
