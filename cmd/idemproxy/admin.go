package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/cmd/idemproxy/internal/proxyconfig"
	"github.com/idemkit/idem/idemhttp"
)

// newAdmin returns the admin handler:
//
//	GET /healthz   200 while the process serves
//	GET /readyz    200 when the store answers a probe within 2 s, else 503
//	GET /metrics   Prometheus metrics
//	GET /keys      one record (bearer token; only with -admin-token)
func newAdmin(store idem.Store, o *options, m *metrics, px *proxy) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := probe(ctx, store); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("store unavailable: " + err.Error() + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	if o.adminToken != "" {
		mux.Handle("GET /keys", requireToken(o.adminToken, &keysHandler{store: store, routes: px.routes, scopes: px.scopes}))
	}
	return mux
}

// probe checks that the store answers: a read of a key that never exists
// where the store can inspect, else a begin and release of a random key.
func probe(ctx context.Context, s idem.Store) error {
	if in, ok := s.(idem.Inspector); ok {
		_, _, err := in.Get(ctx, idem.RecordKey("idemproxy-readyz", "probe"))
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	key := idem.RecordKey("idemproxy-readyz", hex.EncodeToString(b[:]))
	got, err := s.Begin(ctx, key, []byte("probe"), time.Second)
	if err != nil {
		return err
	}
	if got.Outcome == idem.Acquired {
		return s.Release(ctx, key, got.Fence)
	}
	return nil
}

// requireToken lets through requests whose Authorization header is
// "Bearer TOKEN" (the scheme in any case, RFC 9110 §11.1), compared in
// constant time.
func requireToken(token string, h http.Handler) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got := []byte(strings.TrimLeft(cred, " "))
		if subtle.ConstantTimeCompare(got, want) != 1 || !strings.EqualFold(scheme, "Bearer") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="idemproxy-admin"`)
			writeProblem(w, http.StatusUnauthorized, "admin-unauthorized", "Unauthorized", "A valid admin bearer token is required.")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// keysHandler answers GET /keys?key=K&scope=S[&body=1], or
// GET /keys?key=K&host=HOST&route=NAME&header=Name:value…[&body=1] to
// derive the scope from the Host and credential header values as the proxy
// does for that route.
type keysHandler struct {
	store  idem.Store
	routes []proxyconfig.Route
	scopes []*idemhttp.IdentityScope // index as routes
}

// keyInfo is the JSON answer of /keys.
type keyInfo struct {
	Key              string              `json:"key"`
	Scope            string              `json:"scope"`
	State            string              `json:"state"`
	Fence            uint64              `json:"fence"`
	AgeSeconds       float64             `json:"age_seconds"`
	RemainingSeconds float64             `json:"remaining_seconds"`
	StoredStatus     int                 `json:"stored_status,omitempty"`
	StoredHeaders    map[string][]string `json:"stored_headers,omitempty"`
	BodyBytes        *int                `json:"body_bytes,omitempty"`
	BodyOmitted      bool                `json:"body_omitted,omitempty"`
	Body             *string             `json:"body,omitempty"`
	BodyBase64       *string             `json:"body_base64,omitempty"`
}

func (k *keysHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in, ok := k.store.(idem.Inspector)
	if !ok {
		writeProblem(w, http.StatusNotImplemented, "inspection-unsupported", "Not Implemented", "This store cannot be inspected.")
		return
	}
	q := r.URL.Query()
	key := q.Get("key")
	if err := idem.ValidateKey(key); err != nil {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad Request", "key: "+err.Error())
		return
	}
	scope, err := k.scope(q)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "admin-bad-request", "Bad Request", err.Error())
		return
	}
	rec, found, err := in.Get(r.Context(), idem.RecordKey(scope, key))
	if err != nil {
		writeProblem(w, http.StatusServiceUnavailable, idemhttp.CodeStoreUnavailable, "Service Unavailable", err.Error())
		return
	}
	if !found {
		writeProblem(w, http.StatusNotFound, "key-not-found", "Not Found", "No live record for this scope and key.")
		return
	}
	info := keyInfo{
		Key: key, Scope: hex.EncodeToString([]byte(scope)), State: rec.State.String(), Fence: rec.Fence,
		AgeSeconds: rec.Age.Seconds(), RemainingSeconds: rec.Remaining.Seconds(),
	}
	if rec.State == idem.StateCompleted {
		var resp idemhttp.Response
		if err := resp.UnmarshalBinary(rec.Result); err == nil {
			info.StoredStatus = resp.Status
			info.StoredHeaders = resp.Header
			n := len(resp.Body)
			info.BodyBytes = &n
			info.BodyOmitted = resp.Omitted
			if q.Get("body") == "1" {
				if utf8.Valid(resp.Body) {
					s := string(resp.Body)
					info.Body = &s
				} else {
					s := base64.StdEncoding.EncodeToString(resp.Body)
					info.BodyBase64 = &s
				}
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(info)
}

func (k *keysHandler) scope(q map[string][]string) (string, error) {
	if s, ok := q["scope"]; ok {
		if len(s) != 1 || q["header"] != nil {
			return "", errors.New("give scope once, or header values, not both")
		}
		b, err := hex.DecodeString(s[0])
		if err != nil {
			return "", errors.New("scope: want the hex scope of a log line")
		}
		return string(b), nil
	}
	name := "default"
	if v := q["route"]; len(v) > 0 {
		name = v[0]
	}
	i := -1
	for j := range k.routes {
		if k.routes[j].Name == name {
			i = j
		}
	}
	if i < 0 {
		return "", errors.New("route: no route named " + name)
	}
	host := q["host"]
	if len(host) != 1 || host[0] == "" {
		return "", errors.New("host: give the Host the requests were sent to once (the scope covers it), or give scope")
	}
	r := &http.Request{Host: host[0], Header: http.Header{}, URL: &url.URL{}}
	for _, hv := range q["header"] {
		n, v, ok := strings.Cut(hv, ":")
		if !ok {
			return "", errors.New("header: want Name:value, got " + hv)
		}
		r.Header.Add(strings.TrimSpace(n), strings.TrimLeft(v, " "))
	}
	s, err := k.scopes[i].Scope(r)
	if err != nil {
		return "", errors.New("header: " + err.Error())
	}
	return s, nil
}

// readTokenFile reads a token or secret from a file, trimming surrounding
// white space (a trailing newline). An empty result is an error.
func readTokenFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("the file is empty")
	}
	return tok, nil
}
