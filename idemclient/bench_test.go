package idemclient

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// cannedTransport answers every request with the same response without
// touching the network, so that benchmarks measure only what wraps it.
type cannedTransport struct{ resp *http.Response }

func (c *cannedTransport) RoundTrip(*http.Request) (*http.Response, error) { return c.resp, nil }

func newCanned() *cannedTransport {
	return &cannedTransport{resp: &http.Response{
		StatusCode: 201,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       http.NoBody,
	}}
}

// benchRequest is a typical API call: a POST with a small body (GetBody set
// by http.NewRequest) and a few headers.
func benchRequest(b *testing.B, method, url string) *http.Request {
	req, err := http.NewRequest(method, url, strings.NewReader(`{"amount":100,"currency":"eur"}`))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk_test_123")
	req.Header.Set("User-Agent", "bench")
	return req
}

func runRoundTrips(b *testing.B, rt http.RoundTripper, req *http.Request) {
	b.ReportAllocs()
	c0 := cpuTime()
	for b.Loop() {
		resp, err := rt.RoundTrip(req)
		if err != nil || resp.StatusCode != 201 {
			b.Fatalf("%v %v", resp, err)
		}
	}
	reportCPU(b, c0)
}

// reportCPU reports the process CPU time per operation since c0, garbage
// collection included: on a loaded machine ns/op (wall time) also counts
// the time spent waiting for a core, cpu-ns/op does not.
func reportCPU(b *testing.B, c0 time.Duration) {
	if d := cpuTime() - c0; d > 0 {
		b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkOverhead compares the bare canned transport with the Transport
// wrapping it, for a request that succeeds at the first attempt.
func BenchmarkOverhead(b *testing.B) {
	b.Run("bare", func(b *testing.B) {
		runRoundTrips(b, newCanned(), benchRequest(b, http.MethodPost, "http://api.test/charges"))
	})
	b.Run("post-new-key", func(b *testing.B) {
		runRoundTrips(b, &Transport{Base: newCanned()}, benchRequest(b, http.MethodPost, "http://api.test/charges"))
	})
	b.Run("post-caller-key", func(b *testing.B) {
		req := benchRequest(b, http.MethodPost, "http://api.test/charges")
		req.Header.Set(DefaultHeader, "0b6c4a9e-1f7a-4c2e-9d3b-5e8f6a7b8c9d")
		runRoundTrips(b, &Transport{Base: newCanned()}, req)
	})
	b.Run("get", func(b *testing.B) {
		runRoundTrips(b, &Transport{Base: newCanned()}, benchRequest(b, http.MethodGet, "http://api.test/charges"))
	})
	b.Run("post-new-key-observed", func(b *testing.B) {
		var n int
		tr := &Transport{Base: newCanned(), OnAttempt: func(a AttemptInfo) { n += a.N }}
		runRoundTrips(b, tr, benchRequest(b, http.MethodPost, "http://api.test/charges"))
	})
}

func BenchmarkNewKey(b *testing.B) {
	b.ReportAllocs()
	c0 := cpuTime()
	for b.Loop() {
		_ = NewKey()
	}
	reportCPU(b, c0)
}

// BenchmarkLoopback puts the overhead in context: a full POST to a server on
// loopback, with and without the Transport.
func BenchmarkLoopback(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(201)
	}))
	defer srv.Close()
	base := srv.Client().Transport
	run := func(b *testing.B, rt http.RoundTripper) {
		client := &http.Client{Transport: rt}
		b.ReportAllocs()
		c0 := cpuTime()
		defer reportCPU(b, c0)
		for b.Loop() {
			resp, err := client.Post(srv.URL+"/charges", "application/json", strings.NewReader(`{"amount":100,"currency":"eur"}`))
			if err != nil || resp.StatusCode != 201 {
				b.Fatalf("%v %v", resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	b.Run("bare", func(b *testing.B) { run(b, base) })
	b.Run("transport", func(b *testing.B) { run(b, &Transport{Base: base}) })
}

var (
	sinkTime    time.Time
	sinkRequest *keyedRequest
	sinkHeader  http.Header
)

// BenchmarkCostParts measures, one by one, the steps that make up the
// overhead of adding a key, to explain the post-new-key figure.
func BenchmarkCostParts(b *testing.B) {
	req := benchRequest(b, http.MethodPost, "http://api.test/charges")
	b.Run("time.Now", func(b *testing.B) {
		c0 := cpuTime()
		for b.Loop() {
			sinkTime = time.Now()
		}
		reportCPU(b, c0)
	})
	b.Run("uuid-from-crypto-rand", func(b *testing.B) {
		var r [16]byte
		var s [36]byte
		c0 := cpuTime()
		for b.Loop() {
			newKey(&r, &s)
		}
		reportCPU(b, c0)
	})
	b.Run("request-copy", func(b *testing.B) {
		b.ReportAllocs()
		c0 := cpuTime()
		for b.Loop() {
			sinkRequest = &keyedRequest{req: *req}
		}
		reportCPU(b, c0)
	})
	b.Run("header-clone", func(b *testing.B) {
		b.ReportAllocs()
		c0 := cpuTime()
		for b.Loop() {
			h := maps.Clone(req.Header)
			h[DefaultHeader] = nil
			sinkHeader = h
		}
		reportCPU(b, c0)
	})
}
