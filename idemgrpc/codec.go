package idemgrpc

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/metadata"

	"github.com/idemkit/idem/internal/wire"
)

// The stored result of one call: what a replay answers. Binary format,
// version 1 (all integers are minimal unsigned varints):
//
//	version   byte = 1
//	kind      byte: 0 = a response message (status OK), 1 = an error status
//	header    metadata
//	trailer   metadata
//	kind 0:   name-len uvarint ≥ 1, name (the message's full name, such as
//	          google.protobuf.StringValue), then the message bytes: the
//	          remaining bytes (possibly none)
//	kind 1:   the remaining bytes, at least one: a google.rpc.Status
//	          (code ≠ 0, message, details), deterministically marshalled
//
// metadata is
//
//	nkeys     uvarint
//	nkeys × { key-len uvarint ≥ 1, key, nvalues uvarint ≥ 1, nvalues × { len uvarint, value } }
//
// with keys strictly increasing (byte order), so that every result has
// exactly one encoding, and never the key idempotency-replayed (the mark of
// replays, added when answering).
const (
	codecVersion = 1
	kindMessage  = 0
	kindStatus   = 1
)

// errCodec is wrapped by every decoding error.
var errCodec = errors.New("idemgrpc: invalid stored result")

// result is a decoded stored result. Its byte slices alias the encoding.
type result struct {
	isStatus bool
	name     []byte // kindMessage: the message's full name
	body     []byte // the message bytes, or the google.rpc.Status bytes
	header   mdSection
	trailer  mdSection
}

// mdSection is a validated metadata section of an encoding.
type mdSection struct {
	nkeys   int
	nvalues int
	raw     []byte // the section after its key count
}

// isReplayed reports the replay mark's key, which is never stored.
func isReplayed(k string) bool { return k == ReplayedTrailer }

// appendHead appends the version, the kind and both metadata sections.
// Keys named ReplayedTrailer are not stored: that trailer is the
// interceptor's own mark on replays.
func appendHead(b []byte, kind byte, header, trailer metadata.MD) []byte {
	b = append(b, codecVersion, kind)
	b = wire.AppendMap(b, header, isReplayed)
	return wire.AppendMap(b, trailer, isReplayed)
}

// decodeMD validates the metadata section at *off.
func decodeMD(data []byte, off *int) (mdSection, error) {
	var s mdSection
	n, ok := wire.Length(data, off) // each key takes at least 3 bytes
	if !ok {
		return s, fmt.Errorf("%w: bad metadata key count", errCodec)
	}
	s.nkeys = n
	start := *off
	var prev []byte
	for i := 0; i < n; i++ {
		kl, ok := wire.Length(data, off)
		if !ok || kl == 0 {
			return s, fmt.Errorf("%w: bad metadata key", errCodec)
		}
		key := data[*off : *off+kl]
		*off += kl
		if i > 0 && string(prev) >= string(key) {
			return s, fmt.Errorf("%w: metadata keys not strictly increasing", errCodec)
		}
		if string(key) == ReplayedTrailer {
			return s, fmt.Errorf("%w: the %s key is never stored", errCodec, ReplayedTrailer)
		}
		prev = key
		nv, ok := wire.Length(data, off)
		if !ok || nv == 0 {
			return s, fmt.Errorf("%w: bad metadata value count", errCodec)
		}
		s.nvalues += nv
		for j := 0; j < nv; j++ {
			vl, ok := wire.Length(data, off)
			if !ok {
				return s, fmt.Errorf("%w: bad metadata value", errCodec)
			}
			*off += vl
		}
	}
	s.raw = data[start:*off]
	return s, nil
}

// decodeResult validates data, a stored result, without copying it. It
// returns an error, and never panics, on any input that is not exactly one
// valid encoding.
func decodeResult(data []byte) (result, error) {
	var r result
	if len(data) < 2 {
		return r, fmt.Errorf("%w: %d bytes", errCodec, len(data))
	}
	if data[0] != codecVersion {
		return r, fmt.Errorf("%w: unknown version %d", errCodec, data[0])
	}
	switch data[1] {
	case kindMessage:
	case kindStatus:
		r.isStatus = true
	default:
		return r, fmt.Errorf("%w: unknown kind %d", errCodec, data[1])
	}
	off := 2
	var err error
	if r.header, err = decodeMD(data, &off); err != nil {
		return r, err
	}
	if r.trailer, err = decodeMD(data, &off); err != nil {
		return r, err
	}
	if r.isStatus {
		if off == len(data) {
			return r, fmt.Errorf("%w: empty status", errCodec)
		}
		r.body = data[off:]
		return r, nil
	}
	n, ok := wire.Length(data, &off)
	if !ok || n == 0 {
		return r, fmt.Errorf("%w: bad message type name", errCodec)
	}
	r.name = data[off : off+n]
	r.body = data[off+n:]
	return r, nil
}

// md materialises a validated metadata section, adding the extra pair
// (key, value) when key is not empty. All keys and values share one string
// allocation and all value slices one backing array (each capped to its
// length, so an append by a caller reallocates). It returns nil for an
// empty section without an extra pair.
func (s mdSection) md(key, value string) metadata.MD {
	n := s.nkeys
	if key != "" {
		n++
	}
	if n == 0 {
		return nil
	}
	md := make(metadata.MD, n)
	if key != "" {
		md[key] = []string{value}
	}
	if s.nkeys == 0 {
		return md
	}
	str := string(s.raw)
	all := make([]string, s.nvalues)
	off := 0
	b := s.raw
	for i := 0; i < s.nkeys; i++ {
		kl, _ := wire.Length(b, &off)
		k := str[off : off+kl]
		off += kl
		nv, _ := wire.Length(b, &off)
		vs := all[:nv:nv]
		all = all[nv:]
		for j := range vs {
			vl, _ := wire.Length(b, &off)
			vs[j] = str[off : off+vl]
			off += vl
		}
		if k != key { // the extra pair wins
			md[k] = vs
		}
	}
	return md
}
