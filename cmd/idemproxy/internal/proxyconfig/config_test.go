package proxyconfig

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBuiltinDefaults(t *testing.T) {
	c, err := New(Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	p := c.Default
	if !slices.Equal(p.Methods, []string{"POST", "PATCH"}) || p.Key != KeyRequired ||
		p.TTL != 24*time.Hour || p.Lease != 30*time.Second || p.MaxBody != 1<<20 ||
		p.MaxResult != 1<<20 || p.FailOpen || p.Wait != 0 ||
		len(p.ScopeHeaders) != 0 || p.Anonymous {
		t.Fatalf("defaults = %+v", p)
	}
	if got := p.Stored.String(); got != "100-428,430-499" {
		t.Fatalf("stored = %s", got)
	}
	for _, m := range []string{"POST", "PATCH"} {
		if i := c.Match(m, "/any/path"); i != 0 || !c.AllRoutes()[i].Protects(m) {
			t.Fatalf("%s not protected by default", m)
		}
	}
	for _, m := range []string{"GET", "PUT", "DELETE", "HEAD"} {
		if c.AllRoutes()[c.Match(m, "/")].Protects(m) {
			t.Fatalf("%s protected by default", m)
		}
	}
}

func TestOverrides(t *testing.T) {
	c, err := Parse([]byte("default: {lease: 10s}\nroutes:\n- {prefix: /a, lease: 2s}\n- {prefix: /b}\n"), FormatYAML,
		Overrides{TTL: time.Hour, Lease: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if c.Default.TTL != time.Hour || c.Default.Lease != 5*time.Second {
		t.Fatalf("default = %v/%v, want flags to win over the file", c.Default.TTL, c.Default.Lease)
	}
	if c.Routes[0].Lease != 2*time.Second || c.Routes[0].TTL != time.Hour {
		t.Fatalf("route a = %v/%v", c.Routes[0].TTL, c.Routes[0].Lease)
	}
	if c.Routes[1].Lease != 5*time.Second {
		t.Fatalf("route b inherits lease %v", c.Routes[1].Lease)
	}
}

const full = `
listen: 127.0.0.1:8081
upstream: http://127.0.0.1:9000
store: "memory:"
admin: 127.0.0.1:9091
scope_secret_file: /run/secrets/idem-scope
require_store: true
otel_endpoint: http://127.0.0.1:4318
default:
  methods: [POST, patch, PUT]
  ttl: 48h
  scope_headers: [x-api-key, X-Tenant]
routes:
  - name: capture
    methods: [POST]
    path: /v1/charges/*/capture
    fingerprint: canonical-json
    stored_statuses: ["200-299", 404, "!204"]
    never_replay: [X-Request-Id]
    max_body: 64KiB
    max_result: 2MB
    wait: 5s
    fail: open
    upstream_timeout: 90s
    lease: 10s
    response: stream
    anonymous: allow
  - prefix: /internal/
    key: "off"
  - path: /v2/**
    key: optional
    ttl: 1h
`

func TestFullYAML(t *testing.T) {
	c, err := Parse([]byte(full), FormatAuto, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	checkFull(t, c)
}

func TestFullJSON(t *testing.T) {
	js := `{"listen":"127.0.0.1:8081","upstream":"http://127.0.0.1:9000","store":"memory:","admin":"127.0.0.1:9091","scope_secret_file":"/run/secrets/idem-scope","require_store":true,"otel_endpoint":"http://127.0.0.1:4318",
	"default":{"methods":["POST","patch","PUT"],"ttl":"48h","scope_headers":["x-api-key","X-Tenant"]},
	"routes":[{"name":"capture","methods":["POST"],"path":"/v1/charges/*/capture","fingerprint":"canonical-json",
	"stored_statuses":["200-299",404,"!204"],"never_replay":["X-Request-Id"],"max_body":"64KiB","max_result":"2MB",
	"wait":"5s","fail":"open","upstream_timeout":"90s","lease":"10s","response":"stream","anonymous":"allow"},
	{"prefix":"/internal/","key":"off"},{"path":"/v2/**","key":"optional","ttl":"1h"}]}`
	c, err := Parse([]byte(js), FormatAuto, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	checkFull(t, c)
}

func checkFull(t *testing.T, c *Config) {
	t.Helper()
	if c.Listen != "127.0.0.1:8081" || c.Upstream != "http://127.0.0.1:9000" || c.Store != "memory:" || c.Admin != "127.0.0.1:9091" {
		t.Fatalf("addresses = %+v", c)
	}
	if !slices.Equal(c.Default.Methods, []string{"POST", "PATCH", "PUT"}) || c.Default.TTL != 48*time.Hour {
		t.Fatalf("default = %+v", c.Default)
	}
	if !slices.Equal(c.Default.ScopeHeaders, []string{"X-Api-Key", "X-Tenant"}) {
		t.Fatalf("scope headers = %q", c.Default.ScopeHeaders)
	}
	if !c.RequireStore || c.OTelEndpoint != "http://127.0.0.1:4318" {
		t.Fatalf("require_store %v, otel_endpoint %q", c.RequireStore, c.OTelEndpoint)
	}
	if c.ScopeSecretFile != "/run/secrets/idem-scope" || c.Default.Anonymous || !c.Routes[0].Anonymous || c.Routes[1].Anonymous {
		t.Fatalf("scope secret file %q, anonymous %v %v", c.ScopeSecretFile, c.Default.Anonymous, c.Routes[0].Anonymous)
	}
	if len(c.Routes) != 3 {
		t.Fatalf("%d routes", len(c.Routes))
	}
	r := c.Routes[0]
	if r.Name != "capture" || r.Fingerprint != FingerprintCanonicalJSON || r.MaxBody != 64<<10 || r.MaxResult != 2e6 ||
		r.Wait != 5*time.Second || !r.FailOpen || !r.Stream || r.UpstreamTimeout != 90*time.Second || r.Lease != 10*time.Second ||
		r.TTL != 48*time.Hour || !slices.Equal(r.NeverReplay, []string{"X-Request-Id"}) {
		t.Fatalf("route 0 = %+v", r)
	}
	if got := r.Stored.String(); got != "200-203,205-299,404" {
		t.Fatalf("stored = %s", got)
	}
	if c.Routes[1].Key != KeyOff || c.Routes[1].Name != "routes[1]" || c.Routes[2].Key != KeyOptional || c.Routes[2].TTL != time.Hour {
		t.Fatalf("routes 1,2 = %+v / %+v", c.Routes[1], c.Routes[2])
	}
	cases := []struct {
		method, path string
		want         int
	}{
		{"POST", "/v1/charges/ch_1/capture", 0},
		{"PATCH", "/v1/charges/ch_1/capture", 3}, // route 0 lists POST only
		{"POST", "/v1/charges//capture", 3},
		{"POST", "/v1/charges/a/b/capture", 3},
		{"POST", "/v1/charges/a/capture/x", 3},
		{"POST", "/internal/x", 1},
		{"GET", "/internal", 3},
		{"POST", "/v2", 2},
		{"POST", "/v2/", 2},
		{"POST", "/v2/a/b/c", 2},
		{"POST", "/v20", 3},
		{"DELETE", "/v2/a", 2},
	}
	for _, tc := range cases {
		if got := c.Match(tc.method, tc.path); got != tc.want {
			t.Errorf("Match(%s %s) = %d, want %d", tc.method, tc.path, got, tc.want)
		}
	}
	all := c.AllRoutes()
	if all[2].Protects(http.MethodDelete) || !all[2].Protects(http.MethodPut) || all[1].Protects("POST") {
		t.Errorf("Protects is wrong")
	}
}

func TestBadConfigs(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"unknown top field", "listn: x", "listn: unknown field"},
		{"unknown route field", "routes:\n- prefix: /\n  leese: 1s", "routes[0].leese: unknown field"},
		{"unknown default field", "default: {tll: 1h}", "default.tll: unknown field"},
		{"lease above ttl", "routes:\n- prefix: /a\n- prefix: /b\n- prefix: /c\n  lease: 48h", "routes[2].lease: must be > 0 and < ttl (24h0m0s)"},
		{"lease equals ttl", "default: {ttl: 30s}", "default.ttl: must be > lease (30s)"},
		{"zero lease", "routes: [{lease: 0}]", "routes[0].lease: must be > 0 and < ttl"},
		{"negative ttl", "default: {ttl: -1h}", "default.ttl: must be > 0"},
		{"bad duration", "default: {lease: 30}", `default.lease: must be a duration such as "30s"`},
		{"bad key mode", "routes: [{key: maybe}]", `routes[0].key: must be required, optional or off, not "maybe"`},
		{"bad fingerprint", "default: {fingerprint: md5}", "default.fingerprint: must be default or canonical-json"},
		{"bad status", `routes: [{stored_statuses: ["200-700"]}]`, `routes[0].stored_statuses[0]: "200-700" is not a status`},
		{"bad size", "default: {max_body: -5}", "default.max_body: must be a size in bytes > 0"},
		{"huge size", "default: {max_body: 2000000GiB}", "default.max_body: must be a size"},
		{"bad header", `default: {scope_headers: ["X Tenant"]}`, `default.scope_headers[0]: "X Tenant" is not a header name`},
		{"bad require_store", `require_store: yes`, `require_store: must be true or false, not "yes"`},
		{"quoted require_store", `require_store: "true"`, `require_store: must be true or false, not "true"`},
		{"bad otel_endpoint", `otel_endpoint: 4318`, `otel_endpoint: must be a string, not "4318"`},
		{"bad anonymous", `default: {anonymous: yes}`, `default.anonymous: must be allow or refuse, not "yes"`},
		{"bad method", `routes: [{methods: ["PO ST"]}]`, `routes[0].methods[0]: "PO ST" is not an HTTP method`},
		{"empty methods", `routes: [{methods: []}]`, `routes[0].methods: must list at least one method`},
		{"prefix and path", "routes: [{prefix: /a, path: /b}]", "routes[0]: give prefix or path, not both"},
		{"relative prefix", "routes: [{prefix: a}]", "routes[0].prefix: must start with /"},
		{"bad pattern", "routes: [{path: /a/**/b}]", `routes[0].path: "**" may only be the whole last segment`},
		{"partial star", "routes: [{path: /a/b*}]", `routes[0].path: segment "b*"`},
		{"duplicate name", "routes: [{name: a}, {name: a}]", `routes[1].name: "a" is already the name of routes[0]`},
		{"reserved name", "routes: [{name: default}]", "routes[0].name: must be non-empty"},
		{"bad upstream", "upstream: ftp://x", "upstream: must be an http:// or https:// URL"},
		{"bad listen", "listen: localhost", "listen: must be host:port"},
		{"bad fail", "default: {fail: sometimes}", "default.fail: must be closed or open"},
		{"bad response", "default: {response: later}", "default.response: must be hold or stream"},
		{"negative wait", "default: {wait: -1s}", "default.wait: must be >= 0"},
		{"routes not a list", "routes: {a: 1}", "routes: must be a list"},
		{"route not a map", "routes: [x]", "routes[0]: must be a mapping"},
		{"document is a list", "- a", "the document must be a mapping"},
		{"duplicate field", "listen: a:1\nlisten: b:2", `field "listen" given twice`},
		{"yaml alias", "default: &d {ttl: 1h}\nroutes: [*d]", "aliases are not supported"},
		{"yaml syntax", "routes: [", "yaml:"},
		{"json syntax", `{"routes": [}`, "json:"},
		{"json duplicate", `{"store": "memory:", "store": "memory:"}`, `field "store" given twice`},
		{"json unknown", `{"routes": [{"prefx": "/"}]}`, "routes[0].prefx: unknown field"},
		{"json trailing", `{} {}`, "json: data after the top-level value"},
		{"string as number", "default: {max_result: [1]}", "default.max_result: must be a size"},
		{"timeout zero", "routes: [{upstream_timeout: 0s}]", "routes[0].upstream_timeout: must be > 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tc.doc), FormatAuto, Overrides{})
			if err == nil {
				t.Fatalf("no error; config = %+v", c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
}

func TestBadOverrides(t *testing.T) {
	cases := []struct {
		doc  string
		o    Overrides
		want string
	}{
		{"", Overrides{Lease: 48 * time.Hour}, "-lease: must be > 0 and < ttl (24h0m0s)"},
		{"", Overrides{TTL: time.Second}, "-ttl: must be > lease (30s)"},
		{"", Overrides{TTL: -1}, "-ttl: must be > 0"},
		{"", Overrides{Lease: -1}, "-lease: must be > 0"},
		{"default: {ttl: 10s}", Overrides{}, "default.ttl: must be > lease (30s)"},
	}
	for _, tc := range cases {
		_, err := Parse([]byte(tc.doc), FormatYAML, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q, %+v) = %v, want %q", tc.doc, tc.o, err, tc.want)
		}
	}
}

func TestErrorsAreFieldErrors(t *testing.T) {
	_, err := Parse([]byte("default: {ttl: x, lease: y}"), FormatYAML, Overrides{})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "default.ttl" {
		t.Fatalf("err = %v", err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 2 {
		t.Fatalf("want both fields reported, got %d lines: %v", n, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	yml := filepath.Join(dir, "c.yaml")
	js := filepath.Join(dir, "c.json")
	os.WriteFile(yml, []byte("routes: [{prefix: /x}]"), 0o600)
	os.WriteFile(js, []byte(`routes: [{prefix: /x}]`), 0o600) // YAML in a .json file
	if c, err := Load(yml, Overrides{}); err != nil || len(c.Routes) != 1 {
		t.Fatalf("Load yaml = %v, %v", c, err)
	}
	if _, err := Load(js, Overrides{}); err == nil || !strings.Contains(err.Error(), "json:") {
		t.Fatalf("Load json = %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml"), Overrides{}); err == nil {
		t.Fatal("missing file: no error")
	}
}

func TestValidateAddr(t *testing.T) {
	for _, s := range []string{"127.0.0.1:8080", ":0", "[::1]:9", "localhost:65535"} {
		if err := ValidateAddr(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"", "8080", "host:port", "h:65536", "h:-1"} {
		if err := ValidateAddr(s); err == nil {
			t.Errorf("%s: no error", s)
		}
	}
}
