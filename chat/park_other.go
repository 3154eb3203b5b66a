//go:build !linux

package chat

import (
	"context"
	"syscall"
)

// poller does nothing here: connections wait in their own goroutines.
type poller struct{}

type pollState struct{}

func newPoller() *poller { return nil }

func (p *poller) run(context.Context) {}
func (p *poller) park(*client) bool   { return false }
func (p *poller) wake(*client)        {}

func (c *client) skimLocked() int { return socketReady }

func waitSocket(syscall.RawConn) {}

func sendNow(syscall.RawConn, []byte) int { return 0 }
