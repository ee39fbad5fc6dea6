package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the child receive SIGKILL when the test process dies
// (for instance on a test timeout), so no proxy outlives its test.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
