//go:build unix

package idemclient

import (
	"syscall"
	"time"
)

// cpuTime returns the user and system CPU time the process has used. On a
// machine shared with other work it measures cost better than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
