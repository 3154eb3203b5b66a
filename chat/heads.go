package chat

import (
	"context"
)

// A room's head in the table only grows, unless the database lost commits
// it had acknowledged: a failover to an asynchronous replica, a crash with
// synchronous_commit = off. The hub then holds a `last` above the head; it
// would drop every new message (seq <= last: "seen") and refuse joins until
// the head passed it again. Instead it resets the room: its live members
// are closed with 1011 (errOutOfSync), so that they reconnect and join with
// since, which the table answers with recovered:false; the room starts over
// from the table's head; joins under way start over too. See
// docs/protocol.md and docs/deploy.md.

// suspectHead notes that a notification announced a head below r.last. That
// is normal when a catch-up read the table ahead of notifications in
// flight, so it only schedules a check against the table. Call with h.mu
// held.
func (h *Hub) suspectHead(r *room) {
	if _, ok := h.needVerify[r.name]; ok {
		return
	}
	h.needVerify[r.name] = r.last
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// takeVerifies returns the rooms to check against the table, with the last
// seq each had delivered when the doubt arose.
func (h *Hub) takeVerifies() map[string]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.needVerify) == 0 {
		return nil
	}
	v := h.needVerify
	h.needVerify = make(map[string]int64)
	return v
}

// verifyHead reads the room's head and resets the room if it is below
// last, a seq the room had delivered before the read began (so the head
// was at least last, unless it moved backwards).
func (h *Hub) verifyHead(ctx context.Context, name string, last int64) {
	ctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
	defer cancel()
	heads, err := h.db.Heads(ctx, []string{name})
	if err != nil {
		h.log.Warn("checking a room's head", "room", name, "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[name]; r != nil && r.ready && heads[name] < last {
		h.resetRoom(r, heads[name], "notification")
	}
}

// resetRoom detaches r, whose head in the table (head) is below what it
// delivered: its live members are closed with errOutOfSync, and the next
// join of the room starts a new one from the table. Call with h.mu held.
func (h *Hub) resetRoom(r *room, head int64, noticedBy string) {
	h.log.Warn("room head moved backwards (lost commits?): resetting the room, its members rejoin",
		"room", r.name, "delivered", r.last, "head", head, "noticed_by", noticedBy, "members", len(r.members))
	if h.rooms[r.name] == r {
		delete(h.rooms, r.name)
	}
	for c, mem := range r.members {
		if !mem.live {
			continue // a join under way: it notices and starts over (join)
		}
		delete(r.members, c)
		h.opts.Metrics.Memberships(-1)
		c.end(errOutOfSync)
	}
}
