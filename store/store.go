// Package store keeps pgchat's rooms and messages in PostgreSQL and carries
// new messages between instances with LISTEN/NOTIFY.
package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Channel is the NOTIFY channel every instance listens on.
const Channel = "pgchat_messages"

// Message is a stored chat message.
type Message struct {
	Room     string
	Seq      int64 // 1, 2, 3, ... per room, in commit order, without gaps
	Author   string
	Body     string
	Time     time.Time // when the database stored it
	Instance string    // INSTANCE_ID of the instance that accepted it
	Ref      string    // the sender's id for the send; empty if none

	// Events (store/events.go): Kind is empty on a plain message.
	Kind   string // KindEdit, KindDelete, KindReact or KindUnreact
	Target int64  // the seq of the message an event is about
	Emoji  string // of a react or unreact

	// A plain message's current state.
	Edited  time.Time // when it was last edited; zero if never
	Deleted bool      // deleted: Body is empty
	// Reactions counts the reactions, as a JSON object in first-reaction
	// order ({"👍":3,"🎉":1}); only History fills it, empty if none.
	Reactions string
}

// NewMessage is a message to append.
type NewMessage struct {
	Room   string
	Author string
	Body   string
	Ref    string // optional; a repeated (Room, Author, Ref) is stored once
}

// Result is the outcome of appending one NewMessage.
type Result struct {
	Message
	// Duplicate is true when the message had been stored before under the
	// same (Room, Author, Ref); Message is then the stored one.
	Duplicate bool
}

// DB is pgchat's database. It is safe for concurrent use.
type DB struct {
	pool     *pgxpool.Pool // reads
	writer   *pgxpool.Pool // appends and pings (OpenWith); nil: pool
	instance string
	search   string // text search configuration (search.go)
}

// Open returns a DB over a new pool for url; instance tags the messages it
// appends. Like pgxpool.New it does not wait for a connection: call Ping.
// The caller must Close the DB.
func Open(ctx context.Context, url, instance string) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	setApplicationName(cfg.ConnConfig, "pgchat "+instance)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return &DB{pool: pool, instance: instance, search: DefaultSearchConfig}, nil
}

// Connect opens a single connection for url, named "pgchat <name>" in
// pg_stat_activity unless the URL names it. The caller must close it.
func Connect(ctx context.Context, url, name string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	setApplicationName(cfg, "pgchat "+name)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// setApplicationName names connections so that operators can tell the
// instances apart in pg_stat_activity.
func setApplicationName(cfg *pgx.ConnConfig, name string) {
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = name
	}
}

// Close closes the pools, waiting for connections in use to be returned.
func (db *DB) Close() {
	db.pool.Close()
	if db.writer != nil {
		db.writer.Close()
	}
}

// writes is the pool appends use.
func (db *DB) writes() *pgxpool.Pool {
	if db.writer != nil {
		return db.writer
	}
	return db.pool
}

// Ping checks that the database answers through both pools. A read pool
// whose connections are all in use is not pinged: it is busy, not down,
// and a burst of reads must not make the instance look unready.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.writes().Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	if db.writer == nil {
		return nil
	}
	if st := db.pool.Stat(); st.AcquiredConns() >= st.MaxConns() {
		return nil
	}
	if err := db.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database (read pool): %w", err)
	}
	return nil
}

// Since returns up to limit messages of room with seq > after, oldest first.
func (db *DB) Since(ctx context.Context, room string, after int64, limit int) ([]Message, error) {
	rows, err := db.pool.Query(ctx, `
		select `+streamColumns+`
		from messages
		where room = $1 and seq > $2
		order by seq
		limit $3`, room, after, limit)
	if err != nil {
		return nil, fmt.Errorf("messages of %q since %d: %w", room, after, err)
	}
	msgs, err := pgx.CollectRows(rows, scanStreamed)
	if err != nil {
		return nil, fmt.Errorf("messages of %q since %d: %w", room, after, err)
	}
	return msgs, nil
}

// Recent returns the room's head (the seq of its newest message, 0 if it
// has none or does not exist) and its newest messages with seq > after, at
// most limit of them, oldest first. Both come from one snapshot, so the
// messages end at head when there are any.
func (db *DB) Recent(ctx context.Context, room string, after int64, limit int) (head int64, msgs []Message, err error) {
	rows, err := db.pool.Query(ctx, `
		select r.last_seq, m.room, m.seq, m.author, m.body, m.created_at, m.instance, coalesce(m.ref, ''),
			`+eventColumns("m")+`
		from rooms r
		left join lateral (
			select * from messages
			where room = r.name and seq > greatest($2, r.last_seq - $3)
			order by seq
		) m on true
		where r.name = $1
		order by m.seq`, room, after, limit)
	if err != nil {
		return 0, nil, fmt.Errorf("recent messages of %q: %w", room, err)
	}
	defer rows.Close()
	for rows.Next() {
		// A room without messages after `after` yields one row of NULLs.
		var (
			seq                           *int64
			mroom, author, body, instance *string
			ts                            *time.Time
			ref                           string
			es                            eventScan
		)
		if err := rows.Scan(append([]any{&head, &mroom, &seq, &author, &body, &ts, &instance, &ref}, es.fields()...)...); err != nil {
			return 0, nil, fmt.Errorf("recent messages of %q: %w", room, err)
		}
		if seq != nil {
			m := Message{Room: *mroom, Seq: *seq, Author: *author, Body: *body, Time: *ts, Instance: *instance, Ref: ref}
			es.apply(&m)
			msgs = append(msgs, m)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("recent messages of %q: %w", room, err)
	}
	return head, msgs, nil
}

// Heads returns the head seq of each named room that exists.
func (db *DB) Heads(ctx context.Context, rooms []string) (map[string]int64, error) {
	rows, err := db.pool.Query(ctx, `select name, last_seq from rooms where name = any($1)`, rooms)
	if err != nil {
		return nil, fmt.Errorf("room heads: %w", err)
	}
	heads := make(map[string]int64, len(rooms))
	var (
		name string
		seq  int64
	)
	_, err = pgx.ForEachRow(rows, []any{&name, &seq}, func() error {
		heads[name] = seq
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("room heads: %w", err)
	}
	return heads, nil
}

func scanMessage(row pgx.CollectableRow) (Message, error) {
	var m Message
	err := row.Scan(&m.Room, &m.Seq, &m.Author, &m.Body, &m.Time, &m.Instance, &m.Ref)
	return m, err
}
