// Package redistest starts a private redis-server for a test whose checks
// read server-wide figures (INFO commandstats), which the tests of other
// packages, running at the same time against the shared server, would
// disturb.
package redistest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/idemkit/idem/internal/testenv"
)

// Server starts a redis-server with no persistence on a free loopback port,
// stops it at cleanup, and returns its address. Without redis-server on the
// PATH the test is skipped, or failed under CI=true (the test command
// installs it).
func Server(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server not found and CI=true: the test command must install it")
		}
		t.Skip("redis-server not found; run scripts/test.sh, which installs it")
	}
	var lastErr error
	for range 5 { // a port picked free may be taken by the time the server binds it
		addr, stop, err := start(bin, t.TempDir())
		if err == nil {
			t.Cleanup(stop)
			return addr
		}
		lastErr = err
	}
	t.Fatal(lastErr)
	return ""
}

// start starts redis-server on a port that was free a moment ago, below
// the machine's ephemeral range (testenv.PickPort); it fails
// when the server exits (the port was taken after all) or does not answer
// PING within 10 s.
func start(bin, dir string) (addr string, stop func(), err error) {
	p, err := testenv.PickPort()
	if err != nil {
		return "", nil, err
	}
	port := strconv.Itoa(p)
	addr = "127.0.0.1:" + port
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", "")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() {
		_ = cmd.Process.Kill()
		<-done
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return "", nil, fmt.Errorf("redis-server on %s exited: %v\n%s", addr, cmd.ProcessState, out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_, werr := c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, rerr := c.Read(buf)
			c.Close()
			if werr == nil && rerr == nil && string(buf[:n]) == "+PONG\r\n" {
				return addr, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("redis-server on %s did not answer PING within 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
