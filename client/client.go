// Package client is a pgchat client that survives reconnects: it resumes
// every room with since, resends unacked sends with their original ref, and
// hands on each room's messages once, in seq order, without gaps.
package client

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"log/slog"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Message is one chat message.
type Message struct {
	Room     string
	Seq      int64 // 1, 2, 3, ... per room, without gaps
	Author   string
	Body     string
	Time     time.Time // when the database stored it
	Instance string    // the instance that accepted it

	// An event about message Target (events.go): Kind is "edit" (Body is
	// the new text), "delete", "react" or "unreact" (with Emoji). Empty
	// on a plain message.
	Kind   string
	Target int64
	Emoji  string
	// A plain message's state when it was replayed: edited (when), deleted
	// (Body empty), and its reactions counted by emoji, as the JSON object
	// of the frame ({"👍":3}; empty if none).
	Edited    time.Time
	Deleted   bool
	Reactions string
}

// Options configures a Client. Zero values pick the defaults in
// parentheses.
type Options struct {
	// URL is the server's WebSocket endpoint, such as ws://localhost:8080
	// (http and https work too; path /ws is added when there is none).
	URL string
	// Name is the author name. Empty: the server picks a guest name on the
	// first connection and the client keeps it, so that resent refs stay
	// the same author's.
	Name string
	// Token, if set, is sent as "Authorization: Bearer TOKEN" (servers with
	// AUTH_SECRET); the server then takes the name from it.
	Token string
	// Rooms are joined on every connection: the first time from Since (or
	// with the server's default history if the room is not in Since), then
	// from the last seq held.
	Rooms []string
	// Since gives the first join of some rooms a starting point: messages
	// with seq > Since[room] are delivered.
	Since map[string]int64
	// OnMessage gets every message of the joined rooms, once, in seq order
	// per room. It runs on the connection's read goroutine: it must not
	// call Send and should return quickly.
	OnMessage func(Message)
	// OnConnect is called after each welcome, with the instance reached.
	OnConnect func(instance string)
	// OnPresence, OnTyping and OnRead get the rooms' presence snapshots and
	// diffs, typing events and read receipts (presence.go). Like
	// OnMessage they run on the read goroutine.
	OnPresence func(Presence)
	OnTyping   func(room, author string)
	OnRead     func(ReadReceipt)
	// MinDelay and MaxDelay bound the reconnect backoff: the n-th attempt
	// in a row waits a random time between 0 and min(MaxDelay,
	// MinDelay × 2^n) ("full jitter") (250ms, 10s).
	MinDelay, MaxDelay time.Duration
	// PingInterval is how often the client pings the server; a ping left
	// unanswered for PingInterval drops the connection (30s).
	PingInterval time.Duration
	// Log gets connection events. Nil discards them.
	Log *slog.Logger
}

// Client is a resilient connection to a pgchat server. Create it with New,
// run it with Run and send with Send. Its methods are safe for concurrent
// use.
type Client struct {
	opts   Options
	log    *slog.Logger
	prefix string // of this client's refs

	done chan struct{} // closed when Run returns

	mu       sync.Mutex
	err      error                   // why Run returned; set before done is closed
	name     string                  // author, pinned after the first welcome
	rooms    map[string]*roomState   // guarded by mu
	pending  map[string]*pendingSend // by ref
	order    []*pendingSend          // pending in the order of Send calls
	conn     *websocket.Conn         // nil while disconnected
	gen      int                     // connection number, bumped per connection
	instance string                  // instance of the current connection
	nextRef  int

	pres presenceState // presence.go
}

type roomState struct {
	last    int64 // seq of the last message handed on
	started bool  // last is meaningful: join with since
	live    bool  // joined on the current connection
	states  bool  // joined without since: the replay is messages' states, with gaps (events)
}

type pendingSend struct {
	room, body, ref string
	event           *eventFrame // an edit, delete, react or unreact instead of a send (events.go)
	sentGen         int         // connection it was last written on; 0: not yet
	attempts        int         // answers asking to retry so far
	done            chan struct{}
	seq             int64
	err             error
}

// Errors of Send.
var (
	// ErrClosed: Run has returned.
	ErrClosed = errors.New("client closed")
	// ErrNotJoined: Send for a room that is not in Options.Rooms.
	ErrNotJoined = errors.New("room not in Options.Rooms")
)

// ServerError is an error frame that retrying does not fix (bad_request,
// too_large, forbidden, not_joined).
type ServerError struct {
	Code    string
	Message string
}

func (e *ServerError) Error() string { return e.Code + ": " + e.Message }

// New returns a client for opts. It does not connect: call Run.
func New(opts Options) *Client {
	if opts.MinDelay <= 0 {
		opts.MinDelay = 250 * time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = 10 * time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 30 * time.Second
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var b [5]byte
	rand.Read(b[:])
	c := &Client{
		opts:    opts,
		log:     log,
		prefix:  strings.ToLower(base32.StdEncoding.EncodeToString(b[:])),
		done:    make(chan struct{}),
		name:    opts.Name,
		rooms:   make(map[string]*roomState),
		pending: make(map[string]*pendingSend),
	}
	for _, r := range opts.Rooms {
		st := &roomState{}
		if since, ok := opts.Since[r]; ok {
			st.last, st.started = since, true
		}
		c.rooms[r] = st
	}
	return c
}

// Run connects and keeps reconnecting until ctx is cancelled, then returns
// nil; or until the server refuses the connection for good (HTTP 4xx other
// than 429, such as a bad name), and returns that error. Call it once.
func (c *Client) Run(ctx context.Context) error {
	err := c.run(ctx)
	c.mu.Lock()
	c.err = cmpErr(err, ErrClosed)
	c.mu.Unlock()
	close(c.done)
	return err
}

func cmpErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

func (c *Client) run(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		welcomed, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		if welcomed {
			attempt = 0
		}
		delay := backoff(c.opts.MinDelay, c.opts.MaxDelay, attempt)
		c.log.Info("disconnected, reconnecting", "err", err, "retry_in", delay.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

// backoff is the full-jitter delay of the given attempt: a random time
// between 0 and min(maxDelay, minDelay × 2^attempt).
func backoff(minDelay, maxDelay time.Duration, attempt int) time.Duration {
	ceil := min(maxDelay, minDelay<<min(attempt, 30))
	if ceil <= 0 { // overflow
		ceil = maxDelay
	}
	return time.Duration(mathrand.Int64N(int64(ceil) + 1))
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }

// Send posts body to room and waits for its ack: the message is then
// committed, and seq is its number. Across reconnects the send is repeated
// with the same ref until it is acked, so it is stored once. Send returns
// early with ctx's error (the message may or may not be stored), a
// *ServerError, ErrNotJoined, or, once Run has returned, Run's error or
// ErrClosed.
func (c *Client) Send(ctx context.Context, room, body string) (seq int64, err error) {
	c.mu.Lock()
	if c.rooms[room] == nil {
		c.mu.Unlock()
		return 0, ErrNotJoined
	}
	c.nextRef++
	p := &pendingSend{room: room, body: body, ref: c.prefix + "-" + strconv.Itoa(c.nextRef), done: make(chan struct{})}
	c.pending[p.ref] = p
	c.order = append(c.order, p)
	c.mu.Unlock()
	return c.wait(ctx, p)
}

// wait sends p, queued, at once if connected, and waits for its answer.
func (c *Client) wait(ctx context.Context, p *pendingSend) (seq int64, err error) {
	c.mu.Lock()
	conn, gen := c.conn, c.gen
	c.mu.Unlock()
	if conn != nil {
		if err := c.flush(ctx, conn, gen); err != nil {
			conn.CloseNow() // the read loop reconnects; p stays pending
		}
	}
	select {
	case <-p.done:
		return p.seq, p.err
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return 0, c.err
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending[p.ref] == p {
			c.finish(p, 0, ctx.Err())
		}
		c.mu.Unlock()
		<-p.done
		return p.seq, p.err
	}
}

// Last returns the seq of the last message of room handed to OnMessage (or
// known to be the room's head after a join), and whether there is one.
func (c *Client) Last(room string) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.rooms[room]
	if st == nil || !st.started {
		return 0, false
	}
	return st.last, true
}

// Instance returns the instance of the current connection, or "" while
// disconnected.
func (c *Client) Instance() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ""
	}
	return c.instance
}
