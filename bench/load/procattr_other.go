//go:build !linux

package main

import (
	"os/exec"
	"time"
)

// dieWithParent is a no-op where Pdeathsig does not exist; the role
// children still exit when their stdin closes.
func dieWithParent(*exec.Cmd) {}

// procCPU is not available outside Linux: the CPU column stays empty.
func procCPU(int) (time.Duration, bool) { return 0, false }
