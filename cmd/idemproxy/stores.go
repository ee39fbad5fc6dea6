package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/filestore"
	"github.com/idemkit/idem/memstore"
	"github.com/idemkit/idem/pgxstore"
	"github.com/idemkit/idem/redisstore"
)

// storeKind is the backend named by a -store URL.
type storeKind uint8

const (
	storeMemory storeKind = iota + 1
	storeFile
	storeRedis
	storeRedisCluster
	storePostgres
)

// storeSpec is a parsed -store URL.
type storeSpec struct {
	kind storeKind
	path string   // file
	raw  string   // redis, postgres: the URL given
	addr []string // redis+cluster: host:port list
}

// parseStoreURL parses a -store value:
//
//	memory:                         in-process, lost on exit
//	file:PATH                       embedded file (bbolt), durable
//	redis://[user:pass@]host:port[/db]   (rediss:// for TLS)
//	redis+cluster://host1:port,host2:port[?password=…]
//	postgres://… or postgresql://…  (the table is migrated on start)
func parseStoreURL(s string) (storeSpec, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return storeSpec{}, fmt.Errorf("%q is not a store URL (memory:, file:PATH, redis://…, redis+cluster://…, postgres://…)", s)
	}
	switch strings.ToLower(scheme) {
	case "memory":
		if rest != "" {
			return storeSpec{}, fmt.Errorf("memory: takes no path, got %q", s)
		}
		return storeSpec{kind: storeMemory}, nil
	case "file":
		p := strings.TrimPrefix(rest, "//")
		if p == "" {
			return storeSpec{}, errors.New("file: needs a path, e.g. file:idem.db or file:/var/lib/idem/idem.db")
		}
		return storeSpec{kind: storeFile, path: p}, nil
	case "redis", "rediss":
		if _, err := redis.ParseURL(s); err != nil {
			return storeSpec{}, fmt.Errorf("%s: %v", redact(s), err)
		}
		return storeSpec{kind: storeRedis, raw: s}, nil
	case "redis+cluster", "rediss+cluster":
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return storeSpec{}, fmt.Errorf("%s: want redis+cluster://host1:port,host2:port", redact(s))
		}
		return storeSpec{kind: storeRedisCluster, raw: s, addr: strings.Split(u.Host, ",")}, nil
	case "postgres", "postgresql":
		if _, err := pgxpool.ParseConfig(s); err != nil {
			return storeSpec{}, fmt.Errorf("%s: %v", redact(s), err)
		}
		return storeSpec{kind: storePostgres, raw: s}, nil
	}
	return storeSpec{}, fmt.Errorf("unknown store scheme %q (memory:, file:PATH, redis://…, redis+cluster://…, postgres://…)", scheme)
}

// redact hides the password of a URL for logs and errors. Anything before
// an '@' that url.Parse does not see as user info is hidden too.
func redact(s string) string {
	u, err := url.Parse(s)
	if err == nil && u.User != nil {
		return u.Redacted()
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		scheme, _, _ := strings.Cut(s, ":")
		return scheme + ":xxxxx" + s[at:]
	}
	return s
}

// openedStore is an open store and how to close it.
type openedStore struct {
	store idem.Store
	close func() error
	desc  string
}

// openStore opens the store named by spec. Postgres runs Migrate.
func openStore(ctx context.Context, spec storeSpec) (*openedStore, error) {
	switch spec.kind {
	case storeMemory:
		return &openedStore{store: memstore.New(memstore.Options{}), close: func() error { return nil }, desc: "memory:"}, nil
	case storeFile:
		s, err := filestore.Open(spec.path, filestore.Options{})
		if err != nil {
			return nil, err
		}
		return &openedStore{store: s, close: s.Close, desc: "file:" + spec.path}, nil
	case storeRedis, storeRedisCluster:
		var c redis.UniversalClient
		if spec.kind == storeRedis {
			opt, err := redis.ParseURL(spec.raw)
			if err != nil {
				return nil, err
			}
			c = redis.NewClient(opt)
		} else {
			opt, err := clusterOptions(spec)
			if err != nil {
				return nil, err
			}
			c = redis.NewClusterClient(opt)
		}
		s := redisstore.New(c, redisstore.Options{})
		closeFn := c.Close
		if cl, ok := any(s).(interface{ Close() error }); ok {
			closeFn = func() error { return errors.Join(cl.Close(), c.Close()) }
		}
		return &openedStore{store: s, close: closeFn, desc: redact(spec.raw)}, nil
	case storePostgres:
		pool, err := pgxpool.New(ctx, spec.raw)
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		s := pgxstore.New(pool, pgxstore.Options{})
		if err := s.Migrate(ctx); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: migrate: %w", err)
		}
		return &openedStore{store: s, close: func() error { pool.Close(); return nil }, desc: redact(spec.raw)}, nil
	}
	return nil, errors.New("unknown store")
}

func clusterOptions(spec storeSpec) (*redis.ClusterOptions, error) {
	u, err := url.Parse(spec.raw)
	if err != nil {
		return nil, err
	}
	// Parse the rest as a single-node URL to reuse go-redis's handling of
	// user info, TLS and query options, then apply the address list.
	single := "redis://" + u.User.String()
	if u.User != nil {
		single += "@"
	}
	if strings.HasPrefix(strings.ToLower(u.Scheme), "rediss") {
		single = "rediss" + strings.TrimPrefix(single, "redis")
	}
	single += spec.addr[0]
	if u.RawQuery != "" {
		single += "?" + u.RawQuery
	}
	o, err := redis.ParseURL(single)
	if err != nil {
		return nil, err
	}
	return &redis.ClusterOptions{
		Addrs:     spec.addr,
		Username:  o.Username,
		Password:  o.Password,
		TLSConfig: o.TLSConfig,
	}, nil
}
