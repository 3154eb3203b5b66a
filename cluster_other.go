//go:build !unix

package main

import (
	"errors"
	"os/user"
	"syscall"
)

// childAttr: no process groups or user switching off Unix.
func childAttr(u *user.User) (*syscall.SysProcAttr, error) {
	if u != nil {
		return nil, errors.New("cannot run the database as another user on this system")
	}
	return nil, nil
}

// haproxyMaxconn: keep haproxy.cfg's.
func haproxyMaxconn() int { return 0 }
