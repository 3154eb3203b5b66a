package client

import (
	"context"
	"strconv"
	"time"
)

// eventFrame is an edit, delete, react or unreact (docs/protocol.md).
type eventFrame struct {
	Type   string  `json:"type"`
	Room   string  `json:"room"`
	Target int64   `json:"target"`
	Body   *string `json:"body,omitempty"`
	Emoji  string  `json:"emoji,omitempty"`
	Ref    string  `json:"ref"`
}

// message is the Message of a message frame, ts parsed.
func (f *frame) message(ts time.Time) Message {
	m := Message{Room: f.Room, Seq: f.Seq, Author: f.Author, Body: f.Body, Time: ts, Instance: f.Instance,
		Kind: f.Kind, Target: f.Target, Emoji: f.Emoji, Deleted: f.Deleted, Reactions: string(f.Reactions)}
	if f.Edited != "" {
		m.Edited, _ = time.Parse(time.RFC3339Nano, f.Edited)
	}
	return m
}

// Edit replaces the text of message target of room, which must be ours. It
// returns the edit's seq; it is sent, acked and resent like Send.
func (c *Client) Edit(ctx context.Context, room string, target int64, body string) (int64, error) {
	return c.event(ctx, eventFrame{Type: "edit", Room: room, Target: target, Body: &body})
}

// Delete deletes message target of room: ours, or anyone's with a
// moderator's token. Its text is removed from the database.
func (c *Client) Delete(ctx context.Context, room string, target int64) (int64, error) {
	return c.event(ctx, eventFrame{Type: "delete", Room: room, Target: target})
}

// React adds our reaction emoji to message target of room (once: a second
// React is acked with the first one's seq).
func (c *Client) React(ctx context.Context, room string, target int64, emoji string) (int64, error) {
	return c.event(ctx, eventFrame{Type: "react", Room: room, Target: target, Emoji: emoji})
}

// Unreact takes our reaction emoji back (acked with the room's head if
// there was none).
func (c *Client) Unreact(ctx context.Context, room string, target int64, emoji string) (int64, error) {
	return c.event(ctx, eventFrame{Type: "unreact", Room: room, Target: target, Emoji: emoji})
}

// event queues f like Send queues a message and waits for its answer.
func (c *Client) event(ctx context.Context, f eventFrame) (int64, error) {
	c.mu.Lock()
	if c.rooms[f.Room] == nil {
		c.mu.Unlock()
		return 0, ErrNotJoined
	}
	c.nextRef++
	f.Ref = c.prefix + "-" + strconv.Itoa(c.nextRef)
	p := &pendingSend{room: f.Room, ref: f.Ref, event: &f, done: make(chan struct{})}
	c.pending[p.ref] = p
	c.order = append(c.order, p)
	c.mu.Unlock()
	return c.wait(ctx, p)
}
