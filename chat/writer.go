package chat

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// The write side of a connection is built for many mostly idle clients:
//
//   - No goroutine while idle: queuing a frame starts a writer goroutine,
//     which exits once the queue is empty.
//   - No timer per connection: one sweep per hub sends the keepalive pings.
//   - Frames queued together go to the socket in one write (corkWriter),
//     not one write and one timer per frame.
//   - Small buffers: coder/websocket gets a 512-byte read buffer and a 512-byte
//     write buffer instead of net/http's 4 KiB ones.

const (
	readBufferSize  = 512 // client frames are small; larger ones are read past the buffer
	writeBufferSize = 512 // holds a typical frame; the corkWriter batches
	corkFlushSize   = 64 << 10
)

// writer is a connection's write side, and what the read side needs to
// wait in a shallow stack. Its fields are guarded by client.mu, except
// tasks and done.
type writer struct {
	out     *corkWriter                 // nil: frames are written one by one
	in      *bufio.Reader               // the library's read buffer, if known
	raw     syscall.RawConn             // the socket, if known
	closing bool                        // the library may be reading in, for its close handshake
	spawn   func(func(context.Context)) // runs f on a goroutine with the connection's context
	running bool                        // a writer goroutine is running
	closed  bool                        // the connection is closed: no writer starts again
	pinging bool                        // a ping is waiting for its pong
	pingAt  time.Time                   // last ping; guarded by Hub.mu
	spare   [][]byte                    // the last queue written, reused
	tasks   sync.WaitGroup              // writer and ping goroutines
	done    chan struct{}               // closed once the connection is closed
}

// startWriting sets up the write side on ctx, the connection's context: a
// writer goroutine runs whenever frames are queued, and once ctx ends one
// closes the connection with the cause's close code. It returns a function
// that waits until the connection is closed and every goroutine of the
// write side has returned; call it after ctx has ended.
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
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.kickLocked()
		c.mu.Unlock()
	})
	return func() {
		<-c.w.done
		stop()
		c.w.tasks.Wait()
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
		if len(c.queue) == 0 {
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
		if err := c.writeFrames(ctx, frames); err != nil {
			c.conn.CloseNow() // the reader sees it and ends the connection
			c.closed()
			return
		}
		c.mu.Lock()
		clear(frames) // don't keep the frames alive
		c.w.spare = frames[:0]
		c.mu.Unlock()
	}
}

// closed records that the connection is closed. Only the running writer
// calls it, once.
func (c *client) closed() {
	c.mu.Lock()
	c.w.closed, c.w.running = true, false
	c.mu.Unlock()
	close(c.w.done)
}

// writeFrames writes frames, in one socket write where it can. Once conn
// (the connection's context) ends with a cause that does not flush, it
// stops early without an error: the close frame goes next, and a slow
// consumer gets nothing more before it.
func (c *client) writeFrames(conn context.Context, frames [][]byte) error {
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
	// Corked, a Write only copies into memory (the corkWriter bounds the
	// socket writes with WriteTimeout), so it needs no context of its own.
	out.cork()
	for _, f := range frames {
		if conn.Err() != nil && !flushes(context.Cause(conn)) {
			break
		}
		if err := c.conn.Write(context.Background(), websocket.MessageText, f); err != nil {
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
	c.w.closing = true // see waitReadable
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
		if err := c.writeFrames(context.Background(), frames); err != nil {
			c.conn.CloseNow()
			return
		}
	}
	if cc == errSlowConsumer {
		c.log.Info("disconnecting slow consumer")
		c.hub.opts.Metrics.SlowConsumer()
	}
	c.conn.Close(cc.code, cc.reason)
}

// waitReadable blocks until the connection has a frame to read. Waiting
// here rather than deep in the library's Read keeps an idle connection's
// goroutine stack small enough for the GC to shrink it (to a quarter, for
// 10,000 idle connections: docs/performance.md).
func (c *client) waitReadable() {
	c.mu.Lock()
	// The library reads only in Read, which only this goroutine calls,
	// and in its close handshake, which starts after closing is set.
	wait := c.w.in != nil && !c.w.closing && c.w.in.Buffered() == 0
	c.mu.Unlock()
	if wait {
		waitSocket(c.w.raw)
	}
}

// ping sends a keepalive ping unless one is under way; a peer that does
// not answer within WriteTimeout is dropped.
func (c *client) ping() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w.closed || c.w.pinging || c.w.spawn == nil {
		return
	}
	c.w.pinging = true
	c.w.spawn(func(ctx context.Context) {
		pctx, cancel := context.WithTimeout(context.Background(), c.hub.opts.WriteTimeout)
		err := c.conn.Ping(pctx)
		cancel()
		c.mu.Lock()
		c.w.pinging = false
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			c.log.Debug("ping failed: dropping connection", "err", err)
			c.conn.CloseNow()
		}
	})
}

// pingSweep is how often the hub looks for clients due a ping.
func (o *Options) pingSweep() time.Duration { return min(o.PingInterval/4, time.Second) }

// pingDue pings every client last pinged PingInterval ago: one sweep per
// hub instead of a timer per connection. Clients connect at different
// times, so their pings are spread out.
func (h *Hub) pingDue(now time.Time) {
	var due []*client
	h.mu.Lock()
	for c := range h.conns {
		switch {
		case c.w.pingAt.IsZero():
			c.w.pingAt = now
		case now.Sub(c.w.pingAt) >= h.opts.PingInterval:
			c.w.pingAt = now
			due = append(due, c)
		}
	}
	h.mu.Unlock()
	for _, c := range due {
		c.ping()
	}
}

// corkWriter is where coder/websocket's buffered writer writes. Between
// cork and uncork it collects the bytes of the frames written and sends
// them in one socket write (or one per corkFlushSize); otherwise, for the
// control frames the library writes by itself (pongs, close), it writes
// through. Safe for concurrent use.
type corkWriter struct {
	conn    net.Conn
	timeout time.Duration // for each socket write made while corked

	mu     sync.Mutex
	corked bool
	buf    *[]byte // from corkPool, while corked
}

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func (w *corkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
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
// corkWriter (out) instead of net/http's 4 KiB buffers.
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
