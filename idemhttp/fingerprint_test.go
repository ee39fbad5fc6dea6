package idemhttp_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/idemkit/idem"
)

// TestFingerprintMatchesCore pins DefaultFingerprint to its documented
// definition: idem.Fingerprint(method, RequestURI, Content-Type, body).
func TestFingerprintMatchesCore(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("b"), 100<<10)
	cases := []struct {
		method, target, ct string
		body               []byte
	}{
		{"POST", "/pay", "", nil},
		{"POST", "/pay?a=1&b=2", "application/json", []byte(`{"a":1}`)},
		{"PATCH", "/a%2Fb/c%20d?q=%zz", "text/plain; charset=utf-8", []byte("x")},
		{"POST", "/pay?", "", nil},
		{"POST", "/", "", big},
		{"POST", "/caf%C3%A9", "", []byte{0}},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.target, bytes.NewReader(c.body))
		if c.ct != "" {
			r.Header.Set("Content-Type", c.ct)
		}
		want := idem.Fingerprint([]byte(c.method), []byte(r.URL.RequestURI()), []byte(c.ct), c.body)
		if got := dfp(r, c.body); !bytes.Equal(got, want) {
			t.Errorf("%s %s: %x, want %x", c.method, c.target, got, want)
		}
	}
	// Opaque URLs (absolute-form request targets on proxies) take the slow path.
	r := httptest.NewRequest("POST", "/", nil)
	r.URL = &url.URL{Scheme: "http", Opaque: "//host/x", RawQuery: "y"}
	want := idem.Fingerprint([]byte("POST"), []byte(r.URL.RequestURI()), nil, nil)
	if got := dfp(r, nil); !bytes.Equal(got, want) {
		t.Errorf("opaque: %x, want %x", got, want)
	}
}

func TestFingerprintDistinguishes(t *testing.T) {
	t.Parallel()
	base := func() *http.Request {
		r := httptest.NewRequest("POST", "/pay?x=1", nil)
		r.Header.Set("Content-Type", "application/json")
		return r
	}
	fp := func(r *http.Request, body string) string { return string(dfp(r, []byte(body))) }
	ref := fp(base(), "{}")
	variants := map[string]func() (*http.Request, string){
		"method": func() (*http.Request, string) { r := base(); r.Method = "PATCH"; return r, "{}" },
		"path":   func() (*http.Request, string) { r := base(); r.URL.Path = "/pay2"; return r, "{}" },
		"query":  func() (*http.Request, string) { r := base(); r.URL.RawQuery = "x=2"; return r, "{}" },
		"ct": func() (*http.Request, string) {
			r := base()
			r.Header.Set("Content-Type", "text/plain")
			return r, "{}"
		},
		"body": func() (*http.Request, string) { return base(), "{ }" },
		// Moving bytes between parts changes the digest (length prefixes).
		"shift": func() (*http.Request, string) {
			r := base()
			r.Header.Set("Content-Type", "application/jso")
			return r, "n{}"
		},
	}
	for name, v := range variants {
		r, body := v()
		if fp(r, body) == ref {
			t.Errorf("%s: same fingerprint", name)
		}
	}
	// Other headers do not matter.
	r := base()
	r.Header.Set("X-Trace", "1")
	if fp(r, "{}") != ref {
		t.Error("unrelated header changed the fingerprint")
	}
}

// FuzzFingerprint checks the allocation-free DefaultFingerprint against its
// definition for any method, request target, Content-Type and body.
func FuzzFingerprint(f *testing.F) {
	f.Add("POST", "/pay?x=1", "application/json", []byte(`{"a":1}`))
	f.Add("PATCH", "/a%2Fb/c%20d?", "", []byte{})
	f.Add("POST", "*", "text/plain", []byte{0})
	f.Add("POST", "http://h/x?y", "", []byte(nil))
	f.Fuzz(func(t *testing.T, method, target, ct string, body []byte) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{Method: method, URL: u, Header: http.Header{}}
		if ct != "" {
			r.Header["Content-Type"] = []string{ct}
		}
		want := idem.Fingerprint([]byte(method), []byte(u.RequestURI()), []byte(ct), body)
		if got := dfp(r, body); !bytes.Equal(got, want) {
			t.Fatalf("%q %q %q: %x, want %x", method, target, ct, got, want)
		}
	})
}

func TestCanonicalFingerprint(t *testing.T) {
	t.Parallel()
	mk := func(ct, body string) []byte {
		r := httptest.NewRequest("POST", "/p?q=1", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		return cfp(r, []byte(body))
	}
	a := mk("application/json", `{"b":1,"a":[1.0,2]}`)
	for _, c := range []struct{ ct, body string }{
		{"application/json", `{"a":[1,2e0],"b":1}`},
		{"application/json", " {\n\"a\" : [ 1 , 2 ] , \"b\":1 } "},
	} {
		if !bytes.Equal(mk(c.ct, c.body), a) {
			t.Errorf("%s %s: differs", c.ct, c.body)
		}
	}
	// The +json suffix and parameters are JSON too, but the Content-Type
	// itself is still part of the fingerprint.
	if x := mk("application/merge-patch+json; charset=utf-8", `{"b":1,"a":[1,2]}`); bytes.Equal(x, a) ||
		!bytes.Equal(x, mk("application/merge-patch+json; charset=utf-8", `{"a":[1,2],"b":1}`)) {
		t.Error("+json media type not canonicalised")
	}
	// Not JSON, or invalid JSON: the raw fingerprint, which differs from any
	// canonical one.
	r := httptest.NewRequest("POST", "/p?q=1", nil)
	r.Header.Set("Content-Type", "text/plain")
	if !bytes.Equal(cfp(r, []byte(`{"b":1}`)), dfp(r, []byte(`{"b":1}`))) {
		t.Error("non-JSON body canonicalised")
	}
	r.Header.Set("Content-Type", "application/json")
	if !bytes.Equal(cfp(r, []byte(`{"b":1,"b":2}`)), dfp(r, []byte(`{"b":1,"b":2}`))) {
		t.Error("invalid I-JSON not fingerprinted raw")
	}
	if bytes.Equal(cfp(r, []byte(`{"b":1}`)), dfp(r, []byte(`{"b":1}`))) {
		t.Error("canonical fingerprint equals the raw one of the same bytes")
	}
}
