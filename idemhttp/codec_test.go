package idemhttp_test

import (
	"bytes"
	"net/http"
	"reflect"
	"testing"

	"github.com/idemkit/idem/idemhttp"
)

func TestResponseCodecRoundTrip(t *testing.T) {
	t.Parallel()
	cases := []idemhttp.Response{
		{Status: 200, Header: http.Header{}, Body: []byte{}},
		{Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}, "X-Empty": {""}}, Body: []byte(`{"ok":true}`)},
		{Status: 204, Header: http.Header{"Etag": {`"v1"`}}, Body: []byte{}},
		{Status: 999, Header: http.Header{}, Body: []byte{0, 1, 2, 0xff}},
		{Status: 100, Header: http.Header{}, Body: []byte{}, Omitted: true},
		{Status: 413, Header: http.Header{"Location": {"/x"}}, Body: []byte{}, Omitted: true},
		{Status: 200, Header: http.Header{}, Body: bytes.Repeat([]byte("z"), 1<<20)},
	}
	for _, want := range cases {
		b, err := want.MarshalBinary()
		if err != nil {
			t.Fatalf("marshal %d: %v", want.Status, err)
		}
		var got idemhttp.Response
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("unmarshal %d: %v", want.Status, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
		}
		b2, _ := got.MarshalBinary()
		if !bytes.Equal(b, b2) {
			t.Errorf("encoding not canonical")
		}
	}
}

func TestResponseCodecRejects(t *testing.T) {
	t.Parallel()
	for _, r := range []idemhttp.Response{{Status: 99}, {Status: 1000}, {Status: 200, Omitted: true, Body: []byte("x")}} {
		if _, err := r.MarshalBinary(); err == nil {
			t.Errorf("MarshalBinary(%+v) succeeded", r)
		}
	}
	valid, _ := (&idemhttp.Response{Status: 200, Header: http.Header{"A": {"1"}, "B": {"2"}}, Body: []byte("x")}).MarshalBinary()
	bad := map[string][]byte{
		"empty":           {},
		"version":         append([]byte{2}, valid[1:]...),
		"flags":           append([]byte{1, 0x80}, valid[2:]...),
		"status":          {1, 0, 50, 0},
		"truncated":       valid[:6],
		"overlong varint": {1, 0, 0xc8, 0x81, 0x00, 0}, // 200 as 3 bytes
		"header count":    {1, 0, 0xc8, 0x01, 0x7f},
		"omitted body":    {1, 1, 0xc8, 0x01, 0, 'x'},
		"unsorted":        {1, 0, 0xc8, 0x01, 2, 1, 'B', 1, 1, '2', 1, 'A', 1, 1, '1'},
		"duplicate":       {1, 0, 0xc8, 0x01, 2, 1, 'A', 1, 1, '2', 1, 'A', 1, 1, '1'},
		"no values":       {1, 0, 0xc8, 0x01, 1, 1, 'A', 0},
		"empty name":      {1, 0, 0xc8, 0x01, 1, 0, 1, 1, '1'},
		"value too long":  {1, 0, 0xc8, 0x01, 1, 1, 'A', 1, 9, '1'},
	}
	for name, b := range bad {
		var r idemhttp.Response
		if err := r.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: UnmarshalBinary(%x) = %+v, want error", name, b, r)
		}
	}
}

func FuzzResponseCodec(f *testing.F) {
	seed := []idemhttp.Response{
		{Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "b"}}, Body: []byte(`{"ok":true}`)},
		{Status: 404, Header: http.Header{}, Body: nil},
		{Status: 200, Header: http.Header{"Location": {""}}, Omitted: true},
	}
	for _, r := range seed {
		b, _ := r.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0xc8, 0x01, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r idemhttp.Response
		if err := r.UnmarshalBinary(data); err != nil {
			return
		}
		// Every accepted input is the one canonical encoding of what it
		// decodes to.
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", data, b)
		}
		var r2 idemhttp.Response
		if err := r2.UnmarshalBinary(b); err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip: %+v vs %+v (%v)", r, r2, err)
		}
	})
}
