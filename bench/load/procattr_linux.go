package main

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes a server child receive SIGKILL when the load tool
// dies, so that no benchmark process outlives it.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
