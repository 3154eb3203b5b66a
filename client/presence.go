package client

import (
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/coder/websocket"
)

// Presence is a room's members as the server last described them, with
// what changed (docs/protocol.md, "Presence").
type Presence struct {
	Room     string
	Count    int      // authors present
	Members  []string // sorted; nil when !Complete
	Complete bool     // false: the room is over the server's PRESENCE_LIST_LIMIT, counts only
	Snapshot bool     // a "presence" frame (after each join), not a diff
	Joins    []string // authors that arrived since the last Presence (diffs only)
	Leaves   []string // authors that left since the last Presence (diffs only)
}

// ReadReceipt says Author has read Room up to Seq.
type ReadReceipt struct {
	Room   string
	Author string
	Seq    int64
}

// ReadState is the author's own read cursor in a room, from the last join.
type ReadState struct {
	Read   int64 // seq read up to
	Unread int64 // others' messages after it at the join, up to 1000
}

// ErrNotConnected: Typing while there is no connection (typing is
// ephemeral: it is not queued).
var ErrNotConnected = errors.New("not connected")

// presenceState is a Client's presence and read state, under its own lock.
type presenceState struct {
	mu       sync.Mutex
	members  map[string]map[string]struct{} // room → members, when complete
	count    map[string]int
	complete map[string]bool
	read     map[string]ReadState
	readWant map[string]int64 // newest MarkRead per room, sent after each join
}

func (s *presenceState) init() {
	if s.members == nil {
		s.members = make(map[string]map[string]struct{})
		s.count = make(map[string]int)
		s.complete = make(map[string]bool)
		s.read = make(map[string]ReadState)
		s.readWant = make(map[string]int64)
	}
}

// Members returns the room's members as last reported: sorted names (nil
// if the room gets counts only), the count, and whether the list is
// complete.
func (c *Client) Members(room string) (members []string, count int, complete bool) {
	s := &c.pres
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	return sortedKeys(s.members[room]), s.count[room], s.complete[room]
}

// ReadState returns the author's read cursor and unread count in room as
// of the last join.
func (c *Client) ReadState(room string) ReadState {
	s := &c.pres
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	return s.read[room]
}

// Typing tells the room's other members that this client's author is
// typing. The server relays at most one per author per room per 2 s and
// drops the rest; nothing is stored or queued.
func (c *Client) Typing(ctx context.Context, room string) error {
	c.mu.Lock()
	conn, st := c.conn, c.rooms[room]
	c.mu.Unlock()
	if st == nil {
		return ErrNotJoined
	}
	if conn == nil {
		return ErrNotConnected
	}
	return write(ctx, conn, roomFrame{Type: "typing", Room: room})
}

// MarkRead records that the author has read room up to seq. It is sent
// now if connected, and again after every (re)join until a higher one
// replaces it, so it survives reconnects; the server keeps the highest.
func (c *Client) MarkRead(ctx context.Context, room string, seq int64) error {
	if seq < 0 {
		return errors.New("MarkRead: seq must not be negative")
	}
	c.mu.Lock()
	conn, st := c.conn, c.rooms[room]
	live := st != nil && st.live
	c.mu.Unlock()
	if st == nil {
		return ErrNotJoined
	}
	s := &c.pres
	s.mu.Lock()
	s.init()
	s.readWant[room] = max(s.readWant[room], seq)
	s.mu.Unlock()
	if conn == nil || !live {
		return nil // sent after the next join
	}
	return write(ctx, conn, readMarkFrame{Type: "read", Room: room, Seq: seq})
}

// joinedReadState records joined's read state and resends a MarkRead the
// server may not have.
func (c *Client) joinedReadState(ctx context.Context, conn *websocket.Conn, f frame) error {
	s := &c.pres
	s.mu.Lock()
	s.init()
	rs := ReadState{}
	if f.Read != nil {
		rs.Read = *f.Read
	}
	if f.Unread != nil {
		rs.Unread = *f.Unread
	}
	s.read[f.Room] = rs
	want := s.readWant[f.Room]
	s.mu.Unlock()
	if want > rs.Read {
		return write(ctx, conn, readMarkFrame{Type: "read", Room: f.Room, Seq: want})
	}
	return nil
}

// handlePresence processes presence, typing and read frames.
func (c *Client) handlePresence(f frame) {
	switch f.Type {
	case "presence", "presence_diff":
		s := &c.pres
		s.mu.Lock()
		s.init()
		complete := f.Complete == nil || *f.Complete
		p := Presence{Room: f.Room, Count: f.Count, Complete: complete, Snapshot: f.Type == "presence"}
		m := s.members[f.Room]
		if p.Snapshot || m == nil || !complete {
			m = make(map[string]struct{})
		}
		for _, a := range f.Members {
			m[a] = struct{}{}
		}
		if !p.Snapshot {
			p.Joins, p.Leaves = f.Joins, f.Leaves
			for _, a := range f.Joins {
				m[a] = struct{}{}
			}
			for _, a := range f.Leaves {
				delete(m, a)
			}
		}
		s.members[f.Room], s.count[f.Room], s.complete[f.Room] = m, f.Count, complete
		if complete {
			p.Members = sortedKeys(m)
		}
		s.mu.Unlock()
		if c.opts.OnPresence != nil {
			c.opts.OnPresence(p)
		}
	case "typing":
		if c.opts.OnTyping != nil {
			c.opts.OnTyping(f.Room, f.Author)
		}
	case "read":
		if c.opts.OnRead != nil {
			c.opts.OnRead(ReadReceipt{Room: f.Room, Author: f.Author, Seq: f.Seq})
		}
	}
}

func sortedKeys(m map[string]struct{}) []string {
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

type roomFrame struct {
	Type string `json:"type"`
	Room string `json:"room"`
}

type readMarkFrame struct {
	Type string `json:"type"`
	Room string `json:"room"`
	Seq  int64  `json:"seq"`
}
