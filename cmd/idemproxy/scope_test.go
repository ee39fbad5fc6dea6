package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// scopeConfig: X-Api-Key is a credential on every route; /status/ lets
// anonymous callers in.
const scopeConfig = `
default:
  scope_headers: [X-Api-Key]
routes:
  - name: public
    prefix: /status/
    anonymous: allow
`

// sendAs sends a POST to p with exactly the given headers (no default
// credential) and Host.
func sendAs(t *testing.T, c *http.Client, p *proc, host, path string, hdr [][2]string, body string) resp {
	t.Helper()
	req, err := http.NewRequest("POST", p.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	req.Header.Set("Content-Type", "application/json")
	for _, kv := range hdr {
		req.Header.Add(kv[0], kv[1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

// TestScopeAttacks is issue 11's cross-caller replay against a real proxy
// process: Mallory, with other credentials or none, or on another Host,
// gets her own execution or a refusal, never Alice's bytes nor a 409/422
// from Alice's record.
func TestScopeAttacks(t *testing.T) {
	for _, sc := range storeCases() {
		if sc.name == "redis-cluster" {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			cfg := writeFile(t, "scope.yaml", scopeConfig)
			p := startProxy(t, append(storeArgs(t, sc.url(t)), "-upstream", u.srv.URL, "-config", cfg, "-log-level", "info")...)
			c := client(t)
			alices := map[string][][2]string{
				"api-key":       {{"X-Api-Key", "alice-key"}},
				"cookie":        {{"Cookie", "session=alice"}},
				"authorization": {{"Authorization", "Bearer alice-token"}},
			}
			mallories := map[string][][2]string{
				"other api key":        {{"X-Api-Key", "mallory-key"}},
				"no credentials":       nil,
				"empty api key":        {{"X-Api-Key", ""}},
				"other cookie":         {{"Cookie", "session=mallory"}},
				"other bearer":         {{"Authorization", "Bearer mallory"}},
				"api key as other hdr": {{"X-Other-Key", "alice-key"}},
				"hop-by-hop alice":     {{"Authorization", "Bearer alice-token"}, {"Connection", "Authorization"}},
			}
			for an, alice := range alices {
				for _, path := range []string{"/ok", "/status/201"} {
					var mu sync.Mutex
					aliceGot := map[string]bool{}
					asAlice := func(host, path, key, body string) resp {
						r := sendAs(t, c, p, host, path, append([][2]string{{"Idempotency-Key", key}}, alice...), body)
						mu.Lock()
						aliceGot[string(r.body)] = true
						mu.Unlock()
						return r
					}
					check := func(what string, r resp) {
						t.Helper()
						mu.Lock()
						leaked := aliceGot[string(r.body)]
						mu.Unlock()
						switch {
						case r.status == 409 || r.status == 422:
							t.Errorf("%s: %d from Alice's record: %s", what, r.status, r.body)
						case r.header.Get("Idempotency-Replayed") != "" || leaked:
							t.Errorf("%s: Alice's response: %s", what, r.body)
						case r.status == 400:
							if code := problemCode(t, r); code != "credentials-required" && code != "credential-hop-by-hop" {
								t.Errorf("%s: 400 %s", what, r.body)
							}
						case r.status != 201:
							t.Errorf("%s: %d %s", what, r.status, r.body)
						}
					}
					type attacker struct {
						name, host string
						hdr        [][2]string
					}
					var attackers []attacker
					for mn, m := range mallories {
						attackers = append(attackers, attacker{mn, "", m})
					}
					attackers = append(attackers, attacker{"alice's credentials, other host", "other.example", alice})
					for _, m := range attackers {
						what := fmt.Sprintf("alice by %s on %s, mallory %s", an, path, m.name)
						k1, k2, k3 := newKey(), newKey(), newKey()
						first := asAlice("", path, k1, `{"amount":1}`)
						if first.status != 201 {
							t.Fatalf("%s: alice: %d %s", what, first.status, first.body)
						}
						mh := func(k string) [][2]string { return append([][2]string{{"Idempotency-Key", k}}, m.hdr...) }
						check(what+": same request", sendAs(t, c, p, m.host, path, mh(k1), `{"amount":1}`))
						asAlice("", path, k2, `{"amount":1}`)
						check(what+": other body", sendAs(t, c, p, m.host, path, mh(k2), `{"amount":2}`))
						// Alice still replays her own response.
						if r := asAlice("", path, k1, `{"amount":1}`); r.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r.body, first.body) {
							t.Errorf("%s: alice's retry: %d %s", what, r.status, r.body)
						}
						if path != "/ok" {
							continue
						}
						// While Alice's request runs at the upstream, Mallory
						// gets no 409.
						slow := "/slow?ms=300"
						done := make(chan resp, 1)
						go func() { done <- asAlice("", slow, k3, "{}") }()
						waitFor(t, 5*time.Second, "alice at the upstream", func() bool { return u.n("/slow", k3) == 1 })
						check(what+": in flight", sendAs(t, c, p, m.host, slow, mh(k3), "{}"))
						if r := <-done; r.status != 201 {
							t.Fatalf("%s: alice's slow request: %d %s", what, r.status, r.body)
						}
					}
				}
			}
			// An Authorization scheme is case-insensitive: one caller.
			k := newKey()
			r1 := sendAs(t, c, p, "", "/ok", [][2]string{{"Idempotency-Key", k}, {"Authorization", "Bearer x"}}, "{}")
			r2 := sendAs(t, c, p, "", "/ok", [][2]string{{"Idempotency-Key", k}, {"Authorization", "bearer x"}}, "{}")
			if r1.status != 201 || r2.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r1.body, r2.body) {
				t.Errorf("Bearer x / bearer x: %d / %d %s", r1.status, r2.status, r2.body)
			}
			// Anonymous callers: refused by default with a problem that says
			// how to allow them; on /status/ they share one scope per Host.
			r := sendAs(t, c, p, "", "/ok", [][2]string{{"Idempotency-Key", k}}, "{}")
			if r.status != 400 || problemCode(t, r) != "credentials-required" || !strings.Contains(string(r.body), "anonymous: allow") {
				t.Errorf("anonymous: %d %s", r.status, r.body)
			}
			k = newKey()
			a1 := sendAs(t, c, p, "", "/status/201", [][2]string{{"Idempotency-Key", k}}, "{}")
			a2 := sendAs(t, c, p, "", "/status/201", [][2]string{{"Idempotency-Key", k}}, "{}")
			a3 := sendAs(t, c, p, "b.example", "/status/201", [][2]string{{"Idempotency-Key", k}}, "{}")
			if a1.status != 201 || a2.header.Get("Idempotency-Replayed") != "true" || a3.status != 201 || a3.header.Get("Idempotency-Replayed") != "" {
				t.Errorf("anonymous on /status/: %d, %d %q, other host %d %q", a1.status, a2.status, a2.header.Get("Idempotency-Replayed"), a3.status, a3.header.Get("Idempotency-Replayed"))
			}
			if t.Failed() {
				t.Logf("log:\n%s", p.log)
			}
		})
	}
}

// TestScopeLogs: at info level the logs carry the HMAC'd scope and a short
// hash of the key, never a credential or the key itself; at debug level the
// key is there.
func TestScopeLogs(t *testing.T) {
	u := newUpstream(t)
	for _, level := range []string{"info", "debug"} {
		p := startProxy(t, "-upstream", u.srv.URL, "-store", "memory:", "-log-level", level)
		c := client(t)
		k := "k-" + level + "-visible-key"
		hdr := [][2]string{{"Idempotency-Key", k}, {"Authorization", "Bearer very-secret-token"}, {"Cookie", "sid=cookie-secret"}}
		sendAs(t, c, p, "", "/ok", hdr, `{"a":1}`)
		sendAs(t, c, p, "", "/ok", hdr, `{"a":2}`) // 422: logged at info
		p.stop()
		log := p.log.String()
		for _, secret := range []string{"very-secret-token", "cookie-secret"} {
			if strings.Contains(log, secret) {
				t.Errorf("%s: a credential in the log:\n%s", level, log)
			}
		}
		if !strings.Contains(log, `"key_hash":"`) || !strings.Contains(log, `"scope":"`) {
			t.Errorf("%s: no key_hash or scope in the log:\n%s", level, log)
		}
		if got := strings.Contains(log, k); got != (level == "debug") {
			t.Errorf("%s: key in the log: %v\n%s", level, got, log)
		}
	}
}

// TestScopeSecretFlags: where the secret comes from, and what is refused.
func TestScopeSecretFlags(t *testing.T) {
	good := writeFile(t, "good", "  0123456789abcdef-good \n")
	short := writeFile(t, "short", "0123456789\n")
	empty := writeFile(t, "empty", "\n")
	up := []string{"-upstream", "http://a:1"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // error substring, "" for success
		from string
	}{
		{"redis without secret", []string{"-store", "redis://127.0.0.1:1/0"}, nil, "-scope-secret-file: required with a shared store", ""},
		{"postgres without secret", []string{"-store", "postgres://u:pw@h/db"}, nil, "-scope-secret-file: required with a shared store (postgres://", ""},
		{"short", []string{"-scope-secret-file", short}, nil, "at least 16 are required", ""},
		{"empty", []string{"-scope-secret-file", empty}, nil, "the secret is empty", ""},
		{"missing", []string{"-scope-secret-file", "/nonexistent/secret"}, nil, "-scope-secret-file: open /nonexistent/secret", ""},
		{"env short", nil, map[string]string{"IDEMPROXY_SCOPE_SECRET": "short"}, "IDEMPROXY_SCOPE_SECRET: the secret is 5 bytes", ""},
		{"both env", nil, map[string]string{"IDEMPROXY_SCOPE_SECRET": "0123456789abcdef", "IDEMPROXY_SCOPE_SECRET_FILE": good}, "give one of them", ""},
		{"file", []string{"-store", "redis://127.0.0.1:1/0", "-scope-secret-file", good}, nil, "", "-scope-secret-file"},
		{"env file", []string{"-store", "redis://127.0.0.1:1/0"}, map[string]string{"IDEMPROXY_SCOPE_SECRET_FILE": good}, "", "-scope-secret-file"},
		{"env", []string{"-store", "redis://127.0.0.1:1/0"}, map[string]string{"IDEMPROXY_SCOPE_SECRET": "0123456789abcdef-env"}, "", "IDEMPROXY_SCOPE_SECRET"},
		{"flag over env", []string{"-scope-secret-file", good}, map[string]string{"IDEMPROXY_SCOPE_SECRET": "0123456789abcdef-env"}, "", "-scope-secret-file"},
		{"config", []string{"-store", "redis://127.0.0.1:1/0", "-config", writeFile(t, "c.yaml", "scope_secret_file: "+good+"\n")}, nil, "", "-scope-secret-file"},
		{"memory needs none", []string{"-store", "memory:"}, nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withEnv(t, tc.env)
			o, err := parseArgs(append(append([]string{}, up...), tc.args...), io.Discard)
			if tc.want != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want a usage error with %q", err, tc.want)
				}
				if strings.Contains(err.Error(), ":pw@") {
					t.Fatalf("password in %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.scopeSecretFrom != tc.from {
				t.Fatalf("from %q, want %q", o.scopeSecretFrom, tc.from)
			}
			if tc.from == "-scope-secret-file" && string(o.scopeSecret) != "0123456789abcdef-good" {
				t.Fatalf("secret %q", o.scopeSecret)
			}
		})
	}
}

// TestSharedStoreWithoutSecretExits2: the binary refuses to start.
func TestSharedStoreWithoutSecretExits2(t *testing.T) {
	_, err := tryStartProxy(t, "-upstream", "http://127.0.0.1:1", "-store", "redis://127.0.0.1:1/0")
	if err == nil || !strings.Contains(err.Error(), "exit status 2") || !strings.Contains(err.Error(), "-scope-secret-file") {
		t.Fatalf("err = %v", err)
	}
}

// TestFileStoreKeepsSecret: a file: store generates its secret beside the
// database (mode 0600) and reuses it after a restart, so a retry after the
// restart still replays.
func TestFileStoreKeepsSecret(t *testing.T) {
	u := newUpstream(t)
	db := filepath.Join(t.TempDir(), "idem.db")
	p := startProxy(t, "-upstream", u.srv.URL, "-store", "file:"+db)
	c := client(t)
	k := newKey()
	// One Host for both processes (their ports differ; the Host is part of
	// the scope).
	hdr := [][2]string{{"Idempotency-Key", k}, {"Authorization", "Bearer alice"}}
	first := sendAs(t, c, p, "api.example", "/ok", hdr, "{}")
	p.stop()
	fi, err := os.Stat(db + ".scope-secret")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	b1, _ := os.ReadFile(db + ".scope-secret")
	p2 := startProxy(t, "-upstream", u.srv.URL, "-store", "file:"+db)
	r := sendAs(t, c, p2, "api.example", "/ok", hdr, "{}")
	if r.header.Get("Idempotency-Replayed") != "true" || !bytes.Equal(r.body, first.body) {
		t.Fatalf("after restart: %d %s", r.status, r.body)
	}
	if b2, _ := os.ReadFile(db + ".scope-secret"); !bytes.Equal(b1, b2) || len(bytes.TrimSpace(b1)) != 64 {
		t.Fatalf("secret changed or malformed: %q %q", b1, b2)
	}
}

// TestFileScopeSecretRace: processes creating the secret at once agree.
func TestFileScopeSecretRace(t *testing.T) {
	name := filepath.Join(t.TempDir(), "db.scope-secret")
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _, err := fileScopeSecret(name)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		}()
	}
	wg.Wait()
	for _, s := range got[1:] {
		if !bytes.Equal(s, got[0]) {
			t.Fatalf("secrets differ: %q %q", s, got[0])
		}
	}
	left, _ := filepath.Glob(name + ".tmp-*")
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
