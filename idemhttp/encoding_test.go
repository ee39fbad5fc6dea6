package idemhttp_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/idemhttp"
	"github.com/idemkit/idem/memstore"
)

// TestEncodingMixedFleet runs a rolling upgrade's two kinds of instance on
// one store: one writes encoding version 1 (LegacyEncoding), one version 2.
// Each replays what the other stored byte for byte (Date and the replay
// markers aside), Content-Length included, and the stored forms are the
// versions asked for.
func TestEncodingMixedFleet(t *testing.T) {
	t.Parallel()
	st := memstore.New(memstore.Options{})
	calls := 0
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		body := `{"id":"ch_1","status":"succeeded"}`
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("X-Custom", "v")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(body))
	})
	serve := func(legacy bool) *httptest.Server {
		mw := &idemhttp.Middleware{Keeper: &idem.Keeper{Store: st}, LegacyEncoding: legacy,
			Scope: func(*http.Request) (string, error) { return "tenant", nil }}
		srv := httptest.NewServer(mw.Handler(app))
		t.Cleanup(srv.Close)
		return srv
	}
	v1, v2 := serve(true), serve(false)
	for _, c := range []struct {
		key         string
		first, then *httptest.Server
		version     byte
	}{{"k-old-first", v1, v2, 1}, {"k-new-first", v2, v1, 2}} {
		q := req{hdr: []string{"Idempotency-Key: " + c.key}, body: `{"amount":1}`}
		first := send(t, c.first, q)
		again := send(t, c.then, q)
		if first.status != 201 || again.status != 201 || !again.replayed() {
			t.Fatalf("%s: first %d, again %d (replayed %v)", c.key, first.status, again.status, again.replayed())
		}
		if first.wire() != again.wire() {
			t.Errorf("%s: replay differs:\n%q\n%q", c.key, first.wire(), again.wire())
		}
		if again.header.Get("Content-Length") != strconv.Itoa(len(first.body)) {
			t.Errorf("%s: replay Content-Length %q", c.key, again.header.Get("Content-Length"))
		}
		rec, ok, err := st.Get(context.Background(), idem.RecordKey("tenant", c.key))
		if err != nil || !ok || len(rec.Result) == 0 || rec.Result[0] != c.version {
			t.Fatalf("%s: stored %v %v %x; want version %d", c.key, ok, err, rec.Result, c.version)
		}
	}
	if calls != 2 {
		t.Errorf("handler ran %d times, want 2", calls)
	}
}
