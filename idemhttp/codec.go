package idemhttp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"

	"github.com/idemkit/idem/internal/wire"
)

// Response is a stored HTTP response: what a replay answers. Its binary form
// (MarshalBinary) is the result the middleware stores in an idem.Store.
type Response struct {
	// Status is the status code, 100 to 999.
	Status int
	// Header is the header snapshot taken when the handler wrote the status,
	// already without the never-replayed headers. Names are canonical.
	Header http.Header
	// Body is the response body. It is empty when Omitted is set.
	Body []byte
	// Omitted reports that the body was larger than the stored-result cap
	// and was not stored: a replay answers Status and Header with an empty
	// body and the header Idempotency-Replay: omitted.
	Omitted bool
}

// Binary format, version 1 (all integers are minimal unsigned varints):
//
//	version   byte  = 1
//	flags     byte  (bit 0: body omitted; other bits zero)
//	status    uvarint, 100..999
//	nheaders  uvarint
//	nheaders × { name-len uvarint, name, nvalues uvarint ≥ 1, nvalues × { len uvarint, value } }
//	body      the remaining bytes (empty when omitted)
//
// Header names are unique and strictly increasing (byte order), so every
// Response has exactly one encoding.
const (
	codecVersion = 1
	flagOmitted  = 1 << 0
)

// errCodec is wrapped by every decoding error.
var errCodec = errors.New("idemhttp: invalid stored response")

// MarshalBinary returns the versioned binary encoding of r. Header names with
// no values are skipped. It fails when Status is outside 100..999 or when
// Omitted is set together with a non-empty Body.
func (r *Response) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(nil)
}

// AppendBinary appends the encoding of r (see MarshalBinary) to b.
func (r *Response) AppendBinary(b []byte) ([]byte, error) {
	if r.Status < 100 || r.Status > 999 {
		return b, fmt.Errorf("idemhttp: encode response: status %d out of range", r.Status)
	}
	if r.Omitted && len(r.Body) > 0 {
		return b, errors.New("idemhttp: encode response: omitted response with a body")
	}
	var flags byte
	if r.Omitted {
		flags |= flagOmitted
	}
	b = appendHead(b, r.Status, flags, r.Header, nil)
	return append(b, r.Body...), nil
}

// appendHead appends version, flags, status and the headers of h, sorted by
// name, skipping names for which skip reports true and names with no values.
func appendHead(b []byte, status int, flags byte, h http.Header, skip func(string) bool) []byte {
	b = append(b, codecVersion, flags)
	b = binary.AppendUvarint(b, uint64(status))
	return wire.AppendMap(b, h, skip)
}

// UnmarshalBinary decodes data, as produced by MarshalBinary, into r. Body
// aliases data. It returns an error, and never panics, on any input that is
// not exactly one valid encoding.
func (r *Response) UnmarshalBinary(data []byte) error {
	d, err := decodeResponse(data)
	if err != nil {
		return err
	}
	h := make(http.Header, d.nheaders)
	d.eachHeader(func(name string, values []string) { h[name] = values })
	*r = Response{Status: d.status, Header: h, Body: d.body, Omitted: d.omitted}
	return nil
}

// decoded is a validated encoding whose headers have not been materialised.
type decoded struct {
	status   int
	omitted  bool
	nheaders int
	nvalues  int
	headers  []byte // the header section, after the count
	body     []byte
}

func decodeResponse(data []byte) (decoded, error) {
	var d decoded
	if len(data) < 2 {
		return d, fmt.Errorf("%w: %d bytes", errCodec, len(data))
	}
	if data[0] != codecVersion {
		return d, fmt.Errorf("%w: unknown version %d", errCodec, data[0])
	}
	if data[1]&^flagOmitted != 0 {
		return d, fmt.Errorf("%w: unknown flags 0x%02x", errCodec, data[1])
	}
	d.omitted = data[1]&flagOmitted != 0
	off := 2
	st, ok := wire.Uvarint(data, &off)
	if !ok || st < 100 || st > 999 {
		return d, fmt.Errorf("%w: bad status", errCodec)
	}
	d.status = int(st)
	nh, ok := wire.Length(data, &off) // each header takes at least 3 bytes
	if !ok {
		return d, fmt.Errorf("%w: bad header count", errCodec)
	}
	d.nheaders = nh
	start := off
	var prev []byte
	for i := 0; i < nh; i++ {
		n, ok := wire.Length(data, &off)
		if !ok || n == 0 {
			return d, fmt.Errorf("%w: bad header name", errCodec)
		}
		name := data[off : off+n]
		off += n
		if i > 0 && string(prev) >= string(name) {
			return d, fmt.Errorf("%w: header names not strictly increasing", errCodec)
		}
		prev = name
		nv, ok := wire.Length(data, &off)
		if !ok || nv == 0 {
			return d, fmt.Errorf("%w: bad value count", errCodec)
		}
		d.nvalues += nv
		for j := 0; j < nv; j++ {
			n, ok := wire.Length(data, &off)
			if !ok {
				return d, fmt.Errorf("%w: bad header value", errCodec)
			}
			off += n
		}
	}
	d.headers = data[start:off]
	d.body = data[off:]
	if d.omitted && len(d.body) > 0 {
		return d, fmt.Errorf("%w: omitted response with a body", errCodec)
	}
	return d, nil
}

// eachHeader calls fn for every header of a validated encoding. All names
// and values share one string allocation and all value slices one backing
// array (each capped to its length, so an append by a caller reallocates).
func (d *decoded) eachHeader(fn func(name string, values []string)) {
	if d.nheaders == 0 {
		return
	}
	s := string(d.headers)
	all := make([]string, d.nvalues)
	off := 0
	b := d.headers
	for i := 0; i < d.nheaders; i++ {
		n, _ := wire.Length(b, &off)
		name := internName(b[off:off+n], s[off:off+n])
		off += n
		nv, _ := wire.Length(b, &off)
		vs := all[:nv:nv]
		all = all[nv:]
		for j := range vs {
			n, _ := wire.Length(b, &off)
			vs[j] = s[off : off+n]
			off += n
		}
		fn(name, vs)
	}
}

// internName returns a constant for common header names so replays share
// them; otherwise it returns s (which equals b).
func internName(b []byte, s string) string {
	switch string(b) {
	case "Content-Type":
		return "Content-Type"
	case "Location":
		return "Location"
	case "Cache-Control":
		return "Cache-Control"
	case "Etag":
		return "Etag"
	case "Vary":
		return "Vary"
	case "Last-Modified":
		return "Last-Modified"
	}
	return s
}
