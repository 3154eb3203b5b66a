package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

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
		st.states = !st.started
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
			return nil, &permanentError{fmt.Errorf("server refused the connection: %s%s", resp.Status, refusalReason(resp))}
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
		if st.started && f.Seq != st.last+1 && !st.states {
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
			c.opts.OnMessage(f.message(ts)) // events.go
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
		if st.states { // the states replayed are as of the head
			st.last, st.states = max(st.last, f.Seq), false
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
		if err := c.joinedReadState(ctx, conn, f); err != nil {
			return err
		}
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
	case "presence", "presence_diff", "typing", "read":
		c.handlePresence(f)
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
	var out []any
	for _, p := range c.order {
		if p.sentGen != gen && c.rooms[p.room].live {
			p.sentGen = gen
			if p.event != nil {
				out = append(out, p.event)
			} else {
				out = append(out, sendFrame{Type: "send", Room: p.room, Body: p.body, Ref: p.ref})
			}
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
	// Events and message states (events.go).
	Kind      string          `json:"kind"`
	Target    int64           `json:"target"`
	Emoji     string          `json:"emoji"`
	Edited    string          `json:"edited"`
	Deleted   bool            `json:"deleted"`
	Reactions json.RawMessage `json:"reactions"`
	// Presence, typing and read state (presence.go).
	Count    int      `json:"count"`
	Members  []string `json:"members"`
	Complete *bool    `json:"complete"`
	Joins    []string `json:"joins"`
	Leaves   []string `json:"leaves"`
	Read     *int64   `json:"read"`
	Unread   *int64   `json:"unread"`
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

// refusalReason is ": " and the server's reason for refusing an upgrade,
// from the start of the response body (text, or a JSON error's message),
// or "".
func refusalReason(resp *http.Response) string {
	if resp.Body == nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		return ": " + e.Message
	}
	if line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n"); line != "" {
		return ": " + line
	}
	return ""
}
