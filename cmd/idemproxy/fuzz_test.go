package main

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzStoreURL checks that parseStoreURL never panics, that what it accepts
// has a known kind, and that redact never prints a password it parsed.
func FuzzStoreURL(f *testing.F) {
	for _, s := range []string{
		"memory:", "file:idem.db", "file:///var/lib/idem.db", "redis://u:hunter2@127.0.0.1:6379/0",
		"rediss://h:6380?dial_timeout=1s", "redis+cluster://h1:1,h2:2?password=x", "postgres://u:pw@h/db?sslmode=disable",
		"postgresql://h/db", "mongodb://x", "", ":", "file:", "redis://[::1", "redis+cluster://",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// A password is a password when url.Parse sees it as one.
		var pw string
		if u, err := url.Parse(s); err == nil && u.User != nil {
			pw, _ = u.User.Password()
		}
		leaks := func(out string) bool {
			return len(pw) >= 4 && strings.Contains(out, pw) && !strings.Contains(strings.Replace(s, pw, "", 1), pw)
		}
		spec, err := parseStoreURL(s)
		if err != nil {
			if leaks(err.Error()) {
				t.Fatalf("error leaks the password: %v", err)
			}
			return
		}
		if spec.kind < storeMemory || spec.kind > storePostgres {
			t.Fatalf("%q: kind %d", s, spec.kind)
		}
		if spec.kind == storeFile && spec.path == "" {
			t.Fatalf("%q: empty file path accepted", s)
		}
		if spec.kind == storeRedisCluster && len(spec.addr) == 0 {
			t.Fatalf("%q: cluster without addresses", s)
		}
		if leaks(redact(s)) {
			t.Fatalf("redact(%q) leaks the password", s)
		}
	})
}
