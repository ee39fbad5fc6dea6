package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// bigUpstream answers every request with 201 and a 900 KiB body that names
// the request's key, and counts its executions.
func bigUpstream(t *testing.T) (*httptest.Server, func() int) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusCreated)
		w.Write(bigBody(r.Header.Get("Idempotency-Key")))
	}))
	t.Cleanup(srv.Close)
	return srv, func() int { return int(n.Load()) }
}

func bigBody(key string) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%-64s", key)), 900<<10/64)
}

// rssMiB returns the resident set of process pid in MiB, or -1 where
// /proc is not available.
func rssMiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb >> 10
		}
	}
	return -1
}

// TestBudgetStopsGrowth is issue 11's attack 3: many keys with 900 KiB
// responses. With -max-bytes the store stops at its budget: new keys get
// 503 store-full without reaching the upstream, the keys stored earlier
// still replay byte for byte, and the process (memory:) or the file
// (file:) stops growing.
func TestBudgetStopsGrowth(t *testing.T) {
	for _, store := range []string{"memory:", "file"} {
		t.Run(strings.TrimSuffix(store, ":"), func(t *testing.T) {
			up, calls := bigUpstream(t)
			st := store
			var path string
			if store == "file" {
				path = filepath.Join(t.TempDir(), "idem.db")
				st = "file:" + path
			}
			p := startProxy(t, "-upstream", up.URL, "-store", st, "-max-bytes", "16MiB", "-max-records", "40", "-max-scope-share", "1")
			c := client(t)
			hdr := func(k string) map[string]string {
				return map[string]string{"Idempotency-Key": k, "Authorization": "Bearer alice"}
			}
			var stored []string
			refused := 0
			for i := range 60 {
				k := fmt.Sprintf("k-%d", i)
				r := do(t, c, "POST", p.addr+"/charges", hdr(k), "{}")
				switch r.status {
				case 201:
					if !bytes.Equal(r.body, bigBody(k)) {
						t.Fatalf("key %s: %d bytes, not the upstream's", k, len(r.body))
					}
					if refused > 0 {
						t.Fatalf("key %s stored after a refusal", k)
					}
					stored = append(stored, k)
				case 503:
					if code := problemCode(t, r); code != "store-full" || r.header.Get("Retry-After") == "" {
						t.Fatalf("key %s: 503 %s (Retry-After %q), want store-full", k, code, r.header.Get("Retry-After"))
					}
					refused++
				default:
					t.Fatalf("key %s: %d %s", k, r.status, r.body)
				}
			}
			if len(stored) != 40 || refused != 20 {
				t.Fatalf("stored %d, refused %d; want 40 and 20 (-max-records 40)", len(stored), refused)
			}
			if n := calls(); n != len(stored) {
				t.Fatalf("upstream ran %d times for %d stored keys: refused keys must not reach it", n, len(stored))
			}
			// Every stored key replays: byte for byte while the bodies fit
			// the 16 MiB (about 18 of 900 KiB), then with the body omitted
			// (status and headers only, as for a body over the cap).
			whole := 0
			for _, k := range stored {
				r := do(t, c, "POST", p.addr+"/charges", hdr(k), "{}")
				if r.status != 201 || r.header.Get("Idempotency-Replayed") != "true" {
					t.Fatalf("replay of %s at the limit: %d %v", k, r.status, r.header)
				}
				switch {
				case bytes.Equal(r.body, bigBody(k)):
					whole++
				case r.header.Get("Idempotency-Replay") == "omitted" && len(r.body) == 0:
				default:
					t.Fatalf("replay of %s: %d bytes, not the stored response", k, len(r.body))
				}
			}
			if whole < 10 || whole > 19 {
				t.Fatalf("%d bodies stored whole with a 16 MiB budget, want about 18", whole)
			}
			if n := calls(); n != len(stored) {
				t.Fatalf("replays reached the upstream: %d executions", n)
			}
			if store == "file" {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() > 48<<20 {
					t.Fatalf("file of %d MiB with a 16 MiB budget", fi.Size()>>20)
				}
			} else if rss := rssMiB(p.cmd.Process.Pid); rss > 200 {
				// Under -race: 155–167 MiB with the 16 MiB budget, 255 MiB
				// with -max-bytes 1GiB (the same 40 records kept whole).
				t.Fatalf("proxy RSS %d MiB with a 16 MiB budget after 60 responses of 900 KiB", rss)
			}
		})
	}
}

// TestBudgetScopeQuota: one caller (scope) cannot fill the store for all.
// At its quota Mallory's new keys get 503 store-full, her stored keys still
// replay, and Alice still stores new keys.
func TestBudgetScopeQuota(t *testing.T) {
	up, _ := bigUpstream(t)
	p := startProxy(t, "-upstream", up.URL, "-store", "memory:", "-max-bytes", "32MiB", "-max-records", "40", "-max-scope-share", "0.25")
	c := client(t)
	as := func(who, k string) map[string]string {
		return map[string]string{"Idempotency-Key": k, "Authorization": "Bearer " + who}
	}
	var mallory []string
	for i := 0; ; i++ {
		if i > 30 {
			t.Fatal("mallory was never refused")
		}
		k := fmt.Sprintf("m-%d", i)
		r := do(t, c, "POST", p.addr+"/charges", as("mallory", k), "{}")
		if r.status == 503 {
			if code := problemCode(t, r); code != "store-full" {
				t.Fatalf("mallory at her quota: %s", code)
			}
			break
		}
		if r.status != 201 {
			t.Fatalf("mallory %s: %d %s", k, r.status, r.body)
		}
		mallory = append(mallory, k)
	}
	// Her quota: a quarter of 40 records.
	if len(mallory) != 10 {
		t.Fatalf("mallory stored %d responses with a quota of 10 records", len(mallory))
	}
	for i := range 4 {
		k := fmt.Sprintf("a-%d", i)
		if r := do(t, c, "POST", p.addr+"/charges", as("alice", k), "{}"); r.status != 201 || !bytes.Equal(r.body, bigBody(k)) {
			t.Fatalf("alice %s while mallory is at her quota: %d", k, r.status)
		}
	}
	if r := do(t, c, "POST", p.addr+"/charges", as("mallory", mallory[0]), "{}"); r.status != 201 || !bytes.Equal(r.body, bigBody(mallory[0])) {
		t.Fatalf("mallory's replay at her quota: %d", r.status)
	}
}

func TestBudgetFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"-max-bytes", "1GiB", "-max-records", "1_000", "-max-scope-share", "10%"}, true},
		{[]string{"-max-bytes", "off", "-max-records", "auto"}, true},
		{[]string{"-max-bytes", "0"}, false},
		{[]string{"-max-records", "-3"}, false},
		{[]string{"-max-scope-share", "1.5"}, false},
	} {
		withEnv(t, nil)
		_, err := parseArgs(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), &bytes.Buffer{})
		if (err == nil) != tt.ok {
			t.Errorf("%v: err %v, want ok %v", tt.args, err, tt.ok)
		}
	}
	b := storeBudget{}
	if got := b.memOptions(); got.MaxRecords != defaultMemRecords || got.MaxBytes != defaultMemBytes ||
		got.MaxRecordsPerScope != 0 || got.MaxBytesPerScope != defaultMemBytes/2 {
		t.Errorf("memory: defaults %+v", got)
	}
	b = storeBudget{records: -1, bytes: 1 << 20, share: 1}
	if got := b.fileOptions(); got.MaxRecords != 0 || got.MaxBytes != 1<<20 || got.MaxRecordsPerScope != 0 || got.MaxBytesPerScope != 0 {
		t.Errorf("file: %+v", got)
	}
}
