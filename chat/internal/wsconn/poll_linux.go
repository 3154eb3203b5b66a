package wsconn

import (
	"context"
	"sync"
	"syscall"
	"unsafe"
)

// poller wakes parked connections: one epoll instance per Set, waited on
// by Set.Run. Connections may park as soon as it exists: events wait in
// the epoll instance until run reads them.
type poller struct {
	mu      sync.Mutex
	running bool // until run has ended
	epfd    int
	stopfd  int // an eventfd that ends run
	next    uint64
	conns   map[uint64]*Conn // armed at least once and not finished, by pollID
	armed   map[uint64]bool  // armed and not yet reported
}

// newPoller returns a poller, or nil if epoll is not available.
func newPoller() *poller {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	r, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil
	}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, int(r), &syscall.EpollEvent{Events: syscall.EPOLLIN}); err != nil {
		syscall.Close(epfd)
		syscall.Close(int(r))
		return nil
	}
	return &poller{running: true, epfd: epfd, stopfd: int(r), conns: make(map[uint64]*Conn), armed: make(map[uint64]bool)}
}

const parkEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// run waits for parked sockets to turn readable and resumes their
// connections, until ctx ends; then it resumes every parked connection
// (they wait in their own goroutines from then on), closes the epoll
// instance and returns. Call it once.
func (p *poller) run(ctx context.Context) {
	if p == nil {
		<-ctx.Done()
		return
	}
	stop := context.AfterFunc(ctx, func() {
		one := [8]byte{1}
		syscall.Write(p.stopfd, one[:])
	})
	defer stop()
	events := make([]syscall.EpollEvent, 256)
	for ctx.Err() == nil {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil && err != syscall.EINTR {
			break
		}
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			c := p.conns[id]
			delete(p.armed, id)
			p.mu.Unlock()
			if c != nil { // id 0 is stopfd
				c.resume()
			}
		}
	}
	p.mu.Lock()
	p.running = false
	conns := p.conns
	p.conns, p.armed = map[uint64]*Conn{}, map[uint64]bool{}
	p.mu.Unlock()
	for _, c := range conns {
		c.resume()
	}
	syscall.Close(p.epfd)
	syscall.Close(p.stopfd)
}

// arm registers c's socket to resume c once it turns readable, and
// reports whether it did. Call with c.mu held.
func (p *poller) arm(c *Conn) bool {
	if p == nil || c.raw == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return false
	}
	op := syscall.EPOLL_CTL_MOD
	if c.pollID == 0 {
		p.next++
		c.pollID = p.next
		op = syscall.EPOLL_CTL_ADD
	}
	id := c.pollID
	ev := syscall.EpollEvent{Events: parkEvents, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	var cerr error
	err := c.raw.Control(func(fd uintptr) {
		// Level-triggered and one-shot: a socket that turned readable
		// since we looked reports at once; each park re-arms it.
		cerr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	})
	if err != nil || cerr != nil {
		return false
	}
	p.conns[id] = c
	p.armed[id] = true
	return true
}

// forget drops a finished connection.
func (p *poller) forget(c *Conn) {
	if p == nil || c.pollID == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c.pollID)
	delete(p.armed, c.pollID)
}

// count returns the number of parked connections.
func (p *poller) count() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.armed)
}

// readNow reads what the socket holds into b without waiting; again
// reports that it held nothing.
func readNow(rc syscall.RawConn, b []byte) (n int, err error, again bool) {
	rerr := rc.Read(func(fd uintptr) bool {
		for {
			n, err = syscall.Read(int(fd), b)
			if err != syscall.EINTR {
				break
			}
		}
		return true
	})
	switch {
	case err == syscall.EAGAIN:
		return 0, nil, true
	case err != nil:
		return 0, err, false
	case rerr != nil:
		return 0, rerr, false
	case n == 0:
		return 0, eof, false
	}
	return n, nil, false
}

// unacked returns the bytes written to rc that the peer has not
// acknowledged yet, or 0 if unknown.
func unacked(rc syscall.RawConn) int {
	if rc == nil {
		return 0
	}
	var n int32
	rc.Control(func(fd uintptr) {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&n))); errno != 0 {
			n = 0
		}
	})
	return int(n)
}
