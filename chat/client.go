package chat

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/pgchat/pgchat/store"
)

// closeCause ends a connection with a WebSocket close code and reason.
type closeCause struct {
	code   websocket.StatusCode
	reason string
	flush  bool // write what is queued before closing
}

func (e *closeCause) Error() string { return e.reason }

var (
	errSlowConsumer = &closeCause{code: websocket.StatusPolicyViolation, reason: "slow consumer: reconnect and join with since"}
	errGoingAway    = &closeCause{code: websocket.StatusGoingAway, reason: "server shutting down: reconnect", flush: true}
	errOutOfSync    = &closeCause{code: websocket.StatusInternalError, reason: "out of sync: reconnect and join with since"}
	errShuttingDown = errorf(CodeUnavailable, "server is shutting down: reconnect and retry with the same ref")
)

// client is one WebSocket connection. Its read side (the read loop, which
// owns joined, limiter and joins) runs on one goroutine at a time, none
// while the connection is idle (park.go); writes to conn are made by a
// writer goroutine that runs only while frames are queued (writer.go).
// Other goroutines (the hub, the batcher) only queue frames with send,
// which never blocks.
type client struct {
	hub     *Hub
	conn    *websocket.Conn
	id      uint64
	author  string
	limiter *rate.Limiter   // sends; made on the first
	joined  map[string]bool // rooms joined; read loop only
	grant   *Grant          // the token's rooms and expiry; nil: anonymous mode
	joins   *rate.Limiter   // bounds join/leave churn: each join reads the table
	expiry  *time.Timer     // the token's; nil in anonymous mode
	release func()          // gives back the connection's slot under the limits
	finish  func()          // waits for the write side to finish

	// end asks the writer to close the connection with the cause's code.
	end func(cause error)

	mu       sync.Mutex // guards the queue and the in-flight count
	queue    [][]byte   // frames waiting for the writer
	queued   int        // bytes in queue
	inflight int        // sends waiting for their ack
	draining bool       // no new sends; close once inflight is 0
	w        writer     // the write side (writer.go)
	space    chan struct{}
	slots    chan struct{} // bounds inflight: back-pressure on the read loop; made on the first send
}

func newClient(h *Hub, conn *websocket.Conn, author string) *client {
	c := &client{
		hub:    h,
		conn:   conn,
		author: author,
		joined: make(map[string]bool),
		space:  make(chan struct{}, 1),
	}
	if h.opts.RateLimit > 0 {
		// A (re)connecting client may join all its rooms at once.
		c.joins = rate.NewLimiter(rate.Limit(h.opts.RateLimit), h.opts.MaxRooms)
	}
	return c
}

// log is the connection's logger, made when needed: most connections never
// log, and a logger with attributes costs a few hundred bytes.
func (c *client) log() *slog.Logger {
	return c.hub.log.With("conn", c.id, "author", c.author)
}

// serve runs the connection: it registers it, sends the welcome, joins the
// rooms of the URL, then reads. It returns when the connection has ended
// (and its writer has stopped), or sooner, when the connection is idle
// and parked (park.go): then a later frame resumes it on another
// goroutine, and the read side that sees the connection end finishes it.
func (c *client) serve(ctx context.Context, autoJoin []string) {
	wctx, cancel := context.WithCancelCause(ctx)
	c.end = c.endFunc(cancel)
	if !c.hub.register(c) {
		cancel(nil)
		c.conn.Close(websocket.StatusGoingAway, errGoingAway.reason)
		if c.release != nil {
			c.release()
		}
		return
	}
	c.finish = c.startWriting(wctx)
	c.w.resume = func() { go c.run(ctx) }

	// In token mode the connection closes with 4001 when the token expires.
	if c.grant != nil {
		c.expiry = time.AfterFunc(time.Until(c.grant.Expires), func() { c.end(errTokenExpired) })
	}

	c.send(encode(welcomeFrame{TypeWelcome, c.hub.opts.Instance, c.author}))
	for _, room := range autoJoin {
		c.handle(ctx, Frame{Type: TypeJoin, Room: room})
	}
	c.run(ctx)
}

// run reads frames until the connection ends, then ends it: the close,
// the writer's end, unregistering. It returns early if it parks the
// connection.
func (c *client) run(ctx context.Context) {
	err := c.readLoop(ctx)
	if err == errParked {
		return // the connection belongs to the poller now
	}
	if err != nil {
		c.log().Debug("connection ended", "err", err)
	}
	if c.expiry != nil {
		c.expiry.Stop()
	}
	c.end(nil)
	c.finish() // don't end before the writer
	c.hub.unregister(c, c.joined)
	if c.release != nil {
		c.release()
	}
}

// readLoop reads frames until the connection ends, or returns errParked
// when it has parked the idle connection. The writer closes the
// connection, which is what ends a Read: ctx is never cancelled for that,
// since cancelling a Read's context drops the connection without a close
// frame.
func (c *client) readLoop(ctx context.Context) error {
	for {
		if c.awaitFrame() {
			return errParked
		}
		typ, data, err := c.conn.Read(ctx)
		if err != nil {
			if isNormalEnd(err) {
				return nil
			}
			return err
		}
		if typ != websocket.MessageText {
			c.sendError("", "", errorf(CodeBadRequest, "binary frames are not supported: send JSON text frames"))
			continue
		}
		f, err := DecodeFrame(data, c.hub.opts.MaxMessageBytes)
		if err != nil {
			c.sendError(f.Ref, f.Room, err)
			continue
		}
		c.handle(ctx, f)
	}
}

func (c *client) handle(ctx context.Context, f Frame) {
	if f.Type != TypeLeave && !c.grant.Allows(f.Room) {
		c.sendError(f.Ref, f.Room, errForbidden(f.Room))
		return
	}
	switch f.Type {
	case TypeJoin:
		if c.joined[f.Room] {
			c.sendError(f.Ref, f.Room, errorf(CodeBadRequest, "already joined %s", f.Room))
			return
		}
		if len(c.joined) >= c.hub.opts.MaxRooms {
			c.sendError(f.Ref, f.Room, errorf(CodeRateLimited, "a connection may join at most %d rooms", c.hub.opts.MaxRooms))
			return
		}
		if c.joins != nil && !c.joins.Allow() {
			c.sendError(f.Ref, f.Room, errorf(CodeRateLimited, "joining more than %g rooms per second: slow down", c.hub.opts.RateLimit))
			return
		}
		if err := c.hub.join(ctx, c, f.Room, f.Since, f.HasSince); err != nil {
			c.fail(f.Ref, f.Room, "join", err)
			return
		}
		c.joined[f.Room] = true
	case TypeLeave:
		if !c.joined[f.Room] || !c.hub.leave(c, f.Room) {
			c.sendError(f.Ref, f.Room, errorf(CodeNotJoined, "not joined to %s", f.Room))
			return
		}
		delete(c.joined, f.Room)
		c.send(encode(leftFrame{TypeLeft, f.Room}))
	case TypeSend:
		c.submit(ctx, f)
	case TypeTyping:
		c.typing(f)
	case TypeRead:
		c.markRead(f)
	}
}

// submit hands a send to the batcher; the ack or error is queued when the
// transaction ends.
func (c *client) submit(ctx context.Context, f Frame) {
	if !c.joined[f.Room] {
		c.sendError(f.Ref, f.Room, errorf(CodeNotJoined, "join %s before sending to it", f.Room))
		return
	}
	if c.slots == nil {
		c.slots = make(chan struct{}, c.hub.opts.MaxInflight)
		if c.hub.opts.RateLimit > 0 {
			c.limiter = rate.NewLimiter(rate.Limit(c.hub.opts.RateLimit), c.hub.opts.RateBurst)
		}
	}
	if c.limiter != nil && !c.limiter.Allow() {
		c.sendError(f.Ref, f.Room, errorf(CodeRateLimited, "more than %g messages per second: slow down and resend", c.hub.opts.RateLimit))
		return
	}
	select {
	case c.slots <- struct{}{}: // wait while too many sends are unacked
	case <-ctx.Done():
		return
	}
	c.mu.Lock()
	if c.draining {
		c.mu.Unlock()
		<-c.slots
		c.sendError(f.Ref, f.Room, errShuttingDown)
		return
	}
	c.inflight++
	c.mu.Unlock()
	msg := store.NewMessage{Room: f.Room, Author: c.author, Body: f.Body, Ref: f.Ref}
	err := c.hub.batcher.Submit(ctx, msg, func(res store.Result, err error) {
		if err != nil {
			c.sendError(f.Ref, f.Room, err) // the batcher logged it, once per batch
		} else {
			c.send(encodeAck(f.Ref, res.Room, res.Seq))
		}
		c.sendDone()
	})
	if err != nil {
		c.fail(f.Ref, f.Room, "send", errShuttingDown)
		c.sendDone()
	}
}

func (c *client) sendDone() {
	<-c.slots
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	if c.draining && c.inflight == 0 {
		c.end(errGoingAway)
	}
}

// goAway starts a graceful close: no new sends; once every send received has
// been answered, the queue is flushed and the socket closed with 1001.
func (c *client) goAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	if c.inflight == 0 {
		c.end(errGoingAway)
	}
}

// fail reports err for a frame; errors that are not the client's fault are
// logged here, once, and shown as "unavailable".
func (c *client) fail(ref, room, op string, err error) {
	var e *Error
	if !errors.As(err, &e) {
		c.log().Error(op+" failed", "room", room, "err", err)
	}
	c.sendError(ref, room, err)
}

func (c *client) sendError(ref, room string, err error) {
	c.send(encode(errorFrame{Type: TypeError, Ref: ref, Room: room, Code: ErrorCode(err), Message: clientMessage(err)}))
}

// send queues a frame without blocking. A client whose queue is over
// SendBuffer is disconnected as a slow consumer: it reconnects and resumes
// with since, and nobody else waits for it.
func (c *client) send(frame []byte) {
	c.mu.Lock()
	if c.queued+len(frame) > c.hub.opts.SendBuffer {
		c.mu.Unlock()
		c.end(errSlowConsumer)
		return
	}
	c.queue = append(c.queue, frame)
	c.queued += len(frame)
	c.kickLocked()
	c.mu.Unlock()
}

// sendWait queues a frame, first waiting until the queue is at most half
// full. Only the read loop uses it, for replays, which may be larger than
// the queue.
func (c *client) sendWait(ctx context.Context, frame []byte) error {
	for {
		c.mu.Lock()
		if c.queued+len(frame) <= c.hub.opts.SendBuffer/2 || c.queued == 0 {
			c.mu.Unlock()
			c.send(frame)
			return nil
		}
		c.mu.Unlock()
		select {
		case <-c.space:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.hub.opts.WriteTimeout):
			return errSlowConsumer
		}
	}
}

// takeLocked empties the queue and returns what it held. Call with c.mu
// held.
func (c *client) takeLocked() [][]byte {
	q := c.queue
	c.queue, c.w.spare, c.queued = c.w.spare, nil, 0
	select {
	case c.space <- struct{}{}:
	default:
	}
	return q
}

// isNormalEnd reports whether err is how connections normally end.
func isNormalEnd(err error) bool {
	switch websocket.CloseStatus(err) {
	case websocket.StatusNormalClosure, websocket.StatusGoingAway, websocket.StatusNoStatusRcvd:
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled)
}
