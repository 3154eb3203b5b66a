//go:build !linux

package wsconn

import (
	"context"
	"syscall"
)

// poller parks nothing here: connections wait in their own goroutines.
type poller struct{}

func newPoller() *poller { return nil }

func (p *poller) run(ctx context.Context) { <-ctx.Done() }
func (p *poller) arm(*Conn) bool          { return false }
func (p *poller) forget(*Conn)            {}
func (p *poller) count() int              { return 0 }

func readNow(syscall.RawConn, []byte) (int, error, bool) { return 0, nil, true }

func unacked(syscall.RawConn) int { return 0 }
