//go:build !unix

package filestore

import (
	"errors"
	"os"
	"time"
)

// lockFile is not implemented on this platform: without an exclusive lock,
// two processes could share one file and break its guarantees.
func lockFile(path string, timeout time.Duration) (*os.File, bool, error) {
	return nil, false, errors.New("filestore: file locking is not supported on this platform")
}
