package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
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
		{"redis://h?password=a&password=b", "password given 2 times"},
		{"redis://h?bogus=1", "unexpected option: bogus"},
		{"redis://h?dial_timeout=soon", "dial_timeout"},
		{"redis://h/x", "database number"},
		{"redis+cluster://h1:7000/0", "no database number"},
		{"redis+cluster://h1:7000,,h2:7001", "empty address"},
		{"redis+cluster://", "want redis+cluster://host1:port"},
		{"redis+cluster://h1:7000?bogus=1", "unexpected option: bogus"},
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
		if spec.kind == storePostgres {
			// Open it against a port nothing listens on and check it at
			// start, with -require-store: the error must not show the
			// secret either, nor what the store logs meanwhile.
			spec.raw = strings.Replace(spec.raw, "@h/", "@127.0.0.1:1/", 1)
			spec.raw = strings.Replace(spec.raw, "://h/", "://127.0.0.1:1/", 1)
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
		"redis://user:" + pw + "@h:1/0":                  "redis://user:xxxxx@h:1/0",
		"redis+cluster://h1:1,h2:2?password=" + pw:       "redis+cluster://h1:1,h2:2?password=xxxxx",
		"postgres://h/db?sslmode=disable&PassWord=" + pw: "postgres://h/db?sslmode=disable&PassWord=xxxxx",
		"file:/var/lib/user@host/idem.db":                "file:/var/lib/user@host/idem.db",
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
// default, for a single server and a cluster.
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
