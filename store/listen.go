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
	// jitter) between attempts; default 250ms, capped at 30 times it.
	ReconnectDelay time.Duration
	// PingInterval is how long the connection may stay silent before it is
	// pinged; a failed ping means it is dead. Default 15s.
	PingInterval time.Duration

	connected atomic.Bool
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
		delay := time.Duration(rand.Int64N(int64(min(base<<min(attempt, 16), 30*base)) + 1))
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
	if _, err := conn.Exec(ctx, "listen "+pgx.Identifier{cmp.Or(l.Channel, Channel)}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
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
	for {
		wctx, cancel := context.WithTimeout(ctx, interval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			l.OnNotify(n.Payload)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
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
