package main

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
)

// floorClient is the -lib row that is not a store: the idemhttp middleware
// on floorStore, through go-redis's AutoPipeliner. It measures what the
// middleware and two plain Redis commands per first execution cost, the
// least any Redis-backed layer of this shape can: the figure the store's
// rows are compared with in docs/bench/redis.md. Never use it for anything
// else.
const floorClient = "floor"

// floorStore is UNSAFE, a measuring stick only: Begin is SET … NX GET PX
// (acquire, or read a completed record), Complete a plain SET. It has no
// fence (every lease is fence 1), judges no lease (anything not completed
// is "in flight"), does not compare fingerprints and overwrites whatever
// is there on Complete.
type floorStore struct {
	c      redis.Cmdable
	prefix string
}

func (s *floorStore) Begin(ctx context.Context, key string, fp []byte, lease time.Duration) (idem.Begun, error) {
	v, err := s.c.SetArgs(ctx, s.prefix+key, "P", redis.SetArgs{Mode: "NX", Get: true, TTL: lease}).Result()
	if errors.Is(err, redis.Nil) {
		return idem.Begun{Outcome: idem.Acquired, Fence: 1}, nil
	}
	if err != nil {
		return idem.Begun{}, err
	}
	if v != "" && v[0] == 'C' {
		return idem.Begun{Outcome: idem.Replay, Result: []byte(v[1:])}, nil
	}
	return idem.Begun{Outcome: idem.InFlight, Fence: 1, LeaseLeft: lease}, nil
}

func (s *floorStore) Complete(ctx context.Context, key string, _ uint64, result []byte, retention time.Duration) error {
	return s.c.Set(ctx, s.prefix+key, append([]byte{'C'}, result...), retention).Err()
}

func (s *floorStore) Release(ctx context.Context, key string, _ uint64) error {
	return s.c.Del(ctx, s.prefix+key).Err()
}

// floorHandler is libHandler for floorClient.
func floorHandler(addr, prefix string) (http.Handler, func(), error) {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	ap, err := rc.AutoPipeline()
	if err != nil {
		rc.Close()
		return nil, nil, err
	}
	if prefix == "" {
		prefix = "floor:"
	}
	return libMiddleware(&floorStore{c: ap, prefix: prefix}), func() { rc.Close() }, nil
}
