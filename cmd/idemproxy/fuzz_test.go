package main

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// FuzzStoreURL checks that parseStoreURL never panics, that what it accepts
// has a known kind, and that neither its errors nor redact print a password
// or a secret query parameter.
func FuzzStoreURL(f *testing.F) {
	for _, s := range []string{
		"memory:", "file:idem.db", "file:///var/lib/idem.db", "redis://u:hunter2@127.0.0.1:6379/0",
		"rediss://h:6380?dial_timeout=1s", "redis+cluster://h1:1,h2:2?password=x", "postgres://u:pw@h/db?sslmode=disable",
		"postgresql://h/db", "mongodb://x", "", ":", "file:", "redis://[::1", "redis+cluster://",
		"redis://h?wait_replicas=1&wait_timeout=50ms", "redis+cluster://h1:1?password=hunter2&wait_timeout=x",
		"postgres://h/db?sslpassword=hunter2&sslmode=bogus", "redis://u:hun/ter2@h:1",
		"redis+sentinel://u:hunter2@s1:26379,s2/mymaster/1?sentinel_password=hunter3&wait_replicas=1",
		"rediss+sentinel://s1/m?skip_verify=true&sentinel_username=x", "redis+sentinel://s1:1", "redis+sentinel://s1/m?db=x&addr=s2:1",
		"redis+cluster://h1:1?sentinel_password=hunter2", "rediss+cluster://h1?skip_verify=1&read_timeout=2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// A secret is a secret when url.Parse sees it as one: the user
		// info's password, and the value of a query parameter whose name
		// says password, secret or token.
		var secrets []string
		if u, err := url.Parse(s); err == nil {
			if pw, ok := u.User.Password(); ok {
				secrets = append(secrets, pw)
			}
			if q, err := url.ParseQuery(u.RawQuery); err == nil {
				for name, vs := range q {
					n := strings.ToLower(name)
					if strings.Contains(n, "password") || strings.Contains(n, "secret") || strings.Contains(n, "token") {
						secrets = append(secrets, vs...)
					}
				}
			}
		}
		// A secret leaks when it shows although it appears only once in s
		// (a value that also appears elsewhere cannot be told apart).
		leaks := func(out string) bool {
			for _, pw := range secrets {
				if len(pw) >= 4 && strings.Contains(out, pw) && !strings.Contains(strings.Replace(s, pw, "", 1), pw) {
					return true
				}
			}
			return false
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
		if (spec.kind == storeRedisCluster || spec.kind == storeRedisSentinel) && len(spec.addr) == 0 {
			t.Fatalf("%q: cluster or sentinel without addresses", s)
		}
		if spec.kind == storeRedisSentinel && spec.redis.failover.MasterName == "" {
			t.Fatalf("%q: sentinel without a master name", s)
		}
		if r := spec.redis; r != nil {
			// The same URL gives the same options (the parse is a
			// function of the URL), and no client resends a command
			// unless max_retries was given.
			again, err := parseStoreURL(s)
			if err != nil || !reflect.DeepEqual(again.redis, r) {
				t.Fatalf("%q parsed twice: %+v, then %+v, %v", s, r, again.redis, err)
			}
		}
		if leaks(redact(s)) {
			t.Fatalf("redact(%q) leaks the password", s)
		}
	})
}

// FuzzOTelEndpoint checks that parseOTelEndpoint never panics and that what
// it accepts is usable by the exporter: a host:port with a port, an
// absolute path, and the same result when the parsed endpoint is given
// back as a URL.
func FuzzOTelEndpoint(f *testing.F) {
	for _, s := range []string{
		"http://127.0.0.1:4318", "https://otel.example/v1/traces", "collector:4318", "[::1]:4318",
		"http://[::1]:4318/", "collector", "ftp://x:1", "http://u:p@h:1", "http://h:1?x=1", ":", "://", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := parseOTelEndpoint(s)
		if err != nil {
			return
		}
		if e.host == "" || !strings.HasPrefix(e.path, "/") {
			t.Fatalf("parseOTelEndpoint(%q) = %+v", s, e)
		}
		scheme := "https://"
		if e.insecure {
			scheme = "http://"
		}
		again, err := parseOTelEndpoint(scheme + e.host + e.path)
		if err != nil || again != e {
			t.Fatalf("parseOTelEndpoint(%q) = %+v, but its URL %q gives %+v, %v", s, e, scheme+e.host+e.path, again, err)
		}
	})
}
