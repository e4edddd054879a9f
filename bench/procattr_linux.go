package main

import "syscall"

// childAttr makes the kernel kill a child when the harness dies, even by
// SIGKILL, so no backend, gateway or agent outlives a run.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
