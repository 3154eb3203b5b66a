// Package client is a pgchat client that survives reconnects: it resumes
// every room with since, resends unacked sends with their original ref, and
// hands on each room's messages once, in seq order, without gaps.
package client

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"net/url"
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
}

type roomState struct {
	last    int64 // seq of the last message handed on
	started bool  // last is meaningful: join with since
	live    bool  // joined on the current connection
}

type pendingSend struct {
	room, body, ref string
	sentGen         int // connection it was last written on; 0: not yet
	attempts        int // answers asking to retry so far
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

// session runs one connection until it fails. welcomed reports whether it
// got as far as the welcome frame.
func (c *Client) session(ctx context.Context) (welcomed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, err := c.dial(ctx)
	if err != nil {
		return false, err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)

	var w frame
	if err := readFrame(ctx, conn, &w); err != nil {
		return false, fmt.Errorf("read welcome: %w", err)
	}
	if w.Type != "welcome" {
		return false, fmt.Errorf("first frame is %q, want welcome", w.Type)
	}
	c.mu.Lock()
	c.gen++
	gen := c.gen
	if c.name == "" {
		c.name = w.Author // keep the guest name: refs are per author
	}
	c.instance = w.Instance
	joins := make([]any, 0, len(c.rooms))
	for name, st := range c.rooms {
		st.live = false
		j := joinFrame{Type: "join", Room: name}
		if st.started {
			j.Since = &st.last
		}
		joins = append(joins, j)
	}
	c.conn = conn
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.conn == conn {
			c.conn = nil
		}
		c.mu.Unlock()
	}()
	c.log.Info("connected", "instance", w.Instance, "author", w.Author)
	if c.opts.OnConnect != nil {
		c.opts.OnConnect(w.Instance)
	}
	for _, j := range joins {
		if err := write(ctx, conn, j); err != nil {
			return true, err
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { c.pingLoop(ctx, conn) })
	for {
		var f frame
		if err := readFrame(ctx, conn, &f); err != nil {
			return true, err
		}
		if err := c.handle(ctx, conn, gen, f); err != nil {
			conn.Close(websocket.StatusNormalClosure, "")
			return true, err
		}
	}
}

func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	u, err := url.Parse(c.opts.URL)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("bad URL: %w", err)}
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	case "ws", "wss":
	default:
		return nil, &permanentError{fmt.Errorf("bad URL %q: want ws://host:port", c.opts.URL)}
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/ws"
	}
	q := u.Query()
	c.mu.Lock()
	if c.name != "" {
		q.Set("name", c.name)
	}
	c.mu.Unlock()
	u.RawQuery = q.Encode()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var dopts websocket.DialOptions
	if c.opts.Token != "" {
		dopts.HTTPHeader = http.Header{"Authorization": {"Bearer " + c.opts.Token}}
	}
	conn, resp, err := websocket.Dial(dctx, u.String(), &dopts)
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
			return nil, &permanentError{fmt.Errorf("server refused the connection: %s", resp.Status)}
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	return conn, nil
}

// pingLoop pings every PingInterval and drops the connection when a ping
// goes unanswered. It returns when ctx is done.
func (c *Client) pingLoop(ctx context.Context, conn *websocket.Conn) {
	t := time.NewTicker(c.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, c.opts.PingInterval)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					c.log.Info("ping failed", "err", err)
				}
				conn.CloseNow()
				return
			}
		}
	}
}

// errGap ends a connection whose live stream skipped a seq: the next
// connection resumes from the last seq held, which fills the gap.
var errGap = errors.New("gap in a room's messages: resuming")

// handle processes one server frame of connection gen. An error ends the
// connection.
func (c *Client) handle(ctx context.Context, conn *websocket.Conn, gen int, f frame) error {
	switch f.Type {
	case "message":
		c.mu.Lock()
		st := c.rooms[f.Room]
		if st == nil || (st.started && f.Seq <= st.last) {
			c.mu.Unlock()
			return nil // not ours, or held already
		}
		if st.started && f.Seq != st.last+1 {
			if st.live {
				c.mu.Unlock()
				c.log.Warn("gap in live messages", "room", f.Room, "have", st.last, "got", f.Seq)
				return errGap
			}
			// A replay starts past since only when the server could not
			// replay everything (more than its replay limit, or a database
			// that lost history); joined then says recovered=false.
			c.log.Warn("server could not replay every missed message", "room", f.Room, "have", st.last, "got", f.Seq)
		}
		c.mu.Unlock()
		if c.opts.OnMessage != nil {
			ts, _ := time.Parse(time.RFC3339Nano, f.Ts)
			c.opts.OnMessage(Message{Room: f.Room, Seq: f.Seq, Author: f.Author, Body: f.Body, Time: ts, Instance: f.Instance})
		}
		// Only this goroutine moves last, so it may move after the
		// callback: Last never reports a message OnMessage has not seen.
		c.mu.Lock()
		st.last, st.started = f.Seq, true
		c.mu.Unlock()
	case "joined":
		c.mu.Lock()
		st := c.rooms[f.Room]
		if st == nil {
			c.mu.Unlock()
			return nil
		}
		if f.Recovered != nil && !*f.Recovered && f.Seq < st.last {
			// The server knows fewer messages than we hold (a database
			// reset): follow it, or every new message would look old.
			c.log.Warn("server is behind this client: following it", "room", f.Room, "have", st.last, "head", f.Seq)
			st.last = f.Seq
		}
		switch {
		case !st.started:
			// A first join that replayed nothing: start at the head.
			st.last = f.Seq
		case f.Seq > st.last:
			c.mu.Unlock()
			c.log.Warn("replay ended short of the head", "room", f.Room, "have", st.last, "head", f.Seq)
			return errGap
		}
		st.started, st.live = true, true
		c.mu.Unlock()
		return c.flush(ctx, conn, gen)
	case "ack":
		c.mu.Lock()
		p := c.pending[f.Ref]
		if p != nil {
			c.finish(p, f.Seq, nil)
		}
		c.mu.Unlock()
	case "error":
		return c.handleError(ctx, conn, gen, f)
	}
	return nil
}

func (c *Client) handleError(ctx context.Context, conn *websocket.Conn, gen int, f frame) error {
	c.mu.Lock()
	p := c.pending[f.Ref]
	if f.Ref == "" || p == nil {
		live := c.rooms[f.Room] != nil && c.rooms[f.Room].live
		c.mu.Unlock()
		if f.Room != "" && !live {
			err := fmt.Errorf("join %s: %s: %s", f.Room, f.Code, f.Message)
			if f.Code == "unavailable" || f.Code == "rate_limited" {
				return err // the database is away, say: start over
			}
			return &permanentError{err} // forbidden, bad_request: retrying won't help
		}
		c.log.Warn("server error", "room", f.Room, "code", f.Code, "message", f.Message)
		return nil
	}
	switch f.Code {
	case "unavailable", "rate_limited":
		// Not stored (or not known to be): resend later with the same ref.
		p.sentGen = 0
		p.attempts++
		delay := backoff(c.opts.MinDelay, c.opts.MaxDelay, p.attempts)
		c.mu.Unlock()
		c.log.Debug("send not accepted, will resend", "ref", p.ref, "code", f.Code, "retry_in", delay)
		time.AfterFunc(delay, func() {
			if err := c.flush(ctx, conn, gen); err != nil {
				conn.CloseNow()
			}
		})
		return nil
	default:
		c.finish(p, 0, &ServerError{Code: f.Code, Message: f.Message})
		c.mu.Unlock()
		return nil
	}
}

// finish resolves p. Call with c.mu held.
func (c *Client) finish(p *pendingSend, seq int64, err error) {
	delete(c.pending, p.ref)
	for i, q := range c.order {
		if q == p {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
	p.seq, p.err = seq, err
	close(p.done)
}

// flush writes, on connection gen, every pending send of a live room that
// this connection has not carried yet, in Send order.
func (c *Client) flush(ctx context.Context, conn *websocket.Conn, gen int) error {
	c.mu.Lock()
	if c.gen != gen || c.conn != conn {
		c.mu.Unlock()
		return nil
	}
	var out []sendFrame
	for _, p := range c.order {
		if p.sentGen != gen && c.rooms[p.room].live {
			p.sentGen = gen
			out = append(out, sendFrame{Type: "send", Room: p.room, Body: p.body, Ref: p.ref})
		}
	}
	c.mu.Unlock()
	for _, f := range out {
		if err := write(ctx, conn, f); err != nil {
			return err
		}
	}
	return nil
}

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

// Wire frames (docs/protocol.md).
type frame struct {
	Type      string `json:"type"`
	Room      string `json:"room"`
	Seq       int64  `json:"seq"`
	Author    string `json:"author"`
	Body      string `json:"body"`
	Ts        string `json:"ts"`
	Instance  string `json:"instance"`
	Recovered *bool  `json:"recovered"`
	Ref       string `json:"ref"`
	Code      string `json:"code"`
	Message   string `json:"message"`
}

type joinFrame struct {
	Type  string `json:"type"`
	Room  string `json:"room"`
	Since *int64 `json:"since,omitempty"`
}

type sendFrame struct {
	Type string `json:"type"`
	Room string `json:"room"`
	Body string `json:"body"`
	Ref  string `json:"ref"`
}

func readFrame(ctx context.Context, conn *websocket.Conn, f *frame) error {
	typ, data, err := conn.Read(ctx)
	if err != nil {
		return err
	}
	if typ != websocket.MessageText {
		return errors.New("binary frame from server")
	}
	return json.Unmarshal(data, f)
}

func write(ctx context.Context, conn *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return conn.Write(ctx, websocket.MessageText, b)
}
