package jcs_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/idemkit/idem/internal/jcs"
)

func canon(t *testing.T, in string) string {
	t.Helper()
	out, err := jcs.Canonicalize([]byte(in))
	if err != nil {
		t.Fatalf("Canonicalize(%q): %v", in, err)
	}
	return string(out)
}

// The examples of RFC 8785 §3.2.2 and §3.2.3.
func TestRFC8785Examples(t *testing.T) {
	t.Parallel()
	in := `{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`
	want := `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`
	if got := canon(t, in); got != want {
		t.Errorf("§3.2.2:\n got %s\nwant %s", got, want)
	}
	in = `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`
	want = `{"\r":"Carriage Return","1":"One","` + "\u0080" + `":"Control","` + "\u00f6" + `":"Latin Small Letter O With Diaeresis","` + "\u20ac" + `":"Euro Sign","` + "\U0001F600" + `":"Emoji: Grinning Face","` + "\uFB33" + `":"Hebrew Letter Dalet With Dagesh"}`
	if got := canon(t, in); got != want {
		t.Errorf("§3.2.3:\n got %s\nwant %s", got, want)
	}
}

// The number serialisation samples of RFC 8785 Appendix B.
func TestNumbers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		bits uint64
		want string
	}{
		{0x0000000000000000, "0"},
		{0x8000000000000000, "0"},
		{0x0000000000000001, "5e-324"},
		{0x8000000000000001, "-5e-324"},
		{0x7fefffffffffffff, "1.7976931348623157e+308"},
		{0xffefffffffffffff, "-1.7976931348623157e+308"},
		{0x4340000000000000, "9007199254740992"},
		{0xc340000000000000, "-9007199254740992"},
		{0x4430000000000000, "295147905179352830000"},
		{0x44b52d02c7e14af5, "9.999999999999997e+22"},
		{0x44b52d02c7e14af6, "1e+23"},
		{0x44b52d02c7e14af7, "1.0000000000000001e+23"},
		{0x444b1ae4d6e2ef4e, "999999999999999700000"},
		{0x444b1ae4d6e2ef4f, "999999999999999900000"},
		{0x444b1ae4d6e2ef50, "1e+21"},
		{0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
		{0x3eb0c6f7a0b5ed8d, "0.000001"},
		{0x41b3de4355555553, "333333333.3333332"},
		{0x41b3de4355555554, "333333333.33333325"},
		{0x41b3de4355555555, "333333333.3333333"},
		{0x41b3de4355555556, "333333333.3333334"},
		{0x41b3de4355555557, "333333333.33333343"},
		{0xbecbf647612f3696, "-0.0000033333333333333333"},
		{0x43143ff3c1cb0959, "1424953923781206.2"},
	}
	for _, c := range cases {
		f := math.Float64frombits(c.bits)
		if got := string(jcs.AppendNumber(nil, f)); got != c.want {
			t.Errorf("%#016x (%g): %s, want %s", c.bits, f, got, c.want)
		}
		// And through the parser, from Go's shortest spelling.
		if got := canon(t, string(jcs.AppendNumber(nil, f))); got != c.want {
			t.Errorf("parse %s: %s", c.want, got)
		}
	}
	for in, want := range map[string]string{
		"1.0": "1", "-0": "0", "-0.0e5": "0", "1e-400": "0", "100": "100", "1E2": "100",
		"0.1": "0.1", "1e21": "1e+21", "1e20": "100000000000000000000", "1e-6": "0.000001", "1e-7": "1e-7",
		"123456789012345678901234567890": "1.2345678901234568e+29",
	} {
		if got := canon(t, in); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func TestStringsAndStructure(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		`"\u0000\u001f\u007f"`:       `"\u0000\u001f` + "\x7f" + `"`,
		`"\b\f\n\r\t\/"`:             `"\b\f\n\r\t/"`,
		`"\u2028\u2029"`:             "\"\u2028\u2029\"",
		`"\uD834\uDD1E"`:             `"𝄞"`,
		`"<&>"`:                      `"<&>"`,
		` [ 1 , [ ] , { } , "" ] `:   `[1,[],{},""]`,
		`{"b":{"d":1,"c":2},"a":[]}`: `{"a":[],"b":{"c":2,"d":1}}`,
		`{"a":1,"b":2}`:              `{"a":1,"b":2}`,
		// UTF-16 order differs from code point order above the BMP.
		"{\"\U0001F600\":1,\"\uFB33\":2}": "{\"\U0001F600\":1,\"\uFB33\":2}",
		"{\"\uFB33\":2,\"\U0001F600\":1}": "{\"\U0001F600\":1,\"\uFB33\":2}",
		`{"aa":1,"a":2,"":3}`:             `{"":3,"a":2,"aa":1}`,
		`true`:                            `true`,
	}
	for in, want := range cases {
		if got := canon(t, in); got != want {
			t.Errorf("%s:\n got %s\nwant %s", in, got, want)
		}
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	bad := []string{
		``, ` `, `{`, `[1,]`, `{"a":1,}`, `{"a" 1}`, `{a:1}`, `[1 2]`, `01`, `1.`, `.5`, `1e`, `+1`, `-`,
		`1e400`, `-1e400`, `NaN`, `Infinity`, `tru`, `nul`, `"abc`, `"\x"`, `"\u12"`, `"\u12G4"`,
		"\"a\x01\"", "\"\xff\"", "\"\xed\xa0\x80\"", `"\ud800"`, `"\udc00"`, `"\ud800\u0041"`, `"\ud800x"`,
		`{"a":1,"a":2}`, `{"b":1,"a":1,"b":2}`, `1 2`, `[] x`, "\ufeff1",
		strings.Repeat("[", jcs.MaxDepth+1) + strings.Repeat("]", jcs.MaxDepth+1),
	}
	for _, in := range bad {
		if out, err := jcs.Canonicalize([]byte(in)); !errors.Is(err, jcs.ErrInvalid) {
			t.Errorf("Canonicalize(%q) = %q, %v; want ErrInvalid", in, out, err)
		}
	}
	deep := strings.Repeat("[", jcs.MaxDepth) + strings.Repeat("]", jcs.MaxDepth)
	if _, err := jcs.Canonicalize([]byte(deep)); err != nil {
		t.Errorf("depth %d: %v", jcs.MaxDepth, err)
	}
}

func TestAppendKeepsPrefix(t *testing.T) {
	t.Parallel()
	out, err := jcs.Append([]byte("x:"), []byte(`{"b":1,"a":2}`))
	if err != nil || string(out) != `x:{"a":2,"b":1}` {
		t.Errorf("Append = %q, %v", out, err)
	}
	out, err = jcs.Append([]byte("x:"), []byte(`{"b":1,`))
	if err == nil || string(out) != "x:" {
		t.Errorf("Append on error = %q, %v", out, err)
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{
		`{"b":[1,2.50,{"z":null,"y":"\u00e9"}],"a":-0}`, `[]`, `{}`, `"\ud83d\ude00"`, `1e-7`, `{"\ufb33":1,"\ud83d\ude00":2}`,
		`[1e308, 5e-324, 0.1, 123456789012345678]`, `{"a":{"b":{"c":{}}}}`, `{"a":1,"a":1}`, `[`, "\"\xff\"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := jcs.Canonicalize(data)
		if err != nil {
			if !errors.Is(err, jcs.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		c2, err := jcs.Canonicalize(c)
		if err != nil || string(c2) != string(c) {
			t.Fatalf("not idempotent:\n c %q\nc2 %q (%v)", c, c2, err)
		}
		// Re-ordering members (encoding/json re-marshals objects in Go's
		// byte order) and re-spelling numbers does not change the result.
		var v any
		if err := json.Unmarshal(c, &v); err != nil {
			t.Fatalf("canonical output is not JSON: %q: %v", c, err)
		}
		re, err := json.Marshal(v)
		if err != nil {
			return
		}
		c3, err := jcs.Canonicalize(re)
		if err != nil || string(c3) != string(c) {
			t.Fatalf("reordered input canonicalises differently:\n  c %q\n re %q\n c3 %q (%v)", c, re, c3, err)
		}
	})
}

func BenchmarkCanonicalize(b *testing.B) {
	in := []byte(`{"currency":"EUR","amount":1000,"items":[{"sku":"sku-1","qty":1,"price":9.99},{"qty":2,"sku":"sku-2","price":1e3}],"note":"caf\u00e9 \ud83d\ude00","meta":{"z":true,"a":null}}`)
	out := make([]byte, 0, 1024)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if out, err = jcs.Append(out[:0], in); err != nil {
			b.Fatal(err)
		}
	}
}
