package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestIsLoopback(t *testing.T) {
	for s, want := range map[string]bool{
		"127.0.0.1:6379": true, "[::1]:6379": true, "localhost:1": true, "127.8.9.1:2": true,
		"10.0.0.1:6379": false, "192.168.1.2:1": false, "example.com:1": false, "nonsense": false,
	} {
		if got := isLoopback(s); got != want {
			t.Errorf("isLoopback(%q) = %v", s, got)
		}
	}
}

func TestMedian(t *testing.T) {
	m := median([]result{{rps: 3}, {rps: 1}, {rps: 5}, {rps: 2}, {rps: 4}})
	if m.rps != 3 {
		t.Fatalf("median = %v", m.rps)
	}
}

// TestLoad drives the in-process upstream briefly: unique keys and replays
// both succeed without errors.
func TestLoad(t *testing.T) {
	srv := httptest.NewServer(upstreamHandler())
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer c.CloseIdleConnections()
	r := load(c, srv.URL, "t", nil, 4, 100*time.Millisecond)
	if r.rps <= 0 || r.errors != 0 || r.p50 <= 0 || r.p99 < r.p50 {
		t.Fatalf("unique: %+v", r)
	}
	r = load(c, srv.URL, "t", []string{"a", "b"}, 4, 100*time.Millisecond)
	if r.rps <= 0 || r.errors != 0 {
		t.Fatalf("replays: %+v", r)
	}
	if err := run([]string{"-runs", "0"}, nil); err == nil {
		t.Fatal("-runs 0 accepted")
	}
}
