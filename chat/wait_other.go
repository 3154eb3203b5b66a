//go:build !linux

package chat

import "syscall"

// waitSocket returns at once: elsewhere than Linux an idle connection
// simply waits in the WebSocket library's read.
func waitSocket(syscall.RawConn) {}
