package chat

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/pgchat/pgchat/store"
)

// MaxEmojiLen is the most bytes of a reaction's emoji.
const MaxEmojiLen = 32

// validateEvent checks the fields of an edit, delete, react or unreact.
func validateEvent(f Frame, hasBody bool, maxBody int) error {
	if f.Target < 1 {
		return errorf(CodeBadRequest, "target must be the seq of a message (1 or more)")
	}
	switch f.Type {
	case TypeEdit:
		if !hasBody || strings.TrimSpace(f.Body) == "" {
			return errorf(CodeBadRequest, "body is empty")
		}
		if len(f.Body) > maxBody {
			return errorf(CodeTooLarge, "body is %d bytes, the limit is %d", len(f.Body), maxBody)
		}
		if strings.IndexByte(f.Body, 0) >= 0 {
			return errorf(CodeBadRequest, "body contains a NUL character")
		}
	case TypeReact, TypeUnreact:
		if !ValidEmoji(f.Emoji) {
			return errorf(CodeBadRequest, "emoji must be 1 to %d bytes of text without control characters", MaxEmojiLen)
		}
	}
	return nil
}

// ValidEmoji reports whether s can be a reaction: 1 to MaxEmojiLen bytes of
// UTF-8 without control characters. (Any such text is accepted, not only
// emoji: a reaction set is the client's choice.)
func ValidEmoji(s string) bool {
	if s == "" || len(s) > MaxEmojiLen || !utf8.ValidString(s) || strings.TrimSpace(s) == "" {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// applyEvent stores an edit, delete, react or unreact and acks it with the
// event's seq. It runs on the read loop, one transaction at a time per
// connection; it counts as in flight, so a graceful close answers it first.
func (c *client) applyEvent(ctx context.Context, f Frame) {
	if !c.joined[f.Room] {
		c.sendError(f.Ref, f.Room, errorf(CodeNotJoined, "join %s before changing its messages", f.Room))
		return
	}
	if c.limiter == nil && c.hub.opts.RateLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(c.hub.opts.RateLimit), c.hub.opts.RateBurst)
	}
	if c.limiter != nil && !c.limiter.Allow() {
		c.sendError(f.Ref, f.Room, errorf(CodeRateLimited, "more than %g messages per second: slow down and resend", c.hub.opts.RateLimit))
		return
	}
	c.mu.Lock()
	if c.draining {
		c.mu.Unlock()
		c.sendError(f.Ref, f.Room, errShuttingDown)
		return
	}
	c.inflight++
	c.mu.Unlock()
	defer c.eventDone()

	ev := store.Event{
		Room: f.Room, Author: c.author, Kind: f.Type, Target: f.Target,
		Body: f.Body, Emoji: f.Emoji, Ref: f.Ref,
		Moderator: c.grant != nil && c.grant.Moderator,
	}
	ctx, cancel := context.WithTimeout(ctx, c.hub.opts.WriteTimeout)
	defer cancel()
	res, err := c.hub.db.ApplyEvent(ctx, ev)
	if err != nil {
		c.fail(f.Ref, f.Room, f.Type, eventError(f, err))
		return
	}
	c.send(encodeAck(f.Ref, res.Room, res.Seq))
}

func (c *client) eventDone() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight--
	if c.draining && c.inflight == 0 {
		c.end(errGoingAway)
	}
}

// eventError turns ApplyEvent's errors into the client's.
func eventError(f Frame, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errorf(CodeNotFound, "no message %d in %s", f.Target, f.Room)
	case errors.Is(err, store.ErrGone):
		return errorf(CodeGone, "message %d was deleted", f.Target)
	case errors.Is(err, store.ErrForbidden):
		if f.Type == TypeDelete {
			return errorf(CodeForbidden, "only its author or a moderator may delete message %d", f.Target)
		}
		return errorf(CodeForbidden, "only its author may edit message %d", f.Target)
	}
	return err
}

// eventMessageFrame is the "message" frame of an event or of a message in
// its current state; appendEventMessage writes the same bytes by hand.
type eventMessageFrame struct {
	Type      string          `json:"type"`
	Room      string          `json:"room"`
	Seq       int64           `json:"seq"`
	Kind      string          `json:"kind,omitempty"`
	Target    int64           `json:"target,omitempty"`
	Deleted   bool            `json:"deleted,omitempty"`
	Author    string          `json:"author"`
	Body      *string         `json:"body,omitempty"`
	Emoji     string          `json:"emoji,omitempty"`
	Edited    string          `json:"edited,omitempty"`
	Reactions json.RawMessage `json:"reactions,omitempty"`
	Time      string          `json:"ts"`
	Instance  string          `json:"instance"`
}

// hasBody reports whether m's frame carries a body: plain messages not
// deleted, and edits.
func hasBody(m store.Message) bool {
	return m.Kind == "" && !m.Deleted || m.Kind == store.KindEdit
}

// appendEventMessage appends the "message" frame of an event, or of a plain
// message that was edited, deleted or reacted to (appendMessage).
func appendEventMessage(b []byte, m store.Message) []byte {
	b = append(b, `{"type":"message","room":`...)
	b = appendString(b, m.Room)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, m.Seq, 10)
	if m.Kind != "" {
		b = append(b, `,"kind":`...)
		b = appendString(b, m.Kind)
		b = append(b, `,"target":`...)
		b = strconv.AppendInt(b, m.Target, 10)
	}
	if m.Deleted {
		b = append(b, `,"deleted":true`...)
	}
	b = append(b, `,"author":`...)
	b = appendString(b, m.Author)
	if hasBody(m) {
		b = append(b, `,"body":`...)
		b = appendString(b, m.Body)
	}
	if m.Emoji != "" {
		b = append(b, `,"emoji":`...)
		b = appendString(b, m.Emoji)
	}
	if !m.Edited.IsZero() && !m.Deleted {
		b = append(b, `,"edited":"`...)
		b = m.Edited.UTC().AppendFormat(b, TimeFormat)
		b = append(b, '"')
	}
	if len(m.Reactions) > 0 {
		b = append(b, `,"reactions":`...)
		b = append(b, m.Reactions...) // JSON from PostgreSQL (store.History)
	}
	b = append(b, `,"ts":"`...)
	b = m.Time.UTC().AppendFormat(b, TimeFormat)
	b = append(b, `","instance":`...)
	b = appendString(b, m.Instance)
	return append(b, '}')
}

// replay reads what a join replays: with since, every message and event
// after it (the stream, exact to resume); without, the room's last limit
// messages in their current state, ending at head.
func (h *Hub) replay(ctx context.Context, room string, since int64, limit int, hasSince bool) (head int64, msgs []store.Message, err error) {
	if hasSince {
		return h.db.Recent(ctx, room, since, limit)
	}
	p, err := h.db.History(ctx, room, 0, limit)
	return p.Head, p.Messages, err
}

// replayedFrom reports whether msgs, replayed after since, start right
// after it (or there is nothing to replay): retention may have deleted the
// seqs in between.
func replayedFrom(msgs []store.Message, since, head int64) bool {
	if len(msgs) == 0 {
		return head <= since
	}
	return msgs[0].Seq == since+1
}
