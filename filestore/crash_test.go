//go:build unix

package filestore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/idemkit/idem"
)

// Environment of the child process that TestKill9 re-executes.
const (
	crashChildEnv  = "FILESTORE_CRASH_CHILD" // the store file
	crashRoundEnv  = "FILESTORE_CRASH_ROUND" // key prefix of this round
	crashWorkers   = 16
	crashChildLife = 20 * time.Second // a child whose parent died stops by itself
)

func crashResult(key string) []byte { return []byte("result of " + key) }

// crashChild is the writer TestKill9 kills: crashWorkers goroutines each
// begin a fresh key, then complete it (or, every fifth key, release it),
// and print one line to stdout after each call returns:
//
//	B <key> <fence>   Begin acquired key with fence
//	C <key> <fence>   Complete returned nil
//	R <key> <fence>   Release returned nil
//
// The lines are written with one write(2) each, so every line the parent
// reads describes a call that returned before the kill.
func crashChild() int {
	s, err := Open(os.Getenv(crashChildEnv), Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 2
	}
	round := os.Getenv(crashRoundEnv)
	var mu sync.Mutex
	say := func(format string, a ...any) {
		line := fmt.Sprintf(format+"\n", a...)
		mu.Lock()
		defer mu.Unlock()
		if _, err := os.Stdout.WriteString(line); err != nil {
			os.Exit(3)
		}
	}
	ctx := context.Background()
	stop := time.Now().Add(crashChildLife)
	var wg sync.WaitGroup
	for g := range crashWorkers {
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				k := fmt.Sprintf("%s/%d/%d", round, g, i)
				b, err := s.Begin(ctx, k, []byte("fp"), time.Hour)
				if err != nil || b.Outcome != idem.Acquired {
					fmt.Fprintln(os.Stderr, "child: begin:", b.Outcome, err)
					os.Exit(4)
				}
				say("B %s %d", k, b.Fence)
				if i%5 == 4 {
					err = s.Release(ctx, k, b.Fence)
					say("R %s %d", k, b.Fence)
				} else {
					err = s.Complete(ctx, k, b.Fence, crashResult(k), time.Hour)
					say("C %s %d", k, b.Fence)
				}
				if err != nil {
					fmt.Fprintln(os.Stderr, "child: finish:", err)
					os.Exit(5)
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	return 0
}

// ack is the last call the child reported for one key.
type ack struct {
	op    byte
	fence uint64
}

// TestKill9 runs a writer process on a durable store, SIGKILLs it while
// writes are in flight, reopens the file and checks that every call that
// returned before the kill is in it, that nothing is torn, and that the
// record count kept in the file is exact. It repeats this on the same file
// so that recovery itself is crashed into.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	acks := make(map[string]ack)
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path, crashRoundEnv+"=r"+strconv.Itoa(round))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a few hundred acknowledged calls, a different number
		// each round, while the workers are mid-commit.
		killAt := 300 + 250*round
		sc := bufio.NewScanner(out)
		n := 0
		killed := false
		timer := time.AfterFunc(15*time.Second, func() { cmd.Process.Kill() })
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || len(f[0]) != 1 {
				t.Fatalf("round %d: child printed %q", round, sc.Text())
			}
			fence, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil {
				t.Fatalf("round %d: child printed %q", round, sc.Text())
			}
			acks[f[1]] = ack{f[0][0], fence}
			if n++; n == killAt {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
		timer.Stop()
		err = cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child exited after %d lines before it was killed: %v\n%s", round, n, err, stderr.String())
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, want killed by SIGKILL\n%s", round, err, stderr.String())
		}
		t.Logf("round %d: killed after %d acknowledged calls (%d read in total)", round, killAt, n)
		checkAfterCrash(t, path, acks)
	}
}

// checkAfterCrash reopens path and checks it against the acknowledged calls.
func checkAfterCrash(t *testing.T, path string, acks map[string]ack) {
	t.Helper()
	s, err := Open(path, Options{LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	ctx := context.Background()
	for k, a := range acks {
		rec, ok, err := s.Get(ctx, k)
		if err != nil {
			t.Fatalf("Get(%q) after kill: %v", k, err)
		}
		switch a.op {
		case 'B': // Complete or Release may have committed unacknowledged.
			if ok && (rec.Fence != a.fence || rec.State == idem.StateCompleted && !bytes.Equal(rec.Result, crashResult(k))) {
				t.Errorf("%q: acknowledged Begin (fence %d), found %+v", k, a.fence, rec)
			}
			if !ok && !strings.HasSuffix(k, "4") && !strings.HasSuffix(k, "9") {
				t.Errorf("%q: acknowledged Begin (fence %d) is lost", k, a.fence)
			}
		case 'C':
			if !ok || rec.State != idem.StateCompleted || rec.Fence != a.fence || !bytes.Equal(rec.Result, crashResult(k)) {
				t.Errorf("%q: acknowledged Complete (fence %d), found %+v (found %v)", k, a.fence, rec, ok)
			}
		case 'R':
			if ok {
				t.Errorf("%q: acknowledged Release (fence %d), found %+v", k, a.fence, rec)
			}
		}
	}
	// Every record decodes, and the count kept in the file is exact.
	var n int
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).ForEach(func(k, v []byte) error {
			n++
			if _, err := decodeRecord(v); err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("after kill: %v", err)
	}
	if s.Len() != n {
		t.Fatalf("after kill: stored count %d, records %d", s.Len(), n)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("after kill: bbolt consistency check: %v", err)
	}
}
