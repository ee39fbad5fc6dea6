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
		{Status: 201, Header: http.Header{"Content-Length": {"2"}, "Content-Type": {"application/json"}}, Body: []byte("{}")},
		{Status: 200, Header: http.Header{"Content-Length": {"7"}}, Body: []byte("{}")},  // not the body's length: stored
		{Status: 200, Header: http.Header{"Content-Length": {"+2"}}, Body: []byte("{}")}, // not canonical: stored
		{Status: 200, Header: http.Header{"Content-Length": {"2", "2"}}, Body: []byte("{}")},
		{Status: 200, Header: http.Header{"Content-Length": {"9"}}, Body: []byte{}, Omitted: true},
		{Status: 200, Header: http.Header{"Vary": {"Origin", "Accept-Encoding", "X-Other"}, "X-Lit": {"application/json"}}, Body: []byte{}},
	}
	for _, want := range cases {
		for version, marshal := range map[int]func(*idemhttp.Response) ([]byte, error){
			1: idemhttp.MarshalV1, 2: (*idemhttp.Response).MarshalBinary,
		} {
			b, err := marshal(&want)
			if err != nil {
				t.Fatalf("v%d: marshal %d: %v", version, want.Status, err)
			}
			if int(b[0]) != version {
				t.Fatalf("v%d: version byte %d", version, b[0])
			}
			var got idemhttp.Response
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatalf("v%d: unmarshal %d: %v", version, want.Status, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("v%d: round trip:\n got %+v\nwant %+v", version, got, want)
			}
			b2, _ := marshal(&got)
			if !bytes.Equal(b, b2) {
				t.Errorf("v%d: encoding not canonical", version)
			}
		}
	}
}

// TestResponseCodecCompact pins version 2's size for the benchmark's answer
// (docs/capacity.md): 201, Content-Type application/json, Content-Length,
// a 90-byte body.
func TestResponseCodecCompact(t *testing.T) {
	t.Parallel()
	body := bytes.Repeat([]byte("x"), 90)
	r := idemhttp.Response{Status: 201, Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {"90"}}, Body: body}
	v2, _ := r.MarshalBinary()
	v1, _ := idemhttp.MarshalV1(&r)
	if want := []byte{2, 2, 0xc9, 0x01, 1, 13, 1, 1}; !bytes.Equal(v2[:len(v2)-90], want) {
		t.Errorf("v2 head = %x, want %x", v2[:len(v2)-90], want)
	}
	if len(v1) != 145 || len(v2) != 98 {
		t.Errorf("v1 %d bytes, v2 %d bytes; want 145 and 98", len(v1), len(v2))
	}
}

// TestResponseCodecV1 decodes a version-1 encoding as written by earlier
// versions (fixed bytes), which replays must keep reading.
func TestResponseCodecV1(t *testing.T) {
	t.Parallel()
	b := []byte{1, 0, 0xc9, 0x01, 2}
	b = append(b, 14)
	b = append(b, "Content-Length"...)
	b = append(b, 1, 1, '2', 12)
	b = append(b, "Content-Type"...)
	b = append(b, 1, 16)
	b = append(b, "application/json"...)
	b = append(b, "{}"...)
	var r idemhttp.Response
	if err := r.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	want := idemhttp.Response{Status: 201, Header: http.Header{"Content-Length": {"2"}, "Content-Type": {"application/json"}}, Body: []byte("{}")}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v, want %+v", r, want)
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
		"version":         append([]byte{3}, valid[1:]...),
		"flags":           append([]byte{2, 0x80}, valid[2:]...),
		"v1 length flag":  {1, 2, 0xc8, 0x01, 0},
		"length+omitted":  {2, 3, 0xc8, 0x01, 0},
		"literal static":  {2, 0, 0xc8, 0x01, 1, 24, 'E', 't', 'a', 'g', 1, 2, 'x'},
		"static range":    {2, 0, 0xc8, 0x01, 1, 0x7f, 1, 2, 'x'},
		"value static":    {2, 0, 0xc8, 0x01, 1, 2, 'A', 1, 0x7f},
		"value literal":   append([]byte{2, 0, 0xc8, 0x01, 1, 2, 'A', 1, 32}, "application/json"...),
		"length stored":   append([]byte{2, 0, 0xc8, 0x01, 1, 28}, append([]byte("Content-Length"), 1, 2, '1', 'x')...),
		"length twice":    append([]byte{2, 2, 0xc8, 0x01, 1, 28}, append([]byte("Content-Length"), 1, 2, '5', 'x')...),
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
		{Status: 201, Header: http.Header{"Content-Length": {"2"}, "Vary": {"Origin", "X"}}, Body: []byte("{}")},
	}
	for _, r := range seed {
		b, _ := r.MarshalBinary()
		f.Add(b)
		b, _ = idemhttp.MarshalV1(&r)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0xc8, 0x01, 0x7f})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r idemhttp.Response
		if err := r.UnmarshalBinary(data); err != nil {
			return
		}
		// Every accepted input is the one canonical encoding, in its
		// version, of what it decodes to.
		marshal := (*idemhttp.Response).MarshalBinary
		if data[0] == 1 {
			marshal = idemhttp.MarshalV1
		}
		b, err := marshal(&r)
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
