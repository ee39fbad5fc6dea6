package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
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
	storePostgres
)

// storeSpec is a parsed -store URL.
type storeSpec struct {
	kind  storeKind
	path  string     // file
	raw   string     // redis, postgres: the URL given; may hold a secret, print redact(raw)
	addr  []string   // redis+cluster: the seed host:port list
	redis *redisSpec // redis, redis+cluster: what the URL configures
	// budget bounds memory: and file: (set by the caller, not the URL).
	budget storeBudget
}

// redisSpec is what a redis:// or redis+cluster:// URL configures.
type redisSpec struct {
	single  *redis.Options        // redis, rediss
	cluster *redis.ClusterOptions // redis+cluster, rediss+cluster
	store   redisstore.Options    // wait_replicas, wait_timeout
}

// goRedisReadTimeout is go-redis's default ReadTimeout (single server and
// cluster), which caps wait_timeout when read_timeout is not given.
// TestGoRedisReadTimeout checks it against the library.
const goRedisReadTimeout = 5 * time.Second

// parseStoreURL parses a -store value:
//
//	memory:                         in-process, lost on exit
//	file:PATH                       embedded file (bbolt), durable
//	redis://[user:pass@]host:port[/db][?opts]   (rediss:// for TLS)
//	redis+cluster://host1:port,host2:port[?opts]   (rediss+cluster:// for TLS)
//	postgres://… or postgresql://…  (the tables are migrated on first contact)
//
// Redis options are go-redis's URL options (dial_timeout, read_timeout,
// pool_size, max_retries, …; on a cluster also max_redirects, addr, …),
// plus:
//
//	password=…        the password (instead of user info; cluster URLs
//	                  have no room for it otherwise)
//	wait_replicas=N   redisstore.Options.WaitReplicas: each acquiring Begin
//	                  and each Complete waits until N replicas acknowledged
//	                  it, or fails closed
//	wait_timeout=D    redisstore.Options.WaitTimeout: how long that WAIT
//	                  may take (a Go duration: 50ms, 1s); at most half of
//	                  read_timeout
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
		return storeSpec{}, fmt.Errorf("%q is not a store URL (memory:, file:PATH, redis://…, redis+cluster://…, postgres://…)", redact(s))
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
		rs, err := parseRedisURL(s, false)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{kind: storeRedis, raw: s, redis: rs}, nil
	case "redis+cluster", "rediss+cluster":
		rs, err := parseRedisURL(s, true)
		if err != nil {
			return storeSpec{}, err
		}
		return storeSpec{kind: storeRedisCluster, raw: s, addr: rs.cluster.Addrs, redis: rs}, nil
	case "postgres", "postgresql":
		if !strings.HasPrefix(rest, "//") {
			return storeSpec{}, fmt.Errorf("%s: want a URL, postgres://[user[:password]@]host[:port]/database[?options]", redact(s))
		}
		if _, err := pgxpool.ParseConfig(s); err != nil {
			return storeSpec{}, fmt.Errorf("%s: %s", redact(s), scrubbed(s, err))
		}
		return storeSpec{kind: storePostgres, raw: s}, nil
	}
	return storeSpec{}, fmt.Errorf("unknown store scheme %q (memory:, file:PATH, redis://…, redis+cluster://…, postgres://…)", redact(scheme))
}

// parseRedisURL parses a redis[s]:// or, when cluster, a redis[s]+cluster://
// URL into go-redis options and redisstore options (see parseStoreURL).
func parseRedisURL(s string, cluster bool) (*redisSpec, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: "+format, append([]any{redact(s)}, args...)...)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, bad("not a valid URL: %s", urlDetail(s))
	}
	if u.Opaque != "" {
		return nil, bad("want %s://host:port…", u.Scheme)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, bad("bad query: %s", scrubbed(s, err))
	}
	one := func(name string) (string, bool, error) {
		vs, ok := q[name]
		if !ok {
			return "", false, nil
		}
		q.Del(name)
		if len(vs) != 1 {
			return "", true, bad("%s given %d times", name, len(vs))
		}
		return vs[0], true, nil
	}
	rs := &redisSpec{}
	v, given, err := one("wait_replicas")
	if err != nil {
		return nil, err
	}
	if given {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, bad("wait_replicas=%q: want a whole number ≥ 0 (replicas that must acknowledge each write)", v)
		}
		rs.store.WaitReplicas = n
	}
	v, given, err = one("wait_timeout")
	if err != nil {
		return nil, err
	}
	if given {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, bad("wait_timeout=%q: want a positive duration with a unit, such as 50ms or 1s", v)
		}
		rs.store.WaitTimeout = d
	}
	pw, given, err := one("password")
	if err != nil {
		return nil, err
	}
	if given {
		if _, set := u.User.Password(); set {
			return nil, bad("password given twice, in the user info and as ?password=")
		}
		u.User = url.UserPassword(u.User.Username(), pw)
	}
	retries := q.Has("max_retries")
	u.RawQuery = q.Encode()

	var readTimeout time.Duration
	if cluster {
		o, err := clusterOptions(u, s)
		if err != nil {
			return nil, err
		}
		if !retries {
			o.MaxRetries = -1
		}
		rs.cluster, readTimeout = o, o.ReadTimeout
	} else {
		o, err := redis.ParseURL(u.String())
		if err != nil {
			return nil, bad("%s", scrubbed(s, err))
		}
		if !retries {
			o.MaxRetries = -1
		}
		rs.single, readTimeout = o, o.ReadTimeout
	}
	if readTimeout == 0 {
		readTimeout = goRedisReadTimeout
	}
	if w := rs.store.WaitTimeout; w > 0 && readTimeout > 0 && w > readTimeout/2 {
		return nil, bad("wait_timeout=%v is more than half of read_timeout (%v): WAIT's answer must arrive before the client stops reading; lower wait_timeout or raise read_timeout", w, readTimeout)
	}
	return rs, nil
}

// clusterOptions turns a redis[s]+cluster://host1:port,host2:port URL (its
// own parameters already removed from u) into go-redis cluster options:
// every option go-redis's ParseClusterURL knows (timeouts, pool sizes,
// retries, max_redirects, read_only, addr=…, …) applies, and the host list
// is the seed list. s is the URL as given, for errors.
func clusterOptions(u *url.URL, s string) (*redis.ClusterOptions, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: "+format, append([]any{redact(s)}, args...)...)
	}
	if u.Host == "" {
		return nil, bad("want redis+cluster://host1:port,host2:port")
	}
	if u.Path != "" && u.Path != "/" {
		return nil, bad("a cluster has no database number; remove the path %q", u.Path)
	}
	var addrs []string
	for a := range strings.SplitSeq(u.Host, ",") {
		if a == "" {
			return nil, bad("empty address in the host list %q", u.Host)
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			if !strings.Contains(err.Error(), "missing port") {
				return nil, bad("address %q: want host:port", a)
			}
			a = net.JoinHostPort(strings.Trim(a, "[]"), "6379")
		}
		addrs = append(addrs, a)
	}
	c := *u
	c.Scheme = strings.TrimSuffix(strings.ToLower(u.Scheme), "+cluster")
	c.Host, c.Path = addrs[0], ""
	q := c.Query()
	if len(addrs) > 1 || q.Has("addr") {
		q["addr"] = append(addrs[1:], q["addr"]...) // seeds in the order given
	}
	c.RawQuery = q.Encode()
	o, err := redis.ParseClusterURL(c.String())
	if err != nil {
		return nil, bad("%s", scrubbed(s, err))
	}
	if o.TLSConfig != nil {
		// ParseClusterURL names the first seed as every node's TLS server
		// name; leave it empty so that each node is verified under the
		// host it is dialled at.
		o.TLSConfig.ServerName = ""
		o.TLSConfig.MinVersion = tls.VersionTLS12
	}
	return o, nil
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
// URL s, with every secret of s masked. When a secret is short enough (under
// 4 bytes) to be found by chance in any text, and is found, the text is
// withheld instead, as masking would make it unreadable.
func scrubbed(s string, err error) string {
	sec := secrets(s)
	text := err.Error()
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
	case storeRedis, storeRedisCluster:
		if spec.redis == nil { // a spec not made by parseStoreURL
			rs, err := parseRedisURL(spec.raw, spec.kind == storeRedisCluster)
			if err != nil {
				return nil, err
			}
			spec.redis = rs
		}
		var c redis.UniversalClient
		if spec.kind == storeRedis {
			c = redis.NewClient(spec.redis.single)
		} else {
			c = redis.NewClusterClient(spec.redis.cluster)
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
