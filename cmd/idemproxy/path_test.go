package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"
)

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/", true}, {"/v1/charges", true}, {"/v1/charges/", true}, {"/a.b/c..d/.e", true},
		{"/v1/%41bc", true}, {"*", true},
		{"/internal/../v1/charges", false}, {"/../admin/reset", false}, {"/a/./b", false},
		{"/a/%2e%2e/b", false}, {"/a/%2E/b", false}, {"/a/.%2e/b", false},
		{"//a", false}, {"/a//b", false}, {"/a/%2Fb", false}, {"/a/%2fb", false}, {"/a\\b", false},
		{"/a/%5Cb", false}, {"/a/%00", false}, {"/a/%zz", false}, {"/a/..", false}, {"/a/.", false},
	} {
		u, err := url.ParseRequestURI(tc.path)
		if err != nil {
			if tc.ok {
				t.Errorf("%q: %v", tc.path, err)
			}
			continue
		}
		err = checkPath(&http.Request{URL: u})
		if (err == nil) != tc.ok {
			t.Errorf("checkPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
}

// FuzzCheckPath: whatever checkPath accepts is already clean: resolving dot
// segments and empty segments changes nothing, and the matched (decoded)
// path is the forwarded one.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "/a/../b", "/a/%2e%2e/b", "//x", "/a%2Fb", "/%00", "/a/./", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.ParseRequestURI(s)
		if err != nil {
			return
		}
		if checkPath(&http.Request{URL: u}) != nil || u.Path == "*" {
			return
		}
		clean := path.Clean(u.Path)
		if strings.HasSuffix(u.Path, "/") && clean != "/" {
			clean += "/"
		}
		if clean != u.Path {
			t.Fatalf("accepted %q whose path %q cleans to %q", s, u.Path, clean)
		}
		if strings.Contains(u.EscapedPath(), "%2F") || strings.Contains(u.EscapedPath(), "%2f") {
			t.Fatalf("accepted an encoded slash: %q", s)
		}
	})
}

// TestPathBypass: through a real proxy, dot-segment and empty-segment paths
// cannot reach a route's upstream under another route's policy: they are
// refused (400 path-invalid) and never forwarded.
func TestPathBypass(t *testing.T) {
	u := newUpstream(t)
	cfg := writeFile(t, "routes.yaml", "routes:\n  - prefix: /internal/\n    key: \"off\"\n")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-config", cfg)
	addr := strings.TrimPrefix(p.addr, "http://")
	raw := func(method, target string) (int, string) {
		t.Helper()
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", method, target)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		return resp.StatusCode, b.String()
	}
	// Without a key, the protected route refuses; the off route passes.
	if st, _ := raw("POST", "/ok"); st != 400 {
		t.Fatalf("POST /ok without a key: %d", st)
	}
	for _, target := range []string{
		"/internal/../ok", "/internal/%2e%2e/ok", "/internal/.%2E/ok", "/../ok", "/internal/..%2Fok",
		"/internal//../ok", "/internal/./../ok", "//ok", "/internal\\..\\ok",
	} {
		st, body := raw("POST", target)
		if st != 400 || !strings.Contains(body, codePathInvalid) {
			t.Errorf("POST %s: %d %s, want 400 %s", target, st, body, codePathInvalid)
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, n := range u.calls {
		if strings.HasPrefix(k, "/ok") && n > 0 {
			t.Errorf("the upstream ran %q %d times", k, n)
		}
	}
}
