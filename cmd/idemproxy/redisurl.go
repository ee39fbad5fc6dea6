package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/redisstore"
)

// redisTopology is what the scheme of a Redis store URL connects to; as a
// set (or-ed together) it says which schemes take an option.
type redisTopology uint8

const (
	// topoSingle is redis:// and rediss://: one server.
	topoSingle redisTopology = 1 << iota
	// topoCluster is redis+cluster:// and rediss+cluster://: Redis Cluster.
	topoCluster
	// topoSentinel is redis+sentinel:// and rediss+sentinel://: a master
	// found through Redis Sentinel.
	topoSentinel

	topoAll = topoSingle | topoCluster | topoSentinel
)

// defaultSentinelPort is the port of a sentinel address given without one.
const defaultSentinelPort = "26379"

// redisConf is what a Redis store URL configures, whatever its scheme: the
// URL is parsed once into it by the same code for every scheme, and then
// turned into the go-redis options of its scheme (single, cluster or
// failover), so that an option means the same on every scheme.
type redisConf struct {
	topo redisTopology
	tls  bool // a rediss… scheme

	// o holds every field the three go-redis option structs share; its Addr
	// is the server of a single-server URL.
	o redis.Options
	// userPassword is set when the user info holds a password.
	userPassword bool
	// pathDB is set when the URL's path gave the database number.
	pathDB bool

	addrs  []string // redis+cluster: the seeds; redis+sentinel: the sentinels
	master string   // redis+sentinel: the master's name

	sentinelUsername, sentinelPassword string // redis+sentinel

	maxRedirects            int // redis+cluster
	readOnly                bool
	routeByLatency          bool
	routeByLatencyTolerance time.Duration
	routeRandomly           bool
	failingTimeoutSeconds   int

	skipVerify bool // TLS schemes

	retriesGiven bool // max_retries was given
	noPipeline   bool // auto_pipeline=false
	jitterGiven  bool // conn_max_lifetime_jitter was given

	store redisstore.Options // wait_replicas, wait_timeout
}

// redisParam is a query parameter of a Redis store URL.
type redisParam struct {
	name    string
	topo    redisTopology // the schemes that take it
	tlsOnly bool          // only on a rediss… scheme
	set     func(c *redisConf, v string) error
}

// redisParams are the query parameters of Redis store URLs, one entry per
// name (see docs/redis.md, "From idemproxy's store URL"). Each means the
// same on every scheme that takes it.
var redisParams = []redisParam{
	{"password", topoAll, false, func(c *redisConf, v string) error {
		if c.userPassword {
			return fmt.Errorf("password given twice, in the user info and as ?password=")
		}
		c.o.Password = v
		return nil
	}},
	{"wait_replicas", topoAll, false, func(c *redisConf, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("wait_replicas=%q: want a whole number ≥ 0 (replicas that must acknowledge each write)", v)
		}
		c.store.WaitReplicas = n
		return nil
	}},
	{"wait_timeout", topoAll, false, func(c *redisConf, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("wait_timeout=%q: want a positive duration with a unit, such as 50ms or 1s", v)
		}
		c.store.WaitTimeout = d
		return nil
	}},
	{"auto_pipeline", topoSingle | topoSentinel, false, func(c *redisConf, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("auto_pipeline=%q: want true or false", v)
		}
		c.noPipeline = !b
		return nil
	}},
	{"native_begin", topoAll, false, boolParam(func(c *redisConf) *bool { return &c.store.NativeBegin })},
	{"client_name", topoAll, false, strParam(func(c *redisConf) *string { return &c.o.ClientName })},
	{"prefix", topoAll, false, func(c *redisConf, v string) error {
		if v == "" || len(v) > 64 {
			return fmt.Errorf("prefix=%q: want 1 to 64 bytes that start every key (default %q)", v, redisstore.DefaultPrefix)
		}
		c.store.Prefix = v
		return nil
	}},
	{"protocol", topoAll, false, func(c *redisConf, v string) error {
		switch v {
		case "":
			c.o.Protocol = 0
		case "2", "3":
			c.o.Protocol = int(v[0] - '0')
		default:
			return fmt.Errorf("protocol=%q: want 2 (RESP2) or 3 (RESP3)", v)
		}
		return nil
	}},
	{"max_retries", topoAll, false, func(c *redisConf, v string) error {
		c.retriesGiven = true
		return intParam(-1, func(c *redisConf) *int { return &c.o.MaxRetries })(c, v)
	}},
	{"min_retry_backoff", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.MinRetryBackoff })},
	{"max_retry_backoff", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.MaxRetryBackoff })},
	{"dial_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.DialTimeout })},
	{"dialer_retries", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.DialerRetries })},
	{"dialer_retry_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.DialerRetryTimeout })},
	{"read_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.ReadTimeout })},
	{"write_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.WriteTimeout })},
	{"context_timeout_enabled", topoAll, false, boolParam(func(c *redisConf) *bool { return &c.o.ContextTimeoutEnabled })},
	{"pool_fifo", topoAll, false, boolParam(func(c *redisConf) *bool { return &c.o.PoolFIFO })},
	{"pool_size", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.PoolSize })},
	{"pool_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.PoolTimeout })},
	{"min_idle_conns", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.MinIdleConns })},
	{"max_idle_conns", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.MaxIdleConns })},
	{"max_active_conns", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.MaxActiveConns })},
	{"max_concurrent_dials", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.MaxConcurrentDials })},
	{"pipeline_pool_size", topoAll, false, intParam(-1, func(c *redisConf) *int { return &c.o.PipelinePoolSize })},
	{"pipeline_read_buffer_size", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.PipelineReadBufferSize })},
	{"pipeline_write_buffer_size", topoAll, false, intParam(0, func(c *redisConf) *int { return &c.o.PipelineWriteBufferSize })},
	{"conn_max_idle_time", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.ConnMaxIdleTime })},
	{"idle_timeout", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.ConnMaxIdleTime })},
	{"conn_max_lifetime", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.ConnMaxLifetime })},
	{"max_conn_age", topoAll, false, durParam(func(c *redisConf) *time.Duration { return &c.o.ConnMaxLifetime })},
	{"conn_max_lifetime_jitter", topoAll, false, func(c *redisConf, v string) error {
		c.jitterGiven = true
		return durParam(func(c *redisConf) *time.Duration { return &c.o.ConnMaxLifetimeJitter })(c, v)
	}},
	{"disable_identity", topoAll, false, boolParam(func(c *redisConf) *bool { return &c.o.DisableIdentity })},
	{"skip_verify", topoAll, true, boolParam(func(c *redisConf) *bool { return &c.skipVerify })},
	{"db", topoSingle | topoSentinel, false, func(c *redisConf, v string) error {
		if c.pathDB {
			return fmt.Errorf("database number given twice, in the path and as ?db=")
		}
		return intParam(0, func(c *redisConf) *int { return &c.o.DB })(c, v)
	}},
	{"addr", topoCluster | topoSentinel, false, func(c *redisConf, v string) error {
		a, err := hostPort(v, "")
		if err != nil {
			return fmt.Errorf("addr=%q: %v", v, err)
		}
		c.addrs = append(c.addrs, a)
		return nil
	}},
	{"max_redirects", topoCluster, false, intParam(-1, func(c *redisConf) *int { return &c.maxRedirects })},
	{"read_only", topoCluster, false, boolParam(func(c *redisConf) *bool { return &c.readOnly })},
	{"route_by_latency", topoCluster, false, boolParam(func(c *redisConf) *bool { return &c.routeByLatency })},
	{"route_by_latency_tolerance", topoCluster, false, durParam(func(c *redisConf) *time.Duration { return &c.routeByLatencyTolerance })},
	{"route_randomly", topoCluster, false, boolParam(func(c *redisConf) *bool { return &c.routeRandomly })},
	{"failing_timeout_seconds", topoCluster, false, intParam(0, func(c *redisConf) *int { return &c.failingTimeoutSeconds })},
	{"sentinel_username", topoSentinel, false, strParam(func(c *redisConf) *string { return &c.sentinelUsername })},
	{"sentinel_password", topoSentinel, false, strParam(func(c *redisConf) *string { return &c.sentinelPassword })},
}

// redisAliases are older names of parameters, kept for URLs written for
// go-redis's ParseURL; a URL may not give both names.
var redisAliases = map[string]string{"idle_timeout": "conn_max_idle_time", "max_conn_age": "conn_max_lifetime"}

// strParam sets a string.
func strParam(field func(*redisConf) *string) func(*redisConf, string) error {
	return func(c *redisConf, v string) error { *field(c) = v; return nil }
}

// durParam sets a duration as go-redis's URL parsers do: a Go duration
// (500ms, 2s) or a plain number of seconds; 0 or less disables the timeout
// (-1), an empty value keeps go-redis's default.
func durParam(field func(*redisConf) *time.Duration) func(*redisConf, string) error {
	return func(c *redisConf, v string) error {
		var d time.Duration
		if v != "" {
			if n, err := strconv.Atoi(v); err == nil {
				d = time.Duration(n) * time.Second
			} else if d, err = time.ParseDuration(v); err != nil {
				return fmt.Errorf("%q: want a duration such as 500ms or 2s (a plain number is seconds; 0 or less disables it)", v)
			}
			if d <= 0 {
				d = -1
			}
		}
		*field(c) = d
		return nil
	}
}

// intParam sets a whole number of at least least; an empty value keeps
// go-redis's default (0).
func intParam(least int, field func(*redisConf) *int) func(*redisConf, string) error {
	return func(c *redisConf, v string) error {
		n := 0
		if v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < least {
				return fmt.Errorf("%q: want a whole number ≥ %d", v, least)
			}
		}
		*field(c) = n
		return nil
	}
}

// boolParam sets a boolean: true or 1, false or 0; empty is false.
func boolParam(field func(*redisConf) *bool) func(*redisConf, string) error {
	return func(c *redisConf, v string) error {
		switch v {
		case "true", "1":
			*field(c) = true
		case "false", "0", "":
			*field(c) = false
		default:
			return fmt.Errorf("%q: want true, false, 1 or 0", v)
		}
		return nil
	}
}

// redisParamNames returns the names of the parameters that a URL of
// topology topo takes, sorted; with tls, also those of the TLS schemes.
func redisParamNames(topo redisTopology, tls bool) []string {
	var names []string
	for _, p := range redisParams {
		if p.topo&topo != 0 && (!p.tlsOnly || tls) {
			names = append(names, p.name)
		}
	}
	slices.Sort(names)
	return names
}

// hostPort checks a host[:port] address, adding defaultPort when it has no
// port (or failing when defaultPort is empty).
func hostPort(a, defaultPort string) (string, error) {
	if a == "" {
		return "", fmt.Errorf("empty address")
	}
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		if defaultPort == "" || !strings.Contains(err.Error(), "missing port") {
			return "", fmt.Errorf("want host:port")
		}
		h, p = strings.Trim(a, "[]"), defaultPort
	}
	if h == "" {
		return "", fmt.Errorf("no host")
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("bad port %q", p)
	}
	return net.JoinHostPort(h, p), nil
}

// parseRedisURL parses a Redis store URL of topology topo (see
// parseStoreURL): redis[s]://, redis[s]+cluster:// or redis[s]+sentinel://.
// Every scheme is parsed by the same code; the go-redis options of its
// topology are made from the result. Errors show the URL redacted and
// never a secret of it.
func parseRedisURL(s string, topo redisTopology) (*redisSpec, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", redact(s), scrubText(s, fmt.Sprintf(format, args...)))
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, bad("not a valid URL: %s", urlDetail(s))
	}
	scheme := strings.ToLower(u.Scheme)
	if u.Opaque != "" {
		return nil, bad("want %s://host:port…", scheme)
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return nil, bad("a store URL has no #fragment (percent-encode a # in a password as %%23)")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, bad("bad query: %s", scrubbed(s, err))
	}
	c := &redisConf{topo: topo, tls: strings.HasPrefix(scheme, "rediss")}
	if u.User != nil {
		c.o.Username = u.User.Username()
		c.o.Password, c.userPassword = u.User.Password()
	}

	// Where to connect: the host part and the path.
	switch topo {
	case topoSingle:
		if strings.Contains(u.Host, ",") {
			return nil, bad("one host only; for several use redis+cluster:// or redis+sentinel://")
		}
		h, p := u.Hostname(), u.Port()
		if h == "" {
			h = "localhost"
		}
		if p == "" {
			p = "6379"
		}
		c.o.Addr = net.JoinHostPort(h, p)
		switch f := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' }); len(f) {
		case 0:
		case 1:
			db, err := strconv.Atoi(f[0])
			if err != nil || db < 0 {
				return nil, bad("invalid database number %q in the path", f[0])
			}
			c.o.DB, c.pathDB = db, true
		default:
			return nil, bad("invalid path %q: want /DB (a database number) or nothing", u.Path)
		}
	case topoCluster, topoSentinel:
		if u.Host == "" {
			if topo == topoCluster {
				return nil, bad("want %s://host1:port,host2:port", scheme)
			}
			return nil, bad("want %s://host1:port,host2:port/master-name", scheme)
		}
		port := "6379"
		if topo == topoSentinel {
			port = defaultSentinelPort
		}
		for a := range strings.SplitSeq(u.Host, ",") {
			if a == "" {
				return nil, bad("empty address in the host list %q", u.Host)
			}
			hp, err := hostPort(a, port)
			if err != nil {
				return nil, bad("address %q: %v", a, err)
			}
			c.addrs = append(c.addrs, hp)
		}
		if topo == topoCluster {
			if u.Path != "" && u.Path != "/" {
				return nil, bad("a cluster has no database number; remove the path %q", u.Path)
			}
			break
		}
		segs := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
		if len(segs) > 0 && segs[len(segs)-1] == "" && len(segs) > 1 {
			segs = segs[:len(segs)-1] // a trailing slash
		}
		if segs[0] == "" || len(segs) > 2 {
			return nil, bad("want %s://host1:port,host2:port/master-name[/db]: the path names the master Sentinel monitors", scheme)
		}
		if c.master, err = url.PathUnescape(segs[0]); err != nil || c.master == "" {
			return nil, bad("bad master name %q", segs[0])
		}
		if len(segs) == 2 {
			db, err := strconv.Atoi(segs[1])
			if err != nil || db < 0 {
				return nil, bad("invalid database number %q in the path", segs[1])
			}
			c.o.DB, c.pathDB = db, true
		}
	}

	// The options, in a fixed order so that the first error is the same
	// each time.
	for alias, name := range redisAliases {
		if q.Has(alias) && q.Has(name) {
			return nil, bad("%s and %s are the same option; give one", alias, name)
		}
	}
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		i := slices.IndexFunc(redisParams, func(p redisParam) bool { return p.name == name })
		if i < 0 || redisParams[i].topo&topo == 0 || (redisParams[i].tlsOnly && !c.tls) {
			why := "unknown option"
			if i >= 0 && redisParams[i].tlsOnly {
				why = "option for TLS schemes (rediss…) only"
			} else if i >= 0 {
				why = "option not taken by this scheme"
			}
			return nil, bad("%s %q; the options of %s:// are: %s", why, name, scheme,
				strings.Join(redisParamNames(topo, c.tls), ", "))
		}
		vs := q[name]
		if len(vs) > 1 && name != "addr" {
			return nil, bad("%s given %d times", name, len(vs))
		}
		for _, v := range vs {
			if err := redisParams[i].set(c, v); err != nil {
				if strings.HasPrefix(err.Error(), `"`) { // the value, then why
					return nil, bad("%s=%s", name, err.Error())
				}
				return nil, bad("%s", err.Error())
			}
		}
	}
	if !c.retriesGiven {
		c.o.MaxRetries = -1 // see "Client retries" in docs/redis.md
	}
	// The scripts of concurrent requests share system calls through the
	// client's AutoPipeliner (redisstore.Options.AutoPipeline): on by
	// default on one server and behind Sentinel. Not on a cluster, where its
	// routing recovered more slowly after a failover (docs/redis.md).
	c.store.AutoPipeline = c.topo != topoCluster && !c.noPipeline
	if c.jitterGiven {
		c.o.ConnMaxLifetimeJitter = min(c.o.ConnMaxLifetimeJitter, c.o.ConnMaxLifetime)
	}
	if c.tls {
		// No ServerName: every server (each node of a cluster, each
		// sentinel and the master it names) is verified under the host it
		// is dialled at.
		c.o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.skipVerify}
	}

	readTimeout := c.o.ReadTimeout
	if readTimeout == 0 {
		readTimeout = goRedisReadTimeout
	}
	if w := c.store.WaitTimeout; w > 0 && readTimeout > 0 && w > readTimeout/2 {
		return nil, bad("wait_timeout=%v is more than half of read_timeout (%v): WAIT's answer must arrive before the client stops reading; lower wait_timeout or raise read_timeout", w, readTimeout)
	}
	rs := &redisSpec{store: c.store}
	switch topo {
	case topoSingle:
		rs.single = c.single()
	case topoCluster:
		rs.cluster = c.cluster()
	case topoSentinel:
		rs.failover = c.failover()
	}
	return rs, nil
}

// single returns the go-redis options of a single-server URL.
func (c *redisConf) single() *redis.Options {
	o := &redis.Options{Network: "tcp"}
	c.copyCommon(o)
	o.Addr = c.o.Addr
	o.DB = c.o.DB
	return o
}

// copyCommon copies the fields every scheme shares into o.
func (c *redisConf) copyCommon(o *redis.Options) {
	o.Username, o.Password = c.o.Username, c.o.Password
	o.ClientName, o.Protocol = c.o.ClientName, c.o.Protocol
	o.MaxRetries, o.MinRetryBackoff, o.MaxRetryBackoff = c.o.MaxRetries, c.o.MinRetryBackoff, c.o.MaxRetryBackoff
	o.DialTimeout, o.DialerRetries, o.DialerRetryTimeout = c.o.DialTimeout, c.o.DialerRetries, c.o.DialerRetryTimeout
	o.ReadTimeout, o.WriteTimeout, o.ContextTimeoutEnabled = c.o.ReadTimeout, c.o.WriteTimeout, c.o.ContextTimeoutEnabled
	o.PoolFIFO, o.PoolSize, o.PoolTimeout = c.o.PoolFIFO, c.o.PoolSize, c.o.PoolTimeout
	o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = c.o.MinIdleConns, c.o.MaxIdleConns, c.o.MaxActiveConns
	o.MaxConcurrentDials = c.o.MaxConcurrentDials
	o.PipelinePoolSize, o.PipelineReadBufferSize, o.PipelineWriteBufferSize = c.o.PipelinePoolSize, c.o.PipelineReadBufferSize, c.o.PipelineWriteBufferSize
	o.ConnMaxIdleTime, o.ConnMaxLifetime, o.ConnMaxLifetimeJitter = c.o.ConnMaxIdleTime, c.o.ConnMaxLifetime, c.o.ConnMaxLifetimeJitter
	o.DisableIdentity = c.o.DisableIdentity
	o.TLSConfig = c.o.TLSConfig
}

// cluster returns the go-redis options of a cluster URL.
func (c *redisConf) cluster() *redis.ClusterOptions {
	var o redis.Options
	c.copyCommon(&o)
	return &redis.ClusterOptions{
		Addrs:    slices.Clone(c.addrs),
		Username: o.Username, Password: o.Password,
		ClientName: o.ClientName, Protocol: o.Protocol,
		MaxRetries: o.MaxRetries, MinRetryBackoff: o.MinRetryBackoff, MaxRetryBackoff: o.MaxRetryBackoff,
		DialTimeout: o.DialTimeout, DialerRetries: o.DialerRetries, DialerRetryTimeout: o.DialerRetryTimeout,
		ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		PoolFIFO: o.PoolFIFO, PoolSize: o.PoolSize, PoolTimeout: o.PoolTimeout,
		MinIdleConns: o.MinIdleConns, MaxIdleConns: o.MaxIdleConns, MaxActiveConns: o.MaxActiveConns,
		MaxConcurrentDials: o.MaxConcurrentDials,
		PipelinePoolSize:   o.PipelinePoolSize, PipelineReadBufferSize: o.PipelineReadBufferSize, PipelineWriteBufferSize: o.PipelineWriteBufferSize,
		ConnMaxIdleTime: o.ConnMaxIdleTime, ConnMaxLifetime: o.ConnMaxLifetime, ConnMaxLifetimeJitter: o.ConnMaxLifetimeJitter,
		DisableIdentity: o.DisableIdentity,
		TLSConfig:       o.TLSConfig,

		MaxRedirects:            c.maxRedirects,
		ReadOnly:                c.readOnly,
		RouteByLatency:          c.routeByLatency,
		RouteByLatencyTolerance: c.routeByLatencyTolerance,
		RouteRandomly:           c.routeRandomly,
		FailingTimeoutSeconds:   c.failingTimeoutSeconds,
	}
}

// failover returns the go-redis options of a sentinel URL: the user info
// and password are the data nodes' (master and replicas), the sentinels
// have their own (sentinel_username, sentinel_password). Every other
// option applies to the connections to the sentinels as well.
func (c *redisConf) failover() *redis.FailoverOptions {
	var o redis.Options
	c.copyCommon(&o)
	return &redis.FailoverOptions{
		MasterName:       c.master,
		SentinelAddrs:    slices.Clone(c.addrs),
		SentinelUsername: c.sentinelUsername, SentinelPassword: c.sentinelPassword,
		DB:       c.o.DB,
		Username: o.Username, Password: o.Password,
		ClientName: o.ClientName, Protocol: o.Protocol,
		MaxRetries: o.MaxRetries, MinRetryBackoff: o.MinRetryBackoff, MaxRetryBackoff: o.MaxRetryBackoff,
		DialTimeout: o.DialTimeout, DialerRetries: o.DialerRetries, DialerRetryTimeout: o.DialerRetryTimeout,
		ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		PoolFIFO: o.PoolFIFO, PoolSize: o.PoolSize, PoolTimeout: o.PoolTimeout,
		MinIdleConns: o.MinIdleConns, MaxIdleConns: o.MaxIdleConns, MaxActiveConns: o.MaxActiveConns,
		MaxConcurrentDials: o.MaxConcurrentDials,
		PipelinePoolSize:   o.PipelinePoolSize, PipelineReadBufferSize: o.PipelineReadBufferSize, PipelineWriteBufferSize: o.PipelineWriteBufferSize,
		ConnMaxIdleTime: o.ConnMaxIdleTime, ConnMaxLifetime: o.ConnMaxLifetime, ConnMaxLifetimeJitter: o.ConnMaxLifetimeJitter,
		DisableIdentity: o.DisableIdentity,
		TLSConfig:       o.TLSConfig,
	}
}
