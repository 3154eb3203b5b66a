package chat

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/pgchat/pgchat/chat/internal/wsconn"
	"github.com/pgchat/pgchat/store"
)

// closeCause ends a connection with a WebSocket close code and reason;
// label is its cause in the disconnect metrics.
type closeCause struct {
	code   websocket.StatusCode
	reason string
	label  string
	flush  bool // write what is queued before closing
}

func (e *closeCause) Error() string { return e.reason }

var (
	errSlowConsumer = &closeCause{code: websocket.StatusPolicyViolation, reason: "slow consumer: reconnect and join with since", label: "slow_consumer"}
	errGoingAway    = &closeCause{code: websocket.StatusGoingAway, reason: "server shutting down: reconnect", label: "shutdown", flush: true}
	errOutOfSync    = &closeCause{code: websocket.StatusInternalError, reason: "out of sync: reconnect and join with since", label: "out_of_sync"}
	errShuttingDown = errorf(CodeUnavailable, "server is shutting down: reconnect and retry with the same ref")
)

// socket is all the hub and the batcher's callbacks see of a connection
// (a *wsconn.Conn): queue a frame without blocking (false: slow
// consumer), and close.
type socket interface {
	Queue(frame []byte) bool
	WaitQueued(ctx context.Context, n int) error
	Close(cause string, code int, reason string)
	CloseAfterQueued(cause string, code int, reason string)
	Abort(cause, reason string)
}

// client is one WebSocket connection's chat state. The connection itself
// (reading, writing, keepalive, closing) is its socket's (wsconn.Conn):
// the socket calls Message on its read side, one frame at a time, so the
// read side's fields (joined, limiter, joins, slots) need no lock; any
// goroutine may queue frames with send, which never blocks.
type client struct {
	hub     *Hub
	sock    socket
	id      uint64
	author  string
	limiter *rate.Limiter   // sends; made on the first
	joined  map[string]bool // rooms joined; read side only
	grant   *Grant          // the token's rooms and expiry; nil: anonymous mode
	joins   *rate.Limiter   // bounds join/leave churn: each join reads the table
	expiry  *time.Timer     // the token's; nil in anonymous mode
	release func()          // gives back the connection's slot under the limits
	cut     atomic.Bool     // cut as a slow consumer: counted and logged once

	mu       sync.Mutex    // guards inflight and draining
	inflight int           // sends waiting for their ack
	draining bool          // no new sends; close once inflight is 0
	slots    chan struct{} // bounds inflight: back-pressure on the read side; made on the first send
}

func newClient(h *Hub, sock socket, author string) *client {
	c := &client{
		hub:    h,
		sock:   sock,
		author: author,
		joined: make(map[string]bool),
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

// serve runs the connection on conn: it registers it, sends the welcome,
// joins the rooms of the URL, then serves conn's frames. It returns when
// the connection has ended or is parked idle (wsconn); Closed, called
// once by conn when both its sides are done, unregisters it.
func (c *client) serve(conn *wsconn.Conn, autoJoin []string) {
	if !c.hub.register(c) {
		conn.Close(errGoingAway.label, int(errGoingAway.code), errGoingAway.reason)
		conn.Serve(closedOnly{c.release})
		return
	}
	// In token mode the connection closes with 4001 when the token expires.
	if c.grant != nil {
		c.expiry = time.AfterFunc(time.Until(c.grant.Expires), func() { c.end(errTokenExpired) })
	}
	ctx := conn.Context()
	c.send(encode(welcomeFrame{TypeWelcome, c.hub.opts.Instance, c.author}))
	for _, room := range autoJoin {
		c.handle(ctx, Frame{Type: TypeJoin, Room: room})
	}
	conn.Serve(c)
}

// closedOnly is the wsconn.Handler of a connection refused at once.
type closedOnly struct{ release func() }

func (closedOnly) Message(context.Context, bool, []byte) {}
func (h closedOnly) Closed(wsconn.End) {
	if h.release != nil {
		h.release()
	}
}

// Message handles one frame from the client (wsconn.Handler).
func (c *client) Message(ctx context.Context, text bool, data []byte) {
	if !text {
		c.sendError("", "", errorf(CodeBadRequest, "binary frames are not supported: send JSON text frames"))
		return
	}
	f, err := DecodeFrame(data, c.hub.opts.MaxMessageBytes)
	if err != nil {
		c.sendError(f.Ref, f.Room, err)
		return
	}
	c.handle(ctx, f)
}

// Closed unregisters the ended connection (wsconn.Handler).
func (c *client) Closed(end wsconn.End) {
	if c.cut.Load() {
		c.log().Info("disconnected slow consumer", "send_buffer", c.hub.opts.SendBuffer, "cause", end.Cause)
	} else if end.Err != nil || end.Cause == wsconn.CauseProtocol {
		c.log().Debug("connection ended", "cause", end.Cause, "code", end.Code, "reason", end.Reason, "err", end.Err)
	}
	c.hub.opts.Metrics.Disconnect(end.Cause)
	if c.expiry != nil {
		c.expiry.Stop()
	}
	c.hub.unregister(c, c.joined)
	if c.release != nil {
		c.release()
	}
}

// end closes the connection for cause, a *closeCause.
func (c *client) end(cause error) {
	var cc *closeCause
	if !errors.As(cause, &cc) {
		cc = &closeCause{code: websocket.StatusNormalClosure, label: "server"}
	}
	if cc.flush {
		c.sock.CloseAfterQueued(cc.label, int(cc.code), cc.reason)
	} else {
		c.sock.Close(cc.label, int(cc.code), cc.reason)
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
	case TypeEdit, TypeDelete, TypeReact, TypeUnreact:
		c.applyEvent(ctx, f) // events.go
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
	if !errors.As(err, &e) && !errors.Is(err, context.Canceled) { // canceled: the connection is closing
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
	if !c.sock.Queue(frame) {
		c.cutSlow()
	}
}

// cutSlow disconnects the client as a slow consumer.
func (c *client) cutSlow() {
	if c.cut.CompareAndSwap(false, true) { // logged in Closed, off the hub's lock
		c.hub.opts.Metrics.SlowConsumer()
	}
	c.end(errSlowConsumer)
}

// sendWait queues a frame, first waiting until the queue is at most half
// full. Only the read side uses it, for replays, which may be larger than
// the queue.
func (c *client) sendWait(ctx context.Context, frame []byte) error {
	if err := c.sock.WaitQueued(ctx, c.hub.opts.SendBuffer/2-len(frame)); err != nil {
		if errors.Is(err, wsconn.ErrSlow) {
			c.cutSlow()
			return errSlowConsumer
		}
		return err
	}
	c.send(frame)
	return nil
}
