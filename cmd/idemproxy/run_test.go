package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func withEnv(t *testing.T, env map[string]string) {
	old := lookupEnv
	lookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	t.Cleanup(func() { lookupEnv = old })
}

func TestBadFlags(t *testing.T) {
	badCfg := writeFile(t, "bad.yaml", "routes:\n- prefix: /a\n- prefix: /b\n- prefix: /c\n  lease: 25h\n")
	unknown := writeFile(t, "unknown.json", `{"routes":[{"prefix":"/a","retention":"1h"}]}`)
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no upstream", nil, nil, "-upstream: required"},
		{"bad upstream", []string{"-upstream", "localhost:9000"}, nil, "-upstream: must be an http:// or https:// URL"},
		{"upstream with demo", []string{"-demo", "-upstream", "http://a:1"}, nil, "-upstream: not allowed with -demo"},
		{"unknown flag", []string{"-listn", "x"}, nil, "flag provided but not defined: -listn"},
		{"extra argument", []string{"-upstream", "http://a:1", "serve"}, nil, `unexpected argument "serve"`},
		{"bad duration", []string{"-ttl", "forever"}, nil, `invalid value "forever" for flag -ttl`},
		{"lease over ttl", []string{"-upstream", "http://a:1", "-ttl", "10s", "-lease", "10s"}, nil, "-lease: must be > 0 and < ttl (10s)"},
		{"negative lease", []string{"-upstream", "http://a:1", "-lease", "-1s"}, nil, "-lease: must be > 0"},
		{"bad listen", []string{"-upstream", "http://a:1", "-listen", "8080"}, nil, "-listen: must be host:port"},
		{"bad admin", []string{"-upstream", "http://a:1", "-admin", "x"}, nil, "-admin: must be host:port"},
		{"token without admin", []string{"-upstream", "http://a:1", "-admin-token", "t"}, nil, "-admin-token: needs -admin"},
		{"bad store scheme", []string{"-upstream", "http://a:1", "-store", "s3://b"}, nil, `-store: unknown store scheme "s3"`},
		{"file store without path", []string{"-upstream", "http://a:1", "-store", "file:"}, nil, "-store: file: needs a path"},
		{"memory with path", []string{"-upstream", "http://a:1", "-store", "memory:x"}, nil, "-store: memory: takes no path"},
		{"bad redis url", []string{"-upstream", "http://a:1", "-store", "redis://h:1/notadb"}, nil, "-store: redis://h:1/notadb"},
		{"bad log format", []string{"-upstream", "http://a:1", "-log-format", "xml"}, nil, "-log-format: must be text or json"},
		{"bad log level", []string{"-upstream", "http://a:1", "-log-level", "loud"}, nil, "-log-level: must be debug"},
		{"bad shutdown timeout", []string{"-upstream", "http://a:1", "-shutdown-timeout", "0s"}, nil, "-shutdown-timeout: must be > 0"},
		{"bad env", nil, map[string]string{"IDEMPROXY_UPSTREAM": "http://a:1", "IDEMPROXY_LEASE": "long"}, `IDEMPROXY_LEASE="long": parse error`},
		{"bad env bool", nil, map[string]string{"IDEMPROXY_DEMO": "maybe"}, `IDEMPROXY_DEMO="maybe"`},
		{"env lease over ttl", nil, map[string]string{"IDEMPROXY_UPSTREAM": "http://a:1", "IDEMPROXY_LEASE": "48h"}, "-lease: must be > 0 and < ttl"},
		{"bad config", []string{"-upstream", "http://a:1", "-config", badCfg}, nil, "routes[2].lease: must be > 0 and < ttl (24h0m0s)"},
		{"unknown config field", []string{"-upstream", "http://a:1", "-config", unknown}, nil, "routes[0].retention: unknown field"},
		{"missing config", []string{"-upstream", "http://a:1", "-config", "/nonexistent.yaml"}, nil, "config: open /nonexistent.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			withEnv(t, tc.env)
			var out, errb bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errb)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q\nwant it to contain %q", err, tc.want)
			}
			if errb.Len() != 0 || out.Len() != 0 {
				t.Fatalf("output before failing: %q %q", out.String(), errb.String())
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	cfg := writeFile(t, "c.yaml", "listen: 127.0.0.1:7001\nupstream: http://file:1\nstore: \"memory:\"\ndefault: {ttl: 2h, lease: 20s}\n")
	cases := []struct {
		name                    string
		args                    []string
		env                     map[string]string
		listen, upstream, store string
		ttl, lease              time.Duration
	}{
		{"file only", []string{"-config", cfg}, nil, "127.0.0.1:7001", "http://file:1", "memory:", 2 * time.Hour, 20 * time.Second},
		{"env over file", []string{"-config", cfg}, map[string]string{"IDEMPROXY_LISTEN": "127.0.0.1:7002", "IDEMPROXY_LEASE": "5s"},
			"127.0.0.1:7002", "http://file:1", "memory:", 2 * time.Hour, 5 * time.Second},
		{"flag over env", []string{"-config", cfg, "-listen", "127.0.0.1:7003", "-ttl", "1h"}, map[string]string{"IDEMPROXY_LISTEN": "127.0.0.1:7002"},
			"127.0.0.1:7003", "http://file:1", "memory:", time.Hour, 20 * time.Second},
		{"defaults", []string{"-upstream", "http://u:1"}, nil, "127.0.0.1:8080", "http://u:1", "file:idem.db", 24 * time.Hour, 30 * time.Second},
		{"env config", nil, map[string]string{"IDEMPROXY_CONFIG": cfg}, "127.0.0.1:7001", "http://file:1", "memory:", 2 * time.Hour, 20 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			withEnv(t, tc.env)
			o, err := parseArgs(tc.args, new(bytes.Buffer))
			if err != nil {
				t.Fatal(err)
			}
			if o.listen != tc.listen || o.upstream != tc.upstream || o.store != tc.store || o.ttl != tc.ttl || o.lease != tc.lease {
				t.Fatalf("got listen %s upstream %s store %s ttl %v lease %v", o.listen, o.upstream, o.store, o.ttl, o.lease)
			}
			if o.cfg.Default.TTL != tc.ttl || o.cfg.Default.Lease != tc.lease {
				t.Fatalf("policy ttl %v lease %v", o.cfg.Default.TTL, o.cfg.Default.Lease)
			}
		})
	}
}

func TestHelpListsEveryFlag(t *testing.T) {
	withEnv(t, nil)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	fs := newFlagSet(&options{})
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(help, "  -"+f.Name) || !strings.Contains(help, envName(f.Name)) {
			t.Errorf("help lacks -%s or %s", f.Name, envName(f.Name))
		}
	})
	for _, want := range []string{`(default "127.0.0.1:8080")`, `(default "file:idem.db")`, `(default "24h0m0s")`, `(default "30s")`} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %s", want)
		}
	}
}

func TestVersion(t *testing.T) {
	withEnv(t, nil)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "idemproxy ") {
		t.Fatalf("version: %q", out.String())
	}
	version = "v9.9.9"
	defer func() { version = "" }()
	out.Reset()
	run(context.Background(), []string{"-version"}, &out, &out)
	if !strings.HasPrefix(out.String(), "idemproxy v9.9.9") {
		t.Fatalf("ldflags version: %q", out.String())
	}
}

// TestRunInProcess runs run() in the test process: it serves, replays, and
// returns nil once ctx is canceled, leaving no goroutine behind (TestMain
// checks with leakcheck).
func TestRunInProcess(t *testing.T) {
	withEnv(t, nil)
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(201)
		w.Write([]byte("made"))
	}))
	defer up.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin", "127.0.0.1:0", "-upstream", up.URL, "-store", "memory:",
			"-log-format", "json", "-sweep-interval", "10ms"}, &bytes.Buffer{}, stderr)
	}()
	var addr string
	waitFor(t, 10*time.Second, "the listening line", func() bool {
		for _, l := range strings.Split(stderr.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "listening" {
				addr = m["addr"].(string)
				return true
			}
		}
		return false
	})
	c := client(t)
	for i := 0; i < 2; i++ {
		r := do(t, c, "POST", "http://"+addr+"/x", map[string]string{"Idempotency-Key": "abc"}, "")
		if r.status != 201 || string(r.body) != "made" {
			t.Fatalf("%d %s", r.status, r.body)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("upstream ran %d times", n)
	}
	time.Sleep(30 * time.Millisecond) // let the sweeper tick
	c.Transport.(*http.Transport).CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if !strings.Contains(stderr.String(), `"msg":"store closed"`) {
		t.Fatalf("log: %s", stderr)
	}
}

func TestParseStoreURL(t *testing.T) {
	cases := []struct {
		in   string
		kind storeKind
		path string
		addr []string
	}{
		{"memory:", storeMemory, "", nil},
		{"file:idem.db", storeFile, "idem.db", nil},
		{"file:///var/lib/idem.db", storeFile, "/var/lib/idem.db", nil},
		{"redis://127.0.0.1:6379/0", storeRedis, "", nil},
		{"rediss://u:p@h:6380", storeRedis, "", nil},
		{"redis+cluster://h1:7000,h2:7001", storeRedisCluster, "", []string{"h1:7000", "h2:7001"}},
		{"redis://h:1?wait_replicas=1&wait_timeout=50ms", storeRedis, "", nil},
		{"rediss+cluster://h1:7000,h2:7001?password=pw&wait_replicas=1&wait_timeout=50ms", storeRedisCluster, "", []string{"h1:7000", "h2:7001"}},
		{"postgres://u@127.0.0.1:5432/db?sslmode=disable", storePostgres, "", nil},
		{"postgresql://127.0.0.1/db", storePostgres, "", nil},
	}
	for _, tc := range cases {
		s, err := parseStoreURL(tc.in)
		if err != nil || s.kind != tc.kind || s.path != tc.path || strings.Join(s.addr, ",") != strings.Join(tc.addr, ",") {
			t.Errorf("parseStoreURL(%q) = %+v, %v", tc.in, s, err)
		}
	}
	for _, u := range []string{"redis://user:hunter2@h:1/0", "redis+cluster://h1:1?password=hunter2", "postgres://h/db?sslpassword=hunter2"} {
		if got := redact(u); strings.Contains(got, "hunter2") {
			t.Errorf("redact leaks the password: %s", got)
		}
	}
}
