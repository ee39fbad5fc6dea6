package routers_test

import (
	"fmt"
	"go.uber.org/goleak"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/mux"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// charge answers with the route parameter the router extracted and the
// fence the middleware put in the context.
func charge(calls *atomic.Int64, param func(*http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		_, hasFence := idem.FenceFromContext(r.Context())
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "account=%s call=%d fenced=%v", param(r), n, hasFence)
	}
}

func newMiddleware() *idemhttp.Middleware {
	return &idemhttp.Middleware{Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})},
		ScopeSecret: []byte("routers-test-scope-secret"), AllowAnonymous: true}
}

func TestRouters(t *testing.T) {
	cases := []struct {
		name  string
		build func(calls *atomic.Int64) http.Handler
	}{
		{"chi Use", func(calls *atomic.Int64) http.Handler {
			r := chi.NewRouter()
			r.Use(newMiddleware().Handler)
			r.Post("/accounts/{id}/charges", charge(calls, func(r *http.Request) string { return chi.URLParam(r, "id") }))
			r.Get("/accounts/{id}", charge(calls, func(r *http.Request) string { return chi.URLParam(r, "id") }))
			return r
		}},
		{"chi With on one route", func(calls *atomic.Int64) http.Handler {
			r := chi.NewRouter()
			r.With(newMiddleware().Handler).Post("/accounts/{id}/charges", charge(calls, func(r *http.Request) string { return chi.URLParam(r, "id") }))
			r.Get("/accounts/{id}", charge(calls, func(r *http.Request) string { return chi.URLParam(r, "id") }))
			return r
		}},
		{"gorilla/mux Use", func(calls *atomic.Int64) http.Handler {
			r := mux.NewRouter()
			r.Use(mux.MiddlewareFunc(newMiddleware().Handler))
			r.HandleFunc("/accounts/{id}/charges", charge(calls, func(r *http.Request) string { return mux.Vars(r)["id"] })).Methods("POST")
			r.HandleFunc("/accounts/{id}", charge(calls, func(r *http.Request) string { return mux.Vars(r)["id"] })).Methods("GET")
			return r
		}},
		{"ServeMux wrapped", func(calls *atomic.Int64) http.Handler {
			m := http.NewServeMux()
			m.Handle("POST /accounts/{id}/charges", charge(calls, func(r *http.Request) string { return r.PathValue("id") }))
			m.Handle("GET /accounts/{id}", charge(calls, func(r *http.Request) string { return r.PathValue("id") }))
			return newMiddleware().Handler(m)
		}},
		{"ServeMux per route", func(calls *atomic.Int64) http.Handler {
			m := http.NewServeMux()
			mw := newMiddleware()
			m.Handle("POST /accounts/{id}/charges", mw.Handler(charge(calls, func(r *http.Request) string { return r.PathValue("id") })))
			m.Handle("GET /accounts/{id}", charge(calls, func(r *http.Request) string { return r.PathValue("id") }))
			return m
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			srv := httptest.NewServer(tc.build(&calls))
			defer srv.Close()
			c := srv.Client()
			defer c.CloseIdleConnections()
			do := func(method, path, key, body string) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
				if key != "" {
					req.Header.Set("Idempotency-Key", key)
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp, string(b)
			}
			r1, b1 := do("POST", "/accounts/acc_7/charges", "k", "100")
			r2, b2 := do("POST", "/accounts/acc_7/charges", "k", "100")
			if r1.StatusCode != 201 || b1 != "account=acc_7 call=1 fenced=true" {
				t.Fatalf("first: %d %q", r1.StatusCode, b1)
			}
			if r2.StatusCode != 201 || b2 != b1 || r2.Header.Get("Idempotency-Replayed") != "true" {
				t.Fatalf("retry: %d %q %v", r2.StatusCode, b2, r2.Header)
			}
			if r, _ := do("POST", "/accounts/acc_8/charges", "k", "100"); r.StatusCode != 422 {
				t.Errorf("same key, other path: %d", r.StatusCode)
			}
			if r, _ := do("POST", "/accounts/acc_7/charges", "", "100"); r.StatusCode != 400 {
				t.Errorf("no key: %d", r.StatusCode)
			}
			if _, b := do("GET", "/accounts/acc_9", "k", ""); b != "account=acc_9 call=2 fenced=false" {
				t.Errorf("GET passes through unprotected: %q", b)
			}
			if n := calls.Load(); n != 2 {
				t.Errorf("handler ran %d times", n)
			}
		})
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
