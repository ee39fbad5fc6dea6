package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

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
	storeRedisSentinel
	storePostgres
)

// storeSpec is a parsed -store URL.
type storeSpec struct {
	kind  storeKind
	path  string     // file
	raw   string     // redis, postgres: the URL given; may hold a secret, print redact(raw)
	addr  []string   // redis+cluster: the seed host:port list; redis+sentinel: the sentinels
	redis *redisSpec // redis, redis+cluster, redis+sentinel: what the URL configures
	// budget bounds memory: and file: (set by the caller, not the URL).
	budget storeBudget
}

// redisSpec is what a redis://, redis+cluster:// or redis+sentinel:// URL
// configures (see parseRedisURL).
type redisSpec struct {
	single   *redis.Options         // redis, rediss
	cluster  *redis.ClusterOptions  // redis+cluster, rediss+cluster
	failover *redis.FailoverOptions // redis+sentinel, rediss+sentinel
	store    redisstore.Options     // wait_replicas, wait_timeout
}

// topology returns the topology of a Redis store kind.
func (k storeKind) topology() redisTopology {
	switch k {
	case storeRedisCluster:
		return topoCluster
	case storeRedisSentinel:
		return topoSentinel
	}
	return topoSingle
}

// goRedisReadTimeout is go-redis's default ReadTimeout (single server,
// cluster and Sentinel), which caps wait_timeout when read_timeout is not given.
// TestGoRedisReadTimeout checks it against the library.
const goRedisReadTimeout = 5 * time.Second

// parseStoreURL parses a -store value:
//
//	memory:                         in-process, lost on exit
//	file:PATH                       embedded file (bbolt), durable
//	redis://[user:pass@]host:port[/db][?opts]   (rediss:// for TLS)
//	redis+cluster://[user:pass@]host1:port,host2:port[?opts]   (rediss+cluster:// for TLS)
//	redis+sentinel://[user:pass@]host1:port,host2:port/master-name[/db][?opts]
//	                                (rediss+sentinel:// for TLS)
//	postgres://… or postgresql://…  (the tables are migrated on first contact)
//
// Every Redis scheme is parsed by parseRedisURL, and an option means the
// same on each (redisParams lists them: timeouts, pools, retries,
// skip_verify on TLS schemes, password=…, wait_replicas=N, wait_timeout=D,
// and those of one topology: db, addr, max_redirects, sentinel_password,
// …). An option that the scheme does not take is an error that lists the
// ones it takes.
//
// Unless max_retries is given, the Redis clients run every command once
// (MaxRetries -1): a resent script whose first run was applied would report
// a lost lease instead of an unknown outcome (see docs/redis.md).
//
// Errors never contain a password: the URL is shown redacted and the
// details are scrubbed of every secret the URL holds.
func parseStoreURL(s string) (storeSpec, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return storeSpec{}, fmt.Errorf("%q is not a store URL (memory:, file:PATH, redis://…, redis+cluster://…, redis+sentinel://…, postgres://…)", redact(s))
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
		rs, err := parseRedisURL(s, topoSingle)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{kind: storeRedis, raw: s, redis: rs}, nil
	case "redis+cluster", "rediss+cluster":
		rs, err := parseRedisURL(s, topoCluster)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{kind: storeRedisCluster, raw: s, addr: rs.cluster.Addrs, redis: rs}, nil
	case "redis+sentinel", "rediss+sentinel":
		rs, err := parseRedisURL(s, topoSentinel)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{kind: storeRedisSentinel, raw: s, addr: rs.failover.SentinelAddrs, redis: rs}, nil
	case "postgres", "postgresql":
		if !strings.HasPrefix(rest, "//") {
			return storeSpec{}, fmt.Errorf("%s: want a URL, postgres://[user[:password]@]host[:port]/database[?options]", redact(s))
		}
		if _, err := pgxpool.ParseConfig(s); err != nil {
			return storeSpec{}, fmt.Errorf("%s: %s", redact(s), scrubbed(s, err))
		}
		return storeSpec{kind: storePostgres, raw: s}, nil
	}
	return storeSpec{}, fmt.Errorf("unknown store scheme %q (memory:, file:PATH, redis://…, redis+cluster://…, redis+sentinel://…, postgres://…)", redact(scheme))
}

// mask replaces secrets in what redact and the errors print.
const mask = "xxxxx"

// secretParam reports whether a query parameter named name holds a secret
// (password, sslpassword, pass, pwd, secret, token, …). A name that does not
// decode counts as secret.
func secretParam(name string) bool {
	n, err := url.QueryUnescape(name)
	if err != nil {
		return true
	}
	n = strings.ToLower(n)
	for _, w := range []string{"pass", "pwd", "secret", "token", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}

// maskQuery masks the values of the secret parameters of a raw query,
// keeping everything else as it is.
func maskQuery(raw string) string {
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		if name, _, ok := strings.Cut(p, "="); ok && secretParam(name) {
			parts[i] = name + "=" + mask
		}
	}
	return strings.Join(parts, "&")
}

// splitScheme splits s into its lower-cased scheme and the rest, when it
// starts with one (a ':' before any of "/?#@"); otherwise the rest is s.
func splitScheme(s string) (scheme, rest string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i < 0 || strings.ContainsAny(s[:i], "/?#@") {
		return "", s, false
	}
	return strings.ToLower(s[:i]), s[i+1:], true
}

// redact returns s, a store URL, fit for logs and errors: the password of
// its user info and the values of its secret query parameters (see
// secretParam) are masked. When s does not parse as a URL, everything
// between the scheme and the last '@' is masked too, and so is every
// string that might be a secret.
func redact(s string) string {
	if scheme, _, _ := splitScheme(s); scheme == "memory" || scheme == "file" {
		return s // no secrets, and a path is worth seeing whole
	}
	if u, err := url.Parse(s); err == nil && u.Opaque == "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), mask)
		}
		u.RawQuery = maskQuery(u.RawQuery)
		if u.Fragment != "" {
			u.Fragment = mask
		}
		return u.String()
	}
	return roughRedact(s)
}

// roughRedact is redact for a string that does not parse as a URL, where
// the parts cannot be told apart for certain: everything between the
// scheme's "//" and the last '@' is masked, the values of secret query
// parameters are masked, and so is every string that might be a secret.
func roughRedact(s string) string {
	prefix, rest := "", s
	if scheme, r, ok := splitScheme(s); ok {
		prefix, rest = scheme+":", r
	}
	if r, ok := strings.CutPrefix(rest, "//"); ok {
		prefix, rest = prefix+"//", r
	}
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		rest = rest[:q+1] + maskQuery(rest[q+1:])
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = mask + rest[at:]
	}
	return scrub(prefix+rest, secrets(s))
}

// secrets returns the strings of s that are or might be secrets: the user
// info's password (and, when s does not parse, everything before the last
// '@'), and the values of secret query parameters, both as written and
// decoded.
func secrets(s string) []string {
	var out []string
	add := func(v string) {
		if v != "" {
			out = append(out, v)
			if d, err := url.PathUnescape(v); err == nil && d != v {
				out = append(out, d)
			}
			if d, err := url.QueryUnescape(v); err == nil && d != v {
				out = append(out, d)
			}
		}
	}
	_, rest, _ := splitScheme(s)
	rest, _, _ = strings.Cut(rest, "#")
	auth, query, _ := strings.Cut(rest, "?")
	if u, err := url.Parse(s); err == nil && u.Opaque == "" {
		if pw, ok := u.User.Password(); ok {
			add(pw)
			a := strings.TrimPrefix(auth, "//")
			a, _, _ = strings.Cut(a, "/")
			if at := strings.LastIndexByte(a, '@'); at >= 0 {
				if _, p, ok := strings.Cut(a[:at], ":"); ok {
					add(p)
				}
			}
		}
		query = u.RawQuery
	} else if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		// Not a URL: anything before the last '@' may be user info.
		info := strings.TrimPrefix(rest[:at], "//")
		add(info)
		if _, p, ok := strings.Cut(info, ":"); ok {
			add(p)
		}
	}
	for p := range strings.SplitSeq(query, "&") {
		if name, v, ok := strings.Cut(p, "="); ok && secretParam(name) {
			add(v)
		}
	}
	return out
}

// scrub masks every occurrence of the given secrets in text, longest first.
func scrub(text string, secrets []string) string {
	secrets = slices.Clone(secrets)
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, v := range secrets {
		text = strings.ReplaceAll(text, v, mask)
	}
	return text
}

// scrubbed returns the text of err, a failure to parse or to open the store
// URL s, with every secret of s masked (see scrubText).
func scrubbed(s string, err error) string { return scrubText(s, err.Error()) }

// scrubText returns text, about the store URL s, with every secret of s
// masked. When a secret is short enough (under 4 bytes) to be found by
// chance in any text, and is found, the text is withheld instead, as
// masking would make it unreadable.
func scrubText(s, text string) string {
	sec := secrets(s)
	for _, v := range sec {
		if len(v) < 4 && strings.Contains(text, v) {
			return "(details withheld: they could show a secret of the URL)"
		}
	}
	return scrub(text, sec)
}

// urlDetail returns why url.Parse refused s, without the URL itself, which
// url.Error repeats in full, and without the user info or the secret
// parameters, whose boundaries are uncertain in a string that does not
// parse: the reason is taken from parsing the string with those parts
// masked (see roughRedact).
func urlDetail(s string) string {
	_, err := url.Parse(roughRedact(s))
	if err == nil {
		return "bad user info (characters such as / ? # @ : in a user name or password must be percent-encoded)"
	}
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return scrubbed(s, err)
}

// storeError is an error about the store URL whose text was scrubbed of
// the URL's secrets; it still unwraps to the original error, so that
// errors.Is sees idem.ErrStoreUnavailable and the like.
type storeError struct {
	msg string
	err error
}

func (e *storeError) Error() string { return e.msg }
func (e *storeError) Unwrap() error { return e.err }

// safeError returns err, met while opening the store named by the URL s,
// with its text scrubbed of every secret of s; nil stays nil.
func safeError(s string, err error) error {
	if err == nil {
		return nil
	}
	return &storeError{msg: scrubbed(s, err), err: err}
}

// openedStore is an open store and how to close it.
type openedStore struct {
	store idem.Store
	close func() error
	desc  string
	// raw is the store URL as given, which may hold secrets: errors are
	// shown through scrubbed(raw, err).
	raw string
	// budget describes the record and byte limits of memory: and file:;
	// empty for servers, which apply their own.
	budget string
	// check checks once that the store can be reached and used, within
	// storeCheckTimeout (PostgreSQL: then migrates, within migrateTimeout).
	check func(ctx context.Context) error
}

// openStore opens the store named by spec. It does not wait for a server:
// Redis and PostgreSQL connect on first use (see openedStore.check), and
// PostgreSQL's tables are migrated then (migratingStore).
func openStore(ctx context.Context, spec storeSpec, log *slog.Logger) (*openedStore, error) {
	var st *openedStore
	switch spec.kind {
	case storeMemory:
		st = &openedStore{store: memstore.New(spec.budget.memOptions()), close: func() error { return nil }, desc: "memory:",
			budget: spec.budget.describe(defaultMemRecords, defaultMemBytes)}
	case storeFile:
		s, err := filestore.Open(spec.path, spec.budget.fileOptions())
		if err != nil {
			return nil, err
		}
		st = &openedStore{store: s, close: s.Close, desc: "file:" + spec.path,
			budget: spec.budget.describe(defaultFileRecords, defaultFileBytes)}
	case storeRedis, storeRedisCluster, storeRedisSentinel:
		if spec.redis == nil { // a spec not made by parseStoreURL
			rs, err := parseRedisURL(spec.raw, spec.kind.topology())
			if err != nil {
				return nil, err
			}
			spec.redis = rs
		}
		var c redis.UniversalClient
		switch spec.kind {
		case storeRedis:
			c = redis.NewClient(spec.redis.single)
		case storeRedisCluster:
			c = redis.NewClusterClient(spec.redis.cluster)
		default:
			// Follows the master: asks the sentinels for its address at
			// every dial, and drops the connections to the old master when
			// a sentinel announces +switch-master.
			c = redis.NewFailoverClient(spec.redis.failover)
		}
		s := redisstore.New(c, spec.redis.store)
		closeFn := func() error { return errors.Join(s.Close(), c.Close()) }
		st = &openedStore{store: s, close: closeFn, desc: redact(spec.raw), raw: spec.raw}
	case storePostgres:
		cfg, err := pgxpool.ParseConfig(spec.raw)
		if err != nil {
			return nil, safeError(spec.raw, fmt.Errorf("postgres: %w", err))
		}
		cfg.ConnConfig.OnNotice = pgNotice
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return nil, safeError(spec.raw, fmt.Errorf("postgres: %w", err))
		}
		m := newMigratingStore(pgxstore.New(pool, pgxstore.Options{}), spec.raw, log)
		check := func(ctx context.Context) error {
			pctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
			err := pool.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			mctx, cancel := context.WithTimeout(ctx, migrateTimeout)
			defer cancel()
			return m.attempt(mctx, false)
		}
		return &openedStore{store: m, close: func() error { pool.Close(); return nil }, desc: redact(spec.raw), raw: spec.raw,
			check: check}, nil
	default:
		return nil, errors.New("unknown store")
	}
	st.check = func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
		defer cancel()
		return probe(ctx, st.store)
	}
	return st, nil
}
