package main

import (
	"bytes"
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/bench/internal/redistest"
)

// TestLibHandler serves the library role with every client on the real
// Redis: the first request executes, its retry is a replay, and the probe
// finds the record, counts the replay's commands and cleans up.
func TestLibHandler(t *testing.T) {
	// A server of its own: the commands are counted server-wide.
	addr := redistest.Server(t)
	ctx := context.Background()
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	probe := &redisProbe{c: rc}
	for _, lc := range libClients {
		t.Run(lc, func(t *testing.T) {
			tag := randHex()
			prefix := "benchloadtest:" + tag + ":"
			h, closeFn, err := libHandler(lc, addr, prefix)
			if err != nil {
				t.Fatal(err)
			}
			defer closeFn()
			srv := httptest.NewServer(h)
			defer srv.Close()
			defer probe.cleanup(ctx, prefix+"*")
			c := srv.Client()
			if err := post(c, srv.URL, tag+"-1"); err != nil {
				t.Fatal(err)
			}
			before, err := probe.commands(ctx)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/charges", strings.NewReader(body))
			req.Header.Set("Idempotency-Key", tag+"-1")
			req.Header.Set("Authorization", "Bearer sk_test_load")
			req.Header.Set("Content-Type", "application/json")
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusCreated || res.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("retry: %d, Idempotent-Replayed %q", res.StatusCode, res.Header.Get("Idempotent-Replayed"))
			}
			after, err := probe.commands(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]float64{"evalsha": 1, "mget": 1}
			switch lc {
			case "go-redis-ap-native":
				want = map[string]float64{"set": 1, "pexpiretime": 1, "get": 1}
			case floorClient:
				want = map[string]float64{"set": 1}
			case memoryClient:
				want = map[string]float64{}
			}
			if d := commandDelta(before, after, 1); !maps.Equal(d, want) {
				t.Errorf("replay commands %v, want %v", d, want)
			}
			b, n, err := probe.recordBytes(ctx, prefix, 10)
			if lc == memoryClient {
				if err != nil || n != 0 {
					t.Fatalf("recordBytes = %v, %d, %v; want no Redis record", b, n, err)
				}
				return
			}
			if err != nil || n != 1 || b < 100 {
				t.Fatalf("recordBytes = %v, %d, %v; want one record", b, n, err)
			}
		})
	}
	if _, _, err := libHandler("jedis", addr, "x:"); err == nil {
		t.Error("an unknown client was accepted")
	}
}

func TestCommandDelta(t *testing.T) {
	d := commandDelta(map[string]int64{"get": 10, "info": 1}, map[string]int64{"get": 30, "set": 10, "info": 9, "scan": 4, "hello": 1, "client|setinfo": 2}, 10)
	if len(d) != 2 || d["get"] != 2 || d["set"] != 1 {
		t.Fatalf("delta %v", d)
	}
	if got := formatCommands(d); got != "3.00 (GET 2.00, SET 1.00)" {
		t.Fatalf("formatCommands = %q", got)
	}
	if got := formatCommands(nil); got != "–" {
		t.Fatalf("formatCommands(nil) = %q", got)
	}
}

func TestLibReport(t *testing.T) {
	bare := &scenario{name: "direct upstream", runs: []result{{rps: 1000}}}
	lib := &scenario{name: "library redis (x), unique keys", lib: true, probe: true, runs: []result{{rps: 400}},
		commands: map[string]float64{"evalsha": 2}, recordBytes: 250}
	var b bytes.Buffer
	libReport(&b, []*scenario{bare, lib})
	for _, want := range []string{"| library redis (x), unique keys | 400 | 40% | 40% |", "| 2.00 (EVALSHA 2.00) | 250 |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
