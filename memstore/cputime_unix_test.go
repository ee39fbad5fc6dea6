//go:build unix

package memstore_test

import (
	"syscall"
	"time"
)

// cpuTime returns the CPU time (user + system) the process has used. Per-op
// CPU time is a steadier figure than wall time on a machine shared with
// other work.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
