package chat

import (
	"context"
	"sync"
	"syscall"
	"unsafe"
)

// poller wakes parked connections: one epoll instance per hub, waited on
// by Hub.Run. Connections may park as soon as it exists: events wait in
// the epoll instance until run reads them.
type poller struct {
	mu      sync.Mutex
	running bool // until run has ended
	epfd    int
	stopfd  int                // an eventfd that ends run
	parked  map[uint64]*client // by client.w.poll.pollID
	next    uint64
}

// newPoller returns a poller, or one that parks nothing if epoll is not
// available.
func newPoller() *poller {
	p := &poller{}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return p
	}
	r, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return p
	}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, int(r), &syscall.EpollEvent{Events: syscall.EPOLLIN}); err != nil {
		syscall.Close(epfd)
		syscall.Close(int(r))
		return p
	}
	p.running, p.epfd, p.stopfd, p.parked = true, epfd, int(r), make(map[uint64]*client)
	return p
}

// pollState is a client's registration; guarded by poller.mu.
type pollState struct {
	pollID uint64
	epfd   int // the epoll instance the socket was added to
}

const parkEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// run waits for parked sockets to turn readable and resumes their
// connections, until ctx ends; then it resumes every parked connection
// (they wait in their own goroutines from then on), closes the epoll
// instance and returns. Call it once.
func (p *poller) run(ctx context.Context) {
	p.mu.Lock()
	running, epfd, stopfd := p.running, p.epfd, p.stopfd
	p.mu.Unlock()
	if !running {
		return
	}
	stop := context.AfterFunc(ctx, func() {
		one := [8]byte{1}
		syscall.Write(stopfd, one[:])
	})
	defer stop()

	events := make([]syscall.EpollEvent, 256)
	for ctx.Err() == nil {
		n, err := syscall.EpollWait(epfd, events, -1)
		if err != nil && err != syscall.EINTR {
			break
		}
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				continue // stopfd
			}
			p.mu.Lock()
			c := p.parked[id]
			delete(p.parked, id)
			p.mu.Unlock()
			if c != nil && !c.repark() {
				c.w.resume()
			}
		}
	}
	p.mu.Lock()
	p.running = false
	parked := p.parked
	p.parked = nil
	p.mu.Unlock()
	for _, c := range parked {
		c.w.resume()
	}
	syscall.Close(epfd)
	syscall.Close(stopfd)
}

// park registers c's socket to resume c when it turns readable, and
// reports whether it did. Call with c.mu held, with nothing to read.
func (p *poller) park(c *client) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running || c.w.resume == nil {
		return false
	}
	if c.w.poll.pollID == 0 {
		p.next++
		c.w.poll.pollID = p.next
	}
	id := c.w.poll.pollID
	ev := syscall.EpollEvent{Events: parkEvents, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var cerr error
	err := c.w.raw.Control(func(fd uintptr) {
		// Level-triggered and one-shot: a socket that turned readable
		// since we looked reports at once; each park re-arms it.
		if c.w.poll.epfd == p.epfd {
			cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
			if cerr != syscall.ENOENT {
				return
			}
		}
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		return false
	}
	c.w.poll.epfd = p.epfd
	p.parked[id] = c
	return true
}

// wake resumes c if it is parked: the write side calls it once it has
// closed c's socket, which the poller would then never report.
func (p *poller) wake(c *client) {
	if p == nil {
		return
	}
	p.mu.Lock()
	_, ok := p.parked[c.w.poll.pollID]
	if ok {
		delete(p.parked, c.w.poll.pollID)
	}
	p.mu.Unlock()
	if ok {
		c.w.resume()
	}
}

// repark handles a parked connection's socket turning readable without a
// goroutine when it can: if all it got were pongs or pings, it is parked
// again. It reports whether it was.
func (c *client) repark() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Parked, the read side is not reading: the library's buffer is empty
	// unless its close handshake began.
	if c.w.closing || !c.skimBufferLocked() || c.skimLocked() != socketEmpty {
		return false
	}
	return c.hub.poll.park(c)
}

// skimLocked reads the pongs and pings at the head of the socket that have
// arrived whole, and reports what is left. Call with c.mu held, when the
// socket's next byte starts a frame (see awaitFrame).
func (c *client) skimLocked() int {
	state := socketReady
	c.w.raw.Read(func(fd uintptr) bool {
		var b [2 + 4 + 125]byte // the largest control frame from a client
		for {
			n, errno := recv(fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if errno == syscall.EAGAIN {
				state = socketEmpty
				return true
			}
			// Anything but a whole ping or pong is for the library, as are
			// EOF and errors.
			if errno != 0 || n <= 0 {
				return true
			}
			size := controlFrame(b[:n])
			if size == 0 {
				return true
			}
			if m, errno := recv(fd, b[:size], syscall.MSG_DONTWAIT); errno != 0 || m != size {
				return true // cannot happen: the bytes were there
			}
			c.handleControlLocked(b[:size])
		}
	})
	return state
}

// waitSocket blocks until rc has bytes to read (or an error or EOF to
// report), without reading them.
func waitSocket(rc syscall.RawConn) {
	var b byte
	rc.Read(func(fd uintptr) bool {
		_, errno := recv(fd, unsafe.Slice(&b, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return errno != syscall.EAGAIN
	})
}

// sendNow writes p to rc if the socket takes it without waiting, and
// returns how many bytes it took.
func sendNow(rc syscall.RawConn, p []byte) int {
	n := 0
	rc.Write(func(fd uintptr) bool {
		r, _, errno := syscall.Syscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		if errno == 0 {
			n = int(r)
		}
		return true
	})
	return n
}

func recv(fd uintptr, p []byte, flags int) (int, syscall.Errno) {
	n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(flags), 0, 0)
	return int(n), errno
}
