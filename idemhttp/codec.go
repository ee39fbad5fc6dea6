package idemhttp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strconv"

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

// Binary format. Integers are minimal unsigned varints. Version 2, which
// MarshalBinary and the middleware write:
//
//	version   byte  = 2
//	flags     byte  (bit 0: body omitted; bit 1: Content-Length, see below;
//	                 other bits zero)
//	status    uvarint, 100..999
//	nheaders  uvarint
//	nheaders × { name, nvalues uvarint ≥ 1, nvalues × value }
//	body      the remaining bytes (empty when omitted)
//
// where a name or a value is one uvarint x: odd x is entry x>>1 of the
// static table of names (staticNames) or values (staticValues); even x is
// followed by x>>1 literal bytes (a literal name is never empty). Anything
// the static tables hold is written as its table entry, never literally.
// Flag bit 1 stands for a Content-Length header equal to the length of the
// stored body: it is set instead of storing that header, and never together
// with the omitted bit (a replay of an omitted body has no Content-Length).
// The tables are part of the format: they never change within a version.
//
// Version 1, which versions before the compact records wrote (and the
// middleware writes with LegacyEncoding), has no static tables and no
// Content-Length flag; every name and value is a uvarint length and its
// bytes. Both versions decode.
//
// Header names are unique and strictly increasing (byte order), so every
// Response has exactly one encoding in each version.
const (
	codecV1      = 1
	codecV2      = 2
	flagOmitted  = 1 << 0
	flagLength   = 1 << 1 // version 2 only
	flagsV1      = flagOmitted
	flagsV2      = flagOmitted | flagLength
	headerLength = "Content-Length"
)

// staticNames and staticValues are version 2's tables of common header
// names and values; an entry is written as one byte. Never reorder or
// change them: stored responses refer to them by position.
var (
	staticNames = [...]string{
		"Access-Control-Allow-Origin", "Cache-Control", "Content-Disposition", "Content-Encoding",
		"Content-Language", "Content-Location", "Content-Type", "Etag", "Expires", "Last-Modified",
		"Link", "Location", "Pragma", "Referrer-Policy", "Retry-After", "Strict-Transport-Security",
		"Vary", "X-Content-Type-Options", "X-Frame-Options", "X-Request-Id",
	}
	staticValues = [...]string{
		"application/json", "application/json; charset=utf-8", "application/problem+json",
		"text/plain; charset=utf-8", "text/html; charset=utf-8", "text/plain", "text/html",
		"application/xml", "application/octet-stream", "text/event-stream",
		"no-store", "no-cache", "private", "no-cache, no-store, must-revalidate", "nosniff",
		"Accept-Encoding", "Origin", "gzip", "br", "*", "DENY", "SAMEORIGIN", "0",
	}
	staticName    = index(staticNames[:])
	staticValue   = index(staticValues[:])
	staticNamesB  = asBytes(staticNames[:])
	staticValuesB = asBytes(staticValues[:])
)

func asBytes(t []string) [][]byte {
	b := make([][]byte, len(t))
	for i, s := range t {
		b[i] = []byte(s)
	}
	return b
}

func index(t []string) map[string]uint64 {
	m := make(map[string]uint64, len(t))
	for i, s := range t {
		m[s] = uint64(i)
	}
	return m
}

// markOmitted marks an encoded response (its head) as having its body
// omitted. A replay of an omitted body has no Content-Length, so the
// Content-Length flag is cleared.
func markOmitted(result []byte) { result[1] = result[1]&^flagLength | flagOmitted }

// errCodec is wrapped by every decoding error.
var errCodec = errors.New("idemhttp: invalid stored response")

// MarshalBinary returns the versioned binary encoding of r (version 2). A
// Content-Length header equal to the body's length is stored as a flag bit;
// header names with no values are skipped. It fails when Status is outside
// 100..999 or when Omitted is set together with a non-empty Body.
func (r *Response) MarshalBinary() ([]byte, error) {
	return r.AppendBinary(nil)
}

// AppendBinary appends the encoding of r (see MarshalBinary) to b.
func (r *Response) AppendBinary(b []byte) ([]byte, error) {
	return r.appendBinary(b, codecV2)
}

func (r *Response) appendBinary(b []byte, version byte) ([]byte, error) {
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
	var skip func(string) bool
	if cl := r.Header[headerLength]; version == codecV2 && !r.Omitted && len(cl) == 1 && cl[0] == strconv.Itoa(len(r.Body)) {
		flags |= flagLength
		skip = func(name string) bool { return name == headerLength }
	}
	b = appendHead(b, version, r.Status, flags, r.Header, skip)
	return append(b, r.Body...), nil
}

// appendHead appends version, flags, status and the headers of h, sorted by
// name, skipping names for which skip reports true and names with no values.
func appendHead(b []byte, version byte, status int, flags byte, h http.Header, skip func(string) bool) []byte {
	b = append(b, version, flags)
	b = binary.AppendUvarint(b, uint64(status))
	if version == codecV1 {
		return wire.AppendMap(b, h, skip)
	}
	return wire.AppendMapFunc(b, h, skip, appendName, appendValue)
}

func appendName(b []byte, s string) []byte  { return appendEntry(b, s, staticName) }
func appendValue(b []byte, s string) []byte { return appendEntry(b, s, staticValue) }

// appendEntry appends s as its static table entry, or literally.
func appendEntry(b []byte, s string, table map[string]uint64) []byte {
	if i, ok := table[s]; ok {
		return binary.AppendUvarint(b, i<<1|1)
	}
	b = binary.AppendUvarint(b, uint64(len(s))<<1)
	return append(b, s...)
}

// UnmarshalBinary decodes data, as produced by MarshalBinary (either
// version), into r. Body aliases data. It returns an error, and never
// panics, on any input that is not exactly one valid encoding.
func (r *Response) UnmarshalBinary(data []byte) error {
	d, err := decodeResponse(data)
	if err != nil {
		return err
	}
	n := d.nheaders
	if d.length {
		n++
	}
	h := make(http.Header, n)
	d.eachHeader(func(name string, values []string) { h[name] = values })
	if d.length {
		h[headerLength] = []string{strconv.Itoa(len(d.body))}
	}
	*r = Response{Status: d.status, Header: h, Body: d.body, Omitted: d.omitted}
	return nil
}

// decoded is a validated encoding whose headers have not been materialised.
type decoded struct {
	version  byte
	status   int
	omitted  bool
	length   bool // version 2: Content-Length is the body's length
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
	d.version = data[0]
	allowed := byte(flagsV1)
	switch d.version {
	case codecV1:
	case codecV2:
		allowed = flagsV2
	default:
		return d, fmt.Errorf("%w: unknown version %d", errCodec, data[0])
	}
	if data[1]&^allowed != 0 || data[1]&flagsV2 == flagsV2 {
		return d, fmt.Errorf("%w: unknown flags 0x%02x", errCodec, data[1])
	}
	d.omitted = data[1]&flagOmitted != 0
	d.length = data[1]&flagLength != 0
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
	var prev, cl []byte
	for i := 0; i < nh; i++ {
		name, ok := d.entry(data, &off, staticNamesB, staticName)
		if !ok || len(name) == 0 {
			return d, fmt.Errorf("%w: bad header name", errCodec)
		}
		if i > 0 && bytes.Compare(prev, name) >= 0 {
			return d, fmt.Errorf("%w: header names not strictly increasing", errCodec)
		}
		prev = name
		nv, ok := wire.Length(data, &off)
		if !ok || nv == 0 {
			return d, fmt.Errorf("%w: bad value count", errCodec)
		}
		d.nvalues += nv
		for j := 0; j < nv; j++ {
			v, ok := d.entry(data, &off, staticValuesB, staticValue)
			if !ok {
				return d, fmt.Errorf("%w: bad header value", errCodec)
			}
			if string(name) == headerLength {
				if nv == 1 {
					cl = v
				}
				if d.length {
					return d, fmt.Errorf("%w: Content-Length stored and flagged", errCodec)
				}
			}
		}
	}
	d.headers = data[start:off]
	d.body = data[off:]
	if d.omitted && len(d.body) > 0 {
		return d, fmt.Errorf("%w: omitted response with a body", errCodec)
	}
	if d.version == codecV2 && !d.omitted && cl != nil && string(cl) == strconv.Itoa(len(d.body)) {
		return d, fmt.Errorf("%w: Content-Length stored instead of flagged", errCodec)
	}
	return d, nil
}

// entry reads one name or value at *off: in version 1 a literal; in
// version 2 a static table entry or a literal that is not in the table. The
// bytes alias data or the table.
func (d *decoded) entry(data []byte, off *int, table [][]byte, index map[string]uint64) ([]byte, bool) {
	if d.version == codecV1 {
		n, ok := wire.Length(data, off)
		if !ok {
			return nil, false
		}
		*off += n
		return data[*off-n : *off], true
	}
	x, ok := wire.Uvarint(data, off)
	if !ok {
		return nil, false
	}
	if x&1 == 1 {
		if x>>1 >= uint64(len(table)) {
			return nil, false
		}
		return table[x>>1], true
	}
	if x>>1 > uint64(len(data)-*off) {
		return nil, false
	}
	n := int(x >> 1)
	*off += n
	lit := data[*off-n : *off]
	if _, ok := index[string(lit)]; ok {
		return nil, false // must have been the table entry
	}
	return lit, true
}

// eachHeader calls fn for every header of a validated encoding. All literal
// names and values share one string allocation and all value slices one
// backing array (each capped to its length, so an append by a caller
// reallocates).
func (d *decoded) eachHeader(fn func(name string, values []string)) {
	if d.nheaders == 0 {
		return
	}
	s := string(d.headers)
	all := make([]string, d.nvalues)
	off := 0
	b := d.headers
	// next returns the next name or value: a table entry, or a literal
	// sliced from s.
	next := func(table []string) string {
		if d.version == codecV1 {
			n, _ := wire.Length(b, &off)
			off += n
			return s[off-n : off]
		}
		x, _ := wire.Uvarint(b, &off)
		if x&1 == 1 {
			return table[x>>1]
		}
		n := int(x >> 1)
		off += n
		return s[off-n : off]
	}
	for i := 0; i < d.nheaders; i++ {
		name := next(staticNames[:])
		if d.version == codecV1 {
			name = internName(name)
		}
		nv, _ := wire.Length(b, &off)
		vs := all[:nv:nv]
		all = all[nv:]
		for j := range vs {
			vs[j] = next(staticValues[:])
		}
		fn(name, vs)
	}
}

// internName returns the static table's constant for common header names
// of version 1 encodings, so replays share them; otherwise it returns s.
func internName(s string) string {
	if i, ok := staticName[s]; ok {
		return staticNames[i]
	}
	return s
}
