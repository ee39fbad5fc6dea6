// Package leakcheck finds goroutines left running after a package's tests,
// for the packages of the core module. It does what go.uber.org/goleak's
// VerifyTestMain and Find do with their default options (same filters, a
// retry while goroutines wind down), in the standard library only: a test
// dependency of the core module would be a requirement line in its go.mod,
// and so a module in every user's build list (see docs/decisions.md). The
// modules whose tests close go-redis clients after failed dials use it too
// (redisstore, redisstreams, idemproxy, faults): go-redis's pool probes a
// failed dial again a second later before it notices the Close, longer than
// goleak's own retries wait, and Find waits up to 5 s. The other modules of
// the repository use goleak itself.
package leakcheck

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// VerifyTestMain runs the tests and, if they passed, fails the run when
// goroutines other than the test framework's are still running afterwards.
// Use it as a package's TestMain: func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }.
func VerifyTestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := Find(); err != nil {
			fmt.Fprintln(os.Stderr, "leakcheck:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Find returns an error listing the goroutines other than the caller and the
// test framework's that are still running after retrying for up to 5s.
func Find() error {
	deadline := time.Now().Add(5 * time.Second)
	sleep := time.Microsecond
	for {
		leaked := Leaked()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("found unexpected goroutines:\n" + strings.Join(leaked, "\n\n"))
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, 100*time.Millisecond)
	}
}

// Leaked returns the stacks of the goroutines running now, except the
// caller's and those Find ignores.
func Leaked() []string {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(strings.TrimSpace(string(buf)), "\n\n") {
		if i == 0 || ignored(g) { // the first is the caller's own goroutine
			continue
		}
		out = append(out, g)
	}
	return out
}

// ignored reports the goroutines goleak ignores by default: the test
// framework's own, os/signal's, cgo's in a syscall, and the trace reader.
func ignored(g string) bool {
	header, body, _ := strings.Cut(g, "\n")
	state := ""
	if i, j := strings.Index(header, "["), strings.LastIndex(header, "]"); i >= 0 && j > i {
		state = header[i+1 : j]
	}
	first, _, _ := strings.Cut(body, "\n")
	switch fn := funcName(first); fn {
	case "testing.RunTests", "testing.(*T).Run", "testing.(*T).Parallel", "testing.runFuzzing", "testing.runFuzzTests":
		return strings.HasPrefix(state, "chan receive")
	case "os/signal.signal_recv", "os/signal.loop":
		return true
	}
	if has(body, "runtime.ensureSigM") || has(body, "runtime.ReadTrace") {
		return true
	}
	return has(body, "runtime.goexit") && strings.HasPrefix(state, "syscall")
}

// funcName is the function of a stack frame line: "pkg.(*T).M(0x1, 0x2)" →
// "pkg.(*T).M".
func funcName(line string) string {
	line = strings.TrimPrefix(line, "created by ")
	if i := strings.LastIndex(line, "("); i > 0 && strings.HasSuffix(line, ")") {
		return line[:i]
	}
	return line
}

// has reports whether a stack has a frame (or a creator) in function fn.
func has(body, fn string) bool {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "\t") {
			continue
		}
		if f := funcName(l); f == fn || strings.HasPrefix(f, fn+" in goroutine") {
			return true
		}
	}
	return false
}
