package redisclient

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
	"github.com/idemkit/idem/redisstore"
	"github.com/idemkit/idem/storetest"
)

// TestOpen opens the store on every client and runs a first execution and
// a replay through it.
func TestOpen(t *testing.T) {
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	ctx := context.Background()
	for _, name := range Names {
		c, err := Open(ctx, name, addr, 4, redisstore.Options{Prefix: storetest.Prefix(t) + ":"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if (c.AP != nil) != strings.HasPrefix(name, "go-redis-ap") || (c.Rueidis != nil) != (name == "rueidis") {
			t.Errorf("%s: AP %v, rueidis %v", name, c.AP != nil, c.Rueidis != nil)
		}
		b, err := c.Store.Begin(ctx, "k", []byte("fp"), time.Minute)
		if err != nil || b.Outcome != idem.Acquired {
			t.Fatalf("%s: Begin = %+v, %v", name, b, err)
		}
		if err := c.Store.Complete(ctx, "k", b.Fence, []byte("r"), time.Minute); err != nil {
			t.Fatalf("%s: Complete: %v", name, err)
		}
		if b, err := c.Store.Begin(ctx, "k", []byte("fp"), time.Minute); err != nil || b.Outcome != idem.Replay || string(b.Result) != "r" {
			t.Fatalf("%s: replay = %+v, %v", name, b, err)
		}
		c.Close()
	}
	if _, err := Open(ctx, "jedis", addr, 0, redisstore.Options{}); err == nil {
		t.Error("an unknown client was opened")
	}
}
