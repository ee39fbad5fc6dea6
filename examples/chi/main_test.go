package main

import (
	"bytes"
	"context"
	"go.uber.org/goleak"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/memstore"
)

func post(t *testing.T, url, key, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/charges", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRouter(t *testing.T) {
	var logs bytes.Buffer
	srv := httptest.NewServer(newRouter(memstore.New(memstore.Options{}), log.New(&logs, "", 0)))
	defer srv.Close()
	defer http.DefaultClient.CloseIdleConnections()

	r1, b1 := post(t, srv.URL, "order-1", `{"amount":100,"currency":"EUR"}`)
	r2, b2 := post(t, srv.URL, "order-1", `{"currency":"EUR", "amount":100}`) // same JSON, other order
	if r1.StatusCode != 201 || r2.StatusCode != 201 || b1 != b2 || !strings.Contains(b1, `"id":"ch_1"`) {
		t.Fatalf("first %d %s; retry %d %s", r1.StatusCode, b1, r2.StatusCode, b2)
	}
	if r1.Header.Get("Idempotency-Replayed") != "" || r2.Header.Get("Idempotency-Replayed") != "true" {
		t.Errorf("replay headers: %v / %v", r1.Header, r2.Header)
	}
	if r, _ := post(t, srv.URL, "order-1", `{"amount":999}`); r.StatusCode != 422 {
		t.Errorf("reused key: %d", r.StatusCode)
	}
	if r, _ := post(t, srv.URL, "", `{}`); r.StatusCode != 400 {
		t.Errorf("missing key: %d", r.StatusCode)
	}
	resp, err := http.Get(srv.URL + "/charges/ch_1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "ch_1") {
		t.Errorf("GET: %d %s", resp.StatusCode, b)
	}
}

func TestRunServesAndShutsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-addr", addr}, io.Discard) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/charges/x")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if err := run(context.Background(), []string{"-bogus"}, io.Discard); err == nil {
		t.Error("bad flag accepted")
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
