package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/idemkit/idem/bench/internal/redistest"
)

// TestRun runs a tiny benchmark on the real server and checks the table: a
// row per client and scenario, and the server's commands per call, which
// the store's scripts fix (a replay is EVALSHA + MGET).
func TestRun(t *testing.T) {
	addr := redistest.Server(t) // a server of its own: the commands are counted server-wide
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-addr", addr, "-c", "4", "-n", "200", "-rounds", "1"}, &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, c := range allClients {
		for _, sc := range []string{"first execution", "replay (Begin)", "raw EVALSHA"} {
			if !strings.Contains(s, "| "+sc) || !strings.Contains(s, "| "+c+" |") {
				t.Errorf("no row for %s, %s in:\n%s", sc, c, s)
			}
		}
	}
	if !strings.Contains(s, "2.00: EVALSHA 1.00, MGET 1.00 |") {
		t.Errorf("a replay is not counted as EVALSHA + MGET:\n%s", s)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{{"-clients", "jedis"}, {"-c", "0"}, {"-n", "1", "-c", "2"}} {
		if err := run(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
