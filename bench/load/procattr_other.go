//go:build !linux

package main

import "os/exec"

// dieWithParent is a no-op where Pdeathsig does not exist; the role
// children still exit when their stdin closes.
func dieWithParent(*exec.Cmd) {}
