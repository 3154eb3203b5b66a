package bench

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// room is one room of a run: its members and the seqs acked to senders.
type room struct {
	name    string
	members []*client

	mu    sync.Mutex
	acked bitset
	top   atomic.Int64 // highest acked seq
}

// client is one bench connection and what it received. Its reader
// goroutine owns the receive state; counters read by the progress line
// are atomic.
type client struct {
	r    *runner
	id   int
	name string
	room *room
	snd  *sender // nil unless it sends

	mu   sync.Mutex
	conn *wsConn // nil while reconnecting

	// Reader goroutine only.
	joinSeq  int64  // seq of the first joined: later messages are owed
	got      bitset // seqs received
	top      int64  // highest seq received
	lat      hist   // send to deliver, measured period
	ackLat   hist   // send to ack, measured period
	dups     int64
	disorder int64

	last      atomic.Int64 // highest seq received, for the drain
	delivered atomic.Int64
}

// sender is the sending side of a client.
type sender struct {
	slots    chan struct{} // one per unacknowledged send
	sent     atomic.Int64
	acked    atomic.Int64
	answered atomic.Int64 // acks and errors
}

func (c *client) current() *wsConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// connect dials, reads the welcome and joins c's room, with since when the
// client is resuming. Frames before joined are handled as deliveries.
func (c *client) connect(ctx context.Context, resume bool) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	bufSize := 32 << 10
	if c.r.cfg.Clients > 2000 {
		bufSize = 4 << 10
	}
	ws, err := dialWS(ctx, c.r.wsURL(c.id, c.name), c.r.cfg.Header, bufSize)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { ws.nc.Close() })
	defer stop()
	fail := func(err error) (*wsConn, error) {
		ws.nc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	data, err := ws.next()
	if err != nil {
		return fail(err)
	}
	var f frame
	if !scanFrame(data, &f) || string(f.typ) != "welcome" {
		return fail(fmt.Errorf("first frame %.100s, want welcome", data))
	}
	join := `{"type":"join","room":"` + c.room.name + `"}`
	if resume {
		join = `{"type":"join","room":"` + c.room.name + `","since":` + strconv.FormatInt(c.top, 10) + `}`
	}
	if err := ws.writeText([]byte(join)); err != nil {
		return fail(err)
	}
	for {
		data, err := ws.next()
		if err != nil {
			return fail(err)
		}
		if !scanFrame(data, &f) {
			return fail(fmt.Errorf("bad frame %.100s", data))
		}
		switch string(f.typ) {
		case "message":
			c.onMessage(&f, c.r.now())
		case "joined":
			if !resume {
				c.joinSeq, c.top = f.seq, f.seq
				c.last.Store(f.seq)
			}
			return ws, nil
		case "error":
			c.r.countError(f.code)
			return fail(fmt.Errorf("join refused: %s: %s", f.code, f.message))
		}
	}
}

// read handles frames until the connection ends, then reconnects with
// since until ctx ends.
func (c *client) read(ctx context.Context, ws *wsConn) {
	var f frame
	for {
		for {
			data, err := ws.next()
			if err != nil {
				if ctx.Err() == nil {
					c.r.countClose(err)
				}
				break
			}
			if !scanFrame(data, &f) {
				c.r.countError([]byte("bench: unparsable frame"))
				continue
			}
			now := c.r.now()
			switch string(f.typ) {
			case "message":
				c.onMessage(&f, now)
			case "ack":
				c.onAck(&f, now)
			case "error":
				c.r.countError(f.code)
				if c.snd != nil && len(f.ref) > 0 {
					c.snd.answered.Add(1)
					c.snd.release()
				}
			}
		}
		ws.nc.Close()
		c.mu.Lock()
		c.conn = nil
		c.mu.Unlock()
		if c.snd != nil {
			// Sends on the lost connection will never be answered here.
			for {
				select {
				case <-c.snd.slots:
					continue
				default:
				}
				break
			}
		}
		backoff := 50 * time.Millisecond
		for {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(rand.N(backoff))
			backoff = min(2*backoff, 2*time.Second)
			var err error
			ws, err = c.connect(ctx, true)
			if err == nil {
				break
			}
			if ctx.Err() == nil {
				c.r.countClose(err)
			}
		}
		c.r.reconnects.Add(1)
		c.mu.Lock()
		c.conn = ws
		c.mu.Unlock()
	}
}

func (c *client) onMessage(f *frame, now int64) {
	seq := f.seq
	c.delivered.Add(1)
	switch {
	case seq <= c.joinSeq || c.got.has(seq):
		c.dups++
		return
	case seq != c.top+1:
		c.disorder++
	}
	c.got.set(seq)
	if seq > c.top {
		c.top = seq
		c.last.Store(seq)
	}
	if sent, ok := leadingInt(f.body); ok && c.r.measured(sent) {
		c.lat.record(now - sent)
	}
}

func (c *client) onAck(f *frame, now int64) {
	if c.snd == nil {
		return
	}
	rm := c.room
	rm.mu.Lock()
	rm.acked.set(f.seq)
	rm.mu.Unlock()
	for {
		top := rm.top.Load()
		if f.seq <= top || rm.top.CompareAndSwap(top, f.seq) {
			break
		}
	}
	c.snd.acked.Add(1)
	c.snd.answered.Add(1)
	c.snd.release()
	// ref is "k.sendtime".
	for i, b := range f.ref {
		if b == '.' {
			if sent, ok := leadingInt(f.ref[i+1:]); ok && c.r.measured(sent) {
				c.ackLat.record(now - sent)
			}
			break
		}
	}
}

func (s *sender) release() {
	select {
	case <-s.slots:
	default:
	}
}

// measured reports whether a send at t (ns since start) is in the measured
// period.
func (r *runner) measured(t int64) bool {
	lo := r.measureLo.Load()
	return lo > 0 && t >= lo && t < r.measureHi.Load()
}

// send writes c's messages at the configured rate, or as fast as the
// window allows, until stop is closed.
func (c *client) send(ctx context.Context, stop <-chan struct{}) {
	cfg := &c.r.cfg
	s := c.snd
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	// Senders start spread over one interval, not all at once.
	next := time.Now().Add(time.Duration(rand.Int64N(int64(max(interval, time.Millisecond)))))
	var buf []byte
	for k := 0; ; k++ {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-stop:
					return
				}
			}
			next = next.Add(interval)
		}
		select {
		case s.slots <- struct{}{}:
		case <-stop:
			return
		}
		select {
		case <-stop:
			s.release()
			return
		default:
		}
		ws := c.current()
		if ws == nil { // reconnecting
			s.release()
			select {
			case <-time.After(10 * time.Millisecond):
			case <-stop:
				return
			}
			continue
		}
		sent := c.r.now()
		buf = append(buf[:0], `{"type":"send","room":"`...)
		buf = append(buf, c.room.name...)
		buf = append(buf, `","body":"`...)
		n := len(buf)
		buf = strconv.AppendInt(buf, sent, 10)
		buf = append(buf, ' ')
		for len(buf)-n < cfg.BodySize {
			buf = append(buf, 'x')
		}
		buf = append(buf, `","ref":"`...)
		buf = strconv.AppendInt(buf, int64(k), 36)
		buf = append(buf, '.')
		buf = strconv.AppendInt(buf, sent, 10)
		buf = append(buf, `"}`...)
		if err := ws.writeText(buf); err != nil {
			s.release()
			continue
		}
		s.sent.Add(1)
	}
}

// load runs ModeLoad and ModeIdle.
func (r *runner) load(ctx context.Context) error {
	cfg := &r.cfg
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.phase.Store("connecting")
	for i := range cfg.Rooms {
		r.rooms = append(r.rooms, &room{name: fmt.Sprintf("%s-%d", cfg.RoomPrefix, i)})
	}
	for i := range cfg.Clients {
		c := &client{r: r, id: i, name: fmt.Sprintf("%s-c%d", cfg.RoomPrefix, i), room: r.rooms[i%cfg.Rooms]}
		if cfg.Mode == ModeLoad && i < cfg.Senders {
			c.snd = &sender{slots: make(chan struct{}, cfg.Window)}
		}
		c.room.members = append(c.room.members, c)
		r.conns = append(r.conns, c)
	}
	before := r.sampleServers()

	var connected atomic.Int64
	progressCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	go r.progress(progressCtx, r.loadLine(&connected))

	// Readers run on a context of their own: they outlive sending, for the
	// drain, and stop when the run is over.
	readCtx, stopReaders := context.WithCancel(context.WithoutCancel(ctx))
	var readers sync.WaitGroup
	closeAll := func() {
		stopReaders()
		for _, c := range r.conns {
			if ws := c.current(); ws != nil {
				ws.close()
			}
		}
		readers.Wait()
	}
	defer closeAll()
	t0 := time.Now()
	err := r.dialAll(ctx, cfg.Clients, func(ctx context.Context, i int) error {
		c := r.conns[i]
		ws, err := c.connect(ctx, false)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.conn = ws
		c.mu.Unlock()
		connected.Add(1)
		readers.Go(func() { c.read(readCtx, ws) })
		return nil
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	r.res.Connect = time.Since(t0)

	stopSending := make(chan struct{})
	finishTyping, err := r.startTypists(ctx, stopSending)
	if err != nil {
		return err
	}
	var senders sync.WaitGroup
	for _, c := range r.conns {
		if c.snd != nil {
			senders.Go(func() { c.send(ctx, stopSending) })
		}
	}
	if cfg.Mode == ModeLoad && cfg.Warmup > 0 {
		r.phase.Store("warmup")
		if !sleep(ctx, cfg.Warmup) {
			close(stopSending)
			return ctx.Err()
		}
	}
	r.phase.Store("measuring")
	lo := r.now()
	r.measureHi.Store(lo + int64(cfg.Duration))
	r.measureLo.Store(lo)
	from, cpu0 := r.sampleServers(), selfCPU()
	sent0, acked0, deliv0 := r.totals()
	w0 := time.Now()
	ok := sleep(ctx, cfg.Duration)
	wall := time.Since(w0)
	sent1, acked1, deliv1 := r.totals()
	to, cpu1 := r.sampleServers(), selfCPU()
	close(stopSending)
	senders.Wait()
	finishTyping()
	if !ok {
		return ctx.Err()
	}
	res := r.res
	res.Duration = wall
	res.Sent, res.Acked, res.Deliveries = sent1-sent0, acked1-acked0, deliv1-deliv0
	res.SentPerSec = float64(res.Sent) / wall.Seconds()
	res.AckedPerSec = float64(res.Acked) / wall.Seconds()
	res.DeliveriesPerSec = float64(res.Deliveries) / wall.Seconds()
	res.BenchCPU = float64(cpu1-cpu0) / float64(wall)
	r.serverStats(before, from, to, wall)

	if cfg.Mode == ModeIdle {
		idle := &Idle{}
		for _, c := range r.conns {
			if c.current() != nil {
				idle.Alive++
			}
		}
		for _, s := range res.Servers {
			idle.RSSIncrease += s.RSSEnd - s.RSSStart
		}
		idle.RSSPerConn = idle.RSSIncrease / int64(cfg.Clients)
		res.Idle = idle
	} else {
		r.phase.Store("draining")
		r.drain(ctx)
	}
	stopProgress()
	res.Reconnects = r.reconnects.Load()
	closeAll()
	r.account()
	return nil
}

// drain waits until every send is answered and every client has received
// up to its room's highest acked seq, or until Drain passes.
func (r *runner) drain(ctx context.Context) {
	deadline := time.Now().Add(r.cfg.Drain)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		done := true
		for _, c := range r.conns {
			if c.snd != nil && len(c.snd.slots) > 0 {
				done = false
				break
			}
			if c.last.Load() < c.room.top.Load() {
				done = false
				break
			}
		}
		if done {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// account counts what was lost, duplicated and reordered once every reader
// has stopped.
func (r *runner) account() {
	res := r.res
	var lat, ackLat hist
	for _, c := range r.conns {
		lat.merge(&c.lat)
		ackLat.merge(&c.ackLat)
		res.Duplicated += c.dups
		res.OutOfOrder += c.disorder
		if c.snd != nil {
			res.Unanswered += c.snd.sent.Load() - c.snd.answered.Load()
		}
		for seq := range c.room.acked.all() {
			if seq > c.joinSeq {
				res.Owed++
				if !c.got.has(seq) {
					res.Lost++
				}
			}
		}
	}
	res.Latency, res.AckLatency = lat.summary(), ackLat.summary()
	res.Unanswered = max(res.Unanswered, 0)
}

func (r *runner) totals() (sent, acked, delivered int64) {
	for _, c := range r.conns {
		delivered += c.delivered.Load()
		if c.snd != nil {
			sent += c.snd.sent.Load()
			acked += c.snd.acked.Load()
		}
	}
	return
}

// loadLine returns the progress line function of a load or idle run.
func (r *runner) loadLine(connected *atomic.Int64) func() string {
	var prevSent, prevAcked, prevDeliv int64
	prevCPU, prevT := selfCPU(), time.Now()
	return func() string {
		sent, acked, deliv := r.totals()
		cpu, t := selfCPU(), time.Now()
		dt := t.Sub(prevT).Seconds()
		var inflight int
		for _, c := range r.conns {
			if c.snd != nil {
				inflight += len(c.snd.slots)
			}
		}
		r.mu.Lock()
		var errs, closes int64
		for _, n := range r.res.Errors {
			errs += n
		}
		for _, n := range r.res.Closes {
			closes += n
		}
		r.mu.Unlock()
		line := fmt.Sprintf("conns %d  sent/s %.0f  acked/s %.0f  deliveries/s %.0f  inflight %d  errors %d  closes %d  bench cpu %.2f",
			connected.Load(), float64(sent-prevSent)/dt, float64(acked-prevAcked)/dt, float64(deliv-prevDeliv)/dt,
			inflight, errs, closes, float64(cpu-prevCPU)/float64(t.Sub(prevT)))
		prevSent, prevAcked, prevDeliv, prevCPU, prevT = sent, acked, deliv, cpu, t
		return line
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// bitset is a growable set of non-negative integers.
type bitset []uint64

func (b *bitset) set(i int64) {
	w := int(i >> 6)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w-len(*b)+1+len(*b)/2)...)
	}
	(*b)[w] |= 1 << (i & 63)
}

func (b bitset) has(i int64) bool {
	w := int(i >> 6)
	return w < len(b) && b[w]&(1<<(i&63)) != 0
}

// all yields the members in increasing order.
func (b bitset) all() func(yield func(int64) bool) {
	return func(yield func(int64) bool) {
		for w, x := range b {
			for x != 0 {
				bit := int64(x & -x)
				i := int64(w)<<6 + int64(bits.TrailingZeros64(uint64(bit)))
				if !yield(i) {
					return
				}
				x &= x - 1
			}
		}
	}
}
