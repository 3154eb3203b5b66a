// Package wsconn is the server side of RFC 6455 WebSocket connections,
// written for many mostly idle clients: the handshake, framing,
// fragmentation, control frames, keepalive, the close handshake, and
// parking idle connections without a goroutine (epoll on Linux). No
// extension is negotiated.
//
// A Set owns its connections' shared chores (the keepalive sweep and the
// poller); a Conn owns one socket. The application sees a Conn through
// Queue (never blocks), Close and its Handler.
package wsconn

import (
	"context"
	"sync"
	"time"
)

// Options configures a Set and its connections. Zero values pick the
// defaults in parentheses.
type Options struct {
	PingInterval time.Duration // keepalive ping period (25s)
	WriteTimeout time.Duration // per socket write; also how long a ping may go unanswered (10s)
	MaxQueued    int           // bytes queued before Queue reports a slow consumer (1 MiB)
	// MaxControlRate is how many control frames (pings, pongs) a client may
	// send per second; more: close 1008 (50).
	MaxControlRate int
	// MaxFragments is how many frames one message may span; more: close
	// 1008 (128).
	MaxFragments int
	// OnWrite, if set, is called after each socket write of queued frames
	// with how long the oldest of them waited since Queue. It runs on the
	// connection's writer: keep it cheap.
	OnWrite func(waited time.Duration)
}

func (o *Options) setDefaults() {
	if o.PingInterval <= 0 {
		o.PingInterval = 25 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.MaxQueued <= 0 {
		o.MaxQueued = 1 << 20
	}
	if o.MaxControlRate <= 0 {
		o.MaxControlRate = 50
	}
	if o.MaxFragments <= 0 {
		o.MaxFragments = 128
	}
}

// closeTimeout is how long a connection waits for the peer's close frame
// (or EOF) after sending its own, or after failing the connection.
func (o *Options) closeTimeout() time.Duration { return min(o.WriteTimeout, 5*time.Second) }

// Set is a group of connections sharing one keepalive sweep and one
// poller. Its methods are safe for concurrent use. Run it with Run.
//
// Lock order: Set.mu is never held while taking a Conn's mu; a Conn's mu
// may be held while taking poller.mu.
type Set struct {
	opts Options
	poll *poller

	mu    sync.Mutex
	conns map[*Conn]struct{} // upgraded and not finished
}

// NewSet returns a Set with opts.
func NewSet(opts Options) *Set {
	opts.setDefaults()
	return &Set{opts: opts, poll: newPoller(), conns: make(map[*Conn]struct{})}
}

// Len returns the number of connections upgraded and not yet finished.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Parked returns the number of connections parked without a goroutine.
func (s *Set) Parked() int { return s.poll.count() }

// Run pings the connections (see sweep) and wakes parked ones when their
// sockets turn readable, until ctx ends; then parked connections are
// resumed on goroutines of their own and Run returns.
func (s *Set) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.poll.run(ctx) })
	tick := time.NewTicker(min(s.opts.PingInterval/4, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.sweep(now)
		}
	}
}

// sweep pings every connection last pinged PingInterval ago, and drops
// those that have not sent a byte since a ping for WriteTimeout, counted
// from the latest of the ping, the moment the read side began waiting on
// the socket, the last socket write that completed, and the last time
// the peer was seen taking in bytes the kernel held for it: one sweep per
// Set instead of a timer per connection. A read side busy with a message (the
// database, a replay) is not judged, since what the peer sent meanwhile
// waits in the socket; nor is a peer still taking in what we write (our
// ping waits behind it), since a peer that does not is cut by the write
// timeout.
func (s *Set) sweep(now time.Time) {
	var ping, late, dead []*Conn
	t := mono(now)
	timeout := int64(s.opts.WriteTimeout)
	s.mu.Lock()
	for c := range s.conns {
		k := &c.keep
		if k.pingAt != 0 {
			waiting := c.waiting.Load()
			switch {
			case c.heard.Load() >= k.pingAt:
				k.pingAt, k.outq = 0, 0
			case waiting != 0 && t-max(k.pingAt, waiting, c.wrote.Load(), k.progress) > timeout:
				late = append(late, c)
				continue
			}
		}
		switch {
		case k.nextPing == 0:
			k.nextPing = t + int64(s.opts.PingInterval)
		case t >= k.nextPing && k.pingAt == 0:
			k.nextPing, k.pingAt = t+int64(s.opts.PingInterval), t
			ping = append(ping, c)
		}
	}
	s.mu.Unlock()
	// A late peer is still alive if it is taking in what the kernel holds
	// for it: its unacknowledged bytes went down since the last look.
	if len(late) > 0 {
		queued := make([]int, len(late))
		for i, c := range late {
			queued[i] = unacked(c.raw)
		}
		s.mu.Lock()
		for i, c := range late {
			k := &c.keep
			if q := queued[i]; q > 0 && (k.outq == 0 || q < k.outq) {
				k.outq, k.progress = q, t
				continue
			}
			dead = append(dead, c)
		}
		s.mu.Unlock()
	}
	for _, c := range ping {
		c.ping()
	}
	for _, c := range dead {
		c.Abort(CauseKeepalive, "no answer to a ping")
	}
}

func (s *Set) add(c *Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *Set) remove(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// monoBase makes mono's times monotonic: a wall clock step does not make
// the sweep drop live peers.
var monoBase = time.Now()

// mono returns t as nanoseconds since monoBase, on the monotonic clock;
// never 0 after the first nanosecond.
func mono(t time.Time) int64 { return int64(t.Sub(monoBase)) + 1 }
