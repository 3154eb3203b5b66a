// Package chat is pgchat's WebSocket side: protocol v1, the per-instance hub
// that fans messages out to local clients in seq order, and the HTTP handler.
package chat

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgchat/pgchat/chat/internal/wsconn"
	"github.com/pgchat/pgchat/store"
)

// Options configures a Hub and its connections. Zero values pick the
// defaults in parentheses.
type Options struct {
	Instance        string        // this instance's id, sent in "welcome"
	MaxMessageBytes int           // body size limit (4096)
	HistoryLimit    int           // messages replayed on a join without since (50)
	ReplayLimit     int           // most messages replayed on a join with since (1000)
	PingInterval    time.Duration // keepalive ping period (25s)
	WriteTimeout    time.Duration // per write, and per ping (10s)
	SendBuffer      int           // bytes queued for a client before it is dropped as slow (1 MiB)
	RateLimit       float64       // sends per second per connection (20); negative: unlimited
	RateBurst       int           // sends allowed in a burst (2 × RateLimit)
	MaxRooms        int           // rooms one connection may join (100)
	MaxInflight     int           // sends awaiting their ack per connection (64)
	SyncInterval    time.Duration // how often live rooms are checked against the table (30s)
	MaxCatchUps     int           // rooms read from the table at once to catch up (4; budget.go)
	MaxHistoryReads int           // history requests served at once (4)
	Log             *slog.Logger  // nil: discard
	Metrics         Metrics       // nil: none

	// Presence (presence.go).
	PresenceInterval  time.Duration // presence diffs, read receipts and presence writes at most this often (1s)
	PresenceTimeout   time.Duration // an instance not heard from for this long is dead: its members leave (5s)
	PresenceListLimit int           // above this many members a room gets counts only (1000)
}

func (o *Options) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxMessageBytes, 4096)
	def(&o.HistoryLimit, 50)
	def(&o.ReplayLimit, 1000)
	defd(&o.PingInterval, 25*time.Second)
	defd(&o.WriteTimeout, 10*time.Second)
	def(&o.SendBuffer, 1<<20)
	if o.RateLimit == 0 {
		o.RateLimit = 20
	}
	def(&o.RateBurst, max(1, int(2*o.RateLimit)))
	def(&o.MaxRooms, 100)
	def(&o.MaxInflight, 64)
	defd(&o.SyncInterval, 30*time.Second)
	def(&o.MaxCatchUps, 4)
	def(&o.MaxHistoryReads, 4)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
}

// maxPending bounds the messages a room holds while waiting for a gap to be
// filled; beyond it they are read from the table instead.
const maxPending = 10000

// Hub tracks which local clients are in which room and delivers each room's
// messages to them exactly once, in seq order: per room it fans out only
// seq == last+1, skips seq <= last, and fills gaps from the table.
//
// Its methods are safe for concurrent use. Start it with Run.
type Hub struct {
	db      *store.DB
	batcher *store.Batcher
	opts    Options
	log     *slog.Logger

	draining atomic.Bool
	clients  sync.WaitGroup // registered connections, until their Closed
	sockets  *wsconn.Set    // the connections' keepalive and idle parking; Run runs it
	catchUps slots          // budget.go
	history  slots
	presence *presence // presence, typing and read state (presence.go)

	mu         sync.Mutex
	rooms      map[string]*room
	conns      map[*client]struct{}
	closing    bool
	needFetch  map[string]struct{} // rooms to catch up from the table
	needVerify map[string]int64    // rooms whose head may have moved backwards (heads.go)
	wake       chan struct{}       // cap 1: needFetch has entries
}

// room is the hub's view of one room with local members. Guarded by Hub.mu.
type room struct {
	name     string
	members  map[*client]*member
	ready    bool  // last is known
	last     int64 // seq of the last message fanned out
	target   int64 // highest seq known to exist
	pending  map[int64]store.Message
	fetching bool // in needFetch or being fetched
	stale    bool // the listener reconnected while the room was not ready
	metrics  Metrics
}

type member struct {
	live   bool  // replay done: gets messages from the room's stream
	cursor int64 // seq of the last message queued for the client
}

// NewHub returns a hub reading from db and appending through b.
func NewHub(db *store.DB, b *store.Batcher, opts Options) *Hub {
	opts.setDefaults()
	h := &Hub{
		db:         db,
		batcher:    b,
		opts:       opts,
		log:        opts.Log,
		rooms:      make(map[string]*room),
		conns:      make(map[*client]struct{}),
		needFetch:  make(map[string]struct{}),
		needVerify: make(map[string]int64),
		wake:       make(chan struct{}, 1),
		sockets: wsconn.NewSet(wsconn.Options{
			PingInterval: opts.PingInterval,
			WriteTimeout: opts.WriteTimeout,
			MaxQueued:    opts.SendBuffer,
			OnWrite:      opts.Metrics.Written,
		}),
		catchUps: newSlots(opts.MaxCatchUps),
		history:  newSlots(opts.MaxHistoryReads),
	}
	h.presence = newPresence(h)
	return h
}

// Run catches rooms up from the table when they fall behind and checks
// live rooms every SyncInterval; it also runs the connections' Set
// (keepalive pings, waking idle connections: wsconn). It returns when ctx
// is cancelled, after its fetches and the Set have stopped.
func (h *Hub) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { h.sockets.Run(ctx) })
	wg.Go(func() { h.presence.run(ctx) })
	tick := time.NewTicker(h.opts.SyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			h.checkHeads(ctx)
		case <-h.wake:
			h.mu.Lock()
			names := make([]string, 0, len(h.needFetch))
			for name := range h.needFetch {
				names = append(names, name)
			}
			clear(h.needFetch)
			h.mu.Unlock()
			for _, name := range names {
				wg.Go(func() { h.catchUp(ctx, name) })
			}
			for name, last := range h.takeVerifies() {
				wg.Go(func() { h.verifyHead(ctx, name, last) })
			}
		}
	}
}

// Deliver hands the hub one notification payload. It never blocks on a
// client: a client whose queue is full is disconnected instead.
func (h *Hub) Deliver(payload string) {
	start := time.Now()
	n, err := store.DecodeNotification(payload)
	if err != nil {
		h.log.Warn("ignoring notification", "err", err)
		return
	}
	if len(n.Messages) > 0 {
		h.opts.Metrics.Notified(start.Sub(n.Messages[0].Time))
	}
	h.mu.Lock()
	defer func() {
		h.mu.Unlock()
		h.opts.Metrics.FannedOut(time.Since(start))
	}()
	r := h.rooms[n.Room]
	if r == nil {
		return
	}
	for _, m := range n.Messages {
		r.offer(m)
	}
	r.target = max(r.target, n.Last)
	if r.ready && r.target > r.last {
		h.requestFetch(r)
	}
	if r.ready && n.Last < r.last {
		h.suspectHead(r)
	}
}

// Resync catches every room up from the table. The listener calls it once
// LISTEN is live after a (re)connect, since notifications sent while it was
// away are lost.
func (h *Hub) Resync(context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.rooms {
		if r.ready {
			h.requestFetch(r)
		} else {
			r.stale = true
		}
	}
}

// checkHeads compares live rooms with the table, a safety net that bounds
// delivery time even if a notification went missing.
func (h *Hub) checkHeads(ctx context.Context) {
	h.mu.Lock()
	names := make([]string, 0, len(h.rooms))
	lasts := make(map[string]int64, len(h.rooms)) // delivered before the read: the heads are at least these
	for name, r := range h.rooms {
		if r.ready {
			names = append(names, name)
			lasts[name] = r.last
		}
	}
	h.mu.Unlock()
	if len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
	defer cancel()
	heads, err := h.db.Heads(ctx, names)
	if err != nil {
		h.log.Warn("checking room heads", "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, head := range heads {
		if r := h.rooms[name]; r != nil && r.ready && head < lasts[name] {
			h.resetRoom(r, head, "head check")
			continue
		}
		if r := h.rooms[name]; r != nil && r.ready && head > r.last {
			r.target = max(r.target, head)
			h.requestFetch(r)
		}
	}
}

// requestFetch schedules a catch-up of r. Call with h.mu held.
func (h *Hub) requestFetch(r *room) {
	if r.fetching {
		return
	}
	r.fetching = true
	h.needFetch[r.name] = struct{}{}
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// catchUp reads the room's messages after its last one from the table until
// it is level with the table and with every seq announced.
// It stops when everyone left the room (a room joined again later is a new
// room, with a catch-up of its own).
func (h *Hub) catchUp(ctx context.Context, name string) {
	h.mu.Lock()
	r := h.rooms[name]
	h.mu.Unlock()
	if r == nil {
		return
	}
	backoff := 100 * time.Millisecond
	for {
		h.mu.Lock()
		if h.rooms[name] != r || !r.ready {
			h.mu.Unlock()
			return
		}
		from := r.last
		h.mu.Unlock()

		if h.catchUps.acquire(ctx) != nil {
			return
		}
		h.opts.Metrics.GapFetch()
		qctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
		msgs, err := h.db.Since(qctx, name, from, h.opts.ReplayLimit)
		cancel()
		h.catchUps.release()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn("catching up room from the table", "room", name, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		h.mu.Lock()
		if h.rooms[name] != r { // everyone left meanwhile
			h.mu.Unlock()
			return
		}
		for _, m := range msgs {
			r.offer(m)
		}
		done := len(msgs) < h.opts.ReplayLimit && r.last >= r.target
		if done {
			r.fetching = false
		}
		h.mu.Unlock()
		if done {
			return
		}
		if len(msgs) == 0 { // announced but not readable yet: don't spin
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// offer takes one message for r's stream. Call with the hub's mu held.
func (r *room) offer(m store.Message) {
	r.target = max(r.target, m.Seq)
	if r.ready && m.Seq <= r.last {
		return // seen already
	}
	if !r.ready || m.Seq != r.last+1 {
		if len(r.pending) < maxPending {
			r.pending[m.Seq] = m
		}
		return
	}
	r.fanout(m)
	r.drainPending()
}

// drainPending fans out pending messages that are now next in line and drops
// those already seen. Call with the hub's mu held and r ready.
func (r *room) drainPending() {
	for seq := range r.pending {
		if seq <= r.last {
			delete(r.pending, seq)
		}
	}
	for {
		m, ok := r.pending[r.last+1]
		if !ok {
			return
		}
		delete(r.pending, m.Seq)
		r.fanout(m)
	}
}

// fanout queues m, the room's next message, for every live member, encoding
// it once.
func (r *room) fanout(m store.Message) {
	r.last = m.Seq
	var frame []byte
	n := 0
	for c, mem := range r.members {
		if !mem.live || m.Seq <= mem.cursor {
			continue
		}
		if m.Seq != mem.cursor+1 {
			c.end(errOutOfSync) // cannot happen while the join rules hold
			continue
		}
		if frame == nil {
			frame = EncodeMessage(m)
		}
		mem.cursor = m.Seq
		c.send(frame)
		n++
	}
	r.metrics.Fanout(time.Since(m.Time))
	r.metrics.Delivered(n)
}

// join adds c to the room, replays history to it (messages after since, or
// the last HistoryLimit), then switches it to the live stream with no gap
// and no duplicate in between: c is registered before the history is read,
// so anything committed later reaches the room's stream, and it goes live
// only once the stream has not passed what it was replayed.
func (h *Hub) join(ctx context.Context, c *client, name string, since int64, hasSince bool) error {
	return h.joinFrom(ctx, c, name, since, hasSince, true)
}

// joinFrom is join; recovered false makes the joined frame say so (a join
// that started over after a reset, heads.go).
func (h *Hub) joinFrom(ctx context.Context, c *client, name string, since int64, hasSince, wasRecovered bool) error {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return errShuttingDown
	}
	r := h.rooms[name]
	if r == nil {
		r = &room{name: name, members: make(map[*client]*member), pending: make(map[int64]store.Message), metrics: h.opts.Metrics}
		h.rooms[name] = r
	}
	mem := &member{}
	r.members[c] = mem
	h.mu.Unlock()
	h.opts.Metrics.Memberships(1)

	fail := func(err error) error {
		h.leave(c, name)
		return err
	}
	after, limit := int64(0), h.opts.HistoryLimit
	if hasSince {
		after, limit = since, h.opts.ReplayLimit
	}
	qctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
	head, msgs, err := h.replay(qctx, name, after, limit, hasSince)
	cancel()
	if err != nil {
		return fail(err)
	}
	// Not recovered: more to replay than the limit, or retention deleted
	// some of it (events.go).
	recovered := wasRecovered && (!hasSince || head-since <= int64(limit) && replayedFrom(msgs, since, head))
	if hasSince && since > head { // the client knows more than the table: start over
		recovered = false
		qctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
		head, msgs, err = h.replay(qctx, name, 0, h.opts.HistoryLimit, false)
		cancel()
		if err != nil {
			return fail(err)
		}
	}
	qctx, cancel = context.WithTimeout(ctx, h.opts.WriteTimeout)
	read, unread, err := h.presence.readState(qctx, name, c.author, head)
	cancel()
	if err != nil {
		return fail(err)
	}
	cursor := head
	for {
		for _, m := range msgs {
			if err := c.sendWait(ctx, EncodeMessage(m)); err != nil {
				return fail(err)
			}
		}
		h.opts.Metrics.Delivered(len(msgs))
		h.mu.Lock()
		if r.members[c] != mem { // the connection is closing
			h.mu.Unlock()
			return errShuttingDown
		}
		if h.rooms[name] != r { // reset while c joined (heads.go): start over from what c got
			delete(r.members, c)
			h.mu.Unlock()
			h.opts.Metrics.Memberships(-1)
			return h.joinFrom(ctx, c, name, cursor, true, recovered)
		}
		if !r.ready {
			r.ready, r.last = true, cursor
			if r.stale {
				r.stale = false
				h.requestFetch(r)
			}
		}
		if r.last <= cursor {
			mem.live, mem.cursor = true, cursor
			c.send(encode(joinedFrame{TypeJoined, name, cursor, recovered, read, unread}))
			r.drainPending()
			if r.target > r.last {
				h.requestFetch(r)
			}
			h.mu.Unlock()
			h.presence.joined(c, name)
			return nil
		}
		h.mu.Unlock()
		// The stream moved past the replay while it was sent: catch up.
		qctx, cancel := context.WithTimeout(ctx, h.opts.WriteTimeout)
		msgs, err = h.db.Since(qctx, name, cursor, h.opts.ReplayLimit)
		cancel()
		if err != nil {
			return fail(err)
		}
		if len(msgs) == 0 {
			// The room delivered past cursor (messages committed before
			// this read), yet the table ends at cursor: its head moved
			// backwards.
			h.mu.Lock()
			if h.rooms[name] == r {
				h.resetRoom(r, cursor, "join")
			}
			h.mu.Unlock()
			continue
		}
		cursor = msgs[len(msgs)-1].Seq
	}
}

// leave removes c from the room; it reports whether c was a member.
func (h *Hub) leave(c *client, name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[name]
	if r == nil {
		return false
	}
	if _, ok := r.members[c]; !ok {
		return false
	}
	delete(r.members, c)
	h.presence.left(c, name) // takes only the presence lock
	h.opts.Metrics.Memberships(-1)
	if len(r.members) == 0 {
		delete(h.rooms, name)
	}
	return true
}

// register admits a new connection unless the hub is closing. Each
// registered client must call unregister when its handler returns.
func (h *Hub) register(c *client) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.conns[c] = struct{}{}
	h.clients.Add(1)
	h.opts.Metrics.Connections(1)
	return true
}

func (h *Hub) unregister(c *client, rooms map[string]bool) {
	for name := range rooms {
		h.leave(c, name)
	}
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
	h.opts.Metrics.Connections(-1)
	h.clients.Done()
}

// Drain marks the instance as draining: Ready reports it, new connections
// are refused. Existing ones carry on until Close.
func (h *Hub) Drain() { h.draining.Store(true) }

// Draining reports whether Drain was called.
func (h *Hub) Draining() bool { return h.draining.Load() }

// Close ends every connection gracefully: sends already received are
// answered, then each socket is closed with 1001 (going away). It waits for
// the connection handlers to return, or for ctx; then it cuts the remaining
// connections and returns ctx's error.
func (h *Hub) Close(ctx context.Context) error {
	h.Drain()
	h.mu.Lock()
	h.closing = true
	conns := make([]*client, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
	done := make(chan struct{})
	go func() { h.clients.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.sock.Abort("shutdown_timeout", "server shutting down")
		}
		<-done
		return ctx.Err()
	}
}
