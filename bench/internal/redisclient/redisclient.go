// Package redisclient opens redisstore on each of the Redis clients the
// benchmarks compare.
package redisclient

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/idemkit/idem/bench/internal/ruscripter"
	"github.com/idemkit/idem/redisstore"
)

// Names are the clients: go-redis (a connection per call in flight),
// go-redis-ap (its AutoPipeliner, redisstore's Options.AutoPipeline),
// go-redis-ap-native (the same with Options.NativeBegin, on the deferred
// AutoPipeliner), go-redis-ap-resp2 (the same on RESP2, go-redis Options.Protocol 2,
// instead of go-redis's default RESP3) and rueidis (auto-pipelining,
// through ruscripter).
var Names = []string{"go-redis", "go-redis-ap", "go-redis-ap-native", "go-redis-ap-resp2", "rueidis"}

// Client is redisstore on one client.
type Client struct {
	Store *redisstore.Store
	// Redis is always open: it serves WAIT and subscriptions, and the
	// scripts of the go-redis clients.
	Redis   *redis.Client
	AP      *redis.AutoPipeliner // go-redis-ap only
	Rueidis rueidis.Client       // rueidis only
}

// Open opens redisstore with options o on the client name at addr. Every
// client is made so that none resends a script whose outcome is unknown
// (go-redis MaxRetries -1, rueidis DisableRetry). poolSize, if positive, is
// go-redis's pool size, filled at once.
func Open(ctx context.Context, name, addr string, poolSize int, o redisstore.Options) (*Client, error) {
	ro := &redis.Options{Addr: addr, MaxRetries: -1}
	if name == "go-redis-ap-resp2" {
		ro.Protocol = 2
	}
	if poolSize > 0 {
		ro.PoolSize, ro.MinIdleConns = poolSize, poolSize
	}
	c := &Client{Redis: redis.NewClient(ro)}
	if err := c.Redis.Ping(ctx).Err(); err != nil {
		c.Redis.Close()
		return nil, fmt.Errorf("redis %s: %w", addr, err)
	}
	var err error
	switch name {
	case "go-redis":
	case "go-redis-ap", "go-redis-ap-native", "go-redis-ap-resp2":
		o.AutoPipeline = true
		// the client's own, which the store uses too
		if name == "go-redis-ap-native" {
			o.NativeBegin = true
			c.AP, err = c.Redis.AsyncAutoPipeline()
		} else {
			c.AP, err = c.Redis.AutoPipeline()
		}
	case "rueidis":
		c.Rueidis, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableRetry: true, DisableCache: true})
		if err == nil {
			o.Scripter = ruscripter.New(c.Rueidis)
		}
	default:
		err = fmt.Errorf("unknown client %q (want %s)", name, strings.Join(Names, ", "))
	}
	if err != nil {
		c.Redis.Close()
		return nil, err
	}
	c.Store = redisstore.New(c.Redis, o)
	if c.AP != nil && !c.Store.AutoPipelined() {
		c.Close()
		return nil, errors.New("go-redis-ap: the store does not use the AutoPipeliner")
	}
	return c, nil
}

// Close closes the store and the clients.
func (c *Client) Close() {
	c.Store.Close()
	if c.Rueidis != nil {
		c.Rueidis.Close()
	}
	c.Redis.Close()
}
