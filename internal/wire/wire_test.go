package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestAppendMap(t *testing.T) {
	m := map[string][]string{"b": {"2", ""}, "a": {"1"}, "empty": nil, "": {"x"}, "skip": {"s"}}
	got := AppendMap(nil, m, func(k string) bool { return k == "skip" })
	want := []byte{2, 1, 'a', 1, 1, '1', 1, 'b', 2, 1, '2', 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendMap = %v, want %v", got, want)
	}
}

func TestUvarintMinimal(t *testing.T) {
	off := 0
	if v, ok := Uvarint([]byte{0x80, 0x01}, &off); !ok || v != 128 || off != 2 {
		t.Fatalf("128: %d %v %d", v, ok, off)
	}
	off = 0
	if _, ok := Uvarint([]byte{0x80, 0x00}, &off); ok {
		t.Fatal("non-minimal encoding of 0 accepted")
	}
	off = 0
	if _, ok := Length([]byte{3, 'a', 'b'}, &off); ok {
		t.Fatal("a length past the end accepted")
	}
}

func TestAppendCarrier(t *testing.T) {
	if b := AppendCarrier(nil, "Cookie", []string{" ", ""}, false); len(b) != 0 {
		t.Fatalf("blank carrier appended %v", b)
	}
	got := AppendCarrier(nil, "Authorization", []string{"BeArer Tok en", " "}, true)
	var want []byte
	want = binary.BigEndian.AppendUint64(want, 13)
	want = append(want, "Authorization"...)
	want = binary.BigEndian.AppendUint64(want, 1)
	want = binary.BigEndian.AppendUint64(want, 13)
	want = append(want, "bearer Tok en"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendCarrier = %q, want %q", got, want)
	}
}

// FuzzLength: Length never panics, never reads past b, and accepts only
// minimal encodings of lengths that fit.
func FuzzLength(f *testing.F) {
	f.Add([]byte{0}, 0)
	f.Add([]byte{0x80, 0x01}, 0)
	f.Add([]byte{2, 'a', 'b'}, 0)
	f.Fuzz(func(t *testing.T, b []byte, start int) {
		if start < 0 || start > len(b) {
			return
		}
		off := start
		n, ok := Length(b, &off)
		if !ok {
			return
		}
		if n < 0 || off+n > len(b) {
			t.Fatalf("length %d at %d past the end of %d bytes", n, off, len(b))
		}
		if enc := binary.AppendUvarint(nil, uint64(n)); !bytes.Equal(enc, b[start:off]) {
			t.Fatalf("accepted %x for %d, minimal is %x", b[start:off], n, enc)
		}
	})
}
