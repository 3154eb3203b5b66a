package chat

import (
	"context"

	"github.com/pgchat/pgchat/store"
)

// Read state: cursors written in coalesced batches, receipts sent with
// the presence diffs (docs/presence.md, "Read state").

// markRead handles a client's "read" frame.
func (c *client) markRead(f Frame) {
	if !c.joined[f.Room] {
		c.sendError(f.Ref, f.Room, errorf(CodeNotJoined, "join %s before marking it read", f.Room))
		return
	}
	c.hub.presence.queueRead(f.Room, c.author, f.Seq)
}

// queueRead records that author has read room up to seq; it is written at
// the next interval.
func (p *presence) queueRead(room, author string, seq int64) {
	ra := roomAuthor{room, author}
	p.mu.Lock()
	p.readsOut[ra] = max(p.readsOut[ra], seq)
	p.mu.Unlock()
}

func (p *presence) flushReads(ctx context.Context) {
	p.mu.Lock()
	if len(p.readsOut) == 0 {
		p.mu.Unlock()
		return
	}
	reads := make([]store.ReadCursor, 0, len(p.readsOut))
	for ra, seq := range p.readsOut {
		reads = append(reads, store.ReadCursor{Room: ra.room, Author: ra.author, Seq: seq})
	}
	clear(p.readsOut)
	p.mu.Unlock()
	qctx, cancel := p.dbCtx(ctx)
	moved, err := p.db.WriteReads(qctx, p.session.ID, reads)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("writing read cursors, retrying", "err", err)
		}
		for _, rc := range reads {
			ra := roomAuthor{rc.Room, rc.Author}
			p.readsOut[ra] = max(p.readsOut[ra], rc.Seq)
		}
		return
	}
	p.addReceipts(moved)
	p.metrics.ReadCursorsWritten(len(moved))
}

// readState returns author's read cursor in room and the unread count up
// to head, for the joined frame. A cursor received but not written yet
// counts.
func (p *presence) readState(ctx context.Context, room, author string, head int64) (read, unread int64, err error) {
	if p.db == nil {
		return 0, 0, nil
	}
	p.mu.Lock()
	pending := p.readsOut[roomAuthor{room, author}]
	p.mu.Unlock()
	return p.db.ReadState(ctx, room, author, pending, head, maxUnread)
}

// addReceipts queues read receipts for the rooms' next diff. Call with
// p.mu held.
func (p *presence) addReceipts(reads []store.ReadCursor) {
	for _, rc := range reads {
		if r := p.rooms[rc.Room]; r != nil && len(r.conns) > 0 {
			r.receipts[rc.Author] = max(r.receipts[rc.Author], rc.Seq)
		}
	}
}

type readFrame struct {
	Type   string `json:"type"`
	Room   string `json:"room"`
	Author string `json:"author"`
	Seq    int64  `json:"seq"`
}
