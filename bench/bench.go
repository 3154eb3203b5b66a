// Package bench is pgchat's load generator: many WebSocket clients spread
// over one or more instances, some of them sending, all of them checking
// that every acked message reaches them once and in seq order.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Modes of a run.
const (
	// ModeLoad: Senders of the Clients send for Warmup + Duration; every
	// client checks what it receives.
	ModeLoad = "load"
	// ModeIdle: Clients connect, join and stay idle for Duration; the
	// servers' RSS is sampled before and after (see Config.PIDs).
	ModeIdle = "idle"
	// ModeJoinStorm: one client stores History messages in a room, then
	// Clients connections join it at once with since=0 and replay them.
	ModeJoinStorm = "joinstorm"
)

// Config describes a run. Zero values pick the defaults in parentheses.
type Config struct {
	URLs     []string      // servers' base URLs, http://host:port; clients are spread round-robin (required)
	Mode     string        // ModeLoad (default), ModeIdle or ModeJoinStorm
	Clients  int           // connections (100)
	Senders  int           // load: how many of the clients send (10)
	Rate     float64       // load: messages per second per sender; 0: as fast as acks allow within Window
	Window   int           // load: unacknowledged sends per sender (32)
	BodySize int           // bytes per message body, at least 24 (128)
	Rooms    int           // client i joins room i mod Rooms (1)
	Duration time.Duration // the measured period (10s)
	Warmup   time.Duration // load: sending before the measured period (2s); negative: none
	Drain    time.Duration // after sending stops, the longest wait for acks and deliveries (10s)
	History  int           // joinstorm: messages in the room before the storm (1000)
	Churn    int           // presence: joins and leaves per second, each (30)
	Typists  int           // load: more connections, in a room of their own, each typing once per second (0)
	KillPID  int           // presence: after the churn, kill -9 this server process and time its members' leaving (0: none)

	// DialConcurrency bounds the connections being opened at once (64).
	DialConcurrency int
	// RoomPrefix names the rooms, PREFIX-0, PREFIX-1, ...; default
	// "bench-" and a random run id, so that every run starts with empty
	// rooms and sees no one else's messages.
	RoomPrefix string
	// Header is added to every upgrade request (e.g. Authorization).
	Header http.Header
	// PIDs are server processes whose CPU use and RSS are reported (Linux).
	PIDs []int
	// Progress gets a live progress line every second; nil: none.
	Progress io.Writer
}

func (c *Config) setDefaults() error {
	if len(c.URLs) == 0 {
		return errors.New("no server URL")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Mode == "" {
		c.Mode = ModeLoad
	}
	def(&c.Clients, 100)
	if c.Mode == ModeLoad {
		def(&c.Senders, 10)
	}
	def(&c.Window, 32)
	def(&c.BodySize, 128)
	def(&c.Rooms, 1)
	def(&c.History, 1000)
	def(&c.Churn, 30)
	def(&c.DialConcurrency, 64)
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = 2 * time.Second
	}
	c.Warmup = max(c.Warmup, 0)
	if c.Drain <= 0 {
		c.Drain = 10 * time.Second
	}
	if c.RoomPrefix == "" {
		var b [4]byte
		rand.Read(b[:])
		c.RoomPrefix = "bench-" + hex.EncodeToString(b[:])
	}
	switch {
	case c.Mode != ModeLoad && c.Mode != ModeIdle && c.Mode != ModeJoinStorm && c.Mode != ModePresence:
		return fmt.Errorf("unknown mode %q: load, idle, joinstorm or presence", c.Mode)
	case c.Senders > c.Clients:
		return fmt.Errorf("%d senders but only %d clients", c.Senders, c.Clients)
	case c.Rate < 0:
		return errors.New("rate must not be negative")
	case c.BodySize < 24:
		return errors.New("body size must be at least 24 bytes (it carries the send time)")
	}
	return nil
}

// Result is what a run measured. Rates are over the measured period; the
// loss, duplicate and order counts cover the whole run.
type Result struct {
	Mode     string        `json:"mode"`
	URLs     []string      `json:"urls"`
	Clients  int           `json:"clients"`
	Senders  int           `json:"senders"`
	Rate     float64       `json:"rate_per_sender"` // 0: as fast as acks allow
	Window   int           `json:"window"`
	BodySize int           `json:"body_size"`
	Rooms    int           `json:"rooms"`
	Duration time.Duration `json:"duration_ns"` // measured period
	Connect  time.Duration `json:"connect_ns"`  // connecting and joining every client

	Sent             int64   `json:"sent"`  // sends written in the measured period
	Acked            int64   `json:"acked"` // acks received in the measured period
	Deliveries       int64   `json:"deliveries"`
	SentPerSec       float64 `json:"sent_per_sec"`
	AckedPerSec      float64 `json:"acked_per_sec"`
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	Latency          Latency `json:"latency"`     // send to deliver, for messages sent in the measured period
	AckLatency       Latency `json:"ack_latency"` // send to ack, same messages

	// Owed is the number of deliveries the run's acked messages owe: each
	// to every client that was in its room when it was sent.
	Owed       int64            `json:"owed"`
	Lost       int64            `json:"lost"`         // owed, never delivered
	Duplicated int64            `json:"duplicated"`   // delivered again
	OutOfOrder int64            `json:"out_of_order"` // delivered after a higher seq, or past a gap
	Unanswered int64            `json:"unanswered"`   // sends without ack or error (connection lost, or the drain timed out)
	Errors     map[string]int64 `json:"errors"`       // error frames by code
	Closes     map[string]int64 `json:"closes"`       // connections lost, by close code or error
	Reconnects int64            `json:"reconnects"`

	BenchCPU float64       `json:"bench_cpu_cores"` // the bench's own CPU use over the measured period
	Servers  []ServerStats `json:"servers,omitempty"`

	JoinStorm *JoinStorm `json:"join_storm,omitempty"`
	Idle      *Idle      `json:"idle,omitempty"`
	Presence  *Presence  `json:"presence,omitempty"` // presence.go
	Typing    *Typing    `json:"typing,omitempty"`
}

// ServerStats are a server process's figures (Config.PIDs).
type ServerStats struct {
	PID      int     `json:"pid"`
	CPU      float64 `json:"cpu_cores"` // over the measured period
	RSSStart int64   `json:"rss_start"` // bytes, before the clients connected
	RSSEnd   int64   `json:"rss_end"`   // bytes, at the end of the measured period
}

// JoinStorm is what a join storm measured.
type JoinStorm struct {
	History  int           `json:"history"`
	Joins    Latency       `json:"joins"`    // join sent to joined received, per client
	Total    time.Duration `json:"total_ns"` // first join sent to last joined received
	Replayed int64         `json:"replayed"` // messages replayed, all clients
	Failed   int           `json:"failed"`   // clients whose replay was incomplete, out of order or refused
}

// Idle is what an idle run measured.
type Idle struct {
	Alive       int   `json:"alive"`        // connections still open at the end
	RSSPerConn  int64 `json:"rss_per_conn"` // bytes: the servers' RSS growth over Clients
	RSSIncrease int64 `json:"rss_increase"` // bytes, all servers
}

// Run runs the benchmark cfg describes until it is done or ctx ends.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, start: time.Now()}
	for _, s := range cfg.URLs {
		u, err := url.Parse(strings.TrimSuffix(s, "/"))
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("bad server URL %q", s)
		}
		r.urls = append(r.urls, u)
	}
	r.res = &Result{
		Mode: cfg.Mode, URLs: cfg.URLs, Clients: cfg.Clients, Senders: cfg.Senders,
		Rate: cfg.Rate, Window: cfg.Window, BodySize: cfg.BodySize, Rooms: cfg.Rooms,
		Errors: map[string]int64{}, Closes: map[string]int64{},
	}
	switch cfg.Mode {
	case ModeJoinStorm:
		return r.res, r.joinStorm(ctx)
	case ModePresence:
		return r.res, r.presence(ctx)
	default:
		return r.res, r.load(ctx)
	}
}

// runner is one run's shared state.
type runner struct {
	cfg   Config
	urls  []*url.URL
	start time.Time // the clock of send times carried in bodies
	res   *Result

	mu    sync.Mutex // guards res.Errors, res.Closes
	rooms []*room
	conns []*client
	phase atomic.Value // string, for the progress line

	reconnects atomic.Int64
	measureLo  atomic.Int64 // measured period, in ns since start
	measureHi  atomic.Int64
}

func (r *runner) now() int64 { return int64(time.Since(r.start)) }

func (r *runner) countError(code []byte) {
	r.mu.Lock()
	r.res.Errors[string(code)]++
	r.mu.Unlock()
}

func (r *runner) countClose(err error) {
	key := "error"
	var ce *closeError
	var he *handshakeError
	switch {
	case errors.As(err, &ce):
		key = fmt.Sprint(ce.code)
	case errors.As(err, &he):
		key = fmt.Sprintf("http %d", he.status)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		key = "eof"
	}
	r.mu.Lock()
	r.res.Closes[key]++
	r.mu.Unlock()
}

// wsURL is the /ws URL for client i.
func (r *runner) wsURL(i int, name string) *url.URL {
	u := *r.urls[i%len(r.urls)]
	u.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
	u.RawQuery = url.Values{"name": {name}}.Encode()
	return &u
}

// sampleServers reads every watched server process.
func (r *runner) sampleServers() []procStat {
	s := make([]procStat, len(r.cfg.PIDs))
	for i, pid := range r.cfg.PIDs {
		s[i] = readProc(pid)
	}
	return s
}

func (r *runner) serverStats(before, from, to []procStat, wall time.Duration) {
	for i, pid := range r.cfg.PIDs {
		st := ServerStats{PID: pid, RSSStart: before[i].rss, RSSEnd: to[i].rss}
		if wall > 0 && from[i].ok && to[i].ok {
			st.CPU = float64(to[i].cpu-from[i].cpu) / float64(wall)
		}
		r.res.Servers = append(r.res.Servers, st)
	}
}

// progress prints a line every second until ctx ends.
func (r *runner) progress(ctx context.Context, line func() string) {
	if r.cfg.Progress == nil {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			fmt.Fprintf(r.cfg.Progress, "%6.1fs %-10s %s\n", time.Since(r.start).Seconds(), r.phase.Load(), line())
		}
	}
}

// dialAll runs open for clients 0..n-1, DialConcurrency at a time, and
// returns the first error.
func (r *runner) dialAll(ctx context.Context, n int, open func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, r.cfg.DialConcurrency)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := open(ctx, i); err != nil {
				once.Do(func() { first = fmt.Errorf("client %d: %w", i, err); cancel() })
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}
