package chat

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// The write side of a connection is built for many mostly idle clients:
//
//   - No goroutine while idle: queuing a frame starts a writer goroutine,
//     which exits once the queue is empty.
//   - No timer per connection: one sweep per hub sends the keepalive pings
//     and drops peers that did not answer the last one.
//   - Frames queued together go to the socket in one write (corkWriter),
//     not one write and one timer per frame.
//   - Small buffers: coder/websocket gets a 512-byte read buffer and a
//     256-byte write buffer instead of net/http's 4 KiB ones.
//
// Keepalive pings and the pongs that answer a client's pings are written
// here as raw control frames, and the pongs and pings clients send are read
// off the socket by the read side (park.go) when they arrive alone, so that
// keepalives neither need a goroutine waiting for each pong nor wake the
// library's read for nothing.

const (
	readBufferSize = 512 // client frames are small; larger ones are read past the buffer
	// writeBufferSize holds any control frame (at most 2+125 bytes), so
	// that the library writes each one to the corkWriter in a single Write.
	writeBufferSize = 256
	corkFlushSize   = 64 << 10
)

// writer is a connection's write side, and what its read side needs to
// wait without a goroutine. Its fields are guarded by client.mu, except
// where noted.
type writer struct {
	out     *corkWriter     // nil: frames are written one by one
	in      *bufio.Reader   // the library's read buffer, if known
	raw     syscall.RawConn // the socket, if known
	closing bool            // the library may be reading in, for its close handshake
	running bool            // a writer goroutine is running
	closed  bool            // the connection is closed: no writer starts again
	spare   [][]byte        // the last queue written, reused

	ctrl   []byte       // control frame bytes of our own to write first (pings)
	pong   []byte       // the payload of a client's ping to answer
	pongAt atomic.Int64 // when the last pong came (mono)
	// Guarded by Hub.mu (pingDue's sweep); mono times.
	nextPing, waitPong int64

	poll pollState // registration with the hub's poller (park.go); guarded by its mu

	// Set by serve before the read side first runs, then read only.
	spawn  func(func(context.Context)) // runs f on a tracked goroutine with the connection's context
	resume func()                      // reads on a new goroutine (park.go)
	tasks  sync.WaitGroup              // writer goroutines
	done   chan struct{}               // closed once the connection is closed
}

// startWriting sets up the write side on ctx, the connection's context: a
// writer goroutine runs whenever frames are queued, and once ctx ends
// (see endFunc) one closes the connection with the cause's close code. It
// returns a function that waits until the connection is closed and every
// goroutine of the write side has returned; call it after ctx has ended.
func (c *client) startWriting(ctx context.Context) (wait func()) {
	c.mu.Lock()
	c.w.done = make(chan struct{})
	c.w.spawn = func(f func(context.Context)) {
		c.w.tasks.Add(1) // with c.mu held and before closed: before any Wait
		go func() {
			defer c.w.tasks.Done()
			f(ctx)
		}()
	}
	c.kickLocked() // frames queued before
	c.mu.Unlock()
	return func() {
		<-c.w.done
		c.w.tasks.Wait()
	}
}

// endFunc returns the client's end function for cancel, the connection
// context's: it records the cause and starts a writer to close the
// connection. It may be called with c.mu held, and many times.
func (c *client) endFunc(cancel context.CancelCauseFunc) func(error) {
	var once sync.Once
	return func(cause error) {
		first := false
		once.Do(func() {
			first = true
			c.w.tasks.Add(1) // before the context ends, hence before finish waits
		})
		cancel(cause)
		if first {
			go func() { // c.mu may be held by our caller
				defer c.w.tasks.Done()
				c.mu.Lock()
				c.kickLocked()
				c.mu.Unlock()
			}()
		}
	}
}

// kickLocked starts a writer goroutine unless one is running or the
// connection is closed. Call with c.mu held.
func (c *client) kickLocked() {
	if c.w.running || c.w.closed || c.w.spawn == nil {
		return
	}
	c.w.running = true
	c.w.spawn(c.writeLoop)
}

// writeLoop writes what is queued until the queue is empty, then returns.
// Once ctx has ended it closes the connection instead, with the cause's
// close code: it is then the last writer.
func (c *client) writeLoop(ctx context.Context) {
	for {
		c.mu.Lock()
		if ctx.Err() != nil {
			c.mu.Unlock() // running stays set: no other writer starts
			c.close(context.Cause(ctx))
			c.closed()
			return
		}
		ctrl, pong := c.w.ctrl, c.w.pong
		c.w.ctrl, c.w.pong = nil, nil
		if len(c.queue) == 0 && ctrl == nil && pong == nil {
			// Idle: keep no more than a small queue.
			c.w.running, c.w.spare = false, nil
			if cap(c.queue) > 16 {
				c.queue = nil
			}
			c.mu.Unlock()
			return
		}
		frames := c.takeLocked()
		c.mu.Unlock()
		if err := c.writeFrames(ctx, frames, ctrl, pong); err != nil {
			c.closeNow()
			c.closed()
			return
		}
		c.mu.Lock()
		clear(frames) // don't keep the frames alive
		c.w.spare = frames[:0]
		c.mu.Unlock()
	}
}

// closed records that the connection is closed and wakes its read side.
// Only the running writer calls it, once.
func (c *client) closed() {
	c.mu.Lock()
	c.w.closed, c.w.running = true, false
	c.mu.Unlock()
	close(c.w.done)
	c.hub.poll.wake(c)
}

// closeNow drops the connection without a close frame, and wakes its read
// side (which then ends the connection).
func (c *client) closeNow() {
	c.conn.CloseNow()
	c.hub.poll.wake(c)
}

// writeFrames writes ctrl and a pong if asked, then frames, in one socket
// write where it can. Once conn (the connection's context) ends with a
// cause that does not flush, it stops early without an error: the close
// frame goes next, and a slow consumer gets nothing more before it.
func (c *client) writeFrames(conn context.Context, frames [][]byte, ctrl, pong []byte) error {
	out := c.w.out
	if out == nil {
		for _, f := range frames {
			if conn.Err() != nil && !flushes(context.Cause(conn)) {
				return nil
			}
			// A write whose context ends drops the connection without a
			// close frame, so writes only end by their own timeout.
			wctx, cancel := context.WithTimeout(context.Background(), c.hub.opts.WriteTimeout)
			err := c.conn.Write(wctx, websocket.MessageText, f)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}
	// Frames are written here, not through the library, into out, corked:
	// one copy each, one socket write for the lot. The library only writes
	// its own control frames (close, pongs), each in one Write to out (see
	// writeBufferSize), so they never land inside one of ours.
	out.cork()
	if ctrl != nil {
		out.Write(ctrl)
	}
	if pong != nil {
		out.Write(append([]byte{0x8a, byte(len(pong))}, pong...))
	}
	for _, f := range frames {
		if conn.Err() != nil && !flushes(context.Cause(conn)) {
			break
		}
		if err := out.writeText(f); err != nil {
			out.uncork()
			return err
		}
	}
	return out.uncork()
}

func flushes(cause error) bool {
	var cc *closeCause
	return errors.As(cause, &cc) && cc.flush
}

// close closes the connection for cause: with its close code, after the
// queued frames if it flushes.
func (c *client) close(cause error) {
	c.mu.Lock()
	c.w.closing = true // see awaitFrame
	c.mu.Unlock()
	var cc *closeCause
	if !errors.As(cause, &cc) {
		c.conn.Close(websocket.StatusNormalClosure, "")
		return
	}
	if cc.flush {
		c.mu.Lock()
		frames := c.takeLocked()
		c.mu.Unlock()
		if err := c.writeFrames(context.Background(), frames, nil, nil); err != nil {
			c.conn.CloseNow()
			return
		}
	}
	if cc == errSlowConsumer {
		c.log().Info("disconnecting slow consumer")
		c.hub.opts.Metrics.SlowConsumer()
	}
	c.conn.Close(cc.code, cc.reason)
}

// gotPong records a pong from the client.
func (c *client) gotPong() { c.w.pongAt.Store(mono(time.Now())) }

// monoBase makes mono's times monotonic: a wall clock step does not make
// the ping sweep drop live peers.
var monoBase = time.Now()

// mono returns t as nanoseconds since monoBase, on the monotonic clock.
func mono(t time.Time) int64 { return int64(t.Sub(monoBase)) }

// pingSweep is how often the hub looks for clients due a ping.
func (o *Options) pingSweep() time.Duration { return min(o.PingInterval/4, time.Second) }

// pingDue pings every client last pinged PingInterval ago, and drops those
// that did not answer a ping within WriteTimeout: one sweep per hub
// instead of a timer per connection. Clients connect at different times,
// so their pings are spread out.
func (h *Hub) pingDue(now time.Time) {
	var ping, dead []*client
	t := mono(now)
	h.mu.Lock()
	for c := range h.conns {
		w := &c.w
		if w.waitPong != 0 {
			switch {
			case w.pongAt.Load() >= w.waitPong:
				w.waitPong = 0
			case t-w.waitPong > int64(h.opts.WriteTimeout):
				dead = append(dead, c)
				continue
			}
		}
		switch {
		case w.nextPing == 0:
			w.nextPing = t + int64(h.opts.PingInterval)
		case t >= w.nextPing && w.waitPong == 0:
			w.nextPing, w.waitPong = t+int64(h.opts.PingInterval), t
			ping = append(ping, c)
		}
	}
	h.mu.Unlock()
	for _, c := range ping {
		c.ping()
	}
	for _, c := range dead {
		c.log().Debug("no pong: dropping connection")
		c.closeNow()
	}
}

// pingFrame is a ping without payload.
var pingFrame = []byte{0x89, 0}

// ping sends a ping: right away if the socket takes it, else through a
// writer.
func (c *client) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w.closed || c.w.spawn == nil { // ended, or not started
		return
	}
	if c.w.out == nil { // no raw writes: let the library ping
		c.w.spawn(func(context.Context) {
			ctx, cancel := context.WithTimeout(context.Background(), c.hub.opts.WriteTimeout)
			defer cancel()
			if c.conn.Ping(ctx) == nil {
				c.gotPong()
			}
		})
		return
	}
	n := 0
	if !c.w.running && c.w.raw != nil {
		// No writer, so no data frame half written: the library writes its
		// own control frames to out in one Write, under out.mu.
		c.w.out.mu.Lock()
		n = sendNow(c.w.raw, pingFrame)
		c.w.out.mu.Unlock()
	}
	if n < len(pingFrame) {
		c.w.ctrl = append(c.w.ctrl, pingFrame[n:]...)
		c.kickLocked()
	}
}

// corkWriter is the connection's socket for writing, below
// coder/websocket's buffered writer and beside it: the writer goroutine
// writes data frames with writeText. Between cork and uncork it collects
// the bytes written and sends them in one socket write (or one per
// corkFlushSize); otherwise it writes through. Safe for concurrent use.
type corkWriter struct {
	conn    net.Conn
	timeout time.Duration // for each socket write made while corked

	mu        sync.Mutex
	corked    bool
	buf       *[]byte // from corkPool, while corked
	closeSent bool    // the library wrote a close frame: no more frames
}

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// Write is for the library and for our own control frames: each Write is
// one whole frame.
func (w *corkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(p) > 0 && p[0]&0x0f == 0x8 {
		w.closeSent = true
	}
	return w.writeLocked(p)
}

// writeText writes a text frame holding p. Call it between cork and
// uncork.
func (w *corkWriter) writeText(p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closeSent {
		return net.ErrClosed
	}
	var hdr [10]byte
	h := hdr[:2]
	hdr[0] = 0x81 // FIN + text; server frames are not masked
	switch n := len(p); {
	case n < 126:
		hdr[1] = byte(n)
	case n <= 0xffff:
		hdr[1], hdr[2], hdr[3] = 126, byte(n>>8), byte(n)
		h = hdr[:4]
	default:
		hdr[1] = 127
		for i := range 8 {
			hdr[2+i] = byte(n >> (56 - 8*i))
		}
		h = hdr[:10]
	}
	if !w.corked {
		return errors.New("corkWriter.writeText: not corked")
	}
	*w.buf = append(*w.buf, h...)
	_, err := w.writeLocked(p)
	return err
}

func (w *corkWriter) writeLocked(p []byte) (int, error) {
	if !w.corked {
		return w.conn.Write(p)
	}
	*w.buf = append(*w.buf, p...)
	if len(*w.buf) >= corkFlushSize {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *corkWriter) cork() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.corked = true
	w.buf = corkPool.Get().(*[]byte)
}

// uncork writes what was collected and returns to writing through.
func (w *corkWriter) uncork() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.flushLocked()
	w.corked = false
	if cap(*w.buf) <= 4*corkFlushSize {
		*w.buf = (*w.buf)[:0]
		corkPool.Put(w.buf)
	}
	w.buf = nil
	return err
}

func (w *corkWriter) flushLocked() error {
	if len(*w.buf) == 0 {
		return nil
	}
	w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	_, err := w.conn.Write(*w.buf)
	w.conn.SetWriteDeadline(time.Time{})
	*w.buf = (*w.buf)[:0]
	return err
}

// upgradeWriter is the ResponseWriter given to websocket.Accept: when
// Accept hijacks the connection, it hands over small buffers and a
// corkWriter instead of net/http's 4 KiB buffers, and keeps the socket for
// the read side.
type upgradeWriter struct {
	http.ResponseWriter
	timeout time.Duration
	// Set by Hijack.
	out *corkWriter
	in  *bufio.Reader
	raw syscall.RawConn
}

func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := brw.Reader
	if br.Buffered() == 0 { // else keep what the client sent early
		br = bufio.NewReaderSize(conn, readBufferSize)
	}
	w.in, w.out = br, &corkWriter{conn: conn, timeout: w.timeout}
	if sc, ok := conn.(syscall.Conn); ok {
		w.raw, _ = sc.SyscallConn()
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(w.out, writeBufferSize)), nil
}

func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
