package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/idemkit/idem/internal/testenv"
)

// TestLegacyRecordsFlag covers -legacy-records and the config file's
// legacy_records, the flag winning.
func TestLegacyRecordsFlag(t *testing.T) {
	withEnv(t, nil)
	cfg := writeFile(t, "c.yaml", "legacy_records: true\n")
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"-legacy-records"}, true},
		{[]string{"-config", cfg}, true},
		{[]string{"-config", cfg, "-legacy-records=false"}, false},
	} {
		o, err := parseArgs(append([]string{"-upstream", "http://a:1"}, tc.args...), new(bytes.Buffer))
		if err != nil || o.cfg.LegacyRecords != tc.want {
			t.Errorf("%q: LegacyRecords %v, %v; want %v", tc.args, o.cfg.LegacyRecords, err, tc.want)
		}
	}
}

// TestLegacyRecordsMixedFleet runs a rolling upgrade's two kinds of proxy
// on one Redis and one scope secret: one with -legacy-records, one without.
// Each replays what the other stored, and the stored records are what each
// was asked to write: under the legacy name, in the legacy layout, with
// encoding version 1; or under the compact name ("{tag}" and 20
// characters), compact, with version 2.
func TestLegacyRecordsMixedFleet(t *testing.T) {
	addr := testenv.Need(t, "IDEM_REDIS_ADDR")
	// Database 9 is this test's own: every key there is its record.
	const prefix = "idem:"
	store := "redis://" + addr + "/9"
	secret := writeSecret(t)
	u := newUpstream(t)
	legacy := startProxy(t, "-store", store, "-scope-secret-file", secret, "-upstream", u.srv.URL, "-legacy-records")
	compact := startProxy(t, "-store", store, "-scope-secret-file", secret, "-upstream", u.srv.URL)
	rc := redis.NewClient(&redis.Options{Addr: addr, DB: 9})
	defer rc.Close()
	ctx := context.Background()
	if err := rc.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	c := client(t)
	hdr := func(k string) map[string]string {
		return map[string]string{"Content-Type": "application/json", "Idempotency-Key": k, "Host": "api.example"} // one scope for both proxies
	}
	for _, tc := range []struct {
		name        string
		first, then *proc
		state       byte // the record's state byte
		version     byte // the stored response's encoding
	}{
		{"legacy first", legacy, compact, 'c', 1},
		{"compact first", compact, legacy, 'C', 2},
	} {
		k := newKey()
		r := do(t, c, "POST", tc.first.addr+"/ok", hdr(k), `{"a":1}`)
		r2 := do(t, c, "POST", tc.then.addr+"/ok", hdr(k), `{"a":1}`)
		if r.status != 201 || r2.status != 201 || !bytes.Equal(r.body, r2.body) || r2.header.Get("Idempotency-Replayed") != "true" ||
			r2.header.Get("Content-Length") != r.header.Get("Content-Length") || r.header.Get("Content-Length") == "" {
			t.Fatalf("%s: first %d %v, then %d %v", tc.name, r.status, r.header, r2.status, r2.header)
		}
		if n := u.n("/ok", k); n != 1 {
			t.Fatalf("%s: upstream ran %d times", tc.name, n)
		}
		// The record: legacy names end with the Idempotency-Key; compact
		// names are the prefix, the hash tag and 20 characters.
		keys, err := rc.Keys(ctx, prefix+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		var v string
		for _, name := range keys {
			got := rc.Get(ctx, name).Val()
			if got == "" || got[0] != tc.state {
				continue
			}
			if tc.state == 'c' && !strings.HasSuffix(name, k) || tc.state == 'C' && len(name) != len(prefix)+38 {
				t.Fatalf("%s: record under %q", tc.name, name)
			}
			v = got
		}
		if v == "" {
			t.Fatalf("%s: no record with state %c under %s* (%q)", tc.name, tc.state, prefix, keys)
		}
		// The stored response's version byte, after the fingerprint.
		off := 18 + 32 + 0
		if tc.state == 'c' {
			off = 29 + 32
		}
		if len(v) <= off || v[off] != tc.version {
			t.Fatalf("%s: stored response of version %d, want %d", tc.name, v[off], tc.version)
		}
		rc.Del(ctx, keys...)
	}
}
