package chat

import "errors"

// An idle connection has no goroutine. When its read side finds nothing
// to read, it parks the connection with the hub's poller (epoll on Linux)
// and returns; the poller resumes it on a new goroutine when the socket
// turns readable (a frame, EOF, an error), and the write side does when it
// closes the connection. Keepalive pongs and pings that arrive alone are
// read off the socket here, so they don't wake the library's read, whose
// call stack is deep and would stay blocked waiting for a data frame.
// Elsewhere than Linux the read side simply waits in the library's Read.

// errParked ends a read loop whose connection was parked.
var errParked = errors.New("connection parked")

// Socket states, as skimLocked finds them.
const (
	socketEmpty = iota // nothing to read
	socketReady        // a frame (or EOF, or an error) for the library
)

// awaitFrame returns false once there is something for the library to
// read, or parks the connection and returns true when there is nothing to
// read and the hub's poller can wake it up later.
func (c *client) awaitFrame() (parked bool) {
	for {
		c.mu.Lock()
		// The library reads the socket only in Read, which only the read
		// side calls, and in its close handshake, which starts after
		// closing is set. So, while its buffer is empty, the socket's next
		// byte starts a frame.
		if c.w.raw == nil || c.w.in == nil || c.w.closing || !c.skimBufferLocked() {
			c.mu.Unlock()
			return false
		}
		switch c.skimLocked() {
		case socketReady:
			c.mu.Unlock()
			return false
		case socketEmpty:
			if c.hub.poll.park(c) {
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
		waitSocket(c.w.raw) // no poller: wait here, in a shallow stack
	}
}

// controlFrame reports the size of the frame at the start of b if it is a
// whole, masked, final ping or pong (what a client sends), else 0.
func controlFrame(b []byte) int {
	if len(b) < 6 || (b[0] != 0x89 && b[0] != 0x8a) || b[1]&0x80 == 0 {
		return 0
	}
	size := 6 + int(b[1]&0x7f)
	if size > 6+125 || len(b) < size {
		return 0
	}
	return size
}

// handleControlLocked handles a frame for which controlFrame is not 0: a
// pong is noted, a ping answered. Call with c.mu held.
func (c *client) handleControlLocked(f []byte) {
	if f[0] == 0x8a {
		c.gotPong()
		return
	}
	// Answer with a pong of the same payload, unmasked; only the latest
	// ping needs one (RFC 6455 5.5.3).
	pong := make([]byte, len(f)-6)
	for i := range pong {
		pong[i] = f[6+i] ^ f[2+i%4]
	}
	c.w.pong = pong
	c.kickLocked()
}

// skimBufferLocked handles the whole pings and pongs at the head of the
// library's read buffer, and reports whether the buffer is then empty.
// Call with c.mu held, when the buffer's next byte starts a frame.
func (c *client) skimBufferLocked() bool {
	for c.w.in.Buffered() > 0 {
		b, _ := c.w.in.Peek(c.w.in.Buffered())
		n := controlFrame(b)
		if n == 0 {
			return false
		}
		c.handleControlLocked(b[:n])
		c.w.in.Discard(n)
	}
	return true
}
