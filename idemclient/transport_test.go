package idemclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
)

// roundTripFunc adapts a function to http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// trackedBody is a response body that records whether it was read and closed.
type trackedBody struct {
	*strings.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error { b.closed.Store(true); return nil }

// seen is one attempt as the fake server saw it.
type seen struct {
	method string
	key    []string
	body   string
}

// fakeServer answers attempt i (0-based) with replies[i] (the last reply
// repeats). A reply with status 0 is a transport error.
type fakeServer struct {
	mu      sync.Mutex
	attempt []seen
	bodies  []*trackedBody
	replies []reply
}

type reply struct {
	status int
	header http.Header
	err    error
}

func (s *fakeServer) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := len(s.attempt)
	s.attempt = append(s.attempt, seen{method: r.Method, key: r.Header.Values(DefaultHeader), body: string(body)})
	rep := s.replies[min(i, len(s.replies)-1)]
	if rep.status == 0 {
		if rep.err != nil {
			return nil, rep.err
		}
		return nil, fmt.Errorf("read tcp: %w", io.ErrUnexpectedEOF)
	}
	b := &trackedBody{Reader: strings.NewReader(fmt.Sprintf("reply %d", i))}
	s.bodies = append(s.bodies, b)
	h := rep.header
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: rep.status, Header: h, Body: b, Request: r}, nil
}

func (s *fakeServer) attempts() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.attempt...)
}

// newTestTransport returns a Transport over base whose waits are recorded
// and not slept.
func newTestTransport(base http.RoundTripper) (*Transport, *[]time.Duration) {
	var mu sync.Mutex
	waits := new([]time.Duration)
	t := &Transport{Base: base}
	t.wait = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		*waits = append(*waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return t, waits
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func retryAfter(v string) http.Header { return http.Header{"Retry-After": {v}} }

func TestAddsKeyAndKeepsItOnEveryRetry(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 0}, {status: 503}, {status: 200}}}
	tr, _ := newTestTransport(srv)
	req, _ := http.NewRequest(http.MethodPost, "http://example.test/charges", strings.NewReader(`{"amount":100}`))
	before := req.Header.Clone()

	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	got := srv.attempts()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	key := got[0].key
	if len(key) != 1 || !uuidV4.MatchString(key[0]) {
		t.Fatalf("key %q is not one UUIDv4", key)
	}
	for i, a := range got {
		if len(a.key) != 1 || a.key[0] != key[0] {
			t.Errorf("attempt %d: key %q, want %q", i+1, a.key, key[0])
		}
		if a.body != `{"amount":100}` {
			t.Errorf("attempt %d: body %q", i+1, a.body)
		}
	}
	if fmt.Sprint(req.Header) != fmt.Sprint(before) {
		t.Errorf("caller's header changed: %v, was %v", req.Header, before)
	}
	if k := resp.Request.Header.Get(DefaultHeader); k != key[0] {
		t.Errorf("resp.Request carries key %q, want %q", k, key[0])
	}
}

func TestFreshKeyPerLogicalRequest(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 201}}}
	tr, _ := newTestTransport(srv)
	for range 3 {
		req, _ := http.NewRequest(http.MethodPatch, "http://example.test/x", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	got := srv.attempts()
	keys := map[string]bool{}
	for _, a := range got {
		keys[a.key[0]] = true
	}
	if len(keys) != 3 {
		t.Fatalf("3 requests used %d distinct keys: %v", len(keys), got)
	}
}

func TestCallerKeyNeverChanged(t *testing.T) {
	t.Parallel()
	for _, method := range []string{http.MethodPost, "LOCK"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: 0}, {status: 429}, {status: 200}}}
			tr, _ := newTestTransport(srv)
			req, _ := http.NewRequest(method, "http://example.test/x", strings.NewReader("b"))
			req.Header.Set(DefaultHeader, `"caller-key-1"`)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := srv.attempts()
			if len(got) != 3 {
				t.Fatalf("%d attempts, want 3 (a caller key makes any method retryable)", len(got))
			}
			for i, a := range got {
				if len(a.key) != 1 || a.key[0] != `"caller-key-1"` {
					t.Errorf("attempt %d: key %q", i+1, a.key)
				}
			}
		})
	}
}

func TestStatusesNotRetried(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		status int
		header http.Header
		tr     Transport
	}{
		{name: "400", status: 400},
		{name: "401", status: 401},
		{name: "403", status: 403},
		{name: "404", status: 404},
		{name: "413", status: 413},
		{name: "422", status: 422},
		{name: "422 with Retry-After", status: 422, header: retryAfter("1")},
		{name: "409 without Retry-After", status: 409},
		{name: "409 with unparsable Retry-After", status: 409, header: retryAfter("soon")},
		{name: "500 by default", status: 500},
		{name: "502 by default", status: 502},
		{name: "501 even when 5xx are retried", status: 501, tr: Transport{RetryServerErrors: true}},
		{name: "505 even when 5xx are retried", status: 505, tr: Transport{RetryServerErrors: true}},
		{name: "201", status: 201},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: c.status, header: c.header}, {status: 200}}}
			tr := c.tr
			tr.Base = srv
			var waited atomic.Int32
			tr.wait = func(context.Context, time.Duration) error { waited.Add(1); return nil }
			req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", strings.NewReader("b"))
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			if n := len(srv.attempts()); n != 1 || waited.Load() != 0 {
				t.Fatalf("%d attempts and %d waits, want 1 and 0", n, waited.Load())
			}
			if b, _ := io.ReadAll(resp.Body); string(b) != "reply 0" {
				t.Errorf("body %q: the returned response must be intact", b)
			}
		})
	}
}

func TestStatusesRetried(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		status   int
		header   http.Header
		tr       Transport
		wantWait time.Duration // -1: backoff, any value in [0, BaseDelay]
	}{
		{name: "409 in flight", status: 409, header: retryAfter("2"), wantWait: 2 * time.Second},
		{name: "429", status: 429, header: retryAfter("3"), wantWait: 3 * time.Second},
		{name: "429 without Retry-After", status: 429, wantWait: -1},
		{name: "503", status: 503, header: retryAfter("0"), wantWait: 0},
		{name: "503 HTTP-date", status: 503, header: retryAfter(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)), wantWait: time.Hour},
		{name: "408", status: 408, wantWait: -1},
		{name: "500 when configured", status: 500, tr: Transport{RetryServerErrors: true}, wantWait: -1},
		{name: "502 when configured", status: 502, tr: Transport{RetryServerErrors: true}, wantWait: -1},
		{name: "504 when configured", status: 504, tr: Transport{RetryServerErrors: true}, header: retryAfter("1"), wantWait: time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: c.status, header: c.header}, {status: 200}}}
			tr := c.tr
			tr.Base = srv
			tr.MaxElapsed = 2 * time.Hour
			var waits []time.Duration
			tr.wait = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", strings.NewReader("b"))
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || len(srv.attempts()) != 2 || len(waits) != 1 {
				t.Fatalf("status %d after %d attempts and %d waits; want 200, 2, 1", resp.StatusCode, len(srv.attempts()), len(waits))
			}
			switch w := waits[0]; {
			case c.wantWait < 0:
				if w < 0 || w > DefaultBaseDelay {
					t.Errorf("backoff %v outside [0, %v]", w, DefaultBaseDelay)
				}
			case c.wantWait >= time.Hour:
				if w <= c.wantWait-time.Minute || w > c.wantWait { // the date has whole seconds and the table was built earlier
					t.Errorf("waited %v, want about %v", w, c.wantWait)
				}
			case w != c.wantWait:
				t.Errorf("waited %v, want %v (Retry-After)", w, c.wantWait)
			}
			if !srv.bodies[0].closed.Load() {
				t.Error("discarded response body not closed")
			}
			if n, _ := srv.bodies[0].Read(make([]byte, 1)); n != 0 {
				t.Error("discarded response body not drained")
			}
		})
	}
}

func TestInFlight409NeedsAKey(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 409, header: retryAfter("1")}, {status: 200}}}
	tr, _ := newTestTransport(srv)
	req, _ := http.NewRequest(http.MethodPut, "http://example.test/x", strings.NewReader("b"))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 409 || len(srv.attempts()) != 1 {
		t.Fatalf("PUT without key: status %d after %d attempts; a 409 is retried only for a keyed request", resp.StatusCode, len(srv.attempts()))
	}
}

func TestIdempotentMethodsRetryWithoutKey(t *testing.T) {
	t.Parallel()
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete} {
		t.Run(m, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: 0}, {status: 503}, {status: 200}}}
			tr, _ := newTestTransport(srv)
			req, _ := http.NewRequest(m, "http://example.test/x", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := srv.attempts()
			if len(got) != 3 {
				t.Fatalf("%d attempts, want 3", len(got))
			}
			for i, a := range got {
				if len(a.key) != 0 {
					t.Errorf("attempt %d carries key %q; %s gets none", i+1, a.key, m)
				}
			}
		})
	}
}

func TestOtherMethodsPassThrough(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, method string
		methods      []string
	}{
		{"custom method", "LOCK", nil},
		{"POST not configured", http.MethodPost, []string{http.MethodPatch}},
		{"no keyed methods", http.MethodPost, []string{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: 503}, {status: 200}}}
			tr, _ := newTestTransport(srv)
			tr.Methods = c.methods
			req, _ := http.NewRequest(c.method, "http://example.test/x", strings.NewReader("b"))
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := srv.attempts()
			if len(got) != 1 || resp.StatusCode != 503 || len(got[0].key) != 0 {
				t.Fatalf("attempts %v, status %d: want one keyless attempt returning 503", got, resp.StatusCode)
			}
		})
	}
	t.Run("error returned unwrapped", func(t *testing.T) {
		t.Parallel()
		boom := errors.New("boom")
		srv := &fakeServer{replies: []reply{{err: boom}}}
		tr, _ := newTestTransport(srv)
		req, _ := http.NewRequest("LOCK", "http://example.test/x", nil)
		_, err := tr.RoundTrip(req)
		if err != boom {
			t.Fatalf("err = %v, want the base's error itself", err)
		}
	})
}

func TestConfiguredMethodsAndHeader(t *testing.T) {
	t.Parallel()
	var got http.Header
	tr := &Transport{
		Methods: []string{http.MethodPut},
		Header:  "x-request-key",
		KeyFunc: func(r *http.Request) (string, error) { return "order-" + r.URL.Query().Get("id"), nil },
		Base: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			got = r.Header
			return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil
		}),
	}
	req, _ := http.NewRequest(http.MethodPut, "http://example.test/orders?id=42", nil)
	if _, err := tr.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	if v := got.Values("X-Request-Key"); len(v) != 1 || v[0] != "order-42" {
		t.Fatalf("X-Request-Key = %q, want [order-42]", v)
	}
	if v := got.Values(DefaultHeader); len(v) != 0 {
		t.Fatalf("Idempotency-Key = %q, want none with a custom header", v)
	}
}

func TestKeyFuncErrorSendsNothing(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 200}}}
	boom := errors.New("no key")
	body := &closeRecorder{Reader: strings.NewReader("b")}
	tr := &Transport{Base: srv, KeyFunc: func(*http.Request) (string, error) { return "", boom }}
	req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", body)
	_, err := tr.RoundTrip(req)
	var e *Error
	if !errors.Is(err, boom) || !errors.As(err, &e) || e.Attempts != 0 {
		t.Fatalf("err = %v, want *Error wrapping the KeyFunc error, 0 attempts", err)
	}
	if len(srv.attempts()) != 0 || !body.closed {
		t.Fatalf("%d attempts, body closed %v; want 0 and true", len(srv.attempts()), body.closed)
	}
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

func TestBodyWithoutGetBodyIsBuffered(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 0}, {status: 0}, {status: 200}}}
	tr, _ := newTestTransport(srv)
	body := &closeRecorder{Reader: strings.NewReader("payload-123")}
	req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", body) // no GetBody
	if req.GetBody != nil {
		t.Fatal("test needs a body without GetBody")
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := srv.attempts()
	if len(got) != 3 {
		t.Fatalf("%d attempts, want 3", len(got))
	}
	for i, a := range got {
		if a.body != "payload-123" {
			t.Errorf("attempt %d body %q", i+1, a.body)
		}
	}
	if !body.closed {
		t.Error("caller's body not closed")
	}
	if req.Body != body || req.GetBody != nil {
		t.Error("caller's request modified")
	}
}

func TestBodyOverLimitIsNotRetried(t *testing.T) {
	t.Parallel()
	payload := strings.Repeat("x", 100)
	t.Run("response returned with the reason observed", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 503}, {status: 200}}}
		tr, _ := newTestTransport(srv)
		tr.BodyLimit = 10
		var last AttemptInfo
		tr.OnAttempt = func(a AttemptInfo) { last = a }
		body := &closeRecorder{Reader: strings.NewReader(payload)}
		req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", body)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := srv.attempts()
		if len(got) != 1 || resp.StatusCode != 503 {
			t.Fatalf("%d attempts, status %d; want 1 and 503", len(got), resp.StatusCode)
		}
		if got[0].body != payload {
			t.Errorf("server got %d bytes, want all %d", len(got[0].body), len(payload))
		}
		if !errors.Is(last.GiveUp, ErrBodyNotReplayable) || last.Retry {
			t.Errorf("observer: GiveUp %v, Retry %v; want ErrBodyNotReplayable, false", last.GiveUp, last.Retry)
		}
		if !body.closed {
			t.Error("caller's body not closed")
		}
	})
	t.Run("error wraps ErrBodyNotReplayable", func(t *testing.T) {
		t.Parallel()
		for _, limit := range []int64{10, -1} {
			srv := &fakeServer{replies: []reply{{status: 0}, {status: 200}}}
			tr, _ := newTestTransport(srv)
			tr.BodyLimit = limit
			req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", io.NopCloser(strings.NewReader(payload)))
			_, err := tr.RoundTrip(req)
			var e *Error
			if !errors.Is(err, ErrBodyNotReplayable) || !errors.Is(err, io.ErrUnexpectedEOF) || !errors.As(err, &e) {
				t.Fatalf("limit %d: err = %v; want ErrBodyNotReplayable and the cause", limit, err)
			}
			if e.Attempts != 1 || e.Key == "" || len(srv.attempts()) != 1 {
				t.Fatalf("limit %d: %+v, %d attempts", limit, e, len(srv.attempts()))
			}
		}
	})
	t.Run("known ContentLength over the limit is not read ahead", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 0}}}
		tr, _ := newTestTransport(srv)
		tr.BodyLimit = 10
		req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", io.NopCloser(strings.NewReader(payload)))
		req.ContentLength = int64(len(payload))
		_, err := tr.RoundTrip(req)
		if !errors.Is(err, ErrBodyNotReplayable) || srv.attempts()[0].body != payload {
			t.Fatalf("err = %v, body %q", err, srv.attempts()[0].body)
		}
	})
}

func TestAttemptsExhausted(t *testing.T) {
	t.Parallel()
	t.Run("response", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 503}}}
		tr, waits := newTestTransport(srv)
		tr.MaxAttempts = 3
		resp, err := tr.RoundTrip(mustPost(t))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 503 || string(b) != "reply 2" {
			t.Fatalf("got %d %q, want the third reply", resp.StatusCode, b)
		}
		if len(srv.attempts()) != 3 || len(*waits) != 2 {
			t.Fatalf("%d attempts, %d waits; want 3, 2", len(srv.attempts()), len(*waits))
		}
		for i, b := range srv.bodies[:2] {
			if !b.closed.Load() {
				t.Errorf("discarded body %d not closed", i)
			}
		}
		if srv.bodies[2].closed.Load() {
			t.Error("returned body closed")
		}
	})
	t.Run("error", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 0}}}
		tr, _ := newTestTransport(srv)
		tr.MaxAttempts = 3
		_, err := tr.RoundTrip(mustPost(t))
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrAttemptsExhausted) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v", err)
		}
		if e.Attempts != 3 || !uuidV4.MatchString(e.Key) || e.Method != "POST" || e.URL != "http://example.test/x" {
			t.Fatalf("%+v", e)
		}
		if !strings.Contains(err.Error(), e.Key) || !strings.Contains(err.Error(), "3 attempts") {
			t.Errorf("message %q lacks the key or the count", err)
		}
	})
	t.Run("MaxAttempts 1 disables retries", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 503}, {status: 200}}}
		tr, _ := newTestTransport(srv)
		tr.MaxAttempts = 1
		resp, err := tr.RoundTrip(mustPost(t))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || len(srv.attempts()) != 1 {
			t.Fatalf("status %d after %d attempts", resp.StatusCode, len(srv.attempts()))
		}
	})
	t.Run("default is 5", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 0}}}
		tr, _ := newTestTransport(srv)
		_, _ = tr.RoundTrip(mustPost(t))
		if n := len(srv.attempts()); n != DefaultMaxAttempts {
			t.Fatalf("%d attempts, want %d", n, DefaultMaxAttempts)
		}
	})
}

func mustPost(t testing.TB) *http.Request {
	req, err := http.NewRequest(http.MethodPost, "http://example.test/x", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// fakeClock is a manual clock; the wait hook advances it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestTimeBudget(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name         string
		tr           Transport
		ctx          func() (context.Context, context.CancelFunc)
		replies      []reply
		wantAttempts int
		wantStatus   int // 0: error expected
		wantStop     error
	}{
		{
			name:         "Retry-After beyond MaxElapsed returns the response without waiting",
			tr:           Transport{MaxElapsed: 10 * time.Second},
			replies:      []reply{{status: 503, header: retryAfter("11")}, {status: 200}},
			wantAttempts: 1, wantStatus: 503, wantStop: ErrBudgetExhausted,
		},
		{
			name:         "Retry-After within MaxElapsed is waited",
			tr:           Transport{MaxElapsed: 10 * time.Second},
			replies:      []reply{{status: 503, header: retryAfter("9")}, {status: 200}},
			wantAttempts: 2, wantStatus: 200,
		},
		{
			name:         "budget is cumulative",
			tr:           Transport{MaxElapsed: 10 * time.Second},
			replies:      []reply{{status: 429, header: retryAfter("6")}, {status: 429, header: retryAfter("6")}, {status: 200}},
			wantAttempts: 2, wantStatus: 429, wantStop: ErrBudgetExhausted,
		},
		{
			name:         "negative MaxElapsed is unbounded",
			tr:           Transport{MaxElapsed: -1},
			replies:      []reply{{status: 503, header: retryAfter("86400")}, {status: 200}},
			wantAttempts: 2, wantStatus: 200,
		},
		{
			name:         "KeyMaxAge bounds retries",
			tr:           Transport{MaxElapsed: -1, KeyMaxAge: 5 * time.Second},
			replies:      []reply{{status: 503, header: retryAfter("5")}, {status: 200}},
			wantAttempts: 1, wantStatus: 503, wantStop: ErrBudgetExhausted,
		},
		{
			name: "context deadline bounds retries",
			tr:   Transport{MaxElapsed: -1},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Minute)
			},
			replies:      []reply{{status: 503, header: retryAfter("61")}, {status: 200}},
			wantAttempts: 1, wantStatus: 503, wantStop: ErrBudgetExhausted,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			clock := &fakeClock{now: start}
			srv := &fakeServer{replies: c.replies}
			tr := c.tr
			tr.Base = srv
			tr.BaseDelay = 2 * time.Second
			tr.MaxDelay = 2 * time.Second
			tr.now = clock.Now
			tr.wait = func(_ context.Context, d time.Duration) error { clock.Advance(d); return nil }
			var last AttemptInfo
			tr.OnAttempt = func(a AttemptInfo) { last = a }
			ctx := context.Background()
			if c.ctx != nil {
				// Context deadlines are in real time.
				clock.now = time.Now()
				var cancel context.CancelFunc
				ctx, cancel = c.ctx()
				defer cancel()
			}
			req := mustPost(t).WithContext(ctx)
			resp, err := tr.RoundTrip(req)
			if c.wantStatus == 0 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("status %d, want an error", resp.StatusCode)
				}
				if !errors.Is(err, c.wantStop) {
					t.Fatalf("err = %v, want %v", err, c.wantStop)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != c.wantStatus {
					t.Fatalf("status %d, want %d", resp.StatusCode, c.wantStatus)
				}
			}
			if n := len(srv.attempts()); n != c.wantAttempts {
				t.Fatalf("%d attempts, want %d", n, c.wantAttempts)
			}
			if last.GiveUp != c.wantStop {
				t.Fatalf("GiveUp %v, want %v", last.GiveUp, c.wantStop)
			}
		})
	}
}

func TestKeyMaxAgeWithKeyTime(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 200}}}
	tr, _ := newTestTransport(srv)
	tr.KeyMaxAge = time.Hour
	body := &closeRecorder{Reader: strings.NewReader("b")}

	req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", body)
	req.Header.Set(DefaultHeader, "k1")
	req = req.WithContext(WithKeyTime(req.Context(), time.Now().Add(-61*time.Minute)))
	_, err := tr.RoundTrip(req)
	var e *Error
	if !errors.Is(err, ErrKeyExpired) || !errors.As(err, &e) || e.Attempts != 0 || e.Key != "k1" {
		t.Fatalf("err = %v, want ErrKeyExpired before any attempt", err)
	}
	if len(srv.attempts()) != 0 || !body.closed {
		t.Fatalf("%d attempts, body closed %v", len(srv.attempts()), body.closed)
	}

	req, _ = http.NewRequest(http.MethodPost, "http://example.test/x", nil)
	req.Header.Set(DefaultHeader, "k2")
	req = req.WithContext(WithKeyTime(req.Context(), time.Now().Add(-59*time.Minute)))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func TestContextCancelStopsBackoffAtOnce(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 503, header: retryAfter("3600")}, {status: 200}}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &Transport{Base: srv, MaxElapsed: -1, OnAttempt: func(a AttemptInfo) {
		if a.Retry {
			time.AfterFunc(20*time.Millisecond, cancel)
		}
	}}
	start := time.Now()
	_, err := tr.RoundTrip(mustPost(t).WithContext(ctx))
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("RoundTrip took %v after cancel", el)
	}
	var e *Error
	if !errors.Is(err, context.Canceled) || !errors.As(err, &e) || e.Attempts != 1 {
		t.Fatalf("err = %v, want context.Canceled after 1 attempt", err)
	}
	if len(srv.attempts()) != 1 {
		t.Fatalf("%d attempts after cancel", len(srv.attempts()))
	}
	if !srv.bodies[0].closed.Load() {
		t.Error("discarded body not closed")
	}
}

func TestNoRetryAfterContextDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int32
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		n.Add(1)
		cancel() // the context ends while the attempt runs
		return nil, errors.New("connection reset by peer")
	})
	tr, waits := newTestTransport(base)
	_, err := tr.RoundTrip(mustPost(t).WithContext(ctx))
	if !errors.Is(err, context.Canceled) || n.Load() != 1 || len(*waits) != 0 {
		t.Fatalf("err = %v, %d attempts, %d waits; want Canceled, 1, 0", err, n.Load(), len(*waits))
	}
	// A base transport's own timeout (which matches
	// context.DeadlineExceeded, as net/http's do) is retried while the
	// request's context is alive.
	n.Store(0)
	base2 := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		n.Add(1)
		return nil, fmt.Errorf("dial: %w", context.DeadlineExceeded)
	})
	tr2, _ := newTestTransport(base2)
	tr2.MaxAttempts = 2
	if _, err := tr2.RoundTrip(mustPost(t)); !errors.Is(err, ErrAttemptsExhausted) || n.Load() != 2 {
		t.Fatalf("err = %v after %d attempts", err, n.Load())
	}
}

func TestObserver(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 0}, {status: 409, header: retryAfter("1")}, {status: 201}}}
	tr, _ := newTestTransport(srv)
	var got []AttemptInfo
	tr.OnAttempt = func(a AttemptInfo) { got = append(got, a) }
	resp, err := tr.RoundTrip(mustPost(t))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(got) != 3 {
		t.Fatalf("%d observations, want 3", len(got))
	}
	key := got[0].Key
	want := []struct {
		status int
		err    bool
		retry  bool
	}{{0, true, true}, {409, false, true}, {201, false, false}}
	for i, w := range want {
		a := got[i]
		if a.N != i+1 || a.Key != key || a.Status != w.status || (a.Err != nil) != w.err || a.Retry != w.retry || a.GiveUp != nil {
			t.Errorf("attempt %d: %+v", i+1, a)
		}
		if a.Request.Header.Get(DefaultHeader) != key {
			t.Errorf("attempt %d: request without the key", i+1)
		}
	}
	if got[1].Delay != time.Second || got[2].Delay != 0 {
		t.Errorf("delays %v, %v; want 1s (Retry-After), 0", got[1].Delay, got[2].Delay)
	}
}

func TestBackoffFullJitter(t *testing.T) {
	t.Parallel()
	tr := &Transport{BaseDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	for _, c := range []struct {
		n    int
		ceil time.Duration
	}{{1, 10 * time.Millisecond}, {2, 20 * time.Millisecond}, {4, 80 * time.Millisecond}, {5, 100 * time.Millisecond}, {64, 100 * time.Millisecond}, {1000, 100 * time.Millisecond}} {
		lo, hi := c.ceil, time.Duration(0)
		for range 2000 {
			d := tr.backoff(c.n)
			if d < 0 || d > c.ceil {
				t.Fatalf("backoff(%d) = %v outside [0, %v]", c.n, d, c.ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range.
		if lo > c.ceil/10 || hi < c.ceil*9/10 {
			t.Errorf("backoff(%d) ranged over [%v, %v], want most of [0, %v]", c.n, lo, hi, c.ceil)
		}
	}
}

func TestCertificateErrorNotRetried(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	base := &http.Transport{} // does not trust the test certificate
	defer base.CloseIdleConnections()
	tr, waits := newTestTransport(base)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	_, err := tr.RoundTrip(req)
	if err == nil || len(*waits) != 0 {
		t.Fatalf("err = %v, %d waits; want a certificate error and no retry", err, len(*waits))
	}
	var e *Error
	if !errors.As(err, &e) || e.Attempts != 1 || e.Stop != nil {
		t.Fatalf("err = %#v", err)
	}
}

// TestRealConnectionErrors sends over loopback to a server that drops the
// connection without answering the first two times.
func TestRealConnectionErrors(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	var keys sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		keys.Store(r.Header.Get(DefaultHeader)+"|"+string(b), true)
		if n.Add(1) <= 2 {
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
			return
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: &Transport{Base: base, BaseDelay: time.Millisecond}}
	resp, err := client.Post(srv.URL, "text/plain", bytes.NewReader([]byte("hello")))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" || n.Load() != 3 {
		t.Fatalf("body %q after %d server hits", b, n.Load())
	}
	count := 0
	keys.Range(func(k, _ any) bool { count++; return true })
	if count != 1 {
		t.Fatalf("server saw %d distinct key|body pairs, want 1", count)
	}
}

func TestConnectionRefusedRetriedThenGivesUp(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	tr, waits := newTestTransport(base)
	tr.MaxAttempts = 3
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("b"))
	_, err = tr.RoundTrip(req)
	var oe *net.OpError
	if !errors.Is(err, ErrAttemptsExhausted) || !errors.As(err, &oe) || len(*waits) != 2 {
		t.Fatalf("err = %v, %d waits", err, len(*waits))
	}

	// Through http.Client, the *Error is inside a *url.Error.
	_, err = (&http.Client{Transport: tr}).Post("http://"+addr+"/", "text/plain", strings.NewReader("b"))
	var e *Error
	if !errors.Is(err, ErrAttemptsExhausted) || !errors.As(err, &e) || !uuidV4.MatchString(e.Key) {
		t.Fatalf("via http.Client: err = %v", err)
	}
}

func TestReplayed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		h    http.Header
		want bool
	}{
		{http.Header{"Idempotency-Replayed": {"true"}}, true},
		{http.Header{"Idempotent-Replayed": {"true"}}, true},
		{http.Header{"Idempotency-Replayed": {"TRUE"}}, true},
		{http.Header{"Idempotency-Replayed": {"false"}}, false},
		{http.Header{"Idempotency-Replayed": {""}}, false},
		{http.Header{"Idempotency-Replay": {"omitted"}}, false},
		{http.Header{}, false},
	}
	for _, c := range cases {
		if got := Replayed(&http.Response{Header: c.h}); got != c.want {
			t.Errorf("Replayed(%v) = %v, want %v", c.h, got, c.want)
		}
	}
	if Replayed(nil) {
		t.Error("Replayed(nil) = true")
	}
}

func TestNewKey(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		k := NewKey()
		if !uuidV4.MatchString(k) {
			t.Fatalf("NewKey() = %q, not a UUIDv4", k)
		}
		if seen[k] {
			t.Fatalf("NewKey repeated %q", k)
		}
		seen[k] = true
	}
}

func TestErrorMessage(t *testing.T) {
	t.Parallel()
	e := &Error{Method: "POST", URL: "http://h/x", Key: "k", Attempts: 2, Stop: ErrAttemptsExhausted, Err: io.ErrUnexpectedEOF}
	want := `idemclient: POST http://h/x (key "k"): 2 attempts, stopped: attempts exhausted: unexpected EOF`
	if e.Error() != want {
		t.Fatalf("got  %q\nwant %q", e.Error(), want)
	}
	if !errors.Is(e, ErrAttemptsExhausted) || !errors.Is(e, io.ErrUnexpectedEOF) {
		t.Fatal("Unwrap misses Stop or Err")
	}
}

func TestCloseIdleConnectionsReachesBase(t *testing.T) {
	t.Parallel()
	var closed atomic.Bool
	base := &idleCloser{fn: func() { closed.Store(true) }}
	(&http.Client{Transport: &Transport{Base: base}}).CloseIdleConnections()
	if !closed.Load() {
		t.Fatal("CloseIdleConnections did not reach the base transport")
	}
	(&Transport{Base: roundTripFunc(nil)}).CloseIdleConnections() // no such method: no panic
}

type idleCloser struct {
	http.RoundTripper
	fn func()
}

func (c *idleCloser) CloseIdleConnections() { c.fn() }

// TestClientTimeoutBoundsRetries: http.Client.Timeout reaches the Transport
// as the request context's deadline, so a Retry-After beyond it is not
// waited for.
func TestClientTimeoutBoundsRetries(t *testing.T) {
	t.Parallel()
	srv := &fakeServer{replies: []reply{{status: 503, header: retryAfter("30")}, {status: 200}}}
	tr := &Transport{Base: srv}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	start := time.Now()
	resp, err := client.Post("http://example.test/x", "text/plain", strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || len(srv.attempts()) != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("status %d after %d attempts in %v; want the 503 at once", resp.StatusCode, len(srv.attempts()), time.Since(start))
	}
}

func TestUnsendableKeysFailBeforeSending(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		callerKey string
		keyFunc   func(*http.Request) (string, error)
	}{
		{name: "caller key with newline", callerKey: "order\n42"},
		{name: "caller key with DEL", callerKey: "order\x7f42"},
		{name: "KeyFunc empty", keyFunc: func(*http.Request) (string, error) { return "", nil }},
		{name: "KeyFunc NUL", keyFunc: func(*http.Request) (string, error) { return "a\x00b", nil }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := &fakeServer{replies: []reply{{status: 200}}}
			tr, _ := newTestTransport(srv)
			tr.KeyFunc = c.keyFunc
			req := mustPost(t)
			if c.callerKey != "" {
				req.Header[DefaultHeader] = []string{c.callerKey}
			}
			_, err := tr.RoundTrip(req)
			var e *Error
			if !errors.Is(err, idem.ErrInvalidKey) || !errors.As(err, &e) || e.Attempts != 0 || len(srv.attempts()) != 0 {
				t.Fatalf("err = %v, %d attempts; want idem.ErrInvalidKey and nothing sent", err, len(srv.attempts()))
			}
		})
	}
	// Keys net/http can send are the server's business, even odd ones.
	srv := &fakeServer{replies: []reply{{status: 400}}}
	tr, _ := newTestTransport(srv)
	req := mustPost(t)
	req.Header.Set(DefaultHeader, "\"order 42\"\twith tab")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := srv.attempts()[0].key; len(got) != 1 || got[0] != "\"order 42\"\twith tab" {
		t.Fatalf("sent %q", got)
	}
}

// errReader fails every Read.
type errReader struct{ closed bool }

func (r *errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }
func (r *errReader) Close() error             { r.closed = true; return nil }

func TestBodyEdgeCases(t *testing.T) {
	t.Parallel()
	t.Run("unreadable body fails before sending", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 200}}}
		tr, _ := newTestTransport(srv)
		body := &errReader{}
		req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", body)
		_, err := tr.RoundTrip(req)
		var e *Error
		if !errors.As(err, &e) || e.Attempts != 0 || e.Stop != nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("err = %v", err)
		}
		if len(srv.attempts()) != 0 || !body.closed {
			t.Fatalf("%d attempts, body closed %v", len(srv.attempts()), body.closed)
		}
	})
	t.Run("failing GetBody stops retries", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 0}, {status: 200}}}
		tr, _ := newTestTransport(srv)
		req := mustPost(t)
		boom := errors.New("cannot rewind")
		req.GetBody = func() (io.ReadCloser, error) { return nil, boom }
		_, err := tr.RoundTrip(req)
		var e *Error
		if !errors.Is(err, boom) || !errors.As(err, &e) || e.Attempts != 1 || len(srv.attempts()) != 1 {
			t.Fatalf("err = %v, %d attempts", err, len(srv.attempts()))
		}
	})
	t.Run("empty body without GetBody", func(t *testing.T) {
		t.Parallel()
		srv := &fakeServer{replies: []reply{{status: 503}, {status: 200}}}
		tr, _ := newTestTransport(srv)
		req, _ := http.NewRequest(http.MethodPost, "http://example.test/x", io.NopCloser(strings.NewReader("")))
		req.Header = nil // a hand-built request may have no header map
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := srv.attempts()
		if len(got) != 2 || got[0].body != "" || got[1].body != "" || len(got[1].key) != 1 {
			t.Fatalf("attempts %+v", got)
		}
	})
}

// TestBaseTimeoutRetried: an attempt that hangs past the base transport's
// ResponseHeaderTimeout is retried with the same key.
func TestBaseTimeoutRetried(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var n atomic.Int32
	var keys sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys.Store(r.Header.Get(DefaultHeader), true)
		if n.Add(1) == 1 {
			<-release // the first attempt hangs
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	defer close(release)
	base := &http.Transport{ResponseHeaderTimeout: 300 * time.Millisecond}
	defer base.CloseIdleConnections()
	var errs []error
	tr := &Transport{Base: base, BaseDelay: time.Millisecond, OnAttempt: func(a AttemptInfo) {
		if a.Err != nil {
			errs = append(errs, a.Err)
		}
	}}
	resp, err := tr.RoundTrip(mustPostTo(t, srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	count := 0
	keys.Range(func(any, any) bool { count++; return true })
	// Normally 2 attempts; a starved machine may time out a later one too.
	if resp.StatusCode != 201 || n.Load() < 2 || count != 1 || len(errs) != int(n.Load())-1 {
		t.Fatalf("status %d after %d server hits with %d keys; attempt errors %v", resp.StatusCode, n.Load(), count, errs)
	}
	for _, err := range errs {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("attempt error %v is not a timeout", err)
		}
	}
}

func mustPostTo(t testing.TB, url string) *http.Request {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("b"))
	if err != nil {
		t.Fatal(err)
	}
	return req
}
