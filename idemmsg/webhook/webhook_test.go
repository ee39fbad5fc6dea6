package webhook_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/leakcheck"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/webhook"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

func post(h http.Handler, path, body string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestHandler(t *testing.T) {
	t.Parallel()
	type req struct {
		path, body string
		hdr        []string
		next       int // status the wrapped handler answers (0: writes nothing)
		fail       string
		want       int
		wantRuns   int // cumulative
		wantHeader string
	}
	for _, tc := range []struct {
		name string
		cfg  webhook.Config
		reqs []req
	}{
		{"standard webhook-id", webhook.Config{}, []req{
			{hdr: []string{"webhook-id", "msg_1"}, next: 204, want: 204, wantRuns: 1},
			{hdr: []string{"webhook-id", "msg_1"}, next: 204, want: 200, wantRuns: 1, wantHeader: "Idempotent-Replayed"},
			{hdr: []string{"webhook-id", "msg_2"}, want: 200, wantRuns: 2},
		}},
		{"non-2xx answers are retried, not remembered", webhook.Config{}, []req{
			{hdr: []string{"webhook-id", "m"}, next: 500, want: 500, wantRuns: 1},
			{hdr: []string{"webhook-id", "m"}, next: 401, want: 401, wantRuns: 2},
			{hdr: []string{"webhook-id", "m"}, next: 200, want: 200, wantRuns: 3},
			{hdr: []string{"webhook-id", "m"}, next: 200, want: 200, wantRuns: 3},
		}},
		{"missing or bad id → 400, handler not run", webhook.Config{}, []req{
			{want: 400},
			{hdr: []string{"webhook-id", "has space"}, want: 400},
			{hdr: []string{"webhook-id", "a", "webhook-id", "b"}, want: 400},
		}},
		{"store down → 503 with Retry-After, then processed", webhook.Config{}, []req{
			{hdr: []string{"webhook-id", "m"}, fail: "begin", want: 503, wantHeader: "Retry-After"},
			{hdr: []string{"webhook-id", "m"}, want: 200, wantRuns: 1},
		}},
		{"JSON field", webhook.Config{JSONField: "id"}, []req{
			{body: `{"id":"evt_1","type":"invoice.paid"}`, want: 200, wantRuns: 1},
			{body: `{"type":"invoice.paid","id":"evt_1"}`, want: 200, wantRuns: 1, wantHeader: "Idempotent-Replayed"},
			{body: `{"id":42}`, want: 200, wantRuns: 2},
			{body: `{"id":null}`, want: 400, wantRuns: 2},
			{body: `[1]`, want: 400, wantRuns: 2},
			{body: `{"id":"` + strings.Repeat("x", 2000) + `"}`, want: 413, wantRuns: 2},
		}},
		{"custom header, JSON fallback", webhook.Config{Header: "X-Event-Id", JSONField: "id"}, []req{
			{hdr: []string{"X-Event-Id", "e1"}, body: `{"id":"other"}`, want: 200, wantRuns: 1},
			{body: `{"id":"e1"}`, want: 200, wantRuns: 1, wantHeader: "Idempotent-Replayed"},
		}},
		{"scope is the path by default", webhook.Config{}, []req{
			{path: "/hooks/a", hdr: []string{"webhook-id", "m"}, want: 200, wantRuns: 1},
			{path: "/hooks/b", hdr: []string{"webhook-id", "m"}, want: 200, wantRuns: 2},
		}},
		{"custom duplicate status", webhook.Config{DuplicateStatus: 202}, []req{
			{hdr: []string{"webhook-id", "m"}, want: 200, wantRuns: 1},
			{hdr: []string{"webhook-id", "m"}, want: 202, wantRuns: 1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := fakestore.New(nil)
			cfg := tc.cfg
			cfg.Deduper = &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}
			cfg.Unverified = true // these cases test deduplication; verify_handler_test.go tests verification
			cfg.MaxBody = 1000
			runs := 0
			var next int
			h := webhook.Handler(cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs++
				body, _ := io.ReadAll(r.Body)
				if cfg.JSONField != "" && len(body) == 0 {
					t.Error("the wrapped handler got an empty body")
				}
				if next != 0 {
					w.WriteHeader(next)
				}
			}))
			for i, rq := range tc.reqs {
				next = rq.next
				if rq.fail != "" {
					fs.FailNext(rq.fail, errors.New("down"))
				}
				path := rq.path
				if path == "" {
					path = "/hooks"
				}
				w := post(h, path, rq.body, rq.hdr...)
				if w.Code != rq.want || runs != rq.wantRuns {
					t.Fatalf("request %d: status %d, runs %d; want %d, %d (body %q)", i, w.Code, runs, rq.want, rq.wantRuns, w.Body)
				}
				if rq.wantHeader != "" && w.Header().Get(rq.wantHeader) == "" {
					t.Fatalf("request %d: no %s header", i, rq.wantHeader)
				}
			}
		})
	}
}

func TestHandlerInFlight(t *testing.T) {
	t.Parallel()
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil), Lease: 10 * time.Second}}
	started, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int32
	h := webhook.Handler(webhook.Config{Deduper: d, Unverified: true}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		close(started)
		<-release
	}))
	var wg sync.WaitGroup
	var first *httptest.ResponseRecorder
	wg.Go(func() { first = post(h, "/", "", "webhook-id", "m") })
	<-started
	dup := post(h, "/", "", "webhook-id", "m")
	close(release)
	wg.Wait()
	if dup.Code != http.StatusConflict || dup.Header().Get("Retry-After") != "10" {
		t.Fatalf("in-flight duplicate: %d Retry-After %q, want 409 and 10", dup.Code, dup.Header().Get("Retry-After"))
	}
	if first.Code != 200 || runs.Load() != 1 {
		t.Fatalf("first %d runs %d", first.Code, runs.Load())
	}
}

func TestHandlerPanicReleases(t *testing.T) {
	t.Parallel()
	fs := fakestore.New(nil)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}
	h := webhook.Handler(webhook.Config{Deduper: d, Unverified: true}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() { _ = recover() }()
		post(h, "/", "", "webhook-id", "m")
	}()
	if fs.Len() != 0 {
		t.Fatal("a panicking handler's claim was kept")
	}
}

func TestHandlerClientGoneStillRecords(t *testing.T) {
	t.Parallel()
	fs := fakestore.New(nil)
	d := &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}
	ctx, cancel := context.WithCancel(context.Background())
	h := webhook.Handler(webhook.Config{Deduper: d, Unverified: true}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cancel() // the sender hung up while we worked
		w.WriteHeader(200)
	}))
	r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/", nil)
	r.Header.Set("webhook-id", "m")
	h.ServeHTTP(httptest.NewRecorder(), r)
	rec, ok, _ := fs.Get(context.Background(), idem.RecordKey("/", "m"))
	if !ok || rec.State != idem.StateCompleted {
		t.Fatalf("record %+v, %v; want completed", rec, ok)
	}
}

func TestHandlerNilDeduperPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	webhook.Handler(webhook.Config{Unverified: true}, http.NotFoundHandler())
}

func TestJSONField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body, want string
		err        error
	}{
		{`{"id":"a"}`, "a", nil},
		{`{"id":"\u00e9t\u00e9"}`, "été", nil},
		{`{"id":-1.5e3}`, "-1.5e3", nil},
		{`{"id":""}`, "", idem.ErrInvalidKey},
		{`{"id":true}`, "", idem.ErrInvalidKey},
		{`{"id":{"x":1}}`, "", idem.ErrInvalidKey},
		{`{"id":null}`, "", webhook.ErrNoID},
		{`{"other":"a"}`, "", webhook.ErrNoID},
		{`"a"`, "", webhook.ErrNoID},
		{``, "", webhook.ErrNoID},
		{`{"id":"a"`, "", webhook.ErrNoID},
	} {
		got, err := webhook.JSONField([]byte(tc.body), "id")
		if got != tc.want || (tc.err == nil) != (err == nil) || tc.err != nil && !errors.Is(err, tc.err) {
			t.Errorf("JSONField(%q) = %q, %v; want %q, %v", tc.body, got, err, tc.want, tc.err)
		}
	}
}

func FuzzJSONField(f *testing.F) {
	for _, s := range []string{`{"id":"a"}`, `{"id":12}`, `{"id":null}`, `[]`, `{"id":"\ud800"}`, `{"id":1e999}`, ``, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		id, err := webhook.JSONField(body, "id")
		if err != nil {
			if id != "" {
				t.Fatalf("id %q with error %v", id, err)
			}
			if !errors.Is(err, webhook.ErrNoID) && !errors.Is(err, idem.ErrInvalidKey) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if id == "" || len(id) > idem.MaxKeyLen {
			t.Fatalf("accepted id of %d bytes", len(id))
		}
	})
}

func FuzzEventID(f *testing.F) {
	f.Add("msg_1", []byte(`{"id":"x"}`))
	f.Add("", []byte(`{"id":"x"}`))
	f.Add("a b", []byte(`{}`))
	f.Add("", []byte(strings.Repeat("{", 100)))
	f.Fuzz(func(t *testing.T, hdr string, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(string(body)))
		if hdr != "" {
			r.Header["Webhook-Id"] = []string{hdr}
		}
		id, err := webhook.EventID(r, "webhook-id", "id", 64)
		if err == nil && (id == "" || len(id) > idem.MaxKeyLen) {
			t.Fatalf("accepted id %q", id)
		}
		if err == nil && hdr != "" && id != hdr {
			t.Fatalf("header id %q, got %q", hdr, id)
		}
		// The body is always handed on unchanged (up to the limit).
		rest, _ := io.ReadAll(r.Body)
		if len(body) <= 65 && string(rest) != string(body) {
			t.Fatalf("body changed: %q → %q", body, rest)
		}
	})
}
