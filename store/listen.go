package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener holds one LISTEN connection on Channel for the whole instance and
// hands every notification to OnNotify. Notifications sent while it is
// disconnected are lost, so after every (re)connect, once LISTEN is live, it
// calls OnListen: that is when the consumer catches up from the table.
//
// Set the fields before calling Listen and do not change them after.
type Listener struct {
	// Connect opens a connection for the Listener's exclusive use; the
	// Listener closes it. It must be a direct session (LISTEN does not work
	// through a transaction-mode pooler).
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// OnListen is called after each successful LISTEN, before any
	// notification is handed on. It should not block for long.
	OnListen func(ctx context.Context)
	// OnNotify gets each payload, in the order PostgreSQL delivers them
	// (commit order). It must not block.
	OnNotify func(payload string)
	// Log gets connection lifecycle events. Nil discards them.
	Log *slog.Logger
	// Channel is the channel to LISTEN on; default Channel.
	Channel string
	// ReconnectDelay is the base of the exponential backoff (with full
	// jitter) between attempts; default 250ms, capped at 8 times it: one
	// connection per instance is cheap to retry, and an instance is not
	// ready until it is back.
	ReconnectDelay time.Duration
	// PingInterval is how long the connection may stay silent before it is
	// pinged; a failed ping means it is dead. Default 15s.
	PingInterval time.Duration
	// StallTimeout is how long after an Expect the listener waits for a
	// notification before it deems the connection stalled (alive, but not
	// receiving) and reconnects, which resyncs through OnListen.
	// Default 10s.
	StallTimeout time.Duration

	connected  atomic.Bool
	lastNotify atomic.Int64 // UnixNano of the last notification received
	awaiting   atomic.Int64 // UnixNano of the oldest Expect not answered; 0: none
	listenedAt atomic.Int64 // UnixNano of the current LISTEN
}

// Expect tells the listener that a transaction that began at start sent a
// notification on Channel and committed, so one at least that recent must
// arrive. If none does within StallTimeout, the connection is reconnected.
func (l *Listener) Expect(start time.Time) {
	s := start.UnixNano()
	if s <= l.lastNotify.Load() || s < l.listenedAt.Load() {
		return // answered already, or sent before this LISTEN (OnListen's resync reads it)
	}
	l.awaiting.CompareAndSwap(0, s)
}

// received records a notification.
func (l *Listener) received() {
	now := time.Now().UnixNano()
	l.lastNotify.Store(now)
	if a := l.awaiting.Load(); a != 0 && a <= now {
		l.awaiting.CompareAndSwap(a, 0)
	}
}

// stalled reports whether an Expect has gone unanswered for longer than
// timeout.
func (l *Listener) stalled(timeout time.Duration) (time.Duration, bool) {
	a := l.awaiting.Load()
	if a == 0 {
		return 0, false
	}
	waited := time.Duration(time.Now().UnixNano() - a)
	return waited, waited > timeout
}

// Connected reports whether LISTEN is live right now.
func (l *Listener) Connected() bool { return l.connected.Load() }

// Listen listens and reconnects until ctx is cancelled, then returns nil.
func (l *Listener) Listen(ctx context.Context) error {
	log := l.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := cmpDefault(l.ReconnectDelay, 250*time.Millisecond)
	for attempt := 0; ; attempt++ {
		start := time.Now()
		err := l.listen(ctx, log, attempt > 0)
		l.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > time.Minute {
			attempt = 0 // it was healthy for a while: start the backoff over
		}
		delay := time.Duration(rand.Int64N(int64(min(base<<min(attempt, 16), 8*base)) + 1))
		log.Warn("listener disconnected", "err", err, "retry_in", delay.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func (l *Listener) listen(ctx context.Context, log *slog.Logger, reconnect bool) error {
	conn, err := l.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = conn.Exec(lctx, "listen "+pgx.Identifier{cmp.Or(l.Channel, Channel)}.Sanitize())
	cancel()
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	l.listenedAt.Store(time.Now().UnixNano())
	l.awaiting.Store(0) // what was awaited is read by OnListen's resync
	l.connected.Store(true)
	if reconnect {
		log.Info("listener reconnected, catching up")
	} else {
		log.Info("listener connected")
	}
	if l.OnListen != nil {
		l.OnListen(ctx)
	}
	interval := cmpDefault(l.PingInterval, 15*time.Second)
	stall := cmpDefault(l.StallTimeout, 10*time.Second)
	silentSince := time.Now()
	for {
		wctx, cancel := context.WithTimeout(ctx, min(interval, stall/4))
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			l.received()
			silentSince = time.Now()
			l.OnNotify(n.Payload)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if waited, ok := l.stalled(stall); ok {
				return fmt.Errorf("stalled: no notification %s after a commit of this instance notified", waited.Round(time.Millisecond))
			}
			if time.Since(silentSince) < interval {
				continue
			}
			silentSince = time.Now()
			// Silence: make sure the server is still there.
			pctx, cancel := context.WithTimeout(ctx, interval)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
		default:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}

func cmpDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
