package redisinfo

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/bench/internal/redistest"
)

func TestParseCommandStats(t *testing.T) {
	got, err := ParseCommandStats("# Commandstats\r\ncmdstat_evalsha:calls=10,usec=55,usec_per_call=5.50,rejected_calls=0\r\ncmdstat_pubsub|numsub:calls=3,usec=1\r\nused_cpu_sys:1.5\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if got["evalsha"] != 10 || got["pubsub|numsub"] != 3 || len(got) != 2 {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"cmdstat_get:calls=x", "cmdstat_get:calls=-1"} {
		if _, err := ParseCommandStats(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestServer reads a real server: a GET shows in the counts, and the CPU
// time is positive.
func TestServer(t *testing.T) {
	// A server of its own: the counts are server-wide.
	c := redis.NewClient(&redis.Options{Addr: redistest.Server(t)})
	defer c.Close()
	ctx := context.Background()
	before, err := CommandStats(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	c.Get(ctx, "redisinfo-test-missing")
	after, err := CommandStats(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if after["get"] != before["get"]+1 {
		t.Errorf("GET calls %d → %d", before["get"], after["get"])
	}
	if cpu, err := CPU(ctx, c); err != nil || cpu <= 0 {
		t.Errorf("CPU = %v, %v", cpu, err)
	}
	for i := range 2500 { // more than one batch
		c.Set(ctx, fmt.Sprintf("del:%d", i), "v", 0)
	}
	c.Set(ctx, "keep", "v", 0)
	if err := DeleteMatching(ctx, c, "del:*"); err != nil {
		t.Fatal(err)
	}
	if n := c.DBSize(ctx).Val(); n != 1 {
		t.Errorf("%d keys left after DeleteMatching, want 1 (keep)", n)
	}
}

// FuzzParseCommandStats: any INFO text parses or is refused, never panics;
// every command returned is named in the text, with a count ≥ 0.
func FuzzParseCommandStats(f *testing.F) {
	f.Add("# Commandstats\r\ncmdstat_evalsha:calls=10,usec=55\r\ncmdstat_pubsub|numsub:calls=3\r\n")
	f.Add("cmdstat_get:calls=-1")
	f.Fuzz(func(t *testing.T, info string) {
		got, err := ParseCommandStats(info)
		if err != nil {
			return
		}
		for k, v := range got {
			if v < 0 || !strings.Contains(info, "cmdstat_"+k+":") {
				t.Fatalf("%q: %d from %q", k, v, info)
			}
		}
	})
}
