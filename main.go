// Command pgchat is a real-time chat server that scales out: every instance
// writes each message to PostgreSQL and uses LISTEN/NOTIFY as the bus
// between instances. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
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
	"github.com/jackc/pgx/v5/pgconn"

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

func runServe(ctx context.Context, args, environ []string, _, stderr io.Writer) error {
	if help, err := noFlags("serve", args, stderr, `Usage: pgchat serve

Runs one instance: applies pending migrations, then serves /ws, the page,
the history API, /healthz, /readyz and /metrics on HOST:PORT until SIGTERM
or SIGINT, which start a graceful drain. Configured by the environment only:
pgchat help lists every variable.
`); help || err != nil {
		return err
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr).With("instance", cfg.InstanceID)
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("listen on HOST %q, PORT %d: %w", cfg.Host, cfg.Port, err)
	}
	return serve(ctx, cfg, log, ln)
}

// noFlags parses the arguments of a command that takes none: -h prints
// usage (help is then true, and nothing else must happen).
func noFlags(name string, args []string, stderr io.Writer, usage string) (help bool, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, err
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("%s: unexpected argument %q (configuration is in the environment: pgchat help)", name, fs.Arg(0))
	}
	return false, nil
}

func runMigrate(ctx context.Context, args, environ []string, _, stderr io.Writer) error {
	if help, err := noFlags("migrate", args, stderr, `Usage: pgchat migrate

Applies the pending database migrations through LISTEN_DATABASE_URL (else
DATABASE_URL) and exits; serve does the same at start-up. Safe to run while
older instances serve: migrations are additive.
`); help || err != nil {
		return err
	}
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
	if err := waitForDatabase(ctx, cfg, cfg.listenVar(), cfg.ListenDatabaseURL, log); err != nil {
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

// waitForDatabase retries until the database at url answers or
// DB_CONNECT_TIMEOUT passes. A permanent error (a URL that does not parse,
// authentication failed, no such database or role) ends it at once: only
// "can't reach" is worth retrying. Errors name the variable (name).
func waitForDatabase(ctx context.Context, cfg Config, name, url string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := store.ConnectWith(actx, url, cfg.InstanceID, store.PoolOptions{Pooled: cfg.pooled && name == "DATABASE_URL"})
		if err == nil {
			err = conn.Ping(actx)
			conn.Close(actx)
		}
		acancel()
		if err == nil {
			return nil
		}
		if reason, ok := permanentDBError(err); ok {
			return fmt.Errorf("%s: %s: %w", name, reason, err)
		}
		log.Warn("database not reachable, retrying", "var", name, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: database not reachable after %s (DB_CONNECT_TIMEOUT): %w", name, cfg.ConnectTimeout, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// httpIdleTimeout closes plain HTTP keep-alive connections idle that long.
const httpIdleTimeout = 60 * time.Second

// permanentDBError says whether err, from connecting, will not go away by
// retrying, and why.
func permanentDBError(err error) (reason string, ok bool) {
	var perr *pgconn.ParseConfigError
	if errors.As(err, &perr) {
		return "not a valid PostgreSQL URL", true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return "", false
	}
	switch {
	case pgErr.Code == "28P01" || pgErr.Code == "28000":
		return "authentication failed (user, password or pg_hba.conf)", true
	case pgErr.Code == "3D000":
		return "no such database", true
	case pgErr.Code == "42501":
		return "permission denied", true
	case strings.HasPrefix(pgErr.Code, "08") && strings.Contains(pgErr.Message, "does not exist"):
		return "rejected by the pooler", true // PgBouncer: no such database or user in its config
	}
	return "", false
}

// writeURL is where appends go: with a transaction-mode pooler in
// DATABASE_URL, the direct LISTEN_DATABASE_URL, so that the hot path keeps
// prepared statements (docs/performance.md); else DATABASE_URL ("").
func writeURL(cfg Config) string {
	if cfg.pooled {
		return cfg.ListenDatabaseURL
	}
	return ""
}

// listenVar names the variable LISTEN_DATABASE_URL's value came from.
func (cfg Config) listenVar() string {
	if cfg.pooled {
		return "LISTEN_DATABASE_URL"
	}
	return "DATABASE_URL"
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
	if cfg.pooled { // migrate checked LISTEN_DATABASE_URL; this one is used too
		if err := waitForDatabase(ctx, cfg, "DATABASE_URL", cfg.DatabaseURL, log); err != nil {
			return err
		}
	}
	db, err := store.OpenWith(ctx, cfg.DatabaseURL, cfg.InstanceID, store.PoolOptions{
		MaxConns:         cfg.DBPoolSize,
		Pooled:           cfg.pooled,
		StatementTimeout: cfg.WriteTimeout,
		WriteURL:         writeURL(cfg),
	})
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer db.Close() // last
	log.Info("database pool", "read_conns", cfg.DBPoolSize, "query_mode", db.QueryExecMode().String(), "pooler", cfg.pooled)
	if err := checkSearchConfig(ctx, db, cfg, log); err != nil { // search.go
		return err
	}

	m := newMetrics()
	var listener *store.Listener
	onCommit := func(size, fresh int, took time.Duration, err error) {
		m.commit(size, fresh, took, err)
		if err == nil && fresh > 0 {
			listener.Expect(time.Now().Add(-took)) // its notification must come back
		}
	}
	batcher := store.NewBatcher(db, store.BatcherOptions{MaxBatch: cfg.BatchSize, Timeout: cfg.WriteTimeout, Log: log, OnCommit: onCommit, OnStart: m.batchStarted})
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
		MaxCatchUps:     max(1, cfg.DBPoolSize/2),
		MaxHistoryReads: max(1, cfg.DBPoolSize/4),
		Log:             log,
		Metrics:         m,

		PresenceInterval:  cfg.PresenceInterval,
		PresenceTimeout:   cfg.PresenceTimeout,
		PresenceListLimit: cfg.PresenceListLimit,
	})
	listener = &store.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return store.ConnectWith(ctx, cfg.ListenDatabaseURL, cfg.InstanceID+" listener", store.PoolOptions{StatementTimeout: cfg.WriteTimeout})
		},
		OnListen: m.listening(hub.Resync),
		OnNotify: hub.Deliver,
		Log:      log,
	}
	queue := newQueueHealth(m, log)
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
		ReadyNote:      queue.note,
		AllowedOrigins: cfg.AllowedOrigins,
		AuthSecret:     []byte(cfg.AuthSecret),
		Limits:         limits(cfg),
		OnAppend:       m.commit,
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
	hooks, err := newWebhooks(ctx, cfg, log, m)
	if err != nil {
		return err
	}
	defer hooks.close()
	// Plain HTTP (history, metrics, the page) is bounded: a request within
	// HANDSHAKE_TIMEOUT, its answer within WRITE_TIMEOUT, an idle
	// keep-alive connection for httpIdleTimeout. WebSockets clear these
	// deadlines when they take the connection over (wsconn).
	srv := &http.Server{
		Handler:           m.handler(handler),
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		ReadTimeout:       cfg.HandshakeTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}

	// The background loops outlive ctx: they stop in the shutdown order below.
	bg := context.WithoutCancel(ctx)
	batchCtx, stopBatcher := context.WithCancel(bg)
	loopCtx, stopLoops := context.WithCancel(bg)
	var batcherDone, loops sync.WaitGroup
	batcherDone.Go(func() { batcher.Run(batchCtx) })
	loops.Go(func() { listener.Listen(loopCtx) })
	loops.Go(func() { presenceListener.Listen(loopCtx) })
	loops.Go(func() { hub.Run(loopCtx) })
	loops.Go(func() { queue.run(loopCtx, db) })
	indexer := &store.Indexer{DB: db, Log: log}
	loops.Go(func() { indexer.Run(loopCtx) }) // search.go
	retention := newRetention(db, cfg, m)
	retention.Log = log
	loops.Go(func() { retention.Run(loopCtx) }) // retention.go
	loops.Go(func() { hooks.run(loopCtx) })
	if cfg.PprofAddr != "" {
		loops.Go(func() {
			if err := servePprof(loopCtx, cfg.PprofAddr, log); err != nil {
				log.Warn("profiling off", "err", err)
			}
		})
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "auth", authMode(cfg))

	select {
	case <-ctx.Done():
		err = nil
	case err = <-serveErr:
		err = fmt.Errorf("http server: %w", err)
	}
	// /readyz answers 503 and new sockets get 503 for DRAIN_DELAY, while
	// the port stays open: load balancers see the 503 and take the
	// instance out before the port goes.
	hub.Drain()
	if err == nil && cfg.DrainDelay > 0 {
		log.Info("draining: /readyz answers 503", "drain_delay", cfg.DrainDelay)
		select {
		case <-time.After(cfg.DrainDelay):
		case serr := <-serveErr:
			err = fmt.Errorf("http server: %w", serr)
		}
	}
	log.Info("draining", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(bg, cfg.ShutdownTimeout)
	defer cancel()
	// The WebSockets get their 1001 and their sends answered while plain
	// HTTP shuts down beside them: a slow history client must not use up
	// SHUTDOWN_TIMEOUT before the WebSockets are even told.
	var closing sync.WaitGroup
	closing.Go(func() {
		if serr := srv.Shutdown(sctx); serr != nil {
			log.Warn("http shutdown", "err", serr)
		}
	})
	if herr := hub.Close(sctx); herr != nil {
		log.Warn("closing connections", "err", herr)
	}
	closing.Wait()
	stopBatcher()
	batcherDone.Wait()
	stopLoops()
	loops.Wait()
	log.Info("stopped")
	return err
}
