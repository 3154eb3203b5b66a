// Command pgchat is a real-time chat server that scales out: every instance
// writes each message to PostgreSQL and uses LISTEN/NOTIFY as the bus
// between instances. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/chat"
	"github.com/pgchat/pgchat/migrations"
	"github.com/pgchat/pgchat/store"
)

func main() {
	// Fly's default kill signal is SIGINT, compose and Kubernetes send
	// SIGTERM: both start a graceful shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr); err != nil {
		// One line, even for the multi-line errors pgx returns.
		fmt.Fprintln(os.Stderr, "pgchat:", strings.Join(strings.Fields(err.Error()), " "))
		os.Exit(1)
	}
}

// command is one pgchat subcommand. args are those after its name.
type command struct {
	summary string
	run     func(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error
}

// commands lists the subcommands, for run and for help.
var commands = map[string]command{
	"serve":   {"run an instance (the default)", runServe},
	"migrate": {"apply database migrations and exit", runMigrate},
	"cluster": {"run N instances behind HAProxy on this machine, no Docker", runCluster},
	"tail":    {"print a room's messages as they come (resilient client)", runTail},
	"send":    {"send one message and wait for its ack", runSend},
	"bench":   {"load-test running instances (docs/performance.md)", runBench},
	"token":   {"print an access token signed with AUTH_SECRET", runToken},
}

// run executes one pgchat command.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	switch name {
	case "help", "-h", "-help", "--help":
		printHelp(stdout)
		return nil
	}
	cmd, ok := commands[name]
	if !ok {
		return fmt.Errorf("unknown command %q: run pgchat help", name)
	}
	return cmd.run(ctx, args, environ, stdout, stderr)
}

func runServe(ctx context.Context, _, environ []string, _, stderr io.Writer) error {
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr).With("instance", cfg.InstanceID)
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("listen on PORT %d: %w", cfg.Port, err)
	}
	return serve(ctx, cfg, log, ln)
}

func runMigrate(ctx context.Context, _, environ []string, _, stderr io.Writer) error {
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	return migrate(ctx, cfg, newLogger(cfg, stderr).With("instance", cfg.InstanceID))
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func migrate(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := waitForDatabase(ctx, cfg, log); err != nil {
		return err
	}
	// Through the direct URL: tern's advisory lock is a session lock, which
	// a transaction-mode pooler would not keep.
	version, err := store.Migrate(ctx, cfg.ListenDatabaseURL, migrations.FS)
	if err != nil {
		return err
	}
	log.Info("database migrated", "version", version)
	return nil
}

// waitForDatabase retries until the database answers or DB_CONNECT_TIMEOUT
// passes.
func waitForDatabase(ctx context.Context, cfg Config, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := store.Connect(actx, cfg.ListenDatabaseURL, cfg.InstanceID)
		if err == nil {
			err = conn.Ping(actx)
			conn.Close(actx)
		}
		acancel()
		if err == nil {
			return nil
		}
		log.Warn("database not reachable, retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("database not reachable after %s (DB_CONNECT_TIMEOUT): %w", cfg.ConnectTimeout, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// serve runs one instance on ln until ctx is cancelled, then shuts down in
// order: /readyz turns 503, no new connections, sends already received are
// answered, every WebSocket is closed with 1001, then the listener and the
// pool close.
func serve(ctx context.Context, cfg Config, log *slog.Logger, ln net.Listener) error {
	defer ln.Close()
	if err := migrate(ctx, cfg, log); err != nil {
		return err
	}
	db, err := store.Open(ctx, cfg.DatabaseURL, cfg.InstanceID)
	if err != nil {
		return err
	}
	defer db.Close() // last

	m := newMetrics()
	batcher := store.NewBatcher(db, store.BatcherOptions{MaxBatch: cfg.BatchSize, Timeout: cfg.WriteTimeout, Log: log, OnCommit: m.commit})
	hub := chat.NewHub(db, batcher, chat.Options{
		Instance:        cfg.InstanceID,
		MaxMessageBytes: cfg.MaxMessageBytes,
		HistoryLimit:    cfg.HistoryLimit,
		ReplayLimit:     cfg.ReplayLimit,
		PingInterval:    cfg.PingInterval,
		WriteTimeout:    cfg.WriteTimeout,
		SendBuffer:      cfg.SendBuffer,
		RateLimit:       cfg.RateLimit,
		RateBurst:       cfg.RateBurst,
		MaxRooms:        cfg.MaxRooms,
		MaxInflight:     cfg.MaxInflight,
		SyncInterval:    cfg.SyncInterval,
		Log:             log,
		Metrics:         m,

		PresenceInterval:  cfg.PresenceInterval,
		PresenceTimeout:   cfg.PresenceTimeout,
		PresenceListLimit: cfg.PresenceListLimit,
	})
	listener := &store.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return store.Connect(ctx, cfg.ListenDatabaseURL, cfg.InstanceID+" listener")
		},
		OnListen: m.listening(hub.Resync),
		OnNotify: hub.Deliver,
		Log:      log,
	}
	// Presence, typing and read receipts have a channel and a listener of
	// their own (docs/presence.md).
	presenceListener := &store.Listener{
		Channel: store.PresenceChannel,
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return store.Connect(ctx, cfg.ListenDatabaseURL, cfg.InstanceID+" presence")
		},
		OnListen: hub.ReloadPresence,
		OnNotify: hub.DeliverPresence,
		Log:      log.With("listener", "presence"),
	}
	handler := chat.NewHandler(hub, chat.HandlerOptions{
		AllowedOrigins: cfg.AllowedOrigins,
		AuthSecret:     []byte(cfg.AuthSecret),
		Limits:         limits(cfg),
		Ready: func(ctx context.Context) error {
			if !listener.Connected() {
				return errors.New("listener not connected")
			}
			if !presenceListener.Connected() {
				return errors.New("presence listener not connected")
			}
			return db.Ping(ctx)
		},
	})
	srv := &http.Server{Handler: m.handler(handler), ReadHeaderTimeout: cfg.HandshakeTimeout, MaxHeaderBytes: maxHeaderBytes}

	// The background loops outlive ctx: they stop in the shutdown order below.
	bg := context.WithoutCancel(ctx)
	batchCtx, stopBatcher := context.WithCancel(bg)
	loopCtx, stopLoops := context.WithCancel(bg)
	var batcherDone, loops sync.WaitGroup
	batcherDone.Go(func() { batcher.Run(batchCtx) })
	loops.Go(func() { listener.Listen(loopCtx) })
	loops.Go(func() { presenceListener.Listen(loopCtx) })
	loops.Go(func() { hub.Run(loopCtx) })
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "auth", authMode(cfg))

	select {
	case <-ctx.Done():
		err = nil
	case err = <-serveErr:
		err = fmt.Errorf("http server: %w", err)
	}
	log.Info("draining", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(bg, cfg.ShutdownTimeout)
	defer cancel()
	hub.Drain()
	if serr := srv.Shutdown(sctx); serr != nil {
		log.Warn("http shutdown", "err", serr)
	}
	if herr := hub.Close(sctx); herr != nil {
		log.Warn("closing connections", "err", herr)
	}
	stopBatcher()
	batcherDone.Wait()
	stopLoops()
	loops.Wait()
	log.Info("stopped")
	return err
}
