//go:build unix && !linux

package main

import "syscall"

// dieWithParent: only Linux has a parent-death signal; elsewhere stop
// pgchat cluster with Ctrl-C or SIGTERM, not kill -9.
func dieWithParent(*syscall.SysProcAttr) {}
