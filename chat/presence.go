package chat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/pgchat/pgchat/store"
)

// Presence, typing and read state across instances, with PostgreSQL as the
// only shared part (docs/presence.md).
//
// Each instance counts its own connections per (room, author) and keeps a
// view of every other instance's members, learnt from PresenceChannel and,
// on each (re)connect of its listener, from the presence table. Every
// PRESENCE_INTERVAL it publishes its own net changes (one transaction:
// rows and notifications), writes the read cursors it was given, and sends
// each local member connection at most one presence_diff per room, the net
// change since the last one. Instances heartbeat their session row; the
// survivors delete a session not seen for PRESENCE_TIMEOUT, with its rows,
// and announce it gone.

// typingWindow is the least time between two typing frames relayed for one
// author in one room. Frames from other instances are let through
// typingJitter sooner, so that network jitter does not drop every other
// one from an author typing steadily.
const (
	typingWindow     = 2 * time.Second
	typingJitter     = 250 * time.Millisecond
	typingFlushDelay = 50 * time.Millisecond // typing events batched: one notification, one wake-up per connection
	// maxUnread is where joined.unread stops counting.
	maxUnread = 1000
)

// PresenceMetrics receives presence events. A Metrics that also implements
// it gets them.
type PresenceMetrics interface {
	// PresenceMembers changes by delta the (room, author) pairs present on
	// this instance.
	PresenceMembers(delta int)
	// PresenceDiffs counts presence_diff frames queued.
	PresenceDiffs(n int)
	// TypingRelayed counts typing frames queued to connections.
	TypingRelayed(n int)
	// TypingDropped counts one typing event dropped by the throttle.
	TypingDropped()
	// ReadCursorsWritten counts read cursors moved in the table.
	ReadCursorsWritten(n int)
}

type nopPresenceMetrics struct{}

func (nopPresenceMetrics) PresenceMembers(int)    {}
func (nopPresenceMetrics) PresenceDiffs(int)      {}
func (nopPresenceMetrics) TypingRelayed(int)      {}
func (nopPresenceMetrics) TypingDropped()         {}
func (nopPresenceMetrics) ReadCursorsWritten(int) {}

type roomAuthor struct{ room, author string }

// presence is a hub's presence, typing and read state. Its own mutex guards
// everything below mu; it never takes the hub's, and it queues frames only
// after releasing its own. Lock order: Hub.mu (Hub.leave calls left with
// it held), then presence.mu.
type presence struct {
	db        *store.DB
	log       *slog.Logger
	metrics   PresenceMetrics
	interval  time.Duration
	listLimit int
	timeout   time.Duration
	session   store.PresenceSession
	typed     chan struct{} // cap 1: typingOut or typingRelay has events

	lastBroadcast time.Time // run's goroutine only

	mu           sync.Mutex
	rooms        map[string]*presenceRoom
	touchedLocal map[roomAuthor]struct{} // local presence may differ from published
	published    map[roomAuthor]struct{} // present here as far as the table knows
	typingLast   map[roomAuthor]time.Time
	typingOut    []store.Typing      // to announce to the other instances
	typingRelay  map[string][]string // room → authors to relay to local connections
	readsOut     map[roomAuthor]int64
}

// presenceRoom is one room's presence as this instance sees it.
type presenceRoom struct {
	local  map[string]int                 // author → local connections
	remote map[string]map[string]struct{} // author → other sessions it is present on
	count  int                            // authors present anywhere
	conns  map[*client]struct{}           // local connections that got the snapshot

	// Since the last diff:
	touched    map[string]*touch     // authors whose presence changed
	changes    uint64                // presence changes so far: numbers them
	shownCount int                   // count at the last diff
	fresh      map[*client]*snapshot // connections whose snapshot came after the last diff
	receipts   map[string]int64      // author → newest read seq to announce
}

// touch is one author's presence since the last diff: what it was then,
// and each change after it, numbered by presenceRoom.changes.
type touch struct {
	was bool
	log []presenceChange
}

type presenceChange struct {
	n       uint64
	present bool
}

// shownAt is the author's presence after change n (as a snapshot taken
// then showed it).
func (t *touch) shownAt(n uint64) bool {
	v := t.was
	for _, c := range t.log {
		if c.n > n {
			break
		}
		v = c.present
	}
	return v
}

// snapshot is what a connection was shown when it joined: the count and
// the room's presence as of change number changes. It costs the same
// whatever the room's size, so a join storm stays linear.
type snapshot struct {
	count   int
	changes uint64
}

func newPresence(h *Hub) *presence {
	o := h.opts
	def := func(d, v time.Duration) time.Duration {
		if d <= 0 {
			return v
		}
		return d
	}
	p := &presence{
		db:           h.db,
		log:          h.log,
		metrics:      nopPresenceMetrics{},
		interval:     def(o.PresenceInterval, time.Second),
		timeout:      def(o.PresenceTimeout, 5*time.Second),
		listLimit:    o.PresenceListLimit,
		typed:        make(chan struct{}, 1),
		rooms:        make(map[string]*presenceRoom),
		touchedLocal: make(map[roomAuthor]struct{}),
		published:    make(map[roomAuthor]struct{}),
		typingLast:   make(map[roomAuthor]time.Time),
		typingRelay:  make(map[string][]string),
		readsOut:     make(map[roomAuthor]int64),
	}
	if p.listLimit <= 0 {
		p.listLimit = 1000
	}
	if m, ok := o.Metrics.(PresenceMetrics); ok {
		p.metrics = m
	}
	var b [4]byte
	rand.Read(b[:])
	p.session = store.PresenceSession{ID: o.Instance + "/" + hex.EncodeToString(b[:]), Instance: o.Instance}
	return p
}

func (p *presence) room(name string) *presenceRoom {
	r := p.rooms[name]
	if r == nil {
		r = &presenceRoom{
			local:    make(map[string]int),
			remote:   make(map[string]map[string]struct{}),
			conns:    make(map[*client]struct{}),
			touched:  make(map[string]*touch),
			fresh:    make(map[*client]*snapshot),
			receipts: make(map[string]int64),
		}
		p.rooms[name] = r
	}
	return r
}

func (r *presenceRoom) present(author string) bool {
	return r.local[author] > 0 || len(r.remote[author]) > 0
}

// change runs mutate on author's entries and records whether that changed
// the author's presence.
func (r *presenceRoom) change(author string, mutate func()) {
	before := r.present(author)
	mutate()
	after := r.present(author)
	if before == after {
		return
	}
	t := r.touched[author]
	if t == nil {
		t = &touch{was: before}
		r.touched[author] = t
	}
	r.changes++
	t.log = append(t.log, presenceChange{r.changes, after})
	if after {
		r.count++
	} else {
		r.count--
	}
}

func (r *presenceRoom) setRemote(author, session string, present bool) {
	r.change(author, func() {
		s := r.remote[author]
		if present {
			if s == nil {
				s = make(map[string]struct{}, 1)
				r.remote[author] = s
			}
			s[session] = struct{}{}
		} else if s != nil {
			delete(s, session)
			if len(s) == 0 {
				delete(r.remote, author)
			}
		}
	})
}

// members returns the room's present authors, sorted.
func (r *presenceRoom) members() []string {
	m := make([]string, 0, r.count)
	for a := range r.local {
		m = append(m, a)
	}
	for a := range r.remote {
		if r.local[a] == 0 {
			m = append(m, a)
		}
	}
	slices.Sort(m)
	return m
}

// snapshotFrame is the room's "presence" frame.
func (p *presence) snapshotFrame(name string, r *presenceRoom) []byte {
	if r.count > p.listLimit {
		f := false
		return encode(presenceFrame{Type: TypePresence, Room: name, Count: r.count, Complete: &f})
	}
	return encode(presenceFrame{Type: TypePresence, Room: name, Count: r.count, Members: r.members()})
}

// joined makes c, which has just joined name, present there and sends it
// the room's snapshot. The hub calls it after queueing "joined".
func (p *presence) joined(c *client, name string) {
	p.mu.Lock()
	r := p.room(name)
	r.conns[c] = struct{}{}
	r.change(c.author, func() { r.local[c.author]++ })
	if r.local[c.author] == 1 {
		p.touchedLocal[roomAuthor{name, c.author}] = struct{}{}
	}
	r.fresh[c] = &snapshot{count: r.count, changes: r.changes}
	frame := p.snapshotFrame(name, r)
	p.mu.Unlock()
	c.send(frame)
}

// left ends c's presence in name. It only takes the presence lock and
// queues nothing, so the hub may call it with its own lock held.
func (p *presence) left(c *client, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[name]
	if r == nil {
		return
	}
	if _, ok := r.conns[c]; !ok {
		return
	}
	delete(r.conns, c)
	delete(r.fresh, c)
	r.change(c.author, func() {
		if r.local[c.author]--; r.local[c.author] <= 0 {
			delete(r.local, c.author)
		}
	})
	if r.local[c.author] == 0 {
		p.touchedLocal[roomAuthor{name, c.author}] = struct{}{}
	}
}

// run publishes, heartbeats and sends diffs until ctx ends; then it
// publishes what is left and ends the session, so that the other
// instances drop its members at once.
func (p *presence) run(ctx context.Context) {
	if p.db == nil {
		return
	}
	p.heartbeat(ctx)
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	beat := time.NewTicker(max(p.timeout/5, 100*time.Millisecond))
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			p.flushTyping(ectx)
			p.flushReads(ectx)
			if err := p.db.EndSession(ectx, p.session.ID); err != nil {
				p.log.Warn("ending presence session", "err", err)
			}
			return
		case <-tick.C:
			// Diffs first, right on the tick, so that they are an interval
			// apart whatever the database calls after them take.
			p.broadcast(ctx)
			p.publish(ctx)
			p.flushReads(ctx)
		case <-beat.C:
			p.heartbeat(ctx)
		case <-p.typed:
			select {
			case <-ctx.Done():
			case <-time.After(typingFlushDelay):
			}
			p.deliverTyping()
			p.flushTyping(ctx)
		}
	}
}

func (p *presence) dbCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, max(p.interval, 2*time.Second))
}

// heartbeat keeps the session alive and sweeps dead ones. If the session
// had been swept (this instance was cut off for longer than the timeout),
// every local member is announced again.
func (p *presence) heartbeat(ctx context.Context) {
	qctx, cancel := p.dbCtx(ctx)
	defer cancel()
	created, swept, err := p.db.Heartbeat(qctx, p.session, p.timeout)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("presence heartbeat", "err", err)
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range swept {
		p.log.Info("presence: swept a dead instance's session", "session", s)
		p.dropSession(s)
	}
	if created {
		// Whatever the table had of this session is gone: announce all.
		clear(p.published)
		for name, r := range p.rooms {
			for a := range r.local {
				p.touchedLocal[roomAuthor{name, a}] = struct{}{}
			}
		}
	}
}

// dropSession removes every member of session. Call with p.mu held.
func (p *presence) dropSession(session string) {
	for _, r := range p.rooms {
		for a, s := range r.remote {
			if _, ok := s[session]; ok {
				r.setRemote(a, session, false)
			}
		}
	}
}

// publish stores and announces the local net changes since the last call.
func (p *presence) publish(ctx context.Context) {
	p.mu.Lock()
	if len(p.touchedLocal) == 0 {
		p.mu.Unlock()
		return
	}
	byRoom := make(map[string]*store.PresenceChange)
	var keys []roomAuthor
	for ra := range p.touchedLocal {
		r := p.rooms[ra.room]
		now := r != nil && r.local[ra.author] > 0
		_, was := p.published[ra]
		if now == was {
			continue
		}
		ch := byRoom[ra.room]
		if ch == nil {
			ch = &store.PresenceChange{Room: ra.room}
			byRoom[ra.room] = ch
		}
		if now {
			ch.Joins = append(ch.Joins, ra.author)
		} else {
			ch.Leaves = append(ch.Leaves, ra.author)
		}
		keys = append(keys, ra)
	}
	clear(p.touchedLocal)
	p.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	changes := make([]store.PresenceChange, 0, len(byRoom))
	for _, ch := range byRoom {
		changes = append(changes, *ch)
	}
	qctx, cancel := p.dbCtx(ctx)
	err := p.db.PublishPresence(qctx, p.session.ID, changes)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("publishing presence, retrying", "err", err)
		}
		for _, ra := range keys {
			p.touchedLocal[ra] = struct{}{}
		}
		return
	}
	delta := 0
	for _, ch := range changes {
		for _, a := range ch.Joins {
			p.published[roomAuthor{ch.Room, a}] = struct{}{}
			delta++
		}
		for _, a := range ch.Leaves {
			delete(p.published, roomAuthor{ch.Room, a})
			delta--
		}
	}
	p.metrics.PresenceMembers(delta)
}

// outgoing is one frame for one connection.
type outgoing struct {
	c     *client
	frame []byte
}

// broadcast sends each room's net change since the last call to its local
// member connections, and the read receipts gathered meanwhile. It is
// never less than an interval after the previous one (a ticker may fire
// early after a late tick).
func (p *presence) broadcast(ctx context.Context) {
	if wait := p.interval - time.Since(p.lastBroadcast); wait > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	now := time.Now()
	p.lastBroadcast = now
	var out []outgoing
	diffs := 0
	p.mu.Lock()
	for name, r := range p.rooms {
		if len(r.touched) > 0 || len(r.fresh) > 0 || len(r.receipts) > 0 {
			var n int
			out, n = p.roomFrames(name, r, out)
			diffs += n
		}
		if r.count == 0 && len(r.conns) == 0 {
			delete(p.rooms, name)
		}
	}
	for ra, t := range p.typingLast {
		if now.Sub(t) >= typingWindow {
			delete(p.typingLast, ra)
		}
	}
	p.mu.Unlock()
	for _, o := range out {
		o.c.send(o.frame)
	}
	p.metrics.PresenceDiffs(diffs)
}

// roomFrames appends the room's frames for its connections to out and
// starts a new interval. Call with p.mu held.
func (p *presence) roomFrames(name string, r *presenceRoom, out []outgoing) ([]outgoing, int) {
	var receipts [][]byte
	for _, a := range slices.Sorted(maps.Keys(r.receipts)) {
		receipts = append(receipts, encode(readFrame{Type: TypeRead, Room: name, Author: a, Seq: r.receipts[a]}))
	}
	var common []byte
	commonDone := false
	diffs := 0
	for c := range r.conns {
		var frame []byte
		if s := r.fresh[c]; s != nil {
			frame = p.diffFrame(name, r, s.count, s)
		} else {
			if !commonDone {
				common, commonDone = p.diffFrame(name, r, r.shownCount, nil), true
			}
			frame = common
		}
		if frame != nil {
			out = append(out, outgoing{c, frame})
			diffs++
		}
		for _, f := range receipts {
			out = append(out, outgoing{c, f})
		}
	}
	r.shownCount = r.count
	clear(r.touched)
	clear(r.fresh)
	clear(r.receipts)
	return out, diffs
}

// diffFrame is the frame that takes a connection from what it was shown
// (sawCount members, and each touched author as of shown's change, or at
// the last diff if shown is nil) to the room now, or nil if
// there is no change. A room over the list limit gets counts only; a room
// back under it, a new snapshot.
func (p *presence) diffFrame(name string, r *presenceRoom, sawCount int, shown *snapshot) []byte {
	sawList := sawCount <= p.listLimit
	if r.count > p.listLimit {
		if r.count == sawCount && !sawList {
			return nil
		}
		f := false
		return encode(presenceCountFrame{Type: TypePresenceDiff, Room: name, Count: r.count, Complete: &f})
	}
	if !sawList {
		return p.snapshotFrame(name, r)
	}
	joins, leaves := []string{}, []string{}
	for a, t := range r.touched {
		was := t.was
		if shown != nil {
			was = t.shownAt(shown.changes)
		}
		switch now := r.present(a); {
		case now && !was:
			joins = append(joins, a)
		case !now && was:
			leaves = append(leaves, a)
		}
	}
	if len(joins) == 0 && len(leaves) == 0 {
		return nil
	}
	slices.Sort(joins)
	slices.Sort(leaves)
	return encode(presenceDiffFrame{Type: TypePresenceDiff, Room: name, Count: r.count, Joins: joins, Leaves: leaves})
}

// deliver applies one PresenceChannel payload from another instance.
func (p *presence) deliver(payload string) {
	n, err := store.DecodePresence(payload)
	if err != nil {
		p.log.Warn("ignoring presence notification", "err", err)
		return
	}
	if n.Session == p.session.ID {
		return // applied locally already
	}
	switch {
	case n.Gone:
		p.mu.Lock()
		p.dropSession(n.Session)
		p.mu.Unlock()
	case n.Change != nil:
		p.mu.Lock()
		r := p.room(n.Change.Room)
		for _, a := range n.Change.Joins {
			r.setRemote(a, n.Session, true)
		}
		for _, a := range n.Change.Leaves {
			r.setRemote(a, n.Session, false)
		}
		p.mu.Unlock()
	case len(n.Typing) > 0:
		for _, t := range n.Typing {
			p.relayTyping(t.Room, t.Author, false)
		}
	case len(n.Reads) > 0:
		p.mu.Lock()
		p.addReceipts(n.Reads)
		p.mu.Unlock()
	}
}

// reload replaces the view of the other instances' members with the
// table's. The presence listener calls it once LISTEN is live after each
// (re)connect: notifications sent while it was away are lost, and those
// sent since are applied after it, which only repeats what the table says.
func (p *presence) reload(ctx context.Context) {
	if p.db == nil {
		return
	}
	var rows []store.PresenceRow
	var err error
	// Retry for a while: right after a database restart a pooler may
	// refuse logins for some seconds (PgBouncer's server_login_retry is
	// 15 s by default), and until the load succeeds other instances'
	// members are missing here.
	giveUp := time.Now().Add(30 * time.Second)
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		qctx, cancel := p.dbCtx(ctx)
		rows, err = p.db.LoadPresence(qctx)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().After(giveUp) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	if err != nil {
		p.log.Error("loading presence: members of other instances may be missing until the next reconnect", "err", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.rooms {
		for a, sessions := range r.remote {
			for s := range sessions {
				r.setRemote(a, s, false)
			}
		}
	}
	for _, row := range rows {
		if row.Session != p.session.ID {
			p.room(row.Room).setRemote(row.Author, row.Session, true)
		}
	}
}

// view returns the room's count and, if within the list limit, its sorted
// members.
func (p *presence) view(room string) (count int, members []string, complete bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.rooms[room]
	if r == nil {
		return 0, []string{}, true
	}
	if r.count > p.listLimit {
		return r.count, nil, false
	}
	return r.count, r.members(), true
}

// DeliverPresence hands the hub one PresenceChannel payload.
func (h *Hub) DeliverPresence(payload string) { h.presence.deliver(payload) }

// ReloadPresence reloads the other instances' members from the table; the
// presence listener calls it once LISTEN is live after each (re)connect.
func (h *Hub) ReloadPresence(ctx context.Context) { h.presence.reload(ctx) }

// Presence frames.

type presenceFrame struct {
	Type     string   `json:"type"`
	Room     string   `json:"room"`
	Count    int      `json:"count"`
	Members  []string `json:"members,omitempty"`
	Complete *bool    `json:"complete,omitempty"`
}

type presenceDiffFrame struct {
	Type   string   `json:"type"`
	Room   string   `json:"room"`
	Count  int      `json:"count"`
	Joins  []string `json:"joins"`
	Leaves []string `json:"leaves"`
}

type presenceCountFrame struct {
	Type     string `json:"type"`
	Room     string `json:"room"`
	Count    int    `json:"count"`
	Complete *bool  `json:"complete"`
}
