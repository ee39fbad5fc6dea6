package idemhttp_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/idemkit/idem/idemhttp"
)

func TestWriteProblem(t *testing.T) {
	t.Parallel()
	codes := map[string]int{
		idemhttp.CodeKeyMissing:            400,
		idemhttp.CodeKeyInvalid:            400,
		idemhttp.CodeKeyReused:             422,
		idemhttp.CodeInProgress:            409,
		idemhttp.CodeStoreUnavailable:      503,
		idemhttp.CodeTooLarge:              413,
		idemhttp.CodeBodyUnreadable:        400,
		idemhttp.CodeScopeInvalid:          400,
		idemhttp.CodeRequestInvalid:        400,
		idemhttp.CodeCanceled:              503,
		idemhttp.CodeStoredResponseInvalid: 500,
		"something-else":                   500,
	}
	for code, status := range codes {
		for _, detail := range []string{"", `custom "detail" <x>`} {
			w := httptest.NewRecorder()
			w.Header().Set("Retry-After", "7")
			idemhttp.WriteProblem(w, code, detail)
			var p struct {
				Type, Title, Detail, Code string
				Status                    int
			}
			if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
				t.Fatalf("%s: %v: %s", code, err, w.Body.Bytes())
			}
			if w.Code != status || p.Status != status || p.Code != code || p.Type != idemhttp.ProblemTypePrefix+code || p.Title == "" || p.Detail == "" {
				t.Errorf("%s: %d %+v", code, w.Code, p)
			}
			if detail != "" && p.Detail != detail {
				t.Errorf("%s: detail %q", code, p.Detail)
			}
			h := w.Header()
			if h.Get("Content-Type") != "application/problem+json" || h.Get("Retry-After") != "7" || h.Get("Cache-Control") != "no-store" ||
				h.Get("Content-Length") != strconv.Itoa(w.Body.Len()) {
				t.Errorf("%s: headers %v", code, h)
			}
		}
	}
}

// The problem answer for a 409 over HTTP: status, Retry-After, JSON members.
func TestProblemOverHTTP(t *testing.T) {
	t.Parallel()
	k, _ := newKeeper(0)
	srv := httptest.NewServer((&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(http.NotFoundHandler()))
	defer srv.Close()
	r := send(t, srv, req{hdr: []string{"Idempotency-Key: a", "Idempotency-Key: b"}})
	var p map[string]any
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"type", "title", "status", "detail", "code"} {
		if _, ok := p[m]; !ok {
			t.Errorf("member %q missing: %s", m, r.body)
		}
	}
	if r.status != 400 || p["code"] != "idempotency-key-invalid" || p["status"] != float64(400) {
		t.Errorf("%d %s", r.status, r.body)
	}
}
