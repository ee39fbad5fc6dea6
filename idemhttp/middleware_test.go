package idemhttp_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

const (
	key1   = "Idempotency-Key: k1"
	ctJSON = "Content-Type: application/json"
	pass   = idemhttp.OutcomePassthrough
)

// kindOf is the outcome a step reports when its kind is not given.
func kindOf(s step) idemhttp.OutcomeKind {
	switch {
	case s.kind != 0:
		return s.kind
	case s.wantReplay:
		return idemhttp.OutcomeReplayed
	}
	switch s.wantCode {
	case "":
		return idemhttp.OutcomeExecuted
	case "idempotency-key-missing":
		return idemhttp.OutcomeKeyMissing
	case "idempotency-key-invalid":
		return idemhttp.OutcomeKeyInvalid
	case "idempotency-key-reused":
		return idemhttp.OutcomeMismatch
	case "request-too-large":
		return idemhttp.OutcomeTooLarge
	case "store-unavailable":
		return idemhttp.OutcomeStoreUnavailable
	case "scope-invalid":
		return idemhttp.OutcomeBadRequest
	}
	return 0
}

// step is one request of a table case and what must come back.
type step struct {
	req        req
	wantStatus int
	wantCode   string               // problem code, for error answers
	wantReplay bool                 // both replay headers set
	wantCalls  int64                // handler executions so far, after this step
	kind       idemhttp.OutcomeKind // reported outcome; if zero, derived from the other fields
	sameAs     int                  // if > 0: wire bytes equal those of step sameAs-1 (1-based)
	check      func(t *testing.T, r *rawResp)
}

func TestSpecRows(t *testing.T) {
	long255 := strings.Repeat("k", 255)
	long256 := strings.Repeat("k", 256)
	cases := []struct {
		name  string
		mw    func(m *idemhttp.Middleware)
		steps []step
	}{
		{name: "GET with key passes through", steps: []step{
			{req: req{method: "GET", hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, kind: pass},
			{req: req{method: "GET", hdr: []string{key1}}, wantStatus: 201, wantCalls: 2, kind: pass},
			{req: req{method: "PUT", hdr: []string{key1}}, wantStatus: 201, wantCalls: 3, kind: pass},
			{req: req{method: "DELETE", hdr: []string{key1}}, wantStatus: 201, wantCalls: 4, kind: pass},
		}},
		{name: "POST and PATCH protected", steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, wantReplay: true, sameAs: 1},
			{req: req{method: "PATCH", hdr: []string{"Idempotency-Key: k2"}}, wantStatus: 201, wantCalls: 2},
			{req: req{method: "PATCH", hdr: []string{"Idempotency-Key: k2"}}, wantStatus: 201, wantCalls: 2, wantReplay: true, sameAs: 3},
		}},
		{name: "custom methods", mw: func(m *idemhttp.Middleware) { m.Methods = []string{"PUT"} }, steps: []step{
			{req: req{method: "PUT", hdr: []string{key1}}, wantStatus: 201, wantCalls: 1},
			{req: req{method: "PUT", hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, wantReplay: true},
			{req: req{method: "POST", hdr: []string{key1}}, wantStatus: 201, wantCalls: 2, kind: pass},
		}},
		{name: "key missing", steps: []step{
			{req: req{}, wantStatus: 400, wantCode: "idempotency-key-missing"},
		}},
		{name: "key missing optional passes through", mw: func(m *idemhttp.Middleware) { m.Optional = true }, steps: []step{
			{req: req{}, wantStatus: 201, wantCalls: 1, kind: pass},
			{req: req{}, wantStatus: 201, wantCalls: 2, kind: pass},
			{req: req{hdr: []string{"Idempotency-Key: "}}, wantStatus: 400, wantCode: "idempotency-key-invalid", wantCalls: 2},
		}},
		{name: "key invalid", steps: []step{
			{req: req{hdr: []string{"Idempotency-Key: "}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{`Idempotency-Key: ""`}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{"Idempotency-Key: a b"}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{"Idempotency-Key: caf\xc3\xa9"}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{`Idempotency-Key: "abc`}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{`Idempotency-Key: "a\b"`}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{`Idempotency-Key: "a";p=1`}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{`Idempotency-Key: "a", "b"`}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{"Idempotency-Key: " + long256}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
		}},
		{name: "key given twice", steps: []step{
			{req: req{hdr: []string{key1, key1}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
			{req: req{hdr: []string{key1, "Idempotency-Key: k2"}}, wantStatus: 400, wantCode: "idempotency-key-invalid"},
		}},
		{name: "sf-string equals bare value", steps: []step{
			{req: req{hdr: []string{`Idempotency-Key: "abc"`}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{"Idempotency-Key: abc"}}, wantStatus: 201, wantCalls: 1, wantReplay: true, sameAs: 1},
			{req: req{hdr: []string{`Idempotency-Key: "a\"b\\c"`}}, wantStatus: 201, wantCalls: 2},
			{req: req{hdr: []string{`Idempotency-Key: a"b\c`}}, wantStatus: 201, wantCalls: 2, wantReplay: true, sameAs: 3},
		}},
		{name: "key 255 bytes", steps: []step{
			{req: req{hdr: []string{"Idempotency-Key: " + long255}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{"Idempotency-Key: " + long255}}, wantStatus: 201, wantCalls: 1, wantReplay: true, sameAs: 1},
		}},
		{name: "custom header name", mw: func(m *idemhttp.Middleware) { m.Header = "x-request-key" }, steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 400, wantCode: "idempotency-key-missing"},
			{req: req{hdr: []string{"X-Request-Key: k"}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{"X-Request-Key: k"}}, wantStatus: 201, wantCalls: 1, wantReplay: true},
		}},
		{name: "scope isolation by Authorization", steps: []step{
			{req: req{hdr: []string{key1, "Authorization: Bearer alice"}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{key1, "Authorization: Bearer bob"}}, wantStatus: 201, wantCalls: 2},
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 3},
			{req: req{hdr: []string{key1, "Authorization: Bearer alice"}}, wantStatus: 201, wantCalls: 3, wantReplay: true, sameAs: 1},
			{req: req{hdr: []string{key1, "Authorization: Bearer bob"}}, wantStatus: 201, wantCalls: 3, wantReplay: true, sameAs: 2},
		}},
		{name: "custom scope", mw: func(m *idemhttp.Middleware) {
			m.Scope = func(r *http.Request) (string, error) {
				if t := r.Header.Get("X-Tenant"); t != "" {
					return t, nil
				}
				return "", idem.ErrInvalidKey // any error
			}
		}, steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 400, wantCode: "scope-invalid"},
			{req: req{hdr: []string{key1, "X-Tenant: a"}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{key1, "X-Tenant: b"}}, wantStatus: 201, wantCalls: 2},
			{req: req{hdr: []string{key1, "X-Tenant: a"}}, wantStatus: 201, wantCalls: 2, wantReplay: true},
		}},
		{name: "fingerprint mismatch", steps: []step{
			{req: req{path: "/pay?x=1", hdr: []string{key1, ctJSON}, body: `{"a":1}`}, wantStatus: 201, wantCalls: 1},
			{req: req{path: "/pay?x=1", hdr: []string{key1, ctJSON}, body: `{"a":2}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			{req: req{path: "/pay?x=2", hdr: []string{key1, ctJSON}, body: `{"a":1}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			{req: req{path: "/other?x=1", hdr: []string{key1, ctJSON}, body: `{"a":1}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			{req: req{path: "/pay?x=1", hdr: []string{key1, "Content-Type: text/plain"}, body: `{"a":1}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			{req: req{method: "PATCH", path: "/pay?x=1", hdr: []string{key1, ctJSON}, body: `{"a":1}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			{req: req{path: "/pay?x=1", hdr: []string{key1, ctJSON}, body: `{"b":1,"a":1}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			// The record is unchanged: the original request still replays.
			{req: req{path: "/pay?x=1", hdr: []string{key1, ctJSON}, body: `{"a":1}`}, wantStatus: 201, wantCalls: 1, wantReplay: true, sameAs: 1},
		}},
		{name: "canonical JSON ignores member order", mw: func(m *idemhttp.Middleware) { m.Fingerprint = idemhttp.CanonicalFingerprint }, steps: []step{
			{req: req{hdr: []string{key1, ctJSON}, body: `{"a":1,"b":[1.0,"\u0041"]}`}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{key1, ctJSON}, body: ` { "b" : [1, "A"], "a" : 1e0 } `}, wantStatus: 201, wantCalls: 1, wantReplay: true, sameAs: 1},
			{req: req{hdr: []string{key1, ctJSON}, body: `{"b":[1,"A"],"a":2}`}, wantStatus: 422, wantCode: "idempotency-key-reused", wantCalls: 1},
			// Invalid JSON is fingerprinted raw: no match, and it is not an error.
			{req: req{hdr: []string{"Idempotency-Key: k2", ctJSON}, body: `{"a":`}, wantStatus: 201, wantCalls: 2},
			{req: req{hdr: []string{"Idempotency-Key: k2", ctJSON}, body: `{"a":`}, wantStatus: 201, wantCalls: 2, wantReplay: true},
		}},
		{name: "body too large", mw: func(m *idemhttp.Middleware) { m.MaxBody = 16 }, steps: []step{
			{req: req{hdr: []string{key1}, body: strings.Repeat("x", 17)}, wantStatus: 413, wantCode: "request-too-large"},
			{req: req{hdr: []string{key1}, body: strings.Repeat("x", 16)}, wantStatus: 201, wantCalls: 1, check: func(t *testing.T, r *rawResp) {
				if !strings.Contains(string(r.body), strings.Repeat("x", 16)) {
					t.Errorf("handler did not receive the body: %s", r.body)
				}
			}},
		}},
		{name: "4xx stored and replayed", steps: []step{
			{req: req{hdr: []string{key1, "X-Status: 404"}}, wantStatus: 404, wantCalls: 1},
			{req: req{hdr: []string{key1, "X-Status: 404"}}, wantStatus: 404, wantCalls: 1, wantReplay: true, sameAs: 1},
		}},
		{name: "5xx released", steps: []step{
			{req: req{hdr: []string{key1, "X-Status: 500"}}, wantStatus: 500, wantCalls: 1},
			{req: req{hdr: []string{key1, "X-Status: 500"}}, wantStatus: 500, wantCalls: 2},
			{req: req{hdr: []string{key1, "X-Status: 500"}}, wantStatus: 500, wantCalls: 3},
		}},
		{name: "429 released", steps: []step{
			{req: req{hdr: []string{key1, "X-Status: 429"}}, wantStatus: 429, wantCalls: 1},
			{req: req{hdr: []string{key1, "X-Status: 429"}}, wantStatus: 429, wantCalls: 2},
		}},
		{name: "custom stored policy", mw: func(m *idemhttp.Middleware) { m.Stored = func(s int) bool { return s < 400 || s == 503 } }, steps: []step{
			{req: req{hdr: []string{key1, "X-Status: 409"}}, wantStatus: 409, wantCalls: 1},
			{req: req{hdr: []string{key1, "X-Status: 409"}}, wantStatus: 409, wantCalls: 2},
			{req: req{hdr: []string{"Idempotency-Key: k2", "X-Status: 503"}}, wantStatus: 503, wantCalls: 3},
			{req: req{hdr: []string{"Idempotency-Key: k2", "X-Status: 503"}}, wantStatus: 503, wantCalls: 3, wantReplay: true, sameAs: 3},
		}},
		{name: "replay byte for byte minus deny-list", steps: []step{
			{req: req{hdr: []string{key1, ctJSON}, body: `{"amount":100}`}, wantStatus: 201, wantCalls: 1, check: func(t *testing.T, r *rawResp) {
				if r.header.Get("Set-Cookie") == "" || len(r.header["X-Multi"]) != 2 {
					t.Errorf("first answer lacks the handler's headers: %v", r.header)
				}
				if r.header.Get("Idempotency-Replayed") != "" || r.header.Get("Idempotent-Replayed") != "" {
					t.Errorf("first answer carries a replay header: %v", r.header)
				}
			}},
			{req: req{hdr: []string{key1, ctJSON}, body: `{"amount":100}`}, wantStatus: 201, wantCalls: 1, wantReplay: true, check: func(t *testing.T, r *rawResp) {
				if r.header.Get("Set-Cookie") != "" {
					t.Error("Set-Cookie replayed")
				}
				if got := r.header["X-Multi"]; len(got) != 2 || got[0] != "one" || got[1] != "two" {
					t.Errorf("X-Multi = %q", got)
				}
				if r.header.Get("Date") == "" {
					t.Error("no fresh Date")
				}
			}},
		}},
		{name: "never-replay configurable", mw: func(m *idemhttp.Middleware) { m.NeverReplay = []string{"x-multi"} }, steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1},
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, wantReplay: true, check: func(t *testing.T, r *rawResp) {
				if r.header.Get("Set-Cookie") != "session=secret" || r.header.Get("X-Multi") != "" {
					t.Errorf("replayed headers %v", r.header)
				}
			}},
		}},
		{name: "store unavailable fails closed", mw: func(m *idemhttp.Middleware) { m.Keeper = &idem.Keeper{Store: failingStore{}} }, steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 503, wantCode: "store-unavailable", check: func(t *testing.T, r *rawResp) {
				if r.header.Get("Retry-After") == "" {
					t.Error("no Retry-After")
				}
				if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("Content-Type %q", ct)
				}
			}},
		}},
		{name: "store unavailable fails open", mw: func(m *idemhttp.Middleware) {
			m.Keeper = &idem.Keeper{Store: failingStore{}}
			m.FailOpen = true
		}, steps: []step{
			{req: req{hdr: []string{key1}, body: "abc"}, wantStatus: 201, wantCalls: 1, kind: idemhttp.OutcomeFailOpen, check: func(t *testing.T, r *rawResp) {
				if !strings.Contains(string(r.body), `"body":"abc"`) {
					t.Errorf("handler did not get the body: %s", r.body)
				}
			}},
			{req: req{hdr: []string{key1}, body: "abc"}, wantStatus: 201, wantCalls: 2, kind: idemhttp.OutcomeFailOpen},
		}},
		{name: "response over cap omitted on replay", mw: func(m *idemhttp.Middleware) { m.MaxResult = 8 }, steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, check: func(t *testing.T, r *rawResp) {
				if !strings.HasPrefix(string(r.body), `{"call":1`) || !strings.HasSuffix(string(r.body), `}`) {
					t.Errorf("first answer truncated: %s", r.body)
				}
			}},
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, wantReplay: true, check: func(t *testing.T, r *rawResp) {
				if len(r.body) != 0 {
					t.Errorf("replay body %q, want empty", r.body)
				}
				if r.header.Get("Idempotency-Replay") != "omitted" {
					t.Errorf("Idempotency-Replay = %q", r.header.Get("Idempotency-Replay"))
				}
				if r.header.Get("Content-Type") != "application/json" {
					t.Errorf("headers not replayed: %v", r.header)
				}
			}},
		}},
		{name: "fence in context", steps: []step{
			{req: req{hdr: []string{key1}}, wantStatus: 201, wantCalls: 1, check: func(t *testing.T, r *rawResp) {
				if strings.Contains(string(r.body), `"fence":0`) {
					t.Errorf("no fence in the handler's context: %s", r.body)
				}
			}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k, _ := newKeeper(0)
			oc := newOutcomes()
			m := &idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, OnOutcome: oc.record}
			if tc.mw != nil {
				tc.mw(m)
			}
			a := &app{}
			srv := httptest.NewServer(m.Handler(a))
			defer srv.Close()
			var got []*rawResp
			for i, s := range tc.steps {
				r := send(t, srv, s.req)
				got = append(got, r)
				if r.status != s.wantStatus {
					t.Fatalf("step %d: status %d, want %d\n%s", i+1, r.status, s.wantStatus, r.raw)
				}
				if c := r.problemCode(); s.wantCode != "" && c != s.wantCode {
					t.Errorf("step %d: problem code %q, want %q", i+1, c, s.wantCode)
				}
				if r.replayed() != s.wantReplay {
					t.Errorf("step %d: replayed %v, want %v\n%s", i+1, r.replayed(), s.wantReplay, r.raw)
				}
				if n := a.calls.Load(); n != s.wantCalls {
					t.Errorf("step %d: handler ran %d times, want %d", i+1, n, s.wantCalls)
				}
				if o := oc.next(t); o.Kind != kindOf(s) || o.Kind != idemhttp.OutcomePassthrough && o.Status != s.wantStatus {
					t.Errorf("step %d: outcome %v (status %d), want %v", i+1, o.Kind, o.Status, kindOf(s))
				}
				if s.sameAs > 0 {
					first := got[s.sameAs-1]
					want := first.wire()
					if r.wire() != want {
						t.Errorf("step %d: replay differs from step %d\n got: %q\nwant: %q", i+1, s.sameAs, r.wire(), want)
					}
				}
				if s.check != nil {
					s.check(t, r)
				}
			}
		})
	}
}
