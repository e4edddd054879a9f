//go:build !linux

package main

import "syscall"

// childAttr: only Linux has a parent-death signal; Run refuses other systems.
func childAttr() *syscall.SysProcAttr { return nil }
