package filestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/idemkit/idem"
)

// ErrCorrupt reports a stored record that does not decode: its bytes were
// damaged outside the store, or were written by an incompatible version.
// The store wraps it together with idem.ErrStoreUnavailable, so callers
// fail closed instead of executing an operation whose record they cannot
// read.
var ErrCorrupt = errors.New("filestore: corrupt record")

// recordVersion is the first byte of every encoded record.
const recordVersion = 1

// Fixed part of an encoded record: version, state, fence, start, deadline.
const (
	headerLen  = 1 + 1 + 8 + 8 + 8
	trailerLen = 4 // CRC-32C of everything before it
	minLen     = headerLen + 1 + 1 + trailerLen
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is one key's state as stored. Times are wall-clock Unix
// nanoseconds, so deadlines keep their meaning across restarts.
type record struct {
	state    idem.State
	fence    uint64
	start    int64  // when the current fence acquired the record
	deadline int64  // lease end (in progress) or retention end (completed)
	fp       []byte // never nil after decode
	result   []byte // empty while in progress; never nil after decode
}

// encodeRecord returns the version-1 encoding of r:
//
//	version   1 byte  (1)
//	state     1 byte  (1 in progress, 2 completed)
//	fence     8 bytes big-endian
//	start     8 bytes big-endian two's complement Unix ns
//	deadline  8 bytes big-endian two's complement Unix ns
//	fp        uvarint length, bytes
//	result    uvarint length, bytes (length 0 while in progress)
//	crc       4 bytes big-endian CRC-32C of all the bytes above
//
// The returned slice is freshly allocated and shares nothing with r.
func encodeRecord(r *record) []byte {
	n := headerLen + uvarintLen(uint64(len(r.fp))) + len(r.fp) +
		uvarintLen(uint64(len(r.result))) + len(r.result) + trailerLen
	b := make([]byte, headerLen, n)
	b[0] = recordVersion
	b[1] = byte(r.state)
	binary.BigEndian.PutUint64(b[2:], r.fence)
	binary.BigEndian.PutUint64(b[10:], uint64(r.start))
	binary.BigEndian.PutUint64(b[18:], uint64(r.deadline))
	b = binary.AppendUvarint(b, uint64(len(r.fp)))
	b = append(b, r.fp...)
	b = binary.AppendUvarint(b, uint64(len(r.result)))
	b = append(b, r.result...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeRecord parses an encoding made by encodeRecord. It accepts exactly
// the byte strings encodeRecord produces (so decoding and re-encoding gives
// the same bytes) and returns an error wrapping ErrCorrupt for anything else;
// it never panics. The returned slices are copies: b may be reused.
func decodeRecord(b []byte) (record, error) {
	var r record
	if len(b) < minLen {
		return r, fmt.Errorf("%w: %d bytes, shorter than %d", ErrCorrupt, len(b), minLen)
	}
	body := b[:len(b)-trailerLen]
	if got, want := crc32.Checksum(body, castagnoli), binary.BigEndian.Uint32(b[len(body):]); got != want {
		return r, fmt.Errorf("%w: checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	if body[0] != recordVersion {
		return r, fmt.Errorf("%w: unknown version %d", ErrCorrupt, body[0])
	}
	r.state = idem.State(body[1])
	if r.state != idem.StateInProgress && r.state != idem.StateCompleted {
		return r, fmt.Errorf("%w: unknown state %d", ErrCorrupt, body[1])
	}
	r.fence = binary.BigEndian.Uint64(body[2:])
	r.start = int64(binary.BigEndian.Uint64(body[10:]))
	r.deadline = int64(binary.BigEndian.Uint64(body[18:]))
	rest := body[headerLen:]
	var err error
	if r.fp, rest, err = readBytes(rest, "fingerprint"); err != nil {
		return record{}, err
	}
	if r.result, rest, err = readBytes(rest, "result"); err != nil {
		return record{}, err
	}
	if len(rest) != 0 {
		return record{}, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(rest))
	}
	if r.state == idem.StateInProgress && len(r.result) != 0 {
		return record{}, fmt.Errorf("%w: in-progress record holds a result", ErrCorrupt)
	}
	return r, nil
}

// readBytes reads one canonical uvarint length and that many bytes, copied.
func readBytes(b []byte, what string) (v, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || k != uvarintLen(n) {
		return nil, nil, fmt.Errorf("%w: bad %s length", ErrCorrupt, what)
	}
	b = b[k:]
	if n > uint64(len(b)) || n > math.MaxInt32 {
		return nil, nil, fmt.Errorf("%w: %s length %d exceeds the %d bytes left", ErrCorrupt, what, n, len(b))
	}
	v = make([]byte, n)
	copy(v, b)
	return v, b[n:], nil
}

// uvarintLen returns the length of the canonical uvarint encoding of v.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
