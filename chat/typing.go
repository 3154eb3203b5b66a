package chat

import (
	"context"
	"time"

	"github.com/pgchat/pgchat/store"
)

// Typing: relayed in batches, throttled per author and room, never stored
// (docs/presence.md, "Typing").

// typing handles a client's "typing" frame: relayed, never acked.
func (c *client) typing(f Frame) {
	if !c.joined[f.Room] {
		c.sendError(f.Ref, f.Room, errorf(CodeNotJoined, "join %s before typing in it", f.Room))
		return
	}
	c.hub.presence.relayTyping(f.Room, c.author, true)
}

// relayTyping queues a typing frame for the room's local connections other
// than the author's, unless one was relayed for the author in the room
// less than typingWindow ago. Local events are also announced to the other
// instances. Both happen within typingFlushDelay, in batches: a connection
// gets the room's typing frames of the last 50 ms together, which saves a
// writer wake-up per frame in a busy room.
func (p *presence) relayTyping(room, author string, local bool) {
	now := time.Now()
	ra := roomAuthor{room, author}
	window := typingWindow
	if !local {
		window -= typingJitter
	}
	p.mu.Lock()
	if last, ok := p.typingLast[ra]; ok && now.Sub(last) < window {
		p.mu.Unlock()
		p.metrics.TypingDropped()
		return
	}
	p.typingLast[ra] = now
	if r := p.rooms[room]; r != nil && len(r.conns) > 0 {
		p.typingRelay[room] = append(p.typingRelay[room], author)
	}
	if local {
		p.typingOut = append(p.typingOut, store.Typing{Room: room, Author: author})
	}
	p.mu.Unlock()
	select {
	case p.typed <- struct{}{}:
	default:
	}
}

// deliverTyping sends the typing frames queued by relayTyping.
func (p *presence) deliverTyping() {
	var out []outgoing
	p.mu.Lock()
	for room, authors := range p.typingRelay {
		r := p.rooms[room]
		if r == nil {
			continue
		}
		frames := make([][]byte, len(authors))
		for i, a := range authors {
			frames[i] = encode(typingFrame{Type: TypeTyping, Room: room, Author: a})
		}
		for c := range r.conns {
			for i, a := range authors {
				if a != c.author {
					out = append(out, outgoing{c, frames[i]})
				}
			}
		}
	}
	clear(p.typingRelay)
	p.mu.Unlock()
	for _, o := range out {
		o.c.send(o.frame)
	}
	p.metrics.TypingRelayed(len(out))
}

func (p *presence) flushTyping(ctx context.Context) {
	p.mu.Lock()
	events := p.typingOut
	p.typingOut = nil
	p.mu.Unlock()
	if len(events) == 0 {
		return
	}
	qctx, cancel := p.dbCtx(ctx)
	defer cancel()
	if err := p.db.NotifyTyping(qctx, p.session.ID, events); err != nil && ctx.Err() == nil {
		p.log.Warn("announcing typing (dropped)", "err", err, "events", len(events))
	}
}

type typingFrame struct {
	Type   string `json:"type"`
	Room   string `json:"room"`
	Author string `json:"author"`
}
