package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/idemkit/idem/internal/leakcheck"
)

// proxyBin is the idemproxy binary built once by TestMain; the scenarios
// run it as a real process.
var proxyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idem-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		if !scenariosSupported {
			return m.Run()
		}
		if bin := os.Getenv("IDEM_FAULTS_PROXY"); bin != "" {
			// Run the scenarios against another build (an older commit, a
			// release) to compare: the suite itself does not change.
			proxyBin = bin
			fmt.Fprintln(os.Stderr, "faults: using IDEM_FAULTS_PROXY="+bin)
			return m.Run()
		}
		proxyBin = filepath.Join(dir, "idemproxy")
		args := []string{"build", "-o", proxyBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		// Built in its own module's directory: cmd/idemproxy is a module of
		// its own (see docs/decisions.md), which this one does not require.
		cmd := exec.Command("go", append(args, ".")...)
		cmd.Dir = filepath.Join("..", "cmd", "idemproxy")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building idemproxy:", err)
			return 1
		}
		return m.Run()
	}()
	if code == 0 {
		// leakcheck.VerifyTestMain, but with the temp dir removed afterwards:
		// the harness (upstreams, clients, process waiters) must leave no
		// goroutine behind.
		if err := leakcheck.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "leakcheck:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
