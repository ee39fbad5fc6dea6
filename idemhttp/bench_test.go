package idemhttp_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/idemkit/idem/idemhttp"
)

// benchWriter is a cheap http.ResponseWriter: a reused header map and a
// byte counter.
type benchWriter struct {
	h    http.Header
	code int
	n    int
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }
func (w *benchWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
func (w *benchWriter) reset() {
	clear(w.h)
	w.code, w.n = 0, 0
}

// benchBody is a resettable request body.
type benchBody struct{ bytes.Reader }

func (*benchBody) Close() error { return nil }

// benchJSON is a 1 KiB JSON request body.
var benchJSON = func() []byte {
	var b strings.Builder
	b.WriteString(`{"amount":1000,"currency":"EUR","items":[`)
	for i := 0; b.Len() < 950; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"sku":"sku-` + strconv.Itoa(i) + `","qty":1}`)
	}
	b.WriteString(`],"note":"`)
	b.WriteString(strings.Repeat("n", 1024-2-b.Len()))
	b.WriteString(`"}`)
	return []byte(b.String())
}()

var benchApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/charges/ch_1")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"id":"ch_1","amount":1000,"currency":"EUR","status":"succeeded"}`))
})

func benchRequest() (*http.Request, *benchBody) {
	body := &benchBody{}
	r := httptest.NewRequest("POST", "/charges?expand=customer", nil)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Authorization", "Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc")
	r.Body = body
	r.ContentLength = int64(len(benchJSON))
	return r, body
}

func BenchmarkMiddleware(b *testing.B) {
	run := func(b *testing.B, h http.Handler, key func(i int) string) {
		r, body := benchRequest()
		w := &benchWriter{h: http.Header{}}
		b.SetBytes(int64(len(benchJSON)))
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := processCPU()
		for i := 0; i < b.N; i++ {
			body.Reset(benchJSON)
			if key != nil {
				r.Header["Idempotency-Key"] = []string{key(i)}
			}
			w.reset()
			h.ServeHTTP(w, r)
		}
		b.StopTimer()
		if cpu := processCPU() - cpu0; cpu > 0 {
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
		if w.code == 0 {
			b.Fatal("nothing written")
		}
	}
	b.Run("bare", func(b *testing.B) {
		run(b, benchApp, nil)
	})
	b.Run("first", func(b *testing.B) {
		k, _ := newKeeper(0)
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = "key-" + strconv.Itoa(i)
		}
		h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(benchApp)
		run(b, h, func(i int) string { return keys[i] })
	})
	b.Run("first-released", func(b *testing.B) {
		// As first, but the record is released (Stored says no), so the
		// store does not grow: the middleware's own cost, without the
		// store's growth and its GC work.
		k, _ := newKeeper(0)
		h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Stored: func(int) bool { return false }}).Handler(benchApp)
		run(b, h, func(int) string { return "the-key" })
	})
	b.Run("first-canonical", func(b *testing.B) {
		k, _ := newKeeper(0)
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = "key-" + strconv.Itoa(i)
		}
		h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k, Fingerprint: idemhttp.CanonicalFingerprint}).Handler(benchApp)
		run(b, h, func(i int) string { return keys[i] })
	})
	b.Run("replay", func(b *testing.B) {
		k, _ := newKeeper(0)
		h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(benchApp)
		run(b, h, func(int) string { return "the-key" })
	})
	b.Run("conflict", func(b *testing.B) {
		k, _ := newKeeper(0)
		h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(benchApp)
		r, _ := benchRequest()
		scope, _ := (&idemhttp.IdentityScope{Secret: testSecret, Anonymous: true}).Scope(r)
		// Another executor holds the key for this very request: 409.
		a, err := k.Begin(context.Background(), scope, "held", dfp(r, benchJSON))
		if err != nil || a.Lease == nil {
			b.Fatal(err)
		}
		defer a.Lease.Release(context.Background())
		run(b, h, func(int) string { return "held" })
		w := &benchWriter{h: http.Header{}}
		r, body := benchRequest()
		body.Reset(benchJSON)
		r.Header.Set("Idempotency-Key", "held")
		h.ServeHTTP(w, r)
		if w.code != http.StatusConflict {
			b.Fatalf("conflict case answered %d", w.code)
		}
	})
}

// TestReplayAllocs pins the replay path's allocation budget.
func TestReplayAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	k, _ := newKeeper(0)
	h := (&idemhttp.Middleware{ScopeSecret: testSecret, AllowAnonymous: true, Keeper: k}).Handler(benchApp)
	r, body := benchRequest()
	r.Header.Set("Idempotency-Key", "k")
	w := &benchWriter{h: http.Header{}}
	body.Reset(benchJSON)
	h.ServeHTTP(w, r) // first execution
	allocs := testing.AllocsPerRun(100, func() {
		body.Reset(benchJSON)
		w.reset()
		h.ServeHTTP(w, r)
	})
	if w.h.Get("Idempotency-Replayed") != "true" {
		t.Fatal("not a replay")
	}
	if allocs >= 25 {
		t.Errorf("replay: %.0f allocs/op, budget < 25", allocs)
	}
	t.Logf("replay: %.0f allocs/op", allocs)
}
