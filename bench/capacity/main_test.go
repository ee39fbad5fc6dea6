package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/internal/testenv"
)

// TestRun measures a few thousand records in every store the test command
// starts and checks that each row is there with a plausible size: more
// than the stored answer, less than a few pages. Not fewer records: the
// Go heap grows by whole spans, and with 300 records memory: measured
// 137-191 bytes per record where 20,000 measure 267 (a CI failure).
func TestRun(t *testing.T) {
	args := []string{"-n", "3000", "-redis", testenv.Need(t, "IDEM_REDIS_ADDR"), "-postgres", testenv.Need(t, "IDEM_POSTGRES_DSN")}
	var out bytes.Buffer
	if err := run(context.Background(), args, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, store := range []string{"memory:", "file:", "redis://", "postgres://"} {
		i := strings.Index(s, "| "+store+" | ")
		if i < 0 {
			t.Fatalf("no row for %s:\n%s", store, s)
		}
		var per float64
		if _, err := fmt.Sscan(s[i+len("| "+store+" | "):], &per); err != nil || per < 150 || per > 8192 {
			t.Errorf("%s: %v bytes per record (%v)", store, per, err)
		}
		// The compact records' goal (docs/capacity.md), for Redis's
		// default allocator, whose size classes it is computed for.
		if store == "redis://" && jemalloc(t) && per > 250 {
			t.Errorf("a Redis record costs %v bytes, more than 250", per)
		}
	}
	if !strings.Contains(s, "| redis:// | 24 h |") {
		t.Errorf("no capacity row:\n%s", s)
	}
}

// jemalloc reports whether the test's Redis allocates with jemalloc.
func jemalloc(t *testing.T) bool {
	c := redis.NewClient(&redis.Options{Addr: testenv.Need(t, "IDEM_REDIS_ADDR")})
	defer c.Close()
	info, err := c.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(info, "mem_allocator:jemalloc")
}

func TestBounds(t *testing.T) {
	if err := run(context.Background(), []string{"-n", "5"}, os.Stdout); err == nil {
		t.Fatal("-n 5 accepted")
	}
}

func TestHuman(t *testing.T) {
	for b, want := range map[float64]string{512: "512 B", 2048: "2.0 KiB", 300 << 20: "300 MiB", 1.5 * (1 << 40): "1.5 TiB"} {
		if got := human(b); got != want {
			t.Errorf("human(%v) = %q, want %q", b, got, want)
		}
	}
}
