//go:build unix

package filestore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockFile opens path (creating it) and takes an exclusive flock on it,
// retrying for up to timeout. The lock is held until the returned file is
// closed. flock locks are separate from the POSIX record locks SQLite uses
// on the same file, so the two never interfere.
func lockFile(path string, timeout time.Duration) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
		if errors.Is(err, os.ErrExist) { // lost a race with another creator
			f, err = os.OpenFile(path, os.O_RDWR, 0)
		}
	}
	if err != nil {
		return nil, false, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, created, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, false, fmt.Errorf("lock: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, false, fmt.Errorf("%w (waited %v)", ErrLocked, timeout)
		}
		time.Sleep(min(10*time.Millisecond, time.Until(deadline)+time.Millisecond))
	}
}
