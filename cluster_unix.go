//go:build unix

package main

import (
	"fmt"
	"os/user"
	"strconv"
	"syscall"
)

// childAttr puts a child of pgchat cluster in a process group of its own,
// has it die with pgchat cluster (Linux), and, when u is set, runs it as u.
func childAttr(u *user.User) (*syscall.SysProcAttr, error) {
	attr := &syscall.SysProcAttr{Setpgid: true}
	dieWithParent(attr)
	if u != nil {
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("user %s has ids %s:%s, want numbers", u.Username, u.Uid, u.Gid)
		}
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return attr, nil
}

// haproxyMaxconn returns the maxconn HAProxy can have under this process's
// hard file descriptor limit (which it inherits), or 0 when haproxy.cfg's
// own fits.
func haproxyMaxconn() int {
	const want = 20000 // haproxy.cfg's
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	// HAProxy wants 2 descriptors per connection plus some for listeners,
	// checks and logs.
	if lim.Max >= 2*want+1000 {
		return 0
	}
	return max(int(lim.Max)-1000, 200) / 2
}
