package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
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

// TestSideBySide checks the scenarios of two binaries: labelled names, one
// group per store and kind, the order alternating from run to run, and the
// comparison table.
func TestSideBySide(t *testing.T) {
	one := idemScenarios("file", []proxyBinary{{"after", "x"}}, []server{{"http://a", 1, ""}}, 1)
	if len(one) != 2 || one[0].name != "idemproxy file, unique keys" || one[1].name != "idemproxy file, replays" || one[0].group != 0 {
		t.Fatalf("one binary: %+v %+v", one[0], one[1])
	}
	bins := []proxyBinary{{"before", "b"}, {"after", "a"}}
	two := idemScenarios("memory", bins, []server{{"http://b", 2, ""}, {"http://a", 3, "http://a-admin/metrics"}}, 1)
	names := []string{}
	for _, s := range two {
		names = append(names, s.name)
	}
	want := []string{"idemproxy memory, unique keys (before)", "idemproxy memory, unique keys (after)",
		"idemproxy memory, replays (before)", "idemproxy memory, replays (after)"}
	if !slices.Equal(names, want) || two[0].target != "http://b" || two[1].target != "http://a" || two[1].pid != 3 || !two[2].replay ||
		two[0].group != 1 || two[1].group != 1 || two[2].group != 2 || two[3].group != 2 {
		t.Fatalf("two binaries: %q %+v", names, two)
	}
	if two[1].mallocs != "http://a-admin/metrics" || two[3].mallocs != "http://a-admin/metrics" {
		t.Fatalf("allocation counter URL not carried: %+v", two[1])
	}
	all := append([]*scenario{{name: "direct"}, {name: "plain"}}, two...)
	if got := runOrder(all, 0); !slices.Equal(got, all) {
		t.Fatalf("run 0 reordered")
	}
	got := runOrder(all, 1)
	if want := []*scenario{all[0], all[1], all[3], all[2], all[5], all[4]}; !slices.Equal(got, want) {
		t.Fatalf("run 1 order wrong")
	}

	all[0].runs = []result{{rps: 400}, {rps: 400}}
	all[1].runs = []result{{rps: 100}, {rps: 100}}
	for i, s := range all[2:] {
		f := float64(10 * (i + 1))
		s.runs = []result{{rps: f, p50: time.Millisecond, n: 100, cpu: time.Duration(f) * time.Millisecond, cpuOK: true, allocs: 100 * f, allocsOK: true},
			{rps: f, p50: time.Millisecond}}
	}
	var sb strings.Builder
	report(&sb, config{runs: 2, baseBin: "b", baseLabel: "before", label: "after"}, all)
	out := sb.String()
	for _, w := range []string{
		"| idemproxy memory, unique keys | 10 | 20 | 200% | 200% | 10% (10%) | 20% (20%) | 1ms → 1ms | 0s → 0s | 100 µs → 200 µs |",
		"CPU time per request of the plain ReverseProxy process: –.",
		"| idemproxy memory, replays | 30 | 40 | 133% | 133% | 30% (30%) | 40% (40%) |",
		"| idemproxy memory, unique keys (after) | 20 | 20, 20 | 20% | 20% | 1ms | 0s | 200 µs | 20 | 0 |",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q:\n%s", w, out)
		}
	}
	if err := run([]string{"-base-bin", "x", "-base-label", "after"}, nil); err == nil {
		t.Fatal("equal labels accepted")
	}
}

// TestMallocs reads the allocation counter from a Prometheus page and from
// the benchmark's own servers.
func TestMallocs(t *testing.T) {
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP go_memstats_mallocs_total x\n# TYPE go_memstats_mallocs_total counter\ngo_memstats_mallocs_total 1.2345e+06\n")
	}))
	defer page.Close()
	if v, ok := mallocs(http.DefaultClient, page.URL); !ok || v != 1234500 {
		t.Fatalf("mallocs = %v, %v", v, ok)
	}
	own := httptest.NewServer(withMallocs(http.NotFoundHandler()))
	defer own.Close()
	a, ok1 := mallocs(http.DefaultClient, own.URL+mallocsPath)
	b, ok2 := mallocs(http.DefaultClient, own.URL+mallocsPath)
	if !ok1 || !ok2 || a <= 0 || b < a {
		t.Fatalf("own counter: %v %v, %v %v", a, ok1, b, ok2)
	}
	if _, ok := mallocs(http.DefaultClient, ""); ok {
		t.Fatal("no URL gave a count")
	}
	if _, ok := mallocs(http.DefaultClient, own.URL+"/other"); ok {
		t.Fatal("a page without the counter gave a count")
	}
}
