package jcs

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth is the deepest nesting of arrays and objects accepted.
const MaxDepth = 256

// ErrInvalid is wrapped by every error Canonicalize returns.
var ErrInvalid = errors.New("jcs: invalid input")

// Canonicalize returns the RFC 8785 canonical form of the JSON text data. It
// returns an error wrapping ErrInvalid when data is not a single I-JSON
// value (surrounding white space allowed).
func Canonicalize(data []byte) ([]byte, error) {
	return Append(make([]byte, 0, len(data)), data)
}

// Append appends the canonical form of data to dst (see Canonicalize). On
// error it returns dst unchanged in length.
func Append(dst, data []byte) ([]byte, error) {
	p := parserPool.Get().(*parser)
	defer p.free()
	p.in, p.pos, p.out = data, 0, dst
	start := len(dst)
	p.ws()
	if err := p.value(0); err != nil {
		return dst[:start], err
	}
	p.ws()
	if p.pos != len(p.in) {
		return dst[:start], p.errf("unexpected data after the value")
	}
	return p.out, nil
}

var parserPool = sync.Pool{New: func() any { return new(parser) }}

// free returns p to the pool, keeping its scratch buffers unless they grew
// large.
func (p *parser) free() {
	const max = 64 << 10
	p.in, p.out = nil, nil
	if cap(p.scratch) > max || cap(p.names) > max || cap(p.tmp) > max || cap(p.members) > max/32 {
		*p = parser{}
	}
	p.scratch, p.names, p.members, p.tmp = p.scratch[:0], p.names[:0], p.members[:0], p.tmp[:0]
	parserPool.Put(p)
}

type parser struct {
	in      []byte
	pos     int
	out     []byte
	scratch []byte   // decoded content of the current string value
	names   []byte   // decoded member names of the open objects
	members []member // members of the open objects, innermost last
	tmp     []byte   // scratch for re-ordering an object's members
}

func (p *parser) errf(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrInvalid, p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) ws() {
	for p.pos < len(p.in) {
		switch p.in[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) error {
	if p.pos >= len(p.in) {
		return p.errf("unexpected end of input")
	}
	switch c := p.in[p.pos]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		var err error
		p.scratch, err = p.str(p.scratch[:0])
		if err != nil {
			return err
		}
		p.out = appendString(p.out, p.scratch)
		return nil
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	default:
		return p.errf("unexpected byte 0x%02x", c)
	}
}

func (p *parser) literal(lit string) error {
	if len(p.in)-p.pos < len(lit) || string(p.in[p.pos:p.pos+len(lit)]) != lit {
		return p.errf("invalid literal")
	}
	p.pos += len(lit)
	p.out = append(p.out, lit...)
	return nil
}

func (p *parser) array(depth int) error {
	if depth > MaxDepth {
		return p.errf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // [
	p.out = append(p.out, '[')
	p.ws()
	if p.pos < len(p.in) && p.in[p.pos] == ']' {
		p.pos++
		p.out = append(p.out, ']')
		return nil
	}
	for {
		p.ws()
		if err := p.value(depth); err != nil {
			return err
		}
		p.ws()
		if p.pos >= len(p.in) {
			return p.errf("unterminated array")
		}
		switch p.in[p.pos] {
		case ',':
			p.pos++
			p.out = append(p.out, ',')
		case ']':
			p.pos++
			p.out = append(p.out, ']')
			return nil
		default:
			return p.errf("expected , or ] in array")
		}
	}
}

// member is one object member: its decoded name, at names[name:nameEnd],
// and its canonical "name":value text, at out[start:end].
type member struct {
	name, nameEnd int
	start, end    int
}

func (p *parser) nameOf(m member) []byte { return p.names[m.name:m.nameEnd] }

func (p *parser) object(depth int) error {
	if depth > MaxDepth {
		return p.errf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // {
	p.ws()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		p.out = append(p.out, '{', '}')
		return nil
	}
	base := len(p.out)
	mbase, nbase := len(p.members), len(p.names)
	defer func() { p.members, p.names = p.members[:mbase], p.names[:nbase] }()
	p.out = append(p.out, '{')
	sorted := true
	for {
		p.ws()
		if p.pos >= len(p.in) || p.in[p.pos] != '"' {
			return p.errf("expected a member name")
		}
		m := member{name: len(p.names)}
		var err error
		p.names, err = p.str(p.names)
		if err != nil {
			return err
		}
		m.nameEnd = len(p.names)
		if n := len(p.members); n > mbase && !lessUTF16(p.nameOf(p.members[n-1]), p.nameOf(m)) {
			sorted = false
		}
		p.ws()
		if p.pos >= len(p.in) || p.in[p.pos] != ':' {
			return p.errf("expected : after a member name")
		}
		p.pos++
		p.ws()
		m.start = len(p.out)
		p.out = appendString(p.out, p.nameOf(m))
		p.out = append(p.out, ':')
		if err := p.value(depth); err != nil {
			return err
		}
		m.end = len(p.out)
		p.members = append(p.members, m)
		p.ws()
		if p.pos >= len(p.in) {
			return p.errf("unterminated object")
		}
		c := p.in[p.pos]
		p.pos++
		if c == '}' {
			break
		}
		if c != ',' {
			p.pos--
			return p.errf("expected , or } in object")
		}
		p.out = append(p.out, ',')
	}
	if !sorted {
		ms := p.members[mbase:]
		slices.SortFunc(ms, func(a, b member) int { return compareUTF16(p.nameOf(a), p.nameOf(b)) })
		for i := 1; i < len(ms); i++ {
			if string(p.nameOf(ms[i-1])) == string(p.nameOf(ms[i])) {
				return p.errf("duplicate member name %q", p.nameOf(ms[i]))
			}
		}
		p.tmp = append(p.tmp[:0], p.out[base+1:]...)
		p.out = p.out[:base+1]
		for i, m := range ms {
			if i > 0 {
				p.out = append(p.out, ',')
			}
			p.out = append(p.out, p.tmp[m.start-base-1:m.end-base-1]...)
		}
	}
	p.out = append(p.out, '}')
	return nil
}

// lessUTF16 reports whether a sorts before b when both are compared as
// sequences of UTF-16 code units (RFC 8785 §3.2.3). a and b are valid UTF-8.
func lessUTF16(a, b []byte) bool { return compareUTF16(a, b) < 0 }

// compareUTF16 compares a and b (valid UTF-8) as sequences of UTF-16 code
// units and returns a negative number, zero or a positive number.
func compareUTF16(a, b []byte) int {
	for len(a) > 0 && len(b) > 0 {
		if a[0] < utf8.RuneSelf && b[0] < utf8.RuneSelf {
			if a[0] != b[0] {
				return int(a[0]) - int(b[0])
			}
			a, b = a[1:], b[1:]
			continue
		}
		ra, na := utf8.DecodeRune(a)
		rb, nb := utf8.DecodeRune(b)
		if ra != rb {
			ua, ub := unitsOf(ra), unitsOf(rb)
			if ua[0] != ub[0] {
				return int(ua[0] - ub[0])
			}
			return int(ua[1] - ub[1])
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

// unitsOf returns the UTF-16 code units of r (the second is 0 for BMP).
func unitsOf(r rune) [2]rune {
	if r < 0x10000 {
		return [2]rune{r, 0}
	}
	hi, lo := utf16.EncodeRune(r)
	return [2]rune{hi, lo}
}

// str parses the JSON string at p.pos and appends its decoded content to
// dst.
func (p *parser) str(dst []byte) ([]byte, error) {
	p.pos++ // "
	for {
		// Copy the run of plain ASCII at once.
		i := p.pos
		for i < len(p.in) {
			c := p.in[i]
			if c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
				break
			}
			i++
		}
		dst = append(dst, p.in[p.pos:i]...)
		p.pos = i
		if p.pos >= len(p.in) {
			return dst, p.errf("unterminated string")
		}
		c := p.in[p.pos]
		switch {
		case c == '"':
			p.pos++
			return dst, nil
		case c == '\\':
			var err error
			if dst, err = p.escape(dst); err != nil {
				return dst, err
			}
		case c < 0x20:
			return dst, p.errf("control character 0x%02x in string", c)
		default:
			r, n := utf8.DecodeRune(p.in[p.pos:])
			if r == utf8.RuneError && n <= 1 {
				return dst, p.errf("invalid UTF-8")
			}
			dst = append(dst, p.in[p.pos:p.pos+n]...)
			p.pos += n
		}
	}
}

func (p *parser) escape(dst []byte) ([]byte, error) {
	if p.pos+1 >= len(p.in) {
		return dst, p.errf("unterminated escape")
	}
	e := p.in[p.pos+1]
	p.pos += 2
	switch e {
	case '"', '\\', '/':
		dst = append(dst, e)
	case 'b':
		dst = append(dst, '\b')
	case 'f':
		dst = append(dst, '\f')
	case 'n':
		dst = append(dst, '\n')
	case 'r':
		dst = append(dst, '\r')
	case 't':
		dst = append(dst, '\t')
	case 'u':
		r, ok := p.hex4()
		if !ok {
			return dst, p.errf("bad \\u escape")
		}
		if utf16.IsSurrogate(r) {
			if r >= 0xdc00 || p.pos+1 >= len(p.in) || p.in[p.pos] != '\\' || p.in[p.pos+1] != 'u' {
				return dst, p.errf("lone surrogate")
			}
			p.pos += 2
			lo, ok := p.hex4()
			if !ok {
				return dst, p.errf("bad \\u escape")
			}
			r = utf16.DecodeRune(r, lo)
			if r == utf8.RuneError {
				return dst, p.errf("lone surrogate")
			}
		}
		dst = utf8.AppendRune(dst, r)
	default:
		return dst, p.errf("bad escape \\%c", e)
	}
	return dst, nil
}

func (p *parser) hex4() (rune, bool) {
	if len(p.in)-p.pos < 4 {
		return 0, false
	}
	var r rune
	for _, c := range p.in[p.pos : p.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	p.pos += 4
	return r, true
}

// number validates an RFC 8259 number and writes its canonical form.
func (p *parser) number() error {
	start := p.pos
	digits := func() int {
		n := 0
		for p.pos < len(p.in) && p.in[p.pos] >= '0' && p.in[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.in[p.pos] == '-' {
		p.pos++
	}
	if p.pos < len(p.in) && p.in[p.pos] == '0' {
		p.pos++
	} else if digits() == 0 {
		return p.errf("bad number")
	}
	if p.pos < len(p.in) && p.in[p.pos] == '.' {
		p.pos++
		if digits() == 0 {
			return p.errf("bad number fraction")
		}
	}
	if p.pos < len(p.in) && (p.in[p.pos] == 'e' || p.in[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.in) && (p.in[p.pos] == '+' || p.in[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return p.errf("bad number exponent")
		}
	}
	lit := p.in[start:p.pos]
	if isSmallInt(lit) {
		// An integer of at most 15 digits is exact in a double and
		// ECMAScript writes it as is (with -0 as 0).
		if string(lit) == "-0" {
			lit = lit[1:]
		}
		p.out = append(p.out, lit...)
		return nil
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil && (math.IsInf(f, 0) || !errors.Is(err, strconv.ErrRange)) {
		return p.errf("number out of range")
	}
	p.out = AppendNumber(p.out, f)
	return nil
}

// isSmallInt reports whether the valid JSON number lit is an integer of at
// most 15 digits.
func isSmallInt(lit []byte) bool {
	d := lit
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) > 15 {
		return false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// AppendString appends the RFC 8785 form of the string s (valid UTF-8):
// quoted, with \" \\ \b \f \n \r \t and \u00xx (lower-case hex) for the
// other control characters, and every other character as is.
func AppendString(dst []byte, s string) []byte { return appendString(dst, s) }

func appendString[T string | []byte](dst []byte, s T) []byte {
	const hexdigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			dst = append(dst, '\\', '"')
		case c == '\\':
			dst = append(dst, '\\', '\\')
		case c >= 0x20:
			dst = append(dst, c)
		case c == '\b':
			dst = append(dst, '\\', 'b')
		case c == '\f':
			dst = append(dst, '\\', 'f')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexdigits[c>>4], hexdigits[c&0xf])
		}
	}
	return append(dst, '"')
}

// AppendNumber appends f formatted as ECMAScript's Number.prototype.toString
// does (RFC 8785 §3.2.2.3): the shortest digits that round-trip, plain
// notation for decimal exponents from -6 to 20, otherwise d.ddde±x. f must
// be finite; -0 is written as 0.
func AppendNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0')
	}
	if f < 0 {
		dst = append(dst, '-')
		f = -f
	}
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // d[.ddd]e±xx
	i := 0
	for e[i] != 'e' {
		i++
	}
	mant, exp := e[:i], e[i+1:]
	var digits [24]byte
	k := 0
	for _, c := range mant {
		if c != '.' {
			digits[k] = c
			k++
		}
	}
	x, _ := strconv.Atoi(string(exp))
	n := x + 1 // value = 0.d1d2…dk × 10^n
	switch {
	case k <= n && n <= 21:
		dst = append(dst, digits[:k]...)
		for j := 0; j < n-k; j++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, digits[:n]...)
		dst = append(dst, '.')
		dst = append(dst, digits[n:k]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for j := 0; j < -n; j++ {
			dst = append(dst, '0')
		}
		dst = append(dst, digits[:k]...)
	default:
		dst = append(dst, digits[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:k]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst
}
