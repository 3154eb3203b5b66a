package wsconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

// Causes label how a connection ended (End.Cause), for metrics. The
// application passes its own to Close.
const (
	CausePeerClosed    = "peer_closed"    // the peer's close frame
	CausePeerGone      = "peer_gone"      // EOF or a reset without a close frame
	CauseProtocol      = "protocol_error" // 1002: a frame RFC 6455 forbids
	CauseInvalidUTF8   = "invalid_utf8"   // 1007
	CauseTooLarge      = "too_large"      // 1009
	CauseControlFlood  = "control_flood"  // 1008: over MaxControlRate
	CauseFragmentFlood = "fragment_flood" // 1008: over MaxFragments
	CauseKeepalive     = "keepalive"      // no answer to a ping
	CauseWriteFailed   = "write_failed"   // a socket write failed or timed out
)

// End is how a connection ended.
type End struct {
	Cause  string // one of the Cause constants, or the application's
	Code   int    // the close code sent, or received from the peer; 1006: none
	Reason string
	Err    error // the read or write error, if one ended it
}

// Handler receives a connection's messages and its end.
type Handler interface {
	// Message handles one whole data message on the connection's read
	// side, which reads nothing else meanwhile. data is valid until it
	// returns. ctx ends when the connection starts closing.
	Message(ctx context.Context, text bool, data []byte)
	// Closed is called once, last: both directions are done and the
	// socket is closed.
	Closed(End)
}

// Conn is the server side of one WebSocket connection.
//
// It has two sides. The read side reads and handles frames on one
// goroutine at a time, none while the connection is idle and parked
// (poll_linux.go); it owns rd. The write side is a goroutine that runs
// while something is queued and writes it corked, one socket write per
// batch; the last one sends the close frame. Queue, Close, Abort and
// WaitQueued may be called from any goroutine, at any time; Serve once.
//
// Guards: mu guards the fields below it (never held during I/O or a
// loop over the queue's frames, so Queue never waits long); keep is the
// Set's (Set.mu); heard and waiting are atomics; the rest is set before
// the connection is shared. Lock order: mu, then poller.mu; Set.mu is
// never held with mu.
type Conn struct {
	set       *Set
	nc        net.Conn
	raw       syscall.RawConn // nil: the socket cannot be parked
	h         Handler         // set by Serve
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{} // closed after Closed returned
	pollID    uint64        // the poller's key for this connection
	readLimit int

	rd reader // the read side's; only the goroutine reading uses it

	heard   atomic.Int64 // mono: when bytes were last read
	owed    atomic.Int64 // pongs the peer owes: our pings written, less the pongs read
	wrote   atomic.Int64 // mono: when a socket write last completed
	waiting atomic.Int64 // mono: since when the reader waits on the socket; 0 while it handles a message
	keep    keepalive    // guarded by Set.mu

	mu         sync.Mutex
	queue      [][]byte // text frames' payloads waiting for the writer
	spare      [][]byte // the last queue written, reused
	queued     int      // bytes in queue
	queuedAt   int64    // mono: when the oldest frame in queue was queued
	pong       []byte   // payload of the latest ping to answer; nil: none
	pingDue    bool     // a keepalive ping to write
	space      chan struct{}
	writing    bool // a writer goroutine runs
	closing    bool // no more frames queued; the writer's last act is the close frame
	flush      bool // with closing: write what is queued first
	end        End  // with closing: why
	failed     bool // closing because of a bad frame (fail)
	flooded    bool // failed for a flood: no waiting for its close frame
	gotClose   bool // the peer's close frame was read
	sentClose  bool // our close frame was written
	sockClosed bool
	parked     bool // registered with the poller, no goroutine reading
	readerDone bool // the read side has returned for good
	writerDone bool // the last writer has returned
}

type keepalive struct {
	nextPing int64 // mono: when the next ping is due
	pingAt   int64 // mono: when the unanswered ping went out; 0: none
	outq     int   // the socket's unacknowledged bytes when last looked at (late peers only)
	progress int64 // mono: when outq was last seen going down
}

func (s *Set) newConn(nc net.Conn) *Conn {
	c := &Conn{set: s, nc: nc, done: make(chan struct{}), space: make(chan struct{}, 1)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	c.heard.Store(mono(time.Now()))
	s.add(c)
	return c
}

// Context ends when the connection starts closing.
func (c *Conn) Context() context.Context { return c.ctx }

// Done is closed once the connection has ended and Closed has returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Serve runs the read side with h on the calling goroutine. It returns
// when the connection has ended, or sooner, when it parks the idle
// connection: a later frame resumes the read side on another goroutine.
// Frames queued before Serve are written meanwhile. Call it once.
func (c *Conn) Serve(h Handler) {
	c.h = h
	c.readLoop()
}

// Queue queues a text frame with payload p, without blocking. It reports
// false, and queues nothing, if more than MaxQueued bytes would then wait:
// a slow consumer. Frames queued once the connection is closing are
// dropped. p must not be modified afterwards.
func (c *Conn) Queue(p []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return true
	}
	if c.queued+len(p) > c.set.opts.MaxQueued {
		return false
	}
	if len(c.queue) == 0 && c.set.opts.OnWrite != nil {
		c.queuedAt = mono(time.Now())
	}
	c.queue = append(c.queue, p)
	c.queued += len(p)
	c.kickLocked()
	return true
}

// ErrSlow is WaitQueued's error when the queue did not empty in time.
var ErrSlow = errors.New("wsconn: queue not written within WriteTimeout")

// WaitQueued waits until at most n bytes are queued (or none), for up to
// WriteTimeout.
func (c *Conn) WaitQueued(ctx context.Context, n int) error {
	timer := time.NewTimer(c.set.opts.WriteTimeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		q, closing := c.queued, c.closing
		c.mu.Unlock()
		if q <= n || q == 0 || closing {
			return nil
		}
		select {
		case <-c.space:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return ErrSlow
		}
	}
}

// Close starts the close handshake with code and reason; cause labels
// the End. Frames still queued are dropped (the batch being written
// finishes first, so the close frame follows whole frames). The first
// Close, CloseAfterQueued or Abort wins.
func (c *Conn) Close(cause string, code int, reason string) { c.closeWith(cause, code, reason, false) }

// CloseAfterQueued is Close after what is queued has been written.
func (c *Conn) CloseAfterQueued(cause string, code int, reason string) {
	c.closeWith(cause, code, reason, true)
}

func (c *Conn) closeWith(cause string, code int, reason string, flush bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.startClosingLocked(End{Cause: cause, Code: code, Reason: reason}, flush)
}

// startClosingLocked records why the connection ends and makes the writer
// finish with the close frame. Call with mu held.
func (c *Conn) startClosingLocked(end End, flush bool) {
	if c.closing {
		return
	}
	c.closing, c.flush, c.end = true, flush, end
	c.cancel()
	if !flush {
		clear(c.queue)
		c.queue, c.queued, c.queuedAt = c.queue[:0], 0, 0
	}
	c.kickLocked()
	c.resumeLocked() // a parked reader waits for the peer's close frame now
}

// Abort drops the connection without a close frame (a dead peer, a
// shutdown that ran out of time).
func (c *Conn) Abort(cause, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.startClosingLocked(End{Cause: cause, Code: StatusAbnormalClosure, Reason: reason}, false)
	c.closeSocketLocked(true)
}

// closeSocketLocked closes the socket once; reset drops what the kernel
// still holds for the peer. Blocked reads and writes return. Call with mu
// held.
func (c *Conn) closeSocketLocked(reset bool) {
	if c.sockClosed {
		return
	}
	c.sockClosed = true
	if tc, ok := c.nc.(*net.TCPConn); ok && reset {
		tc.SetLinger(0)
	}
	c.nc.Close()
	c.resumeLocked()
}

// ping queues a keepalive ping.
func (c *Conn) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		c.pingDue = true
		c.kickLocked()
	}
}

// kickLocked starts a writer unless one runs or the last has run. Call
// with mu held.
func (c *Conn) kickLocked() {
	if c.writing || c.writerDone {
		return
	}
	c.writing = true
	go c.writeLoop()
}

// corkSize is how much the writer collects before a socket write.
const corkSize = 64 << 10

var writePool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// writeLoop writes what is queued until the queue is empty, then returns;
// once the connection is closing and the queue is written (or dropped),
// it writes the close frame instead and is the last writer.
func (c *Conn) writeLoop() {
	for {
		c.mu.Lock()
		pong, ping := c.pong, c.pingDue
		c.pong, c.pingDue = nil, false
		frames, queuedAt := c.queue, c.queuedAt
		c.queue, c.spare, c.queued, c.queuedAt = c.spare, nil, 0, 0
		select {
		case c.space <- struct{}{}:
		default:
		}
		closing := c.closing
		if len(frames) == 0 && pong == nil && !ping {
			if closing {
				c.mu.Unlock()
				c.writeClose()
				return
			}
			c.writing = false
			if cap(c.queue) > 16 { // keep no big queue while idle
				c.queue = nil
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		err := c.writeBatch(frames, pong, ping)
		if err == nil && queuedAt != 0 && c.set.opts.OnWrite != nil {
			c.set.opts.OnWrite(time.Duration(mono(time.Now()) - queuedAt))
		}
		clear(frames) // don't keep the frames alive
		c.mu.Lock()
		c.spare = frames[:0]
		if err != nil {
			c.startClosingLocked(End{Cause: CauseWriteFailed, Code: StatusAbnormalClosure, Err: err}, false)
			c.closeSocketLocked(true)
		}
		c.mu.Unlock()
	}
}

// writeBatch writes a pong and a ping if asked, then frames, corked: one
// socket write per corkSize. It stops early, between frames, once the
// connection closes without flushing.
func (c *Conn) writeBatch(frames [][]byte, pong []byte, ping bool) error {
	bp := writePool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 4*corkSize {
			*bp = (*bp)[:0]
			writePool.Put(bp)
		}
	}()
	b := (*bp)[:0]
	if pong != nil {
		b = appendFrame(b, opPong, pong)
	}
	if ping {
		b = appendFrame(b, opPing, nil)
		c.owed.Add(1)
	}
	var err error
	for i, f := range frames {
		b = appendFrame(b, opText, f)
		if len(b) >= corkSize && i < len(frames)-1 {
			if b, err = c.write(b); err != nil {
				break
			}
			if c.droppingQueue() {
				break
			}
		}
	}
	if err == nil {
		b, err = c.write(b)
	}
	*bp = b
	return err
}

func (c *Conn) droppingQueue() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing && !c.flush
}

// write writes b to the socket within WriteTimeout and returns b emptied.
func (c *Conn) write(b []byte) ([]byte, error) {
	if len(b) == 0 {
		return b, nil
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.set.opts.WriteTimeout))
	_, err := c.nc.Write(b)
	if err == nil {
		c.wrote.Store(mono(time.Now()))
	}
	return b[:0], err
}

// writeClose writes the close frame, as the last writer, then closes the
// socket if the close handshake is complete or cannot be; else it gives
// the peer closeTimeout to answer.
func (c *Conn) writeClose() {
	c.mu.Lock()
	end, sockClosed := c.end, c.sockClosed
	c.mu.Unlock()
	var err error
	if !sockClosed {
		_, err = c.write(appendFrame(nil, opClose, closePayload(end.Code, end.Reason)))
	}
	c.mu.Lock()
	c.writing, c.writerDone = false, true
	c.sentClose = !sockClosed && err == nil
	if !c.sentClose || c.gotClose || c.readerDone || c.flooded {
		c.closeSocketLocked(err != nil)
	} else if !c.failed { // else fail set a shorter deadline
		c.nc.SetReadDeadline(time.Now().Add(c.set.opts.closeTimeout()))
	}
	last := c.readerDone
	c.mu.Unlock()
	if last {
		c.finish()
	}
}

// finish ends the connection once both sides have returned.
func (c *Conn) finish() {
	c.set.remove(c)
	c.set.poll.forget(c)
	c.cancel()
	c.rd.release()
	if c.h != nil {
		c.h.Closed(c.end)
	}
	close(c.done)
}

// resumeLocked starts a goroutine to read if the connection is parked.
// Call with mu held.
func (c *Conn) resumeLocked() {
	if c.parked {
		c.parked = false
		go c.readLoop()
	}
}

// resume is the poller's: the parked socket turned readable.
func (c *Conn) resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resumeLocked()
}

// errParked ends a read loop whose connection was parked; errGotClose one
// that read the peer's close frame.
var (
	errParked   = errors.New("wsconn: parked")
	errGotClose = errors.New("wsconn: close frame received")
)

// readLoop reads until the connection ends or parks.
func (c *Conn) readLoop() {
	err := c.readFrames()
	if err == errParked {
		return
	}
	c.mu.Lock()
	c.readerDone = true
	if !c.closing {
		c.startClosingLocked(End{Cause: CausePeerGone, Code: StatusAbnormalClosure, Err: err}, false)
	}
	if err != errGotClose || c.sentClose {
		c.closeSocketLocked(false)
	}
	last := c.writerDone
	c.mu.Unlock()
	if last {
		c.finish()
	}
}

// reader is the read side's state.
type reader struct {
	buf    []byte // bytes read, unread from r on; nil while parked with nothing
	r      int
	msg    []byte // the fragmented message being assembled
	msgOp  byte   // its opcode; 0: no message in progress
	frags  int    // frames in it so far
	window int64  // mono: start of the second in which ctrl control frames came
	ctrl   int
	skip   int64 // payload bytes of a rejected frame still to discard
	failed bool  // a frame was rejected: the next bad one ends the read side
}

const readBufSize = 1 << 10

var readPool = sync.Pool{New: func() any { b := make([]byte, 0, readBufSize); return &b }}

// getReadBuf returns an empty buffer with room for n bytes.
func getReadBuf(n int) []byte {
	if n > readBufSize {
		return make([]byte, 0, n)
	}
	return (*readPool.Get().(*[]byte))[:0]
}

func (r *reader) release() {
	if r.buf != nil && cap(r.buf) == readBufSize {
		b := r.buf[:0]
		readPool.Put(&b)
	}
	r.buf, r.r, r.msg = nil, 0, nil
}

// fill reads more bytes into the buffer. With mayPark and nothing to
// read, it parks the connection and returns errParked.
func (c *Conn) fill(mayPark bool) error {
	r := &c.rd
	if r.buf == nil {
		r.buf = getReadBuf(readBufSize)
	}
	if r.r > 0 { // move what is left to the front
		n := copy(r.buf, r.buf[r.r:])
		r.buf, r.r = r.buf[:n], 0
	}
	if cap(r.buf)-len(r.buf) < 512 {
		nb := make([]byte, len(r.buf), 2*cap(r.buf))
		copy(nb, r.buf)
		r.buf = nb
	}
	if c.waiting.Load() == 0 {
		c.waiting.Store(mono(time.Now()))
	}
	if mayPark && c.raw != nil {
		n, err, again := readNow(c.raw, r.buf[len(r.buf):cap(r.buf)])
		if !again {
			return c.got(n, err)
		}
		if len(r.buf) == 0 {
			r.release()
		}
		if c.park() {
			return errParked
		}
		if r.buf == nil {
			r.buf = getReadBuf(readBufSize)
		}
	}
	n, err := c.nc.Read(r.buf[len(r.buf):cap(r.buf)])
	return c.got(n, err)
}

func (c *Conn) got(n int, err error) error {
	if n > 0 {
		c.rd.buf = c.rd.buf[:len(c.rd.buf)+n]
		c.heard.Store(mono(time.Now()))
		return nil
	}
	if err == nil {
		err = errors.New("read returned nothing")
	}
	return err
}

// park registers the idle connection with the poller, unless it is
// closing or there is no poller, and reports whether it did.
func (c *Conn) park() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing || c.sockClosed || !c.set.poll.arm(c) {
		return false
	}
	c.parked = true
	return true
}

func (c *Conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// errFailed ends the read side of a connection that kept sending bad
// frames after it was failed.
var errFailed = errors.New("wsconn: bad frame after the connection was failed")

// failTimeout is how long a failed connection's read side looks for the
// peer's close frame: a peer that broke the protocol or flooded gets less
// patience than one closed normally (closeTimeout).
const failTimeout = time.Second

// fail closes the connection for a frame the peer should not have sent.
// The read side then reads on only to find the peer's close frame, for
// at most failTimeout; a flooder's socket is closed as soon as our close
// frame is written (RFC 6455 7.1.7 allows it), so that reading its flood
// costs nothing more.
func (c *Conn) fail(cause string, code int, reason string) {
	c.mu.Lock()
	c.startClosingLocked(End{Cause: cause, Code: code, Reason: reason}, false)
	if !c.failed {
		c.failed = true
		c.flooded = cause == CauseControlFlood || cause == CauseFragmentFlood
		c.nc.SetReadDeadline(time.Now().Add(failTimeout))
	}
	c.mu.Unlock()
	c.rd.failed = true
}

// readFrames reads and handles frames until the connection ends (the
// error says how) or parks (errParked).
func (c *Conn) readFrames() error {
	r := &c.rd
	o := &c.set.opts
	for {
		for r.skip > 0 {
			n := min(r.skip, int64(len(r.buf)-r.r))
			r.r += int(n)
			if r.skip -= n; r.skip > 0 {
				r.buf, r.r = r.buf[:0], 0
				if err := c.fill(false); err != nil {
					return err
				}
			}
		}
		closing := c.isClosing()
		var h header
		var size int
		for {
			if h, size = parseHeader(r.buf[r.r:]); size > 0 {
				break
			}
			idle := r.msgOp == 0 && !closing && len(r.buf) == r.r
			if err := c.fill(idle); err != nil {
				return err
			}
		}
		control := h.op&0x8 != 0
		if closing && !control && h.length >= 0 { // data after our close frame: ignored
			r.r += size
			r.skip = h.length
			continue
		}
		var cause, reason string
		var code int
		switch {
		case !h.masked:
			cause, code, reason = CauseProtocol, StatusProtocolError, "client frames must be masked"
		case h.rsv != 0:
			cause, code, reason = CauseProtocol, StatusProtocolError, "reserved bits set: no extension was negotiated"
		case h.op > opBinary && h.op < opClose || h.op > opPong:
			cause, code, reason = CauseProtocol, StatusProtocolError, fmt.Sprintf("reserved opcode %#x", h.op)
		case control && !h.fin:
			cause, code, reason = CauseProtocol, StatusProtocolError, "fragmented control frame"
		case control && h.length > maxControlPayload:
			cause, code, reason = CauseProtocol, StatusProtocolError, "control frame over 125 bytes"
		case h.length < 0:
			cause, code, reason = CauseProtocol, StatusProtocolError, "invalid frame length"
		case !control && h.op == opContinuation && r.msgOp == 0:
			cause, code, reason = CauseProtocol, StatusProtocolError, "continuation frame without a message"
		case !control && h.op != opContinuation && r.msgOp != 0:
			cause, code, reason = CauseProtocol, StatusProtocolError, "new message before the fragmented one ended"
		case !control && int64(len(r.msg))+h.length > int64(c.readLimit):
			cause, code, reason = CauseTooLarge, StatusMessageTooBig, fmt.Sprintf("message over %d bytes", c.readLimit)
		case !control && r.frags+1 > o.MaxFragments:
			cause, code, reason = CauseFragmentFlood, StatusPolicyViolation, fmt.Sprintf("message in more than %d frames", o.MaxFragments)
		}
		if reason != "" {
			if r.failed { // bad again: stop reading
				return errFailed
			}
			c.fail(cause, code, reason)
			r.r += size
			r.skip = h.length
			r.msg, r.msgOp, r.frags = r.msg[:0], 0, 0
			continue
		}
		total := size + int(h.length)
		for len(r.buf)-r.r < total {
			if cap(r.buf)-r.r < total { // make room for the whole frame
				nb := make([]byte, len(r.buf)-r.r, total+readBufSize)
				copy(nb, r.buf[r.r:])
				r.buf, r.r = nb, 0
			}
			if err := c.fill(false); err != nil {
				return err
			}
		}
		p := r.buf[r.r+size : r.r+total]
		unmask(p, h.mask, 0)
		r.r += total
		if control {
			if err := c.control(h.op, p, closing); err != nil {
				return err
			}
			continue
		}
		r.frags++
		if h.op != opContinuation {
			r.msgOp = h.op
		}
		if !h.fin || len(r.msg) > 0 {
			r.msg = append(r.msg, p...)
			p = r.msg
		}
		if !h.fin {
			continue
		}
		op := r.msgOp
		r.msgOp, r.frags = 0, 0
		if op == opText && !utf8.Valid(p) {
			c.fail(CauseInvalidUTF8, StatusInvalidData, "text message is not valid UTF-8")
			continue
		}
		if !closing {
			c.waiting.Store(0)
			c.h.Message(c.ctx, op == opText, p)
		}
		if cap(r.msg) > 4*readBufSize {
			r.msg = nil
		} else {
			r.msg = r.msg[:0]
		}
	}
}

// control handles a control frame with payload p.
func (c *Conn) control(op byte, p []byte, closing bool) error {
	r := &c.rd
	if op == opClose {
		return c.gotCloseFrame(p)
	}
	if closing {
		return nil
	}
	if op == opPong && c.owed.Add(-1) >= 0 {
		return nil // answers our ping: not counted against the limit
	} else if op == opPong {
		c.owed.Add(1)
	}
	now := mono(time.Now())
	if now-r.window >= int64(time.Second) {
		r.window, r.ctrl = now, 0
	}
	if r.ctrl++; r.ctrl > c.set.opts.MaxControlRate {
		c.fail(CauseControlFlood, StatusPolicyViolation, fmt.Sprintf("more than %d pings and pongs per second", c.set.opts.MaxControlRate))
		return nil
	}
	if op == opPing { // answer the latest ping only (RFC 6455 5.5.3)
		c.mu.Lock()
		c.pong = append(c.pong[:0:0], p...)
		c.kickLocked()
		c.mu.Unlock()
	}
	return nil
}

// gotCloseFrame handles the peer's close frame: its code is echoed unless
// we are closing already, and the read side ends.
func (c *Conn) gotCloseFrame(p []byte) error {
	code, reason := StatusNoStatusRcvd, ""
	switch {
	case len(p) == 1:
		c.fail(CauseProtocol, StatusProtocolError, "close frame with a 1-byte payload")
		return nil
	case len(p) >= 2:
		code, reason = int(p[0])<<8|int(p[1]), string(p[2:])
		if !validCloseCode(code) {
			c.fail(CauseProtocol, StatusProtocolError, fmt.Sprintf("invalid close code %d", code))
			return nil
		}
		if !utf8.ValidString(reason) {
			c.fail(CauseInvalidUTF8, StatusInvalidData, "close reason is not valid UTF-8")
			return nil
		}
	}
	c.mu.Lock()
	c.gotClose = true
	c.startClosingLocked(End{Cause: CausePeerClosed, Code: code, Reason: reason}, false)
	c.mu.Unlock()
	return errGotClose
}

var eof = io.EOF
