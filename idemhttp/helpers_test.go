package idemhttp_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// rawResp is a response read off the wire: its exact bytes and its parse.
type rawResp struct {
	raw    []byte // everything the server sent
	status int
	header http.Header
	body   []byte
}

// problemCode extracts the "code" member of a problem+json body.
func (r *rawResp) problemCode() string {
	const k = `"code":"`
	i := bytes.Index(r.body, []byte(k))
	if i < 0 {
		return ""
	}
	rest := r.body[i+len(k):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// replayed reports whether both replay headers are set to true.
func (r *rawResp) replayed() bool {
	return r.header.Get("Idempotency-Replayed") == "true" && r.header.Get("Idempotent-Replayed") == "true"
}

// wire returns the raw response without the lines that legitimately differ
// between a first answer and its replay (Date, Set-Cookie, the replay
// markers): what must be byte-identical between them.
func (r *rawResp) wire() string {
	var out []string
	for _, line := range strings.SplitAfter(string(r.raw), "\r\n") {
		l := strings.ToLower(line)
		if strings.HasPrefix(l, "date:") || strings.HasPrefix(l, "set-cookie:") || strings.HasPrefix(l, "idempotency-replayed:") || strings.HasPrefix(l, "idempotent-replayed:") {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "")
}

// req is one raw HTTP/1.1 request.
type req struct {
	method string
	path   string
	hdr    []string // "Name: value" lines, in order
	body   string
}

func (q req) bytes() []byte {
	var b bytes.Buffer
	m := q.method
	if m == "" {
		m = "POST"
	}
	p := q.path
	if p == "" {
		p = "/pay"
	}
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n", m, p)
	for _, h := range q.hdr {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(q.body), q.body)
	return b.Bytes()
}

// send writes q on a fresh connection to srv and reads the whole answer.
func send(t testing.TB, srv *httptest.Server, q req) *rawResp {
	t.Helper()
	r, err := sendErr(srv, q)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// goSend sends q from another goroutine; recv collects the answer.
func goSend(t testing.TB, srv *httptest.Server, q req) <-chan *rawResp {
	ch := make(chan *rawResp, 1)
	go func() {
		r, err := sendErr(srv, q)
		if err != nil {
			t.Error(err)
		}
		ch <- r // nil on error
	}()
	return ch
}

// recv waits for an answer of goSend.
func recv(t testing.TB, ch <-chan *rawResp) *rawResp {
	t.Helper()
	select {
	case r := <-ch:
		if r == nil {
			t.FailNow()
		}
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("no answer")
		return nil
	}
}

func sendErr(srv *httptest.Server, q req) (*rawResp, error) {
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(q.bytes()); err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(bytes.NewReader(raw))
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != 101 {
		resp, err = http.ReadResponse(br, nil) // skip informational answers
	}
	if err != nil {
		return nil, fmt.Errorf("parse response: %v\n%s", err, raw)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &rawResp{raw: raw, status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// app is the handler under test: it counts executions and answers per the
// request's X-Status header (default 201) with a JSON body describing the
// call, a Set-Cookie (never replayed) and a two-valued X-Multi header.
type app struct {
	calls atomic.Int64
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.calls.Add(1)
	body, _ := io.ReadAll(r.Body)
	fence, _ := idem.FenceFromContext(r.Context())
	status := http.StatusCreated
	if s := r.Header.Get("X-Status"); s != "" {
		fmt.Sscan(s, &status)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Set-Cookie", "session=secret")
	h.Add("X-Multi", "one")
	h.Add("X-Multi", "two")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"call":%d,"fence":%d,"body":%q}`, n, fence, body)
}

// failingStore fails every call with idem.ErrStoreUnavailable.
type failingStore struct{}

func (failingStore) Begin(context.Context, string, []byte, time.Duration) (idem.Begun, error) {
	return idem.Begun{}, fmt.Errorf("dial: connection refused: %w", idem.ErrStoreUnavailable)
}
func (failingStore) Complete(context.Context, string, uint64, []byte, time.Duration) error {
	return idem.ErrStoreUnavailable
}
func (failingStore) Release(context.Context, string, uint64) error { return idem.ErrStoreUnavailable }

// outcomes records OnOutcome calls.
type outcomes struct {
	mu   sync.Mutex
	list []idemhttp.Outcome
	ch   chan idemhttp.Outcome
}

func newOutcomes() *outcomes { return &outcomes{ch: make(chan idemhttp.Outcome, 1024)} }

func (o *outcomes) record(_ *http.Request, oc idemhttp.Outcome) {
	o.mu.Lock()
	o.list = append(o.list, oc)
	o.mu.Unlock()
	o.ch <- oc
}

// next waits for the next outcome.
func (o *outcomes) next(t testing.TB) idemhttp.Outcome {
	t.Helper()
	select {
	case oc := <-o.ch:
		return oc
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome reported")
		return idemhttp.Outcome{}
	}
}

// newKeeper returns a keeper over a fresh memstore.
func newKeeper(lease time.Duration) (*idem.Keeper, *memstore.Store) {
	s := memstore.New(memstore.Options{})
	return &idem.Keeper{Store: s, Lease: lease}, s
}

// noExtend hides every optional interface of the store it wraps, so leases
// are never renewed.
type noExtend struct{ idem.Store }

func newMem() *memstore.Store { return memstore.New(memstore.Options{}) }

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// testSecret is the scope secret of the tests' middleware.
var testSecret = []byte("idemhttp-test-scope-secret-0123456789")

// emptyScope puts every request in the scope "", for tests that look at
// the store's records (idem.RecordKey("", key)) rather than at scoping.
func emptyScope(*http.Request) (string, error) { return "", nil }

// dfp and cfp are DefaultFingerprint and CanonicalFingerprint without
// their (always nil) error.
func dfp(r *http.Request, body []byte) []byte {
	fp, _ := idemhttp.DefaultFingerprint(r, body)
	return fp
}

func cfp(r *http.Request, body []byte) []byte {
	fp, _ := idemhttp.CanonicalFingerprint(r, body)
	return fp
}
