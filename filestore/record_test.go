package filestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"reflect"
	"testing"

	"github.com/idemkit/idem"
)

func sampleRecords() []record {
	return []record{
		{state: idem.StateInProgress, fence: 1, start: 0, deadline: 30, fp: []byte{}, result: []byte{}},
		{state: idem.StateInProgress, fence: math.MaxUint64, start: math.MinInt64, deadline: math.MaxInt64, fp: bytes.Repeat([]byte{0xff}, 32), result: []byte{}},
		{state: idem.StateCompleted, fence: 1764300000000000, start: 1764300000000000000, deadline: 1764386400000000000, fp: idem.Fingerprint([]byte("x")), result: []byte(`{"ok":true}`)},
		{state: idem.StateCompleted, fence: 7, start: -5, deadline: -1, fp: []byte{0}, result: bytes.Repeat([]byte{0, 1}, 300)},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for i, r := range sampleRecords() {
		b := encodeRecord(&r)
		got, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("%d: decode(encode(%+v)): %v", i, r, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%d: round trip = %+v, want %+v", i, got, r)
		}
		// The decoded slices are copies: scribbling on the input changes
		// nothing.
		for j := range b {
			b[j] = 0xAA
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%d: decoded record aliases its input", i)
		}
	}
}

// reseal recomputes the checksum of an encoded record after a test edits it,
// so that the decoder's other checks are reached.
func reseal(b []byte) []byte {
	body := b[:len(b)-trailerLen]
	binary.BigEndian.PutUint32(b[len(body):], crc32.Checksum(body, castagnoli))
	return b
}

func TestDecodeRecordRejects(t *testing.T) {
	good := encodeRecord(&record{state: idem.StateCompleted, fence: 3, fp: []byte("fp"), result: []byte("res")})
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"nil", nil},
		{"short", good[:minLen-1]},
		{"truncated", good[:len(good)-1]},
		{"flipped bit", edit(func(b []byte) []byte { b[headerLen+1] ^= 1; return b })},
		{"bad checksum", edit(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b })},
		{"version 0", edit(func(b []byte) []byte { b[0] = 0; return reseal(b) })},
		{"version 2", edit(func(b []byte) []byte { b[0] = 2; return reseal(b) })},
		{"state 0", edit(func(b []byte) []byte { b[1] = 0; return reseal(b) })},
		{"state 3", edit(func(b []byte) []byte { b[1] = 3; return reseal(b) })},
		{"in progress with result", edit(func(b []byte) []byte { b[1] = byte(idem.StateInProgress); return reseal(b) })},
		{"fp length too long", edit(func(b []byte) []byte { b[headerLen] = 100; return reseal(b) })},
		{"result length too long", edit(func(b []byte) []byte { b[headerLen+3] = 4; return reseal(b) })},
		{"trailing byte", edit(func(b []byte) []byte {
			b = append(b[:len(b)-trailerLen], 0, 0, 0, 0, 0)
			return reseal(b)
		})},
		{"non-canonical length", func() []byte {
			b := append([]byte(nil), good[:headerLen]...)
			b = append(b, 0x82, 0x00, 'f', 'p', 3, 'r', 'e', 's') // 2 written in two bytes
			return append(b, 0, 0, 0, 0)
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in = append([]byte(nil), tc.in...)
			if tc.name == "non-canonical length" {
				tc.in = reseal(tc.in)
			}
			_, err := decodeRecord(tc.in)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeRecord(%x) = %v, want ErrCorrupt", tc.in, err)
			}
		})
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the decoder: it must never
// panic, and whatever it accepts must re-encode to the very same bytes.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range sampleRecords() {
		b := encodeRecord(&r)
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{recordVersion, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeRecord error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if re := encodeRecord(&r); !bytes.Equal(re, b) {
			t.Fatalf("decode then encode changed the bytes:\n in %x\nout %x", b, re)
		}
	})
}

// FuzzRecordRoundTrip encodes arbitrary records: decoding must give them
// back exactly, and any single corrupted byte must be refused.
func FuzzRecordRoundTrip(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(r.state == idem.StateCompleted, r.fence, r.start, r.deadline, r.fp, r.result, uint(3))
	}
	f.Fuzz(func(t *testing.T, completed bool, fence uint64, start, deadline int64, fp, result []byte, flip uint) {
		r := record{state: idem.StateInProgress, fence: fence, start: start, deadline: deadline, fp: fp, result: []byte{}}
		if completed {
			r.state, r.result = idem.StateCompleted, result
		}
		if r.fp == nil {
			r.fp = []byte{}
		}
		if r.result == nil {
			r.result = []byte{}
		}
		b := encodeRecord(&r)
		got, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", r, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip = %+v, want %+v", got, r)
		}
		b[flip%uint(len(b))] ^= 0x01
		if _, err := decodeRecord(b); err == nil {
			t.Fatalf("a flipped bit at %d was accepted", flip%uint(len(b)))
		}
	})
}
