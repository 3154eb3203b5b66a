package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// PresenceChannel carries presence changes, typing and read receipts
// between instances. It is apart from Channel so that message delivery
// never decodes them, and its notifications are sent in transactions of
// their own, never in a message append's.
const PresenceChannel = "pgchat_presence"

// PresenceChange is one session's net change in one room: authors that
// became present there and authors that stopped being present.
type PresenceChange struct {
	Room   string   `json:"r"`
	Joins  []string `json:"j,omitempty"`
	Leaves []string `json:"l,omitempty"`
}

// Typing is one typing event.
type Typing struct {
	Room   string `json:"r"`
	Author string `json:"a"`
}

// ReadCursor is how far an author has read a room.
type ReadCursor struct {
	Room   string    `json:"r"`
	Author string    `json:"a"`
	Seq    int64     `json:"q"`
	Time   time.Time `json:"-"`
}

// PresenceNotification is one decoded payload of PresenceChannel, sent by
// Session. Exactly one of its parts is set.
type PresenceNotification struct {
	Session string          `json:"s"`
	Gone    bool            `json:"g,omitempty"` // the session ended: none of its members are present any more
	Change  *PresenceChange `json:"p,omitempty"`
	Typing  []Typing        `json:"t,omitempty"`
	Reads   []ReadCursor    `json:"e,omitempty"`
}

// DecodePresence parses a PresenceChannel payload.
func DecodePresence(payload string) (PresenceNotification, error) {
	var n PresenceNotification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		return n, fmt.Errorf("decode presence notification: %w", err)
	}
	if n.Session == "" {
		return n, fmt.Errorf("decode presence notification: no session in %.64q", payload)
	}
	return n, nil
}

// encodePresence packs items into payloads under the NOTIFY size limit,
// each made by wrap from a run of items.
func encodePresence[T any](items []T, wrap func([]T) PresenceNotification) []string {
	var payloads []string
	for len(items) > 0 {
		n := len(items)
		for {
			b, _ := json.Marshal(wrap(items[:n]))
			if len(b) <= maxPayload || n == 1 {
				payloads = append(payloads, string(b))
				break
			}
			n = max(1, n*maxPayload/len(b)*9/10)
		}
		items = items[n:]
	}
	return payloads
}

// EncodePresenceChanges returns the payloads announcing session's changes.
// A room with many joins or leaves takes several payloads.
func EncodePresenceChanges(session string, changes []PresenceChange) []string {
	type entry struct {
		author string
		join   bool
	}
	var payloads []string
	for _, ch := range changes {
		entries := make([]entry, 0, len(ch.Joins)+len(ch.Leaves))
		for _, a := range ch.Joins {
			entries = append(entries, entry{a, true})
		}
		for _, a := range ch.Leaves {
			entries = append(entries, entry{a, false})
		}
		payloads = append(payloads, encodePresence(entries, func(es []entry) PresenceNotification {
			c := &PresenceChange{Room: ch.Room}
			for _, e := range es {
				if e.join {
					c.Joins = append(c.Joins, e.author)
				} else {
					c.Leaves = append(c.Leaves, e.author)
				}
			}
			return PresenceNotification{Session: session, Change: c}
		})...)
	}
	return payloads
}

// PresenceSession is one running instance process as presence knows it.
type PresenceSession struct {
	ID       string // unique per process
	Instance string // INSTANCE_ID
}

// Heartbeat records that session is alive, (re)creating its row if it was
// missing, and removes the sessions not seen for timeout, with their
// presence rows, announcing each on PresenceChannel. It reports whether the
// session's row had to be created: then the other instances may have
// dropped its members, and the caller must announce them all again. Every
// instance runs it, so a dead one is swept by the survivors.
func (db *DB) Heartbeat(ctx context.Context, s PresenceSession, timeout time.Duration) (created bool, swept []string, err error) {
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(`update presence_sessions set seen_at = now() where session = $1`, s.ID)
	b.Queue(`insert into presence_sessions (session, instance) values ($1, $2) on conflict do nothing`, s.ID, s.Instance)
	b.Queue(`
		with gone as (
			delete from presence_sessions
			where seen_at < now() - make_interval(secs => $1) and session <> $2
			returning session
		)
		select session, pg_notify($3, json_build_object('s', session, 'g', true)::text) from gone`,
		timeout.Seconds(), s.ID, PresenceChannel)
	b.Queue("commit")
	br := db.pool.SendBatch(ctx, b)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if _, err := br.Exec(); err != nil {
			return err
		}
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		created = tag.RowsAffected() == 1
		rows, err := br.Query()
		if err != nil {
			return err
		}
		var id, ignored string
		_, err = pgx.ForEachRow(rows, []any{&id, &ignored}, func() error {
			swept = append(swept, id)
			return nil
		})
		if err != nil {
			return err
		}
		_, err = br.Exec()
		return err
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, nil, fmt.Errorf("presence heartbeat: %w", err)
	}
	return created, swept, nil
}

// PublishPresence stores session's presence changes and announces them on
// PresenceChannel in one transaction. It fails if the session's row is
// gone (swept): the next Heartbeat recreates it.
func (db *DB) PublishPresence(ctx context.Context, session string, changes []PresenceChange) error {
	var joinRooms, joinAuthors, leaveRooms, leaveAuthors []string
	for _, c := range changes {
		for _, a := range c.Joins {
			joinRooms, joinAuthors = append(joinRooms, c.Room), append(joinAuthors, a)
		}
		for _, a := range c.Leaves {
			leaveRooms, leaveAuthors = append(leaveRooms, c.Room), append(leaveAuthors, a)
		}
	}
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(`
		delete from presence p using unnest($2::text[], $3::text[]) u (room, author)
		where p.session = $1 and p.room = u.room and p.author = u.author`,
		session, leaveRooms, leaveAuthors)
	b.Queue(`
		insert into presence (session, room, author)
		select $1, room, author from unnest($2::text[], $3::text[]) u (room, author)
		on conflict do nothing`,
		session, joinRooms, joinAuthors)
	b.Queue(`select pg_notify($1, p) from unnest($2::text[]) p`, PresenceChannel, EncodePresenceChanges(session, changes))
	b.Queue("commit")
	if err := db.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("publish presence: %w", err)
	}
	return nil
}

// EndSession deletes session and its presence rows and announces it gone:
// an instance's last word when it shuts down.
func (db *DB) EndSession(ctx context.Context, session string) error {
	_, err := db.pool.Exec(ctx, `
		with gone as (delete from presence_sessions where session = $1 returning session)
		select pg_notify($2, json_build_object('s', session, 'g', true)::text) from gone`,
		session, PresenceChannel)
	if err != nil {
		return fmt.Errorf("end presence session: %w", err)
	}
	return nil
}

// PresenceRow is one (session, room, author) present.
type PresenceRow struct {
	Session, Room, Author string
}

// LoadPresence returns every presence row of the live sessions.
func (db *DB) LoadPresence(ctx context.Context) ([]PresenceRow, error) {
	rows, err := db.pool.Query(ctx, `select session, room, author from presence`)
	if err != nil {
		return nil, fmt.Errorf("load presence: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PresenceRow, error) {
		var r PresenceRow
		err := row.Scan(&r.Session, &r.Room, &r.Author)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("load presence: %w", err)
	}
	return out, nil
}

// NotifyTyping announces typing events on PresenceChannel. It writes no
// row: the transaction holds only the notification, so its commit record
// is all it adds to the WAL, and it does not wait for the WAL flush
// (docs/performance.md, "Typing").
func (db *DB) NotifyTyping(ctx context.Context, session string, events []Typing) error {
	payloads := encodePresence(events, func(ts []Typing) PresenceNotification {
		return PresenceNotification{Session: session, Typing: ts}
	})
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue("set local synchronous_commit = off")
	b.Queue(`select pg_notify($1, p) from unnest($2::text[]) p`, PresenceChannel, payloads)
	b.Queue("commit")
	if err := db.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("notify typing: %w", err)
	}
	return nil
}

// WriteReads moves read cursors forward, each clamped to its room's head,
// and announces those that moved on PresenceChannel, in one transaction.
// A cursor at or below the stored one, or for a room that does not exist,
// changes nothing. It returns the cursors that moved, as stored.
func (db *DB) WriteReads(ctx context.Context, session string, reads []ReadCursor) ([]ReadCursor, error) {
	rooms := make([]string, len(reads))
	authors := make([]string, len(reads))
	seqs := make([]int64, len(reads))
	for i, r := range reads {
		rooms[i], authors[i], seqs[i] = r.Room, r.Author, r.Seq
	}
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("write reads: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `
		insert into reads as r (room, author, seq)
		select u.room, u.author, least(u.seq, rooms.last_seq)
		from unnest($1::text[], $2::text[], $3::int8[]) u (room, author, seq)
		join rooms on rooms.name = u.room
		where least(u.seq, rooms.last_seq) > 0
		order by u.room, u.author
		on conflict (room, author) do update set seq = excluded.seq, updated_at = now()
		where r.seq < excluded.seq
		returning room, author, seq, updated_at`,
		rooms, authors, seqs)
	if err != nil {
		return nil, fmt.Errorf("write reads: %w", err)
	}
	moved, err := pgx.CollectRows(rows, scanRead)
	if err != nil {
		return nil, fmt.Errorf("write reads: %w", err)
	}
	if len(moved) > 0 {
		payloads := encodePresence(moved, func(rs []ReadCursor) PresenceNotification {
			return PresenceNotification{Session: session, Reads: rs}
		})
		if _, err := tx.Exec(ctx, `select pg_notify($1, p) from unnest($2::text[]) p`, PresenceChannel, payloads); err != nil {
			return nil, fmt.Errorf("write reads: notify: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("write reads: commit: %w", err)
	}
	return moved, nil
}

// ReadState returns author's read cursor in room (at least atLeast, at
// most head) and how many messages after it, up to head, others wrote,
// counted up to maxUnread.
func (db *DB) ReadState(ctx context.Context, room, author string, atLeast, head int64, maxUnread int) (read, unread int64, err error) {
	err = db.pool.QueryRow(ctx, `
		with c as (
			select least(greatest(coalesce((select seq from reads where room = $1 and author = $2), 0), $3), $4) as seq
		)
		select c.seq, (
			select count(*) from (
				select 1 from messages m
				where m.room = $1 and m.seq > c.seq and m.seq <= $4 and m.author <> $2
				limit $5
			) u
		)
		from c`, room, author, atLeast, head, maxUnread).Scan(&read, &unread)
	if err != nil {
		return 0, 0, fmt.Errorf("read state of %q in %q: %w", author, room, err)
	}
	return read, unread, nil
}

// Reads returns the room's read cursors by author, at most limit of them.
func (db *DB) Reads(ctx context.Context, room string, limit int) ([]ReadCursor, error) {
	rows, err := db.pool.Query(ctx, `
		select room, author, seq, updated_at from reads where room = $1 order by author limit $2`, room, limit)
	if err != nil {
		return nil, fmt.Errorf("reads of %q: %w", room, err)
	}
	reads, err := pgx.CollectRows(rows, scanRead)
	if err != nil {
		return nil, fmt.Errorf("reads of %q: %w", room, err)
	}
	return reads, nil
}

func scanRead(row pgx.CollectableRow) (ReadCursor, error) {
	var r ReadCursor
	err := row.Scan(&r.Room, &r.Author, &r.Seq, &r.Time)
	return r, err
}
