package idemhttp_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

// creds is a set of request headers (name → values) and a Host.
type creds struct {
	host string
	hdr  [][2]string
}

func (c creds) request(key, body string) *http.Request {
	r := httptest.NewRequest("POST", "/charges", strings.NewReader(body))
	if c.host != "" {
		r.Host = c.host
	}
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Idempotency-Key", key)
	for _, kv := range c.hdr {
		r.Header.Add(kv[0], kv[1])
	}
	return r
}

// secretApp answers each execution with a body holding a unique token, and
// blocks the executions whose body is "block" until release is closed.
type secretApp struct {
	calls   atomic.Int64
	started chan struct{}
	release chan struct{}
}

func (a *secretApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.calls.Add(1)
	var b bytes.Buffer
	_, _ = b.ReadFrom(r.Body)
	if b.String() == "block" {
		a.started <- struct{}{}
		<-a.release
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"secret_token":"tok-%d"}`, n)
}

// TestScopeFollowsIdentity is issue 11's cross-caller replay: Mallory, with
// other credentials or none, or on another Host, never gets Alice's stored
// bytes, nor a 409 or 422 that reveals Alice's key.
func TestScopeFollowsIdentity(t *testing.T) {
	t.Parallel()
	alice := []creds{
		{host: "api.example", hdr: [][2]string{{"X-Api-Key", "alice-key"}}},
		{host: "api.example", hdr: [][2]string{{"Cookie", "session=alice"}}},
		{host: "api.example", hdr: [][2]string{{"Authorization", "Bearer alice"}}},
	}
	mallory := []creds{
		{host: "api.example", hdr: [][2]string{{"X-Api-Key", "mallory-key"}}},
		{host: "api.example"},
		{host: "api.example", hdr: [][2]string{{"X-Api-Key", ""}}},
		{host: "api.example", hdr: [][2]string{{"Cookie", "session=mallory"}}},
		{host: "api.example", hdr: [][2]string{{"Authorization", "Bearer mallory"}}},
		{host: "api.example", hdr: [][2]string{{"Authorization", "Basic alice"}}},
		{host: "api.example", hdr: [][2]string{{"X-Other", "alice-key"}}},
	}
	for ai, a := range alice {
		// The same credentials on another Host are another caller too.
		others := append(append([]creds(nil), mallory...), creds{host: "other.example", hdr: a.hdr})
		for mi, m := range others {
			for _, anon := range []bool{false, true} {
				t.Run(fmt.Sprintf("alice%d/mallory%d/anonymous=%v", ai, mi, anon), func(t *testing.T) {
					t.Parallel()
					k, _ := newKeeper(0)
					app := &secretApp{started: make(chan struct{}, 1), release: make(chan struct{})}
					h := (&idemhttp.Middleware{Keeper: k, ScopeSecret: testSecret, ScopeHeaders: []string{"x-api-key"},
						AllowAnonymous: anon}).Handler(app)
					var aliceGot sync.Map // every body Alice received
					do := func(c creds, key, body string) *httptest.ResponseRecorder {
						w := httptest.NewRecorder()
						h.ServeHTTP(w, c.request(key, body))
						if c.host == a.host && fmt.Sprint(c.hdr) == fmt.Sprint(a.hdr) {
							aliceGot.Store(w.Body.String(), true)
						}
						return w
					}
					first := do(a, "k", `{"amount":1}`)
					if first.Code != 201 || !strings.Contains(first.Body.String(), "tok-1") {
						t.Fatalf("alice: %d %s", first.Code, first.Body)
					}
					check := func(step string, w *httptest.ResponseRecorder) {
						t.Helper()
						switch {
						case w.Code == 409 || w.Code == 422:
							t.Errorf("%s: %d from Alice's record: %s", step, w.Code, w.Body)
						case w.Header().Get("Idempotency-Replayed") != "":
							t.Errorf("%s: replayed: %s", step, w.Body)
						case func() bool { _, ok := aliceGot.Load(w.Body.String()); return ok }():
							t.Errorf("%s: Alice's bytes: %s", step, w.Body)
						case w.Code == 400:
							if code := problemCode(w); code != idemhttp.CodeCredentialsRequired {
								t.Errorf("%s: 400 %s", step, w.Body)
							}
						case w.Code != 201:
							t.Errorf("%s: %d %s", step, w.Code, w.Body)
						}
					}
					check("same request", do(m, "k", `{"amount":1}`))
					if w := do(a, "k3", `{"amount":1}`); w.Code != 201 {
						t.Fatalf("alice k3: %d", w.Code)
					}
					check("other body", do(m, "k3", `{"amount":2}`))
					// While Alice's request runs, Mallory gets no 409.
					done := make(chan *httptest.ResponseRecorder, 1)
					go func() { done <- do(a, "k2", "block") }()
					<-app.started
					w := do(m, "k2", "block2")
					close(app.release)
					check("in flight", w)
					if r := <-done; r.Code != 201 {
						t.Fatalf("alice's blocked request: %d", r.Code)
					}
					// Alice still gets her own replay.
					again := do(a, "k", `{"amount":1}`)
					if again.Header().Get("Idempotency-Replayed") != "true" || !bytes.Equal(again.Body.Bytes(), first.Body.Bytes()) {
						t.Errorf("alice's retry: %d %s", again.Code, again.Body)
					}
				})
			}
		}
	}
}

func problemCode(w *httptest.ResponseRecorder) string {
	_, after, ok := strings.Cut(w.Body.String(), `"code":"`)
	if !ok {
		return ""
	}
	code, _, _ := strings.Cut(after, `"`)
	return code
}

func TestScopeAnonymous(t *testing.T) {
	t.Parallel()
	for _, anon := range []bool{false, true} {
		k, _ := newKeeper(0)
		app := &app{}
		oc := newOutcomes()
		h := (&idemhttp.Middleware{Keeper: k, ScopeSecret: testSecret, AllowAnonymous: anon, OnOutcome: oc.record}).Handler(app)
		do := func(c creds) *httptest.ResponseRecorder {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, c.request("k", "{}"))
			return w
		}
		w := do(creds{host: "a.example"})
		if !anon {
			if w.Code != 400 || problemCode(w) != idemhttp.CodeCredentialsRequired ||
				!strings.Contains(w.Body.String(), "AllowAnonymous") || !strings.Contains(w.Body.String(), "anonymous: allow") {
				t.Fatalf("anonymous refused: %d %s", w.Code, w.Body)
			}
			if o := oc.next(t); o.Kind != idemhttp.OutcomeBadRequest || !errors.Is(o.Err, idemhttp.ErrNoCredentials) {
				t.Errorf("outcome %v %v", o.Kind, o.Err)
			}
			if app.calls.Load() != 0 {
				t.Error("handler ran")
			}
			continue
		}
		if w.Code != 201 {
			t.Fatalf("anonymous allowed: %d %s", w.Code, w.Body)
		}
		// Anonymous callers of one Host share a scope…
		if w2 := do(creds{host: "A.example"}); w2.Header().Get("Idempotency-Replayed") != "true" {
			t.Errorf("second anonymous caller: %d replayed=%q", w2.Code, w2.Header().Get("Idempotency-Replayed"))
		}
		// …but not with a credentialed caller, nor across Hosts.
		for _, c := range []creds{{host: "a.example", hdr: [][2]string{{"Authorization", "Bearer x"}}}, {host: "b.example"}} {
			if w3 := do(c); w3.Code != 201 || w3.Header().Get("Idempotency-Replayed") != "" {
				t.Errorf("%v: %d replayed=%q", c, w3.Code, w3.Header().Get("Idempotency-Replayed"))
			}
		}
		if n := app.calls.Load(); n != 3 {
			t.Errorf("calls %d, want 3", n)
		}
	}
}

// TestScopeSchemeCaseInsensitive: Bearer x and bearer x are one caller (RFC
// 9110 §11.1: the auth-scheme is case-insensitive), the credentials are not.
func TestScopeSchemeCaseInsensitive(t *testing.T) {
	t.Parallel()
	s := &idemhttp.IdentityScope{Secret: testSecret}
	scope := func(auth ...string) string {
		r := httptest.NewRequest("POST", "/", nil)
		for _, a := range auth {
			r.Header.Add("Authorization", a)
		}
		v, err := s.Scope(r)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if a, b := scope("Bearer x"), scope("bearer x"); a != b {
		t.Error("Bearer x != bearer x")
	}
	if scope("BEARER x") != scope("bEaReR x") {
		t.Error("scheme case")
	}
	if scope("Bearer x") == scope("Bearer X") {
		t.Error("credentials compared case-insensitively")
	}
	if scope("Basic x") == scope("Bearer x") {
		t.Error("scheme ignored")
	}
	v := scope("Bearer secret-token")
	if len(v) != idemhttp.ScopeSize || strings.Contains(v, "secret") {
		t.Errorf("scope %q", v)
	}
	// Not the unkeyed hash of the credential.
	if sum := sha256.Sum256([]byte("Bearer secret-token")); v == string(sum[:idemhttp.ScopeSize]) {
		t.Error("scope is an unkeyed hash")
	}
}

// TestScopeHopByHop: a credential named in Connection is refused.
func TestScopeHopByHop(t *testing.T) {
	t.Parallel()
	s := &idemhttp.IdentityScope{Secret: testSecret, Headers: []string{"X-Api-Key"}, Anonymous: true}
	for _, tc := range []struct {
		conn, name, value string
		refused           bool
	}{
		{"Authorization", "Authorization", "Bearer a", true},
		{"keep-alive, authorization", "Authorization", "Bearer a", true},
		{"cookie", "Cookie", "s=1", true},
		{"Foo,  X-API-KEY ", "X-Api-Key", "k", true},
		{"close", "Authorization", "Bearer a", false},
		{"Cookie", "Authorization", "Bearer a", false}, // names a header it does not carry
	} {
		r := httptest.NewRequest("POST", "/", nil)
		r.Header.Set("Connection", tc.conn)
		r.Header.Set(tc.name, tc.value)
		_, err := s.Scope(r)
		if got := errors.Is(err, idemhttp.ErrHopByHopCredential); got != tc.refused {
			t.Errorf("Connection: %s with %s: %v", tc.conn, tc.name, err)
		}
	}
	k, _ := newKeeper(0)
	h := (&idemhttp.Middleware{Keeper: k, ScopeSecret: testSecret}).Handler(&app{})
	r := creds{hdr: [][2]string{{"Authorization", "Bearer a"}, {"Connection", "Authorization"}}}.request("k", "{}")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 400 || problemCode(w) != idemhttp.CodeCredentialHopByHop {
		t.Errorf("middleware: %d %s", w.Code, w.Body)
	}
}

func TestScopeSecretRequired(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	for _, m := range []*idemhttp.Middleware{{Keeper: k}, {Keeper: k, ScopeSecret: []byte("short")}} {
		func() {
			defer func() {
				p := fmt.Sprint(recover())
				if !strings.Contains(p, "Scope") || !strings.Contains(p, "ScopeSecret") {
					t.Errorf("panic %q", p)
				}
			}()
			m.Handler(&app{})
		}()
	}
	// A custom Scope needs no secret.
	(&idemhttp.Middleware{Keeper: k, Scope: func(*http.Request) (string, error) { return "", nil }}).Handler(&app{})
	if _, err := (&idemhttp.IdentityScope{Secret: []byte("short"), Anonymous: true}).Scope(httptest.NewRequest("POST", "/", nil)); err == nil {
		t.Error("short secret accepted by IdentityScope.Scope")
	}
}

// scopeEncoding is the reference encoding of the scope (the definition that
// IdentityScope.Scope implements without allocations).
func scopeEncoding(host string, carriers [][2]string) []byte {
	var b []byte
	part := func(s string) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = append(b, "idem-scope/1"...)
	part(asciiLower(host))
	// carriers are grouped by name in the order Authorization, Cookie,
	// then the extra headers sorted; each group: name, count, values.
	for i := 0; i < len(carriers); {
		j := i
		for j < len(carriers) && carriers[j][0] == carriers[i][0] {
			j++
		}
		part(carriers[i][0])
		b = binary.BigEndian.AppendUint64(b, uint64(j-i))
		for _, kv := range carriers[i:j] {
			v := kv[1]
			if kv[0] == "Authorization" {
				scheme, rest, ok := strings.Cut(v, " ")
				v = asciiLower(scheme)
				if ok {
					v += " " + rest
				}
			}
			part(v)
		}
		i = j
	}
	return b
}

// asciiLower lower-cases A-Z only (HTTP field values are bytes, not UTF-8).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// FuzzIdentityScope: the scope never panics, is deterministic, equals the
// reference HMAC of its documented encoding (so distinct credential sets,
// which encode distinctly, get distinct scopes), differs per secret, and a
// credential-less request never gets a credentialed request's scope.
func FuzzIdentityScope(f *testing.F) {
	f.Add("api.example", "Bearer x", "s=1", "key", "", "secret-one-16byte")
	f.Add("API.example:443", "bearer x", "", "", "X-Api-Key", "secret-two-16byte")
	f.Add("", "", "", "", "Connection", "0123456789abcdef")
	f.Add("h", "Basic", " ", "k", "Authorization", "0123456789abcdefg")
	f.Fuzz(func(t *testing.T, host, auth, cookie, apiKey, conn, secret string) {
		if len(secret) < idemhttp.MinScopeSecret {
			secret += "................"
		}
		r := httptest.NewRequest("POST", "/", nil)
		r.Host = host
		var carriers [][2]string
		set := func(name, v string) {
			if v == "" {
				return
			}
			r.Header[name] = []string{v}
			if strings.TrimSpace(v) != "" {
				carriers = append(carriers, [2]string{name, v})
			}
		}
		set("Authorization", auth)
		set("Cookie", cookie)
		set("X-Api-Key", apiKey)
		if conn != "" {
			r.Header["Connection"] = []string{conn}
		}
		s := &idemhttp.IdentityScope{Secret: []byte(secret), Headers: []string{"x-api-key"}, Anonymous: true}
		got, err := s.Scope(r)
		hop := false
		for _, tok := range strings.Split(conn, ",") {
			for _, c := range carriers {
				if strings.EqualFold(strings.TrimSpace(tok), c[0]) {
					hop = true
				}
			}
		}
		if hop {
			if !errors.Is(err, idemhttp.ErrHopByHopCredential) {
				t.Fatalf("hop-by-hop credential: %q %v", got, err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		again, _ := s.Scope(r)
		if again != got {
			t.Fatal("not deterministic")
		}
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(scopeEncoding(host, carriers))
		if want := string(mac.Sum(nil)[:idemhttp.ScopeSize]); got != want {
			t.Fatalf("scope %x, want %x", got, want)
		}
		other, _ := (&idemhttp.IdentityScope{Secret: []byte(secret + "x"), Headers: []string{"X-Api-Key"}, Anonymous: true}).Scope(r)
		if other == got {
			t.Fatal("same scope under another secret")
		}
		ar := httptest.NewRequest("POST", "/", nil)
		ar.Host = host
		anon, _ := s.Scope(ar)
		if (anon == got) != (len(carriers) == 0) {
			t.Fatalf("anonymous scope %s vs %s with %d credentials", anon, got, len(carriers))
		}
		_, err = (&idemhttp.IdentityScope{Secret: []byte(secret), Headers: []string{"X-Api-Key"}}).Scope(r)
		if (err != nil) != (len(carriers) == 0) || err != nil && !errors.Is(err, idemhttp.ErrNoCredentials) {
			t.Fatalf("refusal %v with %d credentials", err, len(carriers))
		}
	})
}

// TestScopeAllocs: one allocation (the result string) per scope.
func TestScopeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	s := &idemhttp.IdentityScope{Secret: testSecret, Headers: []string{"X-Api-Key"}}
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Authorization", "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc")
	r.Header.Set("Cookie", "a=b")
	r.Header.Set("X-Api-Key", "k")
	_, _ = s.Scope(r)
	if n := testing.AllocsPerRun(100, func() { _, _ = s.Scope(r) }); n > 1 {
		t.Errorf("%.0f allocs per scope, want ≤ 1", n)
	}
}

// TestScopeCompactInRecordKey: a scope adds at most 20 bytes to a record
// key (so at most 40 to a PostgreSQL record, whose key is stored in the
// row and in its primary-key index), where a hex digest added 65.
func TestScopeCompactInRecordKey(t *testing.T) {
	r := httptest.NewRequest("POST", "http://api.example/pay", nil)
	r.Header.Set("Authorization", "Bearer alice")
	sc, err := (&idemhttp.IdentityScope{Secret: testSecret}).Scope(r)
	if err != nil {
		t.Fatal(err)
	}
	const key = "k-0123456789abcdef"
	if extra := len(idem.RecordKey(sc, key)) - len(idem.RecordKey("", key)); extra > 20 {
		t.Fatalf("the scope adds %d bytes to the record key", extra)
	}
}
