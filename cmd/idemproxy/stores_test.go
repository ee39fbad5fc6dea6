package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem"
	"github.com/idemkit/idem/internal/testenv"
)

// TestRedisURLOptions checks what redis:// and redis+cluster:// URLs
// configure: go-redis's own options (all of them, on a cluster too), the
// store's wait_replicas and wait_timeout, the ?password= form, and no
// client-level retries unless max_retries is given.
func TestRedisURLOptions(t *testing.T) {
	single := func(t *testing.T, in string) (*redis.Options, storeSpec) {
		t.Helper()
		s, err := parseStoreURL(in)
		if err != nil {
			t.Fatalf("parseStoreURL(%q): %v", in, err)
		}
		if s.kind != storeRedis || s.redis == nil || s.redis.single == nil {
			t.Fatalf("parseStoreURL(%q) = %+v, want a single-server redis spec", in, s)
		}
		return s.redis.single, s
	}
	clustered := func(t *testing.T, in string) (*redis.ClusterOptions, storeSpec) {
		t.Helper()
		s, err := parseStoreURL(in)
		if err != nil {
			t.Fatalf("parseStoreURL(%q): %v", in, err)
		}
		if s.kind != storeRedisCluster || s.redis == nil || s.redis.cluster == nil {
			t.Fatalf("parseStoreURL(%q) = %+v, want a cluster redis spec", in, s)
		}
		return s.redis.cluster, s
	}

	t.Run("single defaults", func(t *testing.T) {
		o, s := single(t, "redis://127.0.0.1:6379/2")
		if o.Addr != "127.0.0.1:6379" || o.DB != 2 || o.MaxRetries != -1 {
			t.Fatalf("options = addr %q db %d max retries %d; want 127.0.0.1:6379, 2, -1 (no retries)", o.Addr, o.DB, o.MaxRetries)
		}
		if s.redis.store.WaitReplicas != 0 || s.redis.store.WaitTimeout != 0 {
			t.Fatalf("store options = %+v, want none", s.redis.store)
		}
	})
	t.Run("single wait and options", func(t *testing.T) {
		o, s := single(t, "redis://u:pw@h:1/3?wait_replicas=1&wait_timeout=50ms&dial_timeout=2s&read_timeout=3s&pool_size=7&max_retries=2")
		if s.redis.store.WaitReplicas != 1 || s.redis.store.WaitTimeout != 50*time.Millisecond {
			t.Fatalf("store options = %+v, want WaitReplicas 1, WaitTimeout 50ms", s.redis.store)
		}
		if o.Username != "u" || o.Password != "pw" || o.DB != 3 || o.DialTimeout != 2*time.Second ||
			o.ReadTimeout != 3*time.Second || o.PoolSize != 7 || o.MaxRetries != 2 {
			t.Fatalf("go-redis options not applied: %+v", o)
		}
	})
	t.Run("single password parameter", func(t *testing.T) {
		o, _ := single(t, "rediss://h:6380?password=s%26cret&wait_replicas=0")
		if o.Password != "s&cret" || o.TLSConfig == nil {
			t.Fatalf("password %q, TLS %v; want s&cret over TLS", o.Password, o.TLSConfig != nil)
		}
	})
	t.Run("cluster options", func(t *testing.T) {
		o, s := clustered(t, "redis+cluster://h1:7000,h2:7001?wait_replicas=2&wait_timeout=1s"+
			"&password=pw&dial_timeout=2s&read_timeout=3s&write_timeout=4s&pool_size=7&max_retries=1"+
			"&min_idle_conns=2&max_redirects=5&read_only=true&pool_timeout=6s&conn_max_idle_time=1m&client_name=x")
		want := redis.ClusterOptions{
			Addrs: []string{"h1:7000", "h2:7001"}, Password: "pw", DialTimeout: 2 * time.Second,
			ReadTimeout: 3 * time.Second, WriteTimeout: 4 * time.Second, PoolSize: 7, MaxRetries: 1,
			MinIdleConns: 2, MaxRedirects: 5, ReadOnly: true, PoolTimeout: 6 * time.Second,
			ConnMaxIdleTime: time.Minute, ClientName: "x",
		}
		got := redis.ClusterOptions{
			Addrs: o.Addrs, Password: o.Password, DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout,
			WriteTimeout: o.WriteTimeout, PoolSize: o.PoolSize, MaxRetries: o.MaxRetries, MinIdleConns: o.MinIdleConns,
			MaxRedirects: o.MaxRedirects, ReadOnly: o.ReadOnly, PoolTimeout: o.PoolTimeout,
			ConnMaxIdleTime: o.ConnMaxIdleTime, ClientName: o.ClientName,
		}
		if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
			t.Fatalf("cluster options\n got %+v\nwant %+v", got, want)
		}
		if s.redis.store.WaitReplicas != 2 || s.redis.store.WaitTimeout != time.Second {
			t.Fatalf("store options = %+v, want WaitReplicas 2, WaitTimeout 1s", s.redis.store)
		}
		if strings.Join(s.addr, ",") != "h1:7000,h2:7001" {
			t.Fatalf("addr = %v", s.addr)
		}
	})
	t.Run("cluster defaults", func(t *testing.T) {
		o, _ := clustered(t, "redis+cluster://h1,h2:7001?addr=h3:7002")
		if strings.Join(o.Addrs, ",") != "h1:6379,h2:7001,h3:7002" || o.MaxRetries != -1 || o.TLSConfig != nil {
			t.Fatalf("addrs %v, max retries %d, TLS %v", o.Addrs, o.MaxRetries, o.TLSConfig != nil)
		}
	})
	t.Run("cluster TLS", func(t *testing.T) {
		o, _ := clustered(t, "rediss+cluster://u:pw@h1:7000,h2:7001/")
		if o.TLSConfig == nil || o.TLSConfig.ServerName != "" || o.Username != "u" || o.Password != "pw" {
			t.Fatalf("TLS %+v, user %q, password %q: want TLS verified per node address", o.TLSConfig, o.Username, o.Password)
		}
	})
	t.Run("wait timeout within read timeout", func(t *testing.T) {
		single(t, "redis://h?read_timeout=1s&wait_replicas=1&wait_timeout=500ms")
		single(t, "redis://h?read_timeout=0&wait_replicas=1&wait_timeout=1h") // no read timeout
		single(t, "redis://h?wait_replicas=1&wait_timeout=2500ms")            // half of go-redis's 5s
	})
}

// TestRedisURLErrors checks that bad redis URLs are refused with an error
// that names what is wrong.
func TestRedisURLErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"redis://h?wait_replicas=-1", "wait_replicas"},
		{"redis://h?wait_replicas=x", "wait_replicas"},
		{"redis://h?wait_replicas=1.5", "wait_replicas"},
		{"redis://h?wait_replicas=", "wait_replicas"},
		{"redis://h?wait_replicas=1&wait_replicas=2", "wait_replicas given 2 times"},
		{"redis://h?wait_timeout=0", "wait_timeout"},
		{"redis://h?wait_timeout=-1s", "wait_timeout"},
		{"redis://h?wait_timeout=50", "wait_timeout"},
		{"redis://h?wait_timeout=soon", "wait_timeout"},
		{"redis://h?wait_replicas=1&wait_timeout=3s", "more than half of read_timeout"},
		{"redis://h?read_timeout=1s&wait_timeout=600ms", "more than half of read_timeout"},
		{"redis+cluster://h1:1,h2:2?wait_timeout=1x", "wait_timeout"},
		{"redis+cluster://h1:1,h2:2?wait_replicas=two", "wait_replicas"},
		{"redis://u:pw@h?password=pw2", "password given twice"},
		{"redis://h?password=aaaa1&password=bbbb2", "password given 2 times"},
		{"redis://h?bogus=1", `unknown option "bogus"; the options of redis:// are: auto_pipeline, client_name, `},
		{"redis://h?dial_timeout=soon", "dial_timeout"},
		{"redis://h?prefix=", "prefix=\"\": want 1 to 64 bytes"},
		{"redis://h/x", "database number"},
		{"redis+cluster://h1:7000/0", "no database number"},
		{"redis+cluster://h1:7000,,h2:7001", "empty address"},
		{"redis+cluster://", "want redis+cluster://host1:port"},
		{"redis+cluster://h1:7000?bogus=1", `unknown option "bogus"; the options of redis+cluster:// are: addr, client_name, `},
		{"redis+cluster://h1:7000?max_redirects=x", "max_redirects"},
		{"redis:opaque", "want redis://host:port"},
		{"postgres:host=h password=x", "want a URL"},
	} {
		_, err := parseStoreURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseStoreURL(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

// TestStoreURLSecrets checks that no error about a store URL and no
// redact() output shows a password or another secret parameter, for valid
// and invalid URLs of every store kind, including the errors of opening a
// store that cannot be reached.
func TestStoreURLSecrets(t *testing.T) {
	const pw = "Hunter2pw"
	inputs := []string{
		"redis://user:" + pw + "@h:1/0",
		"redis://:" + pw + "@h:1/0?bogus=1",
		"redis://user:" + pw + "@h:1/notanumber",
		"redis://h:1?password=" + pw,
		"redis://h:1?password=" + pw + "&dial_timeout=bogus",
		"redis://h:1?Password=" + pw,
		"redis://h:1?token=" + pw,
		"redis://u:" + url.PathEscape(pw[:6]) + "%32pw@h:1", // Hunter%32pw decodes to Hunter2pw
		"redis://u:" + pw + "@h:notaport",
		"redis://u:Hunter2/pw@h:1",
		"redis+cluster://h1:1,h2:2?password=" + pw,
		"redis+cluster://h1:1,h2:2?password=" + pw + "&max_redirects=x",
		"rediss+cluster://u:" + pw + "@h1:1,h2:2/3",
		"redis+cluster://u:" + pw + "@h1:1,,h2:2",
		"redis+sentinel://u:" + pw + "@s1:1,s2:2/m",
		"rediss+sentinel://u:" + pw + "@s1:1,s2:2/m/x",
		"redis+sentinel://s1:1,s2:2/m?sentinel_password=" + pw,
		"redis+sentinel://s1:1,s2:2/m?sentinel_password=" + pw + "&bogus=1",
		"redis+sentinel://s1:1/m?sentinel_password=" + pw + "&sentinel_password=" + pw + "x",
		"redis+sentinel://u:" + pw + "@s1:1,s2:notaport/m",
		"redis+sentinel://u:Hunter2/pw@s1:1/m",
		"postgres://u:" + pw + "@h/db?sslmode=disable",
		"postgres://u:" + pw + "@h/db?sslmode=bogus",
		"postgres://h/db?password=" + pw + "&sslmode=bogus",
		"postgres://h/db?sslpassword=" + pw + "&connect_timeout=x",
		"postgres://h/db?api_token=" + pw,
		"postgresql://u:" + pw + "@h:99999/db",
		"postgres:u:" + pw + "@h/db",
	}
	leaks := func(text string) bool {
		return strings.Contains(text, pw) || strings.Contains(text, "Hunter%32pw") || strings.Contains(text, "Hunter2/pw")
	}
	for _, in := range inputs {
		if out := redact(in); leaks(out) {
			t.Errorf("redact(%q) = %q: shows the secret", in, out)
		}
		spec, err := parseStoreURL(in)
		if err != nil {
			if leaks(err.Error()) {
				t.Errorf("parseStoreURL(%q) error shows the secret: %v", in, err)
			}
			continue
		}
		if spec.kind == storePostgres || spec.kind == storeRedisSentinel {
			// Open it against a port nothing listens on and check it at
			// start, with -require-store: the error must not show the
			// secret either, nor what the store logs meanwhile.
			spec.raw = strings.Replace(spec.raw, "@h/", "@127.0.0.1:1/", 1)
			spec.raw = strings.Replace(spec.raw, "://h/", "://127.0.0.1:1/", 1)
			if spec.kind == storeRedisSentinel {
				spec.raw = strings.Replace(spec.raw, "s1:1,s2:2", "127.0.0.1:1,127.0.0.1:2", 1)
				sep := "?"
				if strings.Contains(spec.raw, "?") {
					sep = "&"
				}
				spec.raw += sep + "dialer_retries=1" // fail fast
				spec.redis = nil                     // openStore parses raw again
			}
			var logs syncBuffer
			log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			st, err := openStore(context.Background(), spec, log)
			if err == nil {
				err = checkStore(context.Background(), st, true, log)
				st.close()
				if err == nil {
					t.Errorf("checkStore(%q) reached a server on port 1", in)
					continue
				}
			}
			if leaks(err.Error()) || leaks(logs.String()) {
				t.Errorf("opening and checking %q shows the secret: %v\n%s", in, err, logs.String())
			}
		}
	}
	// The secret is masked, the rest stays readable.
	for in, want := range map[string]string{
		"redis://user:" + pw + "@h:1/0":                                                            "redis://user:xxxxx@h:1/0",
		"redis+cluster://h1:1,h2:2?password=" + pw:                                                 "redis+cluster://h1:1,h2:2?password=xxxxx",
		"redis+sentinel://u:" + pw + "@s1:1,s2:2/m/0?sentinel_password=" + pw + "&wait_replicas=1": "redis+sentinel://u:xxxxx@s1:1,s2:2/m/0?sentinel_password=xxxxx&wait_replicas=1",
		"postgres://h/db?sslmode=disable&PassWord=" + pw:                                           "postgres://h/db?sslmode=disable&PassWord=xxxxx",
		"file:/var/lib/user@host/idem.db":                                                          "file:/var/lib/user@host/idem.db",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenStoreErrorUnwraps checks that a scrubbed open error still says
// what kind of failure it is.
func TestOpenStoreErrorUnwraps(t *testing.T) {
	sentinel := errors.New("inner")
	err := safeError("postgres://u:Hunter2pw@h/db", fmt.Errorf("wrapped Hunter2pw: %w", sentinel))
	if !errors.Is(err, sentinel) || strings.Contains(err.Error(), "Hunter2pw") {
		t.Fatalf("safeError = %v (is sentinel: %v)", err, errors.Is(err, sentinel))
	}
}

// TestGoRedisReadTimeout checks goRedisReadTimeout against go-redis's own
// default, for a single server, a cluster and a failover (Sentinel) client.
func TestGoRedisReadTimeout(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cc.Close()
	if got := c.Options().ReadTimeout; got != goRedisReadTimeout {
		t.Errorf("go-redis's default ReadTimeout is %v, goRedisReadTimeout says %v", got, goRedisReadTimeout)
	}
	if got := cc.Options().ReadTimeout; got != goRedisReadTimeout {
		t.Errorf("go-redis's default cluster ReadTimeout is %v, goRedisReadTimeout says %v", got, goRedisReadTimeout)
	}
	fc := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "m", SentinelAddrs: []string{"127.0.0.1:1"}})
	defer fc.Close()
	if got := fc.Options().ReadTimeout; got != goRedisReadTimeout {
		t.Errorf("go-redis's default failover ReadTimeout is %v, goRedisReadTimeout says %v", got, goRedisReadTimeout)
	}
}

// TestRedisWaitReplicasFromURL opens stores from URLs on the test servers,
// which have no replicas: with wait_replicas=1&wait_timeout=50ms an
// acquiring Begin and a Complete fail closed within about the wait timeout
// (and the Begin gives its key back), while wait_replicas=0 works.
func TestRedisWaitReplicasFromURL(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		addr := testenv.Need(t, "IDEM_REDIS_ADDR")
		testWaitReplicasFromURL(t, "redis://"+addr)
	})
	t.Run("cluster", func(t *testing.T) {
		addrs := testenv.Need(t, "IDEM_REDIS_CLUSTER_ADDRS")
		testWaitReplicasFromURL(t, "redis+cluster://"+addrs)
	})
}

func testWaitReplicasFromURL(t *testing.T, base string) {
	open := func(query string) idem.Store {
		t.Helper()
		spec, err := parseStoreURL(base + "?" + query)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := openStore(ctx, spec, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := st.close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
		return st.store
	}
	plain := open("wait_replicas=0")
	durable := open("wait_replicas=1&wait_timeout=50ms")
	ctx := context.Background()
	key := fmt.Sprintf("wait-url-%x", rand.Uint64())
	fp := []byte("fp")

	start := time.Now()
	_, err := durable.Begin(ctx, key, fp, time.Minute)
	took := time.Since(start)
	if !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Begin with wait_replicas=1 and no replica = %v, want ErrStoreUnavailable", err)
	}
	if took < 40*time.Millisecond || took > 900*time.Millisecond {
		t.Fatalf("Begin with wait_timeout=50ms failed after %v: the URL's wait timeout was not used", took)
	}
	b, err := plain.Begin(ctx, key, fp, time.Minute)
	if err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin with wait_replicas=0 after the refused one = %+v, %v; want acquired (the key was given back)", b, err)
	}
	err = durable.Complete(ctx, key, b.Fence, []byte("r"), time.Minute)
	if !errors.Is(err, idem.ErrStoreUnavailable) {
		t.Fatalf("Complete with wait_replicas=1 and no replica = %v, want ErrStoreUnavailable", err)
	}
	// WAIT does not roll back: the completion is on the primary, and a
	// replay returns it (docs/redis.md).
	if b, err := plain.Begin(ctx, key, fp, time.Minute); err != nil || b.Outcome != idem.Replay || string(b.Result) != "r" {
		t.Fatalf("Begin after the unacknowledged Complete = %+v, %v; want the replay", b, err)
	}
	key2 := key + "-2"
	if b, err := plain.Begin(ctx, key2, fp, time.Minute); err != nil || b.Outcome != idem.Acquired {
		t.Fatalf("Begin with wait_replicas=0 = %+v, %v", b, err)
	} else if err := plain.Complete(ctx, key2, b.Fence, []byte("r"), time.Minute); err != nil {
		t.Fatalf("Complete with wait_replicas=0: %v", err)
	}
}

// redisSchemeBases are a URL of every Redis scheme, to which the option
// tests add their query.
var redisSchemeBases = []struct {
	scheme, base string
	topo         redisTopology
	tls          bool
}{
	{"redis", "redis://h:1", topoSingle, false},
	{"rediss", "rediss://h:1", topoSingle, true},
	{"redis+cluster", "redis+cluster://h1:1,h2:2", topoCluster, false},
	{"rediss+cluster", "rediss+cluster://h1:1,h2:2", topoCluster, true},
	{"redis+sentinel", "redis+sentinel://h1:1,h2:2/m", topoSentinel, false},
	{"rediss+sentinel", "rediss+sentinel://h1:1,h2:2/m", topoSentinel, true},
}

// goRedisOptions returns the go-redis options struct that spec's scheme
// makes (*redis.Options, *redis.ClusterOptions or *redis.FailoverOptions).
func goRedisOptions(t *testing.T, spec storeSpec) reflect.Value {
	t.Helper()
	switch {
	case spec.redis == nil:
		t.Fatalf("not a Redis spec: %+v", spec)
	case spec.kind == storeRedis && spec.redis.single != nil:
		return reflect.ValueOf(spec.redis.single).Elem()
	case spec.kind == storeRedisCluster && spec.redis.cluster != nil:
		return reflect.ValueOf(spec.redis.cluster).Elem()
	case spec.kind == storeRedisSentinel && spec.redis.failover != nil:
		return reflect.ValueOf(spec.redis.failover).Elem()
	}
	t.Fatalf("spec of kind %d without its go-redis options: %+v", spec.kind, spec.redis)
	return reflect.Value{}
}

// TestRedisURLOptionPerScheme checks every option of a Redis store URL on
// every Redis scheme: on a scheme that takes it, the value reaches the
// go-redis options struct of that scheme (or redisstore.Options), with the
// same meaning everywhere; on one that does not, the URL is refused with
// the list of the options it takes. Every option of redisParams must have
// a case here.
func TestRedisURLOptionPerScheme(t *testing.T) {
	const (
		all      = topoAll
		cluster  = topoCluster
		sentinel = topoSentinel
	)
	type field struct {
		name string // a field of the go-redis options struct, "store.X" for redisstore.Options, or "seeds"
		want any
	}
	cases := []struct {
		query   string
		topo    redisTopology
		tlsOnly bool
		fields  []field
	}{
		{"password=s%26cret", all, false, []field{{"Password", "s&cret"}}},
		{"wait_replicas=2", all, false, []field{{"store.WaitReplicas", 2}}},
		{"wait_timeout=75ms", all, false, []field{{"store.WaitTimeout", 75 * time.Millisecond}}},
		{"client_name=idem", all, false, []field{{"ClientName", "idem"}}},
		{"prefix=app1:", all, false, []field{{"store.Prefix", "app1:"}}},
		{"protocol=2", all, false, []field{{"Protocol", 2}}},
		{"max_retries=2", all, false, []field{{"MaxRetries", 2}}},
		{"max_retries=0", all, false, []field{{"MaxRetries", 0}}}, // go-redis's default (3) when given as 0
		{"min_retry_backoff=10ms", all, false, []field{{"MinRetryBackoff", 10 * time.Millisecond}}},
		{"max_retry_backoff=1s", all, false, []field{{"MaxRetryBackoff", time.Second}}},
		{"dial_timeout=250ms", all, false, []field{{"DialTimeout", 250 * time.Millisecond}}},
		{"dial_timeout=3", all, false, []field{{"DialTimeout", 3 * time.Second}}}, // a plain number is seconds
		{"dial_timeout=0", all, false, []field{{"DialTimeout", time.Duration(-1)}}},
		{"dialer_retries=1", all, false, []field{{"DialerRetries", 1}}},
		{"dialer_retry_timeout=20ms", all, false, []field{{"DialerRetryTimeout", 20 * time.Millisecond}}},
		{"read_timeout=200ms", all, false, []field{{"ReadTimeout", 200 * time.Millisecond}}},
		{"write_timeout=300ms", all, false, []field{{"WriteTimeout", 300 * time.Millisecond}}},
		{"context_timeout_enabled=true", all, false, []field{{"ContextTimeoutEnabled", true}}},
		{"pool_fifo=1", all, false, []field{{"PoolFIFO", true}}},
		{"pool_size=7", all, false, []field{{"PoolSize", 7}}},
		{"pool_timeout=6s", all, false, []field{{"PoolTimeout", 6 * time.Second}}},
		{"min_idle_conns=2", all, false, []field{{"MinIdleConns", 2}}},
		{"max_idle_conns=3", all, false, []field{{"MaxIdleConns", 3}}},
		{"max_active_conns=9", all, false, []field{{"MaxActiveConns", 9}}},
		{"max_concurrent_dials=4", all, false, []field{{"MaxConcurrentDials", 4}}},
		{"pipeline_pool_size=-1", all, false, []field{{"PipelinePoolSize", -1}}},
		{"pipeline_read_buffer_size=65536", all, false, []field{{"PipelineReadBufferSize", 65536}}},
		{"pipeline_write_buffer_size=4096", all, false, []field{{"PipelineWriteBufferSize", 4096}}},
		{"conn_max_idle_time=1m", all, false, []field{{"ConnMaxIdleTime", time.Minute}}},
		{"idle_timeout=2m", all, false, []field{{"ConnMaxIdleTime", 2 * time.Minute}}},
		{"conn_max_lifetime=1h", all, false, []field{{"ConnMaxLifetime", time.Hour}}},
		{"max_conn_age=2h", all, false, []field{{"ConnMaxLifetime", 2 * time.Hour}}},
		{"conn_max_lifetime=1h&conn_max_lifetime_jitter=2h", all, false,
			[]field{{"ConnMaxLifetime", time.Hour}, {"ConnMaxLifetimeJitter", time.Hour}}}, // capped at the lifetime
		{"disable_identity=true", all, false, []field{{"DisableIdentity", true}}},
		{"skip_verify=true", all, true, []field{{"TLSConfig.InsecureSkipVerify", true}}},
		{"db=4", topoSingle | sentinel, false, []field{{"DB", 4}}},
		{"addr=h9:9", cluster | sentinel, false, []field{{"seeds", []string{"h1:1", "h2:2", "h9:9"}}}},
		{"max_redirects=5", cluster, false, []field{{"MaxRedirects", 5}}},
		{"read_only=true", cluster, false, []field{{"ReadOnly", true}}},
		{"route_by_latency=true", cluster, false, []field{{"RouteByLatency", true}}},
		{"route_by_latency_tolerance=5ms", cluster, false, []field{{"RouteByLatencyTolerance", 5 * time.Millisecond}}},
		{"route_randomly=true", cluster, false, []field{{"RouteRandomly", true}}},
		{"failing_timeout_seconds=7", cluster, false, []field{{"FailingTimeoutSeconds", 7}}},
		{"sentinel_username=su", sentinel, false, []field{{"SentinelUsername", "su"}}},
		{"sentinel_password=sp", sentinel, false, []field{{"SentinelPassword", "sp"}, {"Password", ""}}},
		{"auto_pipeline=false", topoSingle | sentinel, false, []field{{"store.AutoPipeline", false}}},
		{"auto_pipeline=true", topoSingle | sentinel, false, []field{{"store.AutoPipeline", true}}},
		{"native_begin=true", all, false, []field{{"store.NativeBegin", true}}},
		{"native_begin=0", all, false, []field{{"store.NativeBegin", false}}},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		for p := range strings.SplitSeq(tc.query, "&") {
			name, _, _ := strings.Cut(p, "=")
			covered[name] = true
		}
		for _, sc := range redisSchemeBases {
			in := sc.base + "?" + tc.query
			spec, err := parseStoreURL(in)
			if tc.topo&sc.topo == 0 || (tc.tlsOnly && !sc.tls) {
				want := "the options of " + sc.scheme + "://"
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("parseStoreURL(%q) = %v, want an error listing %q", in, err, want)
				}
				continue
			}
			if err != nil {
				t.Errorf("parseStoreURL(%q): %v", in, err)
				continue
			}
			o := goRedisOptions(t, spec)
			for _, f := range tc.fields {
				var got any
				switch {
				case strings.HasPrefix(f.name, "store."):
					got = reflect.ValueOf(spec.redis.store).FieldByName(strings.TrimPrefix(f.name, "store.")).Interface()
				case f.name == "seeds": // the cluster's seeds or the sentinels
					got = spec.addr
					seeds := "Addrs"
					if sc.topo == topoSentinel {
						seeds = "SentinelAddrs"
					}
					if s := o.FieldByName(seeds).Interface(); !reflect.DeepEqual(s, f.want) {
						t.Errorf("%q: %s = %v, want %v", in, seeds, s, f.want)
					}
				case f.name == "TLSConfig.InsecureSkipVerify":
					cfg := o.FieldByName("TLSConfig").Interface().(*tls.Config)
					if cfg == nil {
						t.Errorf("%q: no TLS config", in)
						continue
					}
					got = cfg.InsecureSkipVerify
				default:
					got = o.FieldByName(f.name).Interface()
				}
				if !reflect.DeepEqual(got, f.want) {
					t.Errorf("%q: %s = %#v, want %#v", in, f.name, got, f.want)
				}
			}
		}
	}
	for _, sc := range redisSchemeBases {
		spec, err := parseStoreURL(sc.base)
		if err != nil {
			t.Fatalf("parseStoreURL(%q): %v", sc.base, err)
		}
		if want := sc.topo != topoCluster; spec.redis.store.AutoPipeline != want {
			t.Errorf("%q: AutoPipeline = %v by default, want %v", sc.base, spec.redis.store.AutoPipeline, want)
		}
	}
	for _, p := range redisParams {
		if !covered[p.name] {
			t.Errorf("option %q has no case in TestRedisURLOptionPerScheme", p.name)
		}
	}
	// What no option changes, the same on every scheme: no client retries,
	// TLS 1.2 or later verified under each dialled host on TLS schemes,
	// the user info's user and password for the data nodes.
	for _, sc := range redisSchemeBases {
		in := strings.Replace(sc.base, "://", "://u:pw@", 1)
		spec, err := parseStoreURL(in)
		if err != nil {
			t.Fatalf("parseStoreURL(%q): %v", in, err)
		}
		o := goRedisOptions(t, spec)
		if got := o.FieldByName("MaxRetries").Interface(); got != -1 {
			t.Errorf("%q: MaxRetries = %v, want -1 (no client retries unless max_retries is given)", in, got)
		}
		if u, p := o.FieldByName("Username").Interface(), o.FieldByName("Password").Interface(); u != "u" || p != "pw" {
			t.Errorf("%q: Username, Password = %v, %v; want u, pw", in, u, p)
		}
		cfg := o.FieldByName("TLSConfig").Interface().(*tls.Config)
		switch {
		case sc.tls && (cfg == nil || cfg.ServerName != "" || cfg.MinVersion != tls.VersionTLS12 || cfg.InsecureSkipVerify):
			t.Errorf("%q: TLS config %+v; want TLS 1.2+, verified, no fixed server name", in, cfg)
		case !sc.tls && cfg != nil:
			t.Errorf("%q: TLS config on a plain scheme", in)
		}
	}
}

// TestRedisSentinelURL checks the forms of a redis+sentinel:// URL: the
// sentinels (default port 26379), the master's name and database number in
// the path, and the errors that name what is wrong.
func TestRedisSentinelURL(t *testing.T) {
	spec, err := parseStoreURL("rediss+sentinel://u:p%40ss@s1,s2:26380,s3:5000/my%20master/3?sentinel_password=sp&wait_replicas=1&wait_timeout=50ms")
	if err != nil {
		t.Fatal(err)
	}
	o := spec.redis.failover
	if spec.kind != storeRedisSentinel || o.MasterName != "my master" || o.DB != 3 ||
		strings.Join(o.SentinelAddrs, ",") != "s1:26379,s2:26380,s3:5000" || strings.Join(spec.addr, ",") != "s1:26379,s2:26380,s3:5000" ||
		o.Username != "u" || o.Password != "p@ss" || o.SentinelPassword != "sp" || o.SentinelUsername != "" || o.TLSConfig == nil {
		t.Fatalf("failover options = %+v, spec %+v", o, spec)
	}
	if spec.redis.store.WaitReplicas != 1 || spec.redis.store.WaitTimeout != 50*time.Millisecond {
		t.Fatalf("store options = %+v", spec.redis.store)
	}
	for _, in := range []string{"redis+sentinel://s1:1/m", "redis+sentinel://s1:1/m/", "REDIS+SENTINEL://s1:1/m/0", "redis+sentinel://[::1]:1/m"} {
		spec, err := parseStoreURL(in)
		if err != nil || spec.redis.failover.MasterName != "m" || spec.redis.failover.DB != 0 || spec.redis.failover.TLSConfig != nil ||
			len(spec.addr) != 1 || !strings.HasSuffix(spec.addr[0], ":1") {
			t.Errorf("parseStoreURL(%q) = %+v, %v", in, spec.redis, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"redis+sentinel://s1:1", "the path names the master"},
		{"redis+sentinel://s1:1/", "the path names the master"},
		{"redis+sentinel://s1:1/m/1/2", "the path names the master"},
		{"redis+sentinel://s1:1/m/x", `invalid database number "x"`},
		{"redis+sentinel://s1:1/m/1?db=2", "database number given twice"},
		{"redis+sentinel:///m", "want redis+sentinel://host1:port,host2:port/master-name"},
		{"redis+sentinel://s1:1,,s2:2/m", "empty address"},
		{"redis+sentinel://s1:1/m?addr=nohost", `addr="nohost": want host:port`},
		{"redis+sentinel://s1:1/m?max_redirects=1", `option not taken by this scheme "max_redirects"; the options of redis+sentinel:// are: addr, `},
		{"redis+sentinel://s1:1/m?skip_verify=true", `option for TLS schemes (rediss…) only "skip_verify"`},
		{"redis+sentinel://s1:1/m?route_by_latency=true", "option not taken by this scheme"},
		{"redis+sentinel://s1:1/m?replica_only=true", `unknown option "replica_only"`},
		{"redis+sentinel://s1:1/m?sentinel_password=a1234&sentinel_password=b1234", "sentinel_password given 2 times"},
		{"redis+sentinel://s1:1/m?wait_replicas=1&wait_timeout=3s", "more than half of read_timeout"},
		{"redis+sentinel://s1:1/m?pool_size=-1", `pool_size="-1": want a whole number ≥ 0`},
		{"redis+sentinel://s1:1/m?dial_timeout=soon", `dial_timeout="soon": want a duration`},
		{"redis+sentinel://s1:1/m?pool_fifo=yes", `pool_fifo="yes": want true, false, 1 or 0`},
		{"redis+sentinel://s1:1/m?protocol=4", `protocol="4"`},
		{"redis+sentinel://s1:1/m?idle_timeout=1s&conn_max_idle_time=2s", "the same option"},
		{"redis://h1:1,h2:2", "one host only"},
		{"redis://h:1/m/0", "invalid path"},
	} {
		_, err := parseStoreURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseStoreURL(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

// TestSentinelStoreInConfigFile checks that the config file's store: takes
// a redis+sentinel:// URL as -store does, and that a bad option in it is
// refused with the option's name and without the password.
func TestSentinelStoreInConfigFile(t *testing.T) {
	withEnv(t, map[string]string{envScopeSecret: "0123456789abcdef0123456789abcdef"})
	const url = "redis+sentinel://:Hunter2pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2?sentinel_password=Hunter3pw&wait_replicas=1&wait_timeout=100ms"
	cfg := writeFile(t, "c.yaml", "store: \""+url+"\"\n")
	o, err := parseArgs([]string{"-upstream", "http://a:1", "-config", cfg}, new(bytes.Buffer))
	if err != nil || o.store != url {
		t.Fatalf("parseArgs with a sentinel store in the config file: %v (store %q)", err, o.store)
	}
	spec, err := parseStoreURL(o.store)
	if err != nil || spec.kind != storeRedisSentinel || spec.redis.failover.MasterName != "mymaster" || spec.redis.failover.DB != 2 {
		t.Fatalf("parseStoreURL(%q) = %+v, %v", o.store, spec, err)
	}
	cfg = writeFile(t, "bad.yaml", "store: \""+url+"&max_redirects=3\"\n")
	_, err = parseArgs([]string{"-upstream", "http://a:1", "-config", cfg}, new(bytes.Buffer))
	if err == nil || !strings.Contains(err.Error(), `"max_redirects"`) || strings.Contains(err.Error(), "Hunter") {
		t.Fatalf("a bad option in the config file's sentinel store: %v", err)
	}
}
