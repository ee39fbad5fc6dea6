package main

import (
	"strings"
	"testing"
)

// TestAdminTokenFile: the admin token can come from a file (not visible in
// ps), and the Bearer scheme is matched case-insensitively.
func TestAdminTokenFile(t *testing.T) {
	u := newUpstream(t)
	tok := writeFile(t, "admin.token", "  s3cret-from-file\n")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-admin", "127.0.0.1:0", "-admin-token-file", tok)
	c := client(t)
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"Bearer s3cret-from-file", 400}, // authorized; the empty key is refused
		{"bearer s3cret-from-file", 400},
		{"BEARER  s3cret-from-file", 400},
		{"Bearer wrong", 401},
		{"Basic s3cret-from-file", 401},
		{"s3cret-from-file", 401},
		{"", 401},
	} {
		hdr := map[string]string{}
		if tc.auth != "" {
			hdr["Authorization"] = tc.auth
		}
		if r := do(t, c, "GET", p.admin+"/keys?key=", hdr, ""); r.status != tc.want {
			t.Errorf("Authorization %q: %d %s, want %d", tc.auth, r.status, r.body, tc.want)
		}
	}
	if strings.Contains(p.log.String(), "s3cret-from-file") {
		t.Error("the admin token appears in the log")
	}
}

func TestAdminTokenFileErrors(t *testing.T) {
	empty := writeFile(t, "empty.token", "\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-upstream", "http://a:1", "-admin", "127.0.0.1:0", "-admin-token-file", empty}, "-admin-token-file: the file is empty"},
		{[]string{"-upstream", "http://a:1", "-admin", "127.0.0.1:0", "-admin-token-file", "/nonexistent/x"}, "-admin-token-file:"},
		{[]string{"-upstream", "http://a:1", "-admin", "127.0.0.1:0", "-admin-token", "t", "-admin-token-file", empty}, "not both"},
	} {
		_, err := parseArgs(tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
