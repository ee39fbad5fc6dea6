package webhook_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/idemkit/idem"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemkit/idem/idemmsg"
	"github.com/idemkit/idem/idemmsg/internal/fakestore"
	"github.com/idemkit/idem/idemmsg/webhook"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// storeCalls sums every call the handler can make on the store.
func storeCalls(fs *fakestore.Store) int {
	return fs.Calls("begin") + fs.Calls("complete") + fs.Calls("release") + fs.Calls("extend")
}

// signedStandard returns a request signed with secret at ts.
func signedStandard(t testing.TB, secret, path, id string, ts time.Time, body string) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	r.Header.Set("webhook-id", id)
	r.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	r.Header.Set("webhook-signature", mustSignStandard(t, secret, id, ts, body))
	return r
}

type problem struct {
	Type, Title, Detail, Code string
	Status                    int
}

func readProblem(t testing.TB, w *httptest.ResponseRecorder) problem {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json (body %q)", ct, w.Body)
	}
	var p problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q: %v", w.Body, err)
	}
	if p.Status != w.Code || p.Type != webhook.ProblemTypePrefix+p.Code || p.Title == "" || p.Detail == "" {
		t.Fatalf("problem %+v for status %d", p, w.Code)
	}
	return p
}

// The attack of issue 11: once an id was processed, an unsigned, forged,
// stale or tampered request for it is refused exactly as for an unknown id,
// without a store call, never answered 200 Idempotent-Replayed.
func TestHandlerRefusesBeforeDedup(t *testing.T) {
	t.Parallel()
	clk := &clock{t: refTime}
	fs := fakestore.New(clk.Now)
	runs := 0
	var gotBody string
	var errs []error
	h := webhook.Handler(webhook.Config{
		Deduper:  &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}},
		Verifier: webhook.Standard{Secrets: []string{refSecret}, Now: clk.Now},
		OnError:  func(_ *http.Request, err error) { errs = append(errs, err) },
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.WriteHeader(http.StatusNoContent)
	}))
	serve := func(r *http.Request) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}

	// The reference delivery is processed once; the wrapped handler gets
	// the body the signature covered.
	first := serve(signedStandard(t, refSecret, "/hooks", refID, refTime, refBody))
	if first.Code != 204 || runs != 1 || gotBody != refBody {
		t.Fatalf("signed delivery: %d, runs %d, body %q", first.Code, runs, gotBody)
	}
	calls := storeCalls(fs)

	unsigned := func(id string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/hooks", strings.NewReader(refBody))
		r.Header.Set("webhook-id", id)
		return r
	}
	withSig := func(id, ts, sig, body string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/hooks", strings.NewReader(body))
		r.Header.Set("webhook-id", id)
		r.Header.Set("webhook-timestamp", ts)
		r.Header.Set("webhook-signature", sig)
		return r
	}
	stale := refTime.Add(-6 * time.Minute)
	future := refTime.Add(6 * time.Minute)
	for _, tc := range []struct {
		name   string
		req    func(id string) *http.Request
		status int
		code   string
		err    error
	}{
		{"unsigned", unsigned, 401, webhook.CodeSignatureMissing, webhook.ErrSignatureMissing},
		{"forged", func(id string) *http.Request {
			return withSig(id, refTS, "v1,"+strings.Repeat("A", 43)+"=", refBody)
		}, 401, webhook.CodeSignatureInvalid, webhook.ErrSignatureInvalid},
		{"wrong secret", func(id string) *http.Request {
			return signedStandard(t, otherSecret, "/hooks", id, refTime, refBody)
		}, 401, webhook.CodeSignatureInvalid, webhook.ErrSignatureInvalid},
		{"body tampered", func(id string) *http.Request {
			r := signedStandard(t, refSecret, "/hooks", id, refTime, refBody)
			r.Body = io.NopCloser(strings.NewReader(`{"test": 1}`))
			return r
		}, 401, webhook.CodeSignatureInvalid, webhook.ErrSignatureInvalid},
		{"stale", func(id string) *http.Request {
			return signedStandard(t, refSecret, "/hooks", id, stale, refBody)
		}, 401, webhook.CodeTimestampStale, webhook.ErrTimestampStale},
		{"future", func(id string) *http.Request {
			return signedStandard(t, refSecret, "/hooks", id, future, refBody)
		}, 401, webhook.CodeTimestampStale, webhook.ErrTimestampStale},
		{"malformed timestamp", func(id string) *http.Request {
			return withSig(id, "soon", refSig, refBody)
		}, 400, webhook.CodeSignatureMalformed, webhook.ErrSignatureMalformed},
		{"signature header twice", func(id string) *http.Request {
			r := signedStandard(t, refSecret, "/hooks", id, refTime, refBody)
			r.Header.Add("webhook-signature", refSig)
			return r
		}, 400, webhook.CodeSignatureMalformed, webhook.ErrSignatureMalformed},
	} {
		// The same answer for the processed id and for an unknown one: no
		// oracle.
		var answers []string
		for _, id := range []string{refID, "msg_never_seen"} {
			errs = nil
			w := serve(tc.req(id))
			p := readProblem(t, w)
			if w.Code != tc.status || p.Code != tc.code {
				t.Errorf("%s (%s): %d %s, want %d %s", tc.name, id, w.Code, p.Code, tc.status, tc.code)
			}
			if w.Header().Get("Idempotent-Replayed") != "" {
				t.Errorf("%s (%s): answered as a replay", tc.name, id)
			}
			if len(errs) != 1 || !errors.Is(errs[0], tc.err) {
				t.Errorf("%s (%s): OnError got %v, want %v", tc.name, id, errs, tc.err)
			}
			answers = append(answers, fmt.Sprint(w.Code, w.Header(), w.Body))
		}
		if answers[0] != answers[1] {
			t.Errorf("%s: processed and unknown ids answered differently:\n%s\n%s", tc.name, answers[0], answers[1])
		}
		if runs != 1 || storeCalls(fs) != calls {
			t.Fatalf("%s: runs %d, store calls %d → %d; the store must not be touched", tc.name, runs, calls, storeCalls(fs))
		}
	}

	// The sender's genuine retry is still a duplicate.
	clk.Add(4 * time.Minute)
	dup := serve(signedStandard(t, refSecret, "/hooks", refID, clk.Now(), refBody))
	if dup.Code != 200 || dup.Header().Get("Idempotent-Replayed") != "true" || runs != 1 {
		t.Fatalf("signed retry: %d %q, runs %d", dup.Code, dup.Header().Get("Idempotent-Replayed"), runs)
	}
}

// A captured delivery replayed after its id was forgotten (retention) is
// refused by the timestamp rule.
func TestHandlerReplayAfterRetentionRefused(t *testing.T) {
	t.Parallel()
	clk := &clock{t: refTime}
	fs := fakestore.New(clk.Now)
	runs := 0
	h := webhook.Handler(webhook.Config{
		Deduper:  &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}, Retention: time.Hour},
		Verifier: webhook.Standard{Secrets: []string{refSecret}, Now: clk.Now},
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { runs++ }))
	captured := func() *http.Request { return signedStandard(t, refSecret, "/", refID, refTime, refBody) }
	h.ServeHTTP(httptest.NewRecorder(), captured())
	// Replayed at the edge of the future tolerance: still remembered.
	clk.Add(5 * time.Minute)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, captured())
	if w.Code != 200 || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay within tolerance: %d", w.Code)
	}
	clk.Add(2 * time.Hour) // the record has expired
	calls := storeCalls(fs)
	w = httptest.NewRecorder()
	h.ServeHTTP(w, captured())
	if p := readProblem(t, w); w.Code != 401 || p.Code != webhook.CodeTimestampStale || runs != 1 || storeCalls(fs) != calls {
		t.Fatalf("replay after retention: %d %s, runs %d, store calls %d → %d", w.Code, p.Code, runs, calls, storeCalls(fs))
	}
}

func TestHandlerStripe(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1700000000, 0)}
	fs := fakestore.New(clk.Now)
	runs := 0
	h := webhook.Handler(webhook.Config{
		Deduper:  &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}},
		Verifier: &webhook.Stripe{Secrets: []string{stripeSecret}, Now: clk.Now},
		MaxBody:  100,
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		if b, _ := io.ReadAll(r.Body); !strings.HasPrefix(string(b), `{"id":"evt_1"`) {
			t.Errorf("wrapped handler got body %q", b)
		}
	}))
	send := func(body, sig string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/stripe", strings.NewReader(body))
		if sig != "" {
			r.Header.Set("Stripe-Signature", sig)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	body := `{"id":"evt_1","type":"invoice.paid"}`
	if w := send(body, webhook.SignStripe(stripeSecret, clk.Now(), []byte(body))); w.Code != 200 || runs != 1 {
		t.Fatalf("first: %d runs %d", w.Code, runs)
	}
	// Stripe re-signs its retry with a fresh t: a duplicate, by the body's id.
	clk.Add(time.Minute)
	if w := send(body, webhook.SignStripe(stripeSecret, clk.Now(), []byte(body))); w.Code != 200 || w.Header().Get("Idempotent-Replayed") != "true" || runs != 1 {
		t.Fatalf("retry: %d runs %d", w.Code, runs)
	}
	calls := storeCalls(fs)
	for _, tc := range []struct {
		name, body, sig string
		status          int
		code            string
	}{
		{"unsigned", body, "", 401, webhook.CodeSignatureMissing},
		{"forged", body, "t=" + strconv.FormatInt(clk.Now().Unix(), 10) + ",v1=" + strings.Repeat("ab", 32), 401, webhook.CodeSignatureInvalid},
		{"v0 only", body, "t=" + strconv.FormatInt(clk.Now().Unix(), 10) + ",v0=" + strings.Repeat("ab", 32), 401, webhook.CodeSignatureMissing},
		{"stale", body, webhook.SignStripe(stripeSecret, clk.Now().Add(-time.Hour), []byte(body)), 401, webhook.CodeTimestampStale},
		{"malformed", body, "v1=00", 400, webhook.CodeSignatureMalformed},
		{"too large", body + strings.Repeat(" ", 100), webhook.SignStripe(stripeSecret, clk.Now(), []byte(body+strings.Repeat(" ", 100))), 413, webhook.CodeTooLarge},
	} {
		w := send(tc.body, tc.sig)
		if p := readProblem(t, w); w.Code != tc.status || p.Code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, w.Code, p.Code, tc.status, tc.code)
		}
	}
	if runs != 1 || storeCalls(fs) != calls {
		t.Fatalf("refusals ran the handler (%d) or called the store (%d → %d)", runs, calls, storeCalls(fs))
	}
	// A signed body without an id: 400, after verification.
	noID := `{"type":"ping"}`
	if w := send(noID, webhook.SignStripe(stripeSecret, clk.Now(), []byte(noID))); w.Code != 400 || readProblem(t, w).Code != webhook.CodeIDMissing {
		t.Fatalf("signed, no id: %d", w.Code)
	}
}

func TestHandlerCustomVerifier(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{nil, 200, ""},
		{errors.New("bad token"), 401, webhook.CodeSignatureInvalid},
		{fmt.Errorf("x: %w", webhook.ErrSignatureMalformed), 400, webhook.CodeSignatureMalformed},
		{fmt.Errorf("x: %w", webhook.ErrSignatureMissing), 401, webhook.CodeSignatureMissing},
		{fmt.Errorf("x: %w", webhook.ErrTimestampStale), 401, webhook.CodeTimestampStale},
	} {
		fs := fakestore.New(nil)
		h := webhook.Handler(webhook.Config{
			Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}},
			Verifier: webhook.VerifierFunc(func(r *http.Request, body []byte) error {
				if string(body) != "payload" {
					t.Errorf("verifier got body %q", body)
				}
				return tc.err
			}),
		}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		w := post(h, "/", "payload", "webhook-id", "m")
		if w.Code != tc.status {
			t.Errorf("%v: %d, want %d", tc.err, w.Code, tc.status)
		}
		if tc.err != nil {
			if p := readProblem(t, w); p.Code != tc.code || storeCalls(fs) != 0 {
				t.Errorf("%v: code %s, store calls %d", tc.err, p.Code, storeCalls(fs))
			}
		}
	}
}

// Dedup answers are problems too.
func TestHandlerProblems(t *testing.T) {
	t.Parallel()
	fs := fakestore.New(nil)
	h := webhook.Handler(webhook.Config{Deduper: &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fs}}, Unverified: true}, http.NotFoundHandler())
	if w := post(h, "/", ""); w.Code != 400 || readProblem(t, w).Code != webhook.CodeIDMissing {
		t.Fatalf("no id: %d", w.Code)
	}
	if w := post(h, "/", "", "webhook-id", "a b"); w.Code != 400 || readProblem(t, w).Code != webhook.CodeIDInvalid {
		t.Fatalf("bad id: %d", w.Code)
	}
	fs.FailNext("begin", errors.New("down"))
	if w := post(h, "/", "", "webhook-id", "m"); w.Code != 503 || readProblem(t, w).Code != webhook.CodeStoreUnavailable {
		t.Fatalf("store down: %d", w.Code)
	}
}

func TestHandlerConfigPanics(t *testing.T) {
	t.Parallel()
	std := webhook.Standard{Secrets: []string{refSecret}}
	d := func(retention time.Duration) *idemmsg.Deduper {
		return &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(nil)}, Retention: retention}
	}
	for _, tc := range []struct {
		name  string
		cfg   webhook.Config
		panic string // substring; "" = no panic
	}{
		{"no verification choice", webhook.Config{Deduper: d(0)}, "Unverified"},
		{"both", webhook.Config{Deduper: d(0), Verifier: std, Unverified: true}, "both"},
		{"standard without secret", webhook.Config{Deduper: d(0), Verifier: webhook.Standard{}}, "secret"},
		{"standard bad secret", webhook.Config{Deduper: d(0), Verifier: webhook.Standard{Secrets: []string{refSecret, "whsec_%%"}}}, "secret 1"},
		{"stripe without secret", webhook.Config{Deduper: d(0), Verifier: webhook.Stripe{}}, "secret"},
		{"nil *Standard", webhook.Config{Deduper: d(0), Verifier: (*webhook.Standard)(nil)}, "nil"},
		{"tolerance = half the retention", webhook.Config{Deduper: d(10 * time.Minute), Verifier: std}, "tolerance"},
		{"tolerance > retention", webhook.Config{Deduper: d(time.Hour), Verifier: webhook.Standard{Secrets: []string{refSecret}, Tolerance: 2 * time.Hour}}, "tolerance"},
		{"tolerance < half the retention", webhook.Config{Deduper: d(11 * time.Minute), Verifier: std}, ""},
		{"default retention", webhook.Config{Deduper: d(0), Verifier: &webhook.Stripe{Secrets: []string{"whsec_x"}, Tolerance: time.Hour}}, ""},
		{"standard: unsigned id header", webhook.Config{Deduper: d(0), Verifier: std, Header: "X-Event-Id"}, "not signed"},
		{"standard: webhook-id header", webhook.Config{Deduper: d(0), Verifier: std, Header: "Webhook-Id"}, ""},
		{"standard: JSON field", webhook.Config{Deduper: d(0), Verifier: std, JSONField: "id"}, ""},
		{"stripe: id header", webhook.Config{Deduper: d(0), Verifier: webhook.Stripe{Secrets: []string{"k"}}, Header: "webhook-id"}, "not signed"},
		{"custom verifier", webhook.Config{Deduper: d(time.Second), Verifier: webhook.VerifierFunc(func(*http.Request, []byte) error { return nil }), Header: "X-Id"}, ""},
		{"unverified", webhook.Config{Deduper: d(0), Unverified: true}, ""},
	} {
		func() {
			defer func() {
				r := recover()
				switch {
				case tc.panic == "" && r != nil:
					t.Errorf("%s: panic %v", tc.name, r)
				case tc.panic != "" && (r == nil || !strings.Contains(fmt.Sprint(r), tc.panic)):
					t.Errorf("%s: panic %v, want one mentioning %q", tc.name, r, tc.panic)
				}
			}()
			webhook.Handler(tc.cfg, http.NotFoundHandler())
		}()
	}
}

// A Standard verifier with a JSON-field id: the body is read once and handed
// on whole.
func TestHandlerStandardJSONField(t *testing.T) {
	t.Parallel()
	clk := &clock{t: refTime}
	runs := 0
	h := webhook.Handler(webhook.Config{
		Deduper:   &idemmsg.Deduper{Keeper: &idem.Keeper{Store: fakestore.New(clk.Now)}},
		Verifier:  webhook.Standard{Secrets: []string{refSecret}, Now: clk.Now},
		JSONField: "event",
	}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		if b, _ := io.ReadAll(r.Body); string(b) != `{"event":"e1"}` {
			t.Errorf("body %q", b)
		}
	}))
	for i, id := range []string{"msg_a", "msg_b"} { // two deliveries, one event
		w := httptest.NewRecorder()
		h.ServeHTTP(w, signedStandard(t, refSecret, "/", id, refTime, `{"event":"e1"}`))
		if w.Code != 200 || runs != 1 || (i == 1) != (w.Header().Get("Idempotent-Replayed") == "true") {
			t.Fatalf("delivery %d: %d runs %d", i, w.Code, runs)
		}
	}
}
