package main

import "syscall"

// dieWithParent makes the kernel send a child SIGTERM when pgchat cluster
// dies, even by kill -9, so that no instance, HAProxy or PostgreSQL is left
// holding its port. (It fires when the thread that started the child
// exits; Go only ends threads locked by LockOSThread, which this program
// does not use.)
func dieWithParent(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGTERM }
