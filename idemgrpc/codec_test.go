package idemgrpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/idemkit/idem"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// reencode returns the encoding of a decoded result.
func reencode(r result) []byte {
	kind := byte(kindMessage)
	if r.isStatus {
		kind = kindStatus
	}
	b := appendHead(nil, kind, r.header.md("", ""), r.trailer.md("", ""))
	if !r.isStatus {
		b = binary.AppendUvarint(b, uint64(len(r.name)))
		b = append(b, r.name...)
	}
	return append(b, r.body...)
}

// seeds returns valid encodings made the way the interceptor makes them.
func seeds(t testing.TB) [][]byte {
	i := &interceptor{types: protoregistry.GlobalTypes, maxResult: DefaultMaxResult}
	hdr := metadata.Pairs("x-a", "1", "x-b", "2", "x-b", "3", "x-bin", "\x00\xff")
	trl := metadata.Pairs("x-t", "t", ReplayedTrailer, "forged")
	st, err := status.New(codes.InvalidArgument, "bad").WithDetails(wrapperspb.String("detail"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, c := range []struct {
		resp any
		st   *status.Status
		h, t metadata.MD
	}{
		{wrapperspb.String("hello"), nil, hdr, trl},
		{wrapperspb.String(""), nil, nil, nil},
		{nil, st, hdr, nil},
		{nil, status.New(codes.NotFound, ""), nil, trl},
		{"not a message", nil, nil, nil},
	} {
		b, _ := i.encode(nil, c.resp, c.st, c.h, c.t)
		out = append(out, b)
	}
	return out
}

func TestCodecRoundTrip(t *testing.T) {
	i := &interceptor{types: protoregistry.GlobalTypes, maxResult: DefaultMaxResult}
	for n, b := range seeds(t) {
		r, err := decodeResult(b)
		if err != nil {
			t.Fatalf("seed %d: %v", n, err)
		}
		if got := reencode(r); !bytes.Equal(got, b) {
			t.Fatalf("seed %d: re-encoded %x, want %x", n, got, b)
		}
		if _, err := i.answer(nil, b); err != nil {
			t.Fatalf("seed %d: answer: %v", n, err)
		}
	}
	// The first seed: header, trailer (without the forged mark) and message.
	r, _ := decodeResult(seeds(t)[0])
	h := r.header.md("", "")
	tr := r.trailer.md(ReplayedTrailer, "true")
	if len(h) != 3 || len(h["x-b"]) != 2 || h["x-bin"][0] != "\x00\xff" || tr[ReplayedTrailer][0] != "true" || tr["x-t"][0] != "t" || len(tr) != 2 {
		t.Fatalf("metadata %v / %v", h, tr)
	}
	a, err := i.answer(nil, seeds(t)[0])
	if err != nil || !proto.Equal(a.resp.(proto.Message), wrapperspb.String("hello")) {
		t.Fatalf("answer %v %v", a.resp, err)
	}
	// The error seed replays its status with details.
	a, err = i.answer(nil, seeds(t)[2])
	if err != nil || status.Code(a.err) != codes.InvalidArgument || len(status.Convert(a.err).Details()) != 1 {
		t.Fatalf("answer %v %v", a.err, err)
	}
	// A message type that is not registered cannot be replayed.
	b := appendHead(nil, kindMessage, nil, nil)
	b = append(b, byte(len("x.Nope")))
	b = append(b, "x.Nope"...)
	if _, err := i.answer(nil, b); err == nil {
		t.Fatal("an unregistered type was replayed")
	}
}

func TestCodecRejects(t *testing.T) {
	good := seeds(t)[0]
	for name, b := range map[string][]byte{
		"empty":         nil,
		"one byte":      {1},
		"version":       append([]byte{2}, good[1:]...),
		"kind":          append([]byte{1, 7}, good[2:]...),
		"truncated":     good[:len(good)/2],
		"no name":       {1, 0, 0, 0, 0},
		"empty status":  {1, 1, 0, 0},
		"non-minimal":   {1, 0, 0x80, 0x00, 0},
		"unsorted keys": {1, 0, 2, 1, 'b', 1, 0, 1, 'a', 1, 0, 0, 1, 'x'},
		"dup keys":      {1, 0, 2, 1, 'a', 1, 0, 1, 'a', 1, 0, 0, 1, 'x'},
		"no values":     {1, 0, 1, 1, 'a', 0, 0, 1, 'x'},
		"replayed key":  append(append([]byte{1, 0, 1, byte(len(ReplayedTrailer))}, ReplayedTrailer...), 1, 0, 0, 1, 'x'),
	} {
		if _, err := decodeResult(b); !errors.Is(err, errCodec) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// FuzzResult: decoding never panics; a valid encoding is the only encoding
// of what it decodes to; answering a stored result never panics.
func FuzzResult(f *testing.F) {
	for _, b := range seeds(f) {
		f.Add(b)
	}
	i := &interceptor{types: protoregistry.GlobalTypes, maxResult: DefaultMaxResult}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeResult(data)
		if err != nil {
			if !errors.Is(err, errCodec) {
				t.Fatalf("error %v does not wrap errCodec", err)
			}
			return
		}
		if got := reencode(r); !bytes.Equal(got, data) {
			t.Fatalf("re-encoded %x, want %x", got, data)
		}
		a, err := i.answer(nil, data)
		if err == nil && (a.resp == nil) == (a.err == nil) {
			t.Fatalf("answer with response %v and error %v", a.resp, a.err)
		}
	})
}

// FuzzCallKey: the key of a call is valid, and is the key of the metadata
// or of the request, whatever they hold.
func FuzzCallKey(f *testing.F) {
	f.Add("abc", "", false)
	f.Add("abc", "abc", true)
	f.Add("a b", "", true)
	f.Add("", "req-1", true)
	f.Add("k1", "k2", true)
	f.Fuzz(func(t *testing.T, md, rk string, twice bool) {
		pairs := []string{}
		if md != "" || twice {
			pairs = append(pairs, MetadataKey, md)
			if twice {
				pairs = append(pairs, MetadataKey, md)
			}
		}
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(pairs...))
		key, err := callKey(ctx, nil, func(any) string { return rk })
		if err != nil {
			if !errors.Is(err, idem.ErrInvalidKey) {
				t.Fatalf("error %v does not wrap idem.ErrInvalidKey", err)
			}
			return
		}
		if twice {
			t.Fatal("two metadata values accepted")
		}
		if key == "" {
			if md != "" || rk != "" {
				t.Fatalf("no key from %q / %q", md, rk)
			}
			return
		}
		if idem.ValidateKey(key) != nil || (key != md && key != rk) || (md != "" && rk != "" && md != rk) {
			t.Fatalf("key %q from %q / %q", key, md, rk)
		}
	})
}
