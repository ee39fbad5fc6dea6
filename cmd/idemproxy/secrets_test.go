package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/testenv"
)

// startPasswordRedis runs a redis-server of this test's own with
// requirepass, and returns its address.
func startPasswordRedis(t *testing.T, password string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found and CI=true: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	port := freePort(t) // below the ephemeral range: no outgoing connection takes it first
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--requirepass", password, "--logfile", filepath.Join(dir, "log"))
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, 10*time.Second, "redis-server to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// TestNoSecretsInLogs: a run of the real proxy with passworded Redis and
// PostgreSQL URLs (in the user info and as a query parameter), through
// requests, a store failure, a wrong password and shutdown, prints no
// password, no scope secret and no admin token in any log line, and no
// Idempotency-Key value at info level.
func TestNoSecretsInLogs(t *testing.T) {
	const (
		redisPW = "redis-pw-Zq81x"
		pgPW    = "pg-pw-Kx73q"
		admin   = "admin-tok-Wm22"
	)
	secret := "scope-secret-Hh55-0123456789"
	secretFile := writeFile(t, "scope-secret", secret+"\n")
	tokenFile := writeFile(t, "admin-token", admin+"\n")
	u := newUpstream(t)
	raddr := startPasswordRedis(t, redisPW)
	dsn, err := url.Parse(testenv.Need(t, "IDEM_POSTGRES_DSN"))
	if err != nil {
		t.Fatal(err)
	}
	dsn.User = url.UserPassword(dsn.User.Username(), pgPW) // the test server trusts loopback: any password works
	pgWithQuery := *dsn
	pgWithQuery.User = url.User(dsn.User.Username())
	q := pgWithQuery.Query()
	q.Set("password", pgPW)
	pgWithQuery.RawQuery = q.Encode()

	var logs []string
	run := func(store string, requests bool) {
		t.Helper()
		p, err := tryStartProxy(t, "-upstream", u.srv.URL, "-store", store, "-scope-secret-file", secretFile,
			"-admin", "127.0.0.1:0", "-admin-token-file", tokenFile, "-log-level", "info")
		if err != nil {
			logs = append(logs, err.Error())
			return
		}
		if requests {
			c := client(t)
			for i := 0; i < 3; i++ {
				k := "visible-key-" + newKey()
				do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k}, `{}`)
				do(t, c, "POST", p.addr+"/ok", map[string]string{"Idempotency-Key": k}, `{"other":1}`) // 422, logged at info
			}
			do(t, c, "GET", p.admin+"/keys?key=x&scope=y", map[string]string{"Authorization": "Bearer wrong"}, "")
		}
		p.stop()
		logs = append(logs, p.log.String())
	}
	run("redis://:"+redisPW+"@"+raddr+"/0", true)
	run("redis://"+raddr+"/0?password="+redisPW, true)
	run("redis://:wrong-"+redisPW+"@"+raddr+"/0", false) // refused at start
	run(dsn.String(), true)
	run(pgWithQuery.String(), true)
	run("postgres://idem:"+pgPW+"@127.0.0.1:1/idem?sslmode=disable&connect_timeout=1", false) // unreachable

	all := strings.Join(logs, "\n")
	if !strings.Contains(all, `"outcome":"mismatch"`) {
		t.Fatalf("the runs logged no requests; logs:\n%s", all)
	}
	for _, s := range []string{redisPW, pgPW, admin, secret, "visible-key-"} {
		if strings.Contains(all, s) {
			t.Errorf("%q appears in the logs:\n%s", s, grepLines(all, s))
		}
	}
}
