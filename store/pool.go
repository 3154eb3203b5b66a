package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PoolOptions are the connection budgets and safety limits of OpenWith.
// Zero values pick the defaults in parentheses.
type PoolOptions struct {
	// MaxConns bounds the pool that serves reads: joins, catch-ups,
	// history, head checks (10). Appends have a pool of their own, so a
	// burst of reads never keeps the batcher from a connection.
	MaxConns int
	// Pooled says the URL goes through a transaction-mode pooler
	// (PgBouncer, Supavisor): its queries then use pgx's QueryExecModeExec
	// (no named prepared statements, which the pooler would hand to
	// another client's server connection) unless the URL picks
	// default_query_exec_mode itself, and no session settings are made.
	Pooled bool
	// ConnectTimeout bounds each dial and handshake, unless the URL sets
	// connect_timeout (5s).
	ConnectTimeout time.Duration
	// StatementTimeout is set as statement_timeout on session connections
	// (not Pooled: a SET would leak to other clients of the pooler), a
	// server-side bound for a query whose client context cannot reach the
	// server (10s). Every query also runs under a context deadline.
	StatementTimeout time.Duration
	// WriteURL, if set, is a direct (session) URL for the append pool,
	// which then keeps prepared statements even when Pooled: appends are
	// the hot path (docs/performance.md), and 2 direct connections per
	// instance are a small price.
	WriteURL string
}

func (o *PoolOptions) setDefaults() {
	if o.MaxConns <= 0 {
		o.MaxConns = 10
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = 10 * time.Second
	}
}

// writerConns is the size of the append pool: the batcher's connection and
// one spare, for /readyz's ping.
const writerConns = 2

// OpenWith is Open with connection budgets: a pool of opts.MaxConns
// connections for reads and one of 2 for appends (the batcher) and pings.
func OpenWith(ctx context.Context, url, instance string, opts PoolOptions) (*DB, error) {
	opts.setDefaults()
	readers, err := newPool(ctx, url, "pgchat "+instance, opts, opts.MaxConns)
	if err != nil {
		return nil, err
	}
	wopts, wurl := opts, url
	if opts.WriteURL != "" {
		wopts.Pooled, wurl = false, opts.WriteURL
	}
	writers, err := newPool(ctx, wurl, "pgchat "+instance+" writer", wopts, writerConns)
	if err != nil {
		readers.Close()
		return nil, err
	}
	return &DB{pool: readers, writer: writers, instance: instance}, nil
}

func newPool(ctx context.Context, url, name string, opts PoolOptions, size int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.MaxConns = int32(size)
	cfg.MinConns = 0
	configureConn(cfg.ConnConfig, url, name, opts)
	if !opts.Pooled {
		timeout := fmt.Sprintf("set statement_timeout = %d", opts.StatementTimeout.Milliseconds())
		cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, timeout)
			return err
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return pool, nil
}

// configureConn applies what every pgchat connection gets: its name in
// pg_stat_activity, a dial timeout, and the pooler-safe query mode when
// pooled.
func configureConn(cfg *pgx.ConnConfig, url, name string, opts PoolOptions) {
	setApplicationName(cfg, name)
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = opts.ConnectTimeout
	}
	if opts.Pooled && !strings.Contains(url, "default_query_exec_mode") {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
}

// QueryExecMode reports the query mode of db's connections, for logs.
func (db *DB) QueryExecMode() pgx.QueryExecMode {
	return db.pool.Config().ConnConfig.DefaultQueryExecMode
}

// ConnectWith is Connect with a dial timeout and, on a session connection,
// a statement_timeout (see PoolOptions).
func ConnectWith(ctx context.Context, url, name string, opts PoolOptions) (*pgx.Conn, error) {
	opts.setDefaults()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	configureConn(cfg, url, "pgchat "+name, opts)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if !opts.Pooled {
		if _, err := conn.Exec(ctx, fmt.Sprintf("set statement_timeout = %d", opts.StatementTimeout.Milliseconds())); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("set statement_timeout: %w", err)
		}
	}
	return conn, nil
}
