package idemhttp_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// A payment endpoint behind the middleware: the retry of a POST with the
// same Idempotency-Key gets the stored answer, and the charge runs once.
func ExampleMiddleware() {
	charges := 0
	pay := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"charge":"ch_%d"}`, charges)
	})
	mw := &idemhttp.Middleware{
		Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})},
		// Keys are scoped to the caller: an HMAC of the Host and the
		// credentials it sends, under this secret (load it from your secret
		// store; it must survive restarts and be shared by all instances).
		ScopeSecret: []byte("example-secret-of-at-least-16-bytes"),
	}
	h := mw.Handler(pay)

	for i := 0; i < 2; i++ {
		r := httptest.NewRequest("POST", "/charges", strings.NewReader(`{"amount":1000}`))
		r.Header.Set("Authorization", "Bearer alice-token")
		r.Header.Set("Idempotency-Key", `"order-42"`)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		body, _ := io.ReadAll(w.Result().Body)
		fmt.Printf("%d %s replayed=%q\n", w.Code, body, w.Header().Get("Idempotency-Replayed"))
	}
	fmt.Println("charges:", charges)
	// Output:
	// 201 {"charge":"ch_1"} replayed=""
	// 201 {"charge":"ch_1"} replayed="true"
	// charges: 1
}

// A reuse of the key for a different request is refused with 422 and an
// RFC 9457 problem whose code clients can branch on.
func ExampleMiddleware_mismatch() {
	mw := &idemhttp.Middleware{
		Keeper:       &idem.Keeper{Store: memstore.New(memstore.Options{})},
		ScopeSecret:  []byte("example-secret-of-at-least-16-bytes"),
		ScopeHeaders: []string{"X-Api-Key"},
	}
	h := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	for _, body := range []string{`{"amount":1000}`, `{"amount":9999}`} {
		r := httptest.NewRequest("POST", "/charges", strings.NewReader(body))
		r.Header.Set("X-Api-Key", "alice-key")
		r.Header.Set("Idempotency-Key", "order-43")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%d %q\n", w.Code, w.Header().Get("Content-Type"))
	}
	// Output:
	// 201 ""
	// 422 "application/problem+json"
}

// Behind authentication, scope keys by the authenticated principal: the
// same account keeps its records when its token rotates, and two accounts
// never share one.
func ExampleMiddleware_principal() {
	type principalKey struct{}
	// authenticate stands for your authentication middleware.
	authenticate := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			account := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer token-of-")
			if account == "" || account == r.Header.Get("Authorization") {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, account)))
		})
	}
	mw := &idemhttp.Middleware{
		Keeper: &idem.Keeper{Store: memstore.New(memstore.Options{})},
		Scope: func(r *http.Request) (string, error) {
			account, _ := r.Context().Value(principalKey{}).(string)
			if account == "" {
				return "", idemhttp.ErrNoCredentials
			}
			return "account:" + account, nil
		},
	}
	runs := 0
	h := authenticate(mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.WriteHeader(http.StatusCreated)
	})))
	for _, who := range []string{"alice", "mallory", "alice"} {
		r := httptest.NewRequest("POST", "/charges", strings.NewReader(`{"amount":1000}`))
		r.Header.Set("Authorization", "Bearer token-of-"+who)
		r.Header.Set("Idempotency-Key", "order-44")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		fmt.Printf("%s: %d replayed=%q\n", who, w.Code, w.Header().Get("Idempotency-Replayed"))
	}
	fmt.Println("runs:", runs)
	// Output:
	// alice: 201 replayed=""
	// mallory: 201 replayed=""
	// alice: 201 replayed="true"
	// runs: 2
}

func ExampleParseKey() {
	h := http.Header{}
	h.Set("Idempotency-Key", `"a\"b"`)
	k, err := idemhttp.ParseKey(h, "")
	fmt.Printf("%s %v\n", k, err)
	h.Add("Idempotency-Key", "again")
	_, err = idemhttp.ParseKey(h, "Idempotency-Key")
	fmt.Println(err)
	// Output:
	// a"b <nil>
	// idem: invalid key: header given 2 times
}
