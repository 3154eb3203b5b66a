package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Kinds of events. An event is a row of messages in the room's seq stream,
// like a plain message, about the plain message Target.
const (
	KindEdit    = "edit"    // Body is the new text
	KindDelete  = "delete"  // the target's text is removed from every table
	KindReact   = "react"   // adds (Author, Emoji) to the target's reactions
	KindUnreact = "unreact" // removes it
)

// Errors of ApplyEvent.
var (
	ErrNotFound  = errors.New("not found")       // no such room, or the target is not a plain message of the room
	ErrForbidden = errors.New("forbidden")       // not the author (and, for a delete, not a moderator)
	ErrGone      = errors.New("message deleted") // the target was deleted
)

// Event is a change to a message, to apply with ApplyEvent.
type Event struct {
	Room   string
	Author string
	Kind   string // KindEdit, KindDelete, KindReact or KindUnreact
	Target int64
	Body   string // KindEdit: the new text
	Emoji  string // KindReact, KindUnreact
	Ref    string // optional; a repeated (Room, Author, Ref) is applied once
	// Moderator lets Author delete anyone's message.
	Moderator bool
}

// EventResult is the outcome of ApplyEvent.
type EventResult struct {
	Result
	// Noop is true when the event changed nothing and was not stored: a
	// react that was there already (Seq is the react that added it) or an
	// unreact of a reaction that was not (Seq is the room's head).
	Noop bool
}

// streamColumns are the columns scanStreamed reads: a message or event as
// the stream carries it.
const streamColumns = `room, seq, author, body, created_at, instance, coalesce(ref, ''), ` +
	`coalesce(kind, ''), coalesce(target, 0), coalesce(emoji, ''), edited_at, deleted_at is not null`

// eventColumns are the event and state columns of alias, as eventScan
// reads them.
func eventColumns(alias string) string {
	a := alias + "."
	return "coalesce(" + a + "kind, ''), coalesce(" + a + "target, 0), coalesce(" + a + "emoji, ''), " +
		a + "edited_at, coalesce(" + a + "deleted_at is not null, false)"
}

// eventScan receives eventColumns.
type eventScan struct {
	kind, emoji string
	target      int64
	edited      *time.Time
	deleted     bool
}

func (s *eventScan) fields() []any {
	return []any{&s.kind, &s.target, &s.emoji, &s.edited, &s.deleted}
}

func (s *eventScan) apply(m *Message) {
	m.Kind, m.Target, m.Emoji, m.Deleted = s.kind, s.target, s.emoji, s.deleted
	if s.edited != nil {
		m.Edited = *s.edited
	}
}

func scanStreamed(row pgx.CollectableRow) (Message, error) {
	var (
		m  Message
		es eventScan
	)
	err := row.Scan(append([]any{&m.Room, &m.Seq, &m.Author, &m.Body, &m.Time, &m.Instance, &m.Ref}, es.fields()...)...)
	es.apply(&m)
	return m, err
}

// ApplyEvent stores e as the room's next event and applies it to its
// target, in one transaction that also notifies Channel, as Append does:
// the room's row is locked, so the event's seq follows every earlier
// message's without a gap and notifications keep commit order. The
// target's row is locked too, so that retention cannot delete it halfway.
//
// A (Room, Author, Ref) stored before, by a send or an event, is not applied
// again: the result is the stored one with Duplicate set. Errors are
// ErrNotFound, ErrForbidden and ErrGone, or the database's.
//
// What each kind does to the target:
//   - edit: the text it replaces goes to message_versions; body becomes
//     the new text, edited_at the event's time.
//   - delete: body is emptied, as are the bodies of its edits, its
//     versions, reactions and search entry are deleted; deleted_at is set.
//   - react, unreact: a row of reactions is added or removed.
func (db *DB) ApplyEvent(ctx context.Context, e Event) (res EventResult, err error) {
	switch e.Kind {
	case KindEdit, KindDelete, KindReact, KindUnreact:
	default:
		return EventResult{}, fmt.Errorf("event: unknown kind %q", e.Kind)
	}
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return EventResult{}, fmt.Errorf("event: acquire connection: %w", err)
	}
	defer conn.Release()
	defer func() {
		if err != nil && !conn.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_, _ = conn.Exec(rctx, "rollback")
		}
	}()

	// Round trip 1: lock the room, then look up the ref, the target (locked)
	// and the reaction. The lookups run after the lock is granted, so they
	// see every earlier change to the room.
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(`select last_seq, clock_timestamp() from rooms where name = $1 for update`, e.Room)
	b.Queue(`select `+streamColumns+` from messages where room = $1 and author = $2 and ref = $3`, e.Room, e.Author, e.Ref)
	b.Queue(`select author, kind is null, deleted_at is not null from messages where room = $1 and seq = $2 for update`, e.Room, e.Target)
	b.Queue(`select seq from reactions where room = $1 and target = $2 and author = $3 and emoji = $4`, e.Room, e.Target, e.Author, e.Emoji)
	var (
		head, reactSeq     int64
		now                time.Time
		roomFound          bool
		prev               []Message
		targetAuthor       string
		plain, deleted     bool
		targetFound, found bool
	)
	br := conn.SendBatch(ctx, b)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		var err error
		if roomFound, err = scanOne(br.QueryRow().Scan(&head, &now)); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if prev, err = pgx.CollectRows(rows, scanStreamed); err != nil {
			return err
		}
		if targetFound, err = scanOne(br.QueryRow().Scan(&targetAuthor, &plain, &deleted)); err != nil {
			return err
		}
		if found, err = scanOne(br.QueryRow().Scan(&reactSeq)); err != nil {
			return err
		}
		return br.Close()
	}()
	if err != nil {
		br.Close()
		return EventResult{}, fmt.Errorf("event: lock room: %w", err)
	}
	done := func(r EventResult) (EventResult, error) {
		if _, err := conn.Exec(ctx, "commit"); err != nil {
			return EventResult{}, fmt.Errorf("event: commit: %w", err)
		}
		return r, nil
	}
	switch {
	case !roomFound:
		err = ErrNotFound
	case e.Ref != "" && len(prev) > 0:
		return done(EventResult{Result: Result{Message: prev[0], Duplicate: true}})
	case !targetFound || !plain:
		err = ErrNotFound
	case deleted:
		err = ErrGone
	case e.Kind == KindEdit && targetAuthor != e.Author,
		e.Kind == KindDelete && targetAuthor != e.Author && !e.Moderator:
		err = ErrForbidden
	case e.Kind == KindReact && found:
		return done(EventResult{Result: Result{Message: Message{Room: e.Room, Seq: reactSeq}}, Noop: true})
	case e.Kind == KindUnreact && !found:
		return done(EventResult{Result: Result{Message: Message{Room: e.Room, Seq: head}}, Noop: true})
	}
	if err != nil {
		return EventResult{}, err
	}

	// Round trip 2: store the event, apply it, move the head, notify, commit.
	ev := Message{
		Room: e.Room, Seq: head + 1, Author: e.Author, Time: now, Instance: db.instance, Ref: e.Ref,
		Kind: e.Kind, Target: e.Target, Emoji: e.Emoji,
	}
	if e.Kind == KindEdit {
		ev.Body = e.Body
	}
	b = &pgx.Batch{}
	b.Queue(`
		insert into messages (room, seq, author, body, created_at, instance, ref, kind, target, emoji)
		values ($1, $2, $3, $4, $5, $6, nullif($7, ''), $8, $9, nullif($10, ''))`,
		ev.Room, ev.Seq, ev.Author, ev.Body, ev.Time, ev.Instance, ev.Ref, ev.Kind, ev.Target, ev.Emoji)
	switch e.Kind {
	case KindEdit:
		b.Queue(`select pg_advisory_xact_lock_shared(` + searchStepLock + `)`) // searchindex.go
		b.Queue(`
			insert into message_versions (room, seq, replaced_by, body, created_at)
			select room, seq, $3, body, coalesce(edited_at, created_at) from messages where room = $1 and seq = $2`,
			e.Room, e.Target, ev.Seq)
		b.Queue(`update messages set body = $3, edited_at = $4 where room = $1 and seq = $2`, e.Room, e.Target, e.Body, now)
		b.Queue(`update message_search set tsv = to_tsvector(`+db.regconfig()+`, $3) where room = $1 and seq = $2`, e.Room, e.Target, e.Body)
	case KindDelete:
		b.Queue(`select pg_advisory_xact_lock_shared(` + searchStepLock + `)`)
		b.Queue(`update messages set body = '', deleted_at = $3 where room = $1 and seq = $2`, e.Room, e.Target, now)
		b.Queue(`update messages set body = '' where room = $1 and target = $2 and kind = 'edit' and body <> ''`, e.Room, e.Target)
		b.Queue(`delete from message_versions where room = $1 and seq = $2`, e.Room, e.Target)
		b.Queue(`delete from reactions where room = $1 and target = $2`, e.Room, e.Target)
		b.Queue(`delete from message_search where room = $1 and seq = $2`, e.Room, e.Target)
	case KindReact:
		b.Queue(`insert into reactions (room, target, author, emoji, seq, created_at) values ($1, $2, $3, $4, $5, $6)`,
			e.Room, e.Target, e.Author, e.Emoji, ev.Seq, now)
	case KindUnreact:
		b.Queue(`delete from reactions where room = $1 and target = $2 and author = $3 and emoji = $4`,
			e.Room, e.Target, e.Author, e.Emoji)
	}
	b.Queue(`update rooms set last_seq = $2 where name = $1`, e.Room, ev.Seq)
	b.Queue(`select pg_notify($1, p) from unnest($2::text[]) p`, Channel, EncodeNotifications([]Message{ev}))
	b.Queue("commit")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return EventResult{}, fmt.Errorf("event: store and commit: %w", err)
	}
	return EventResult{Result: Result{Message: ev}}, nil
}

// scanOne turns a QueryRow's Scan error into found.
func scanOne(err error) (found bool, _ error) {
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// Page is a page of a room's history in its current state.
type Page struct {
	Exists   bool      // the room exists
	Head     int64     // the seq of the room's newest message or event
	Oldest   int64     // the lowest seq still stored (retention); 0 if none
	Messages []Message // plain messages, oldest first, with their reactions
}

// History returns the room's plain messages with seq < before (before <= 0:
// the newest), at most limit of them, in their current state: edited text
// and time, deleted ones without a body, reactions counted. Events are not
// listed: they are what made the state. Everything comes from one
// snapshot, so the page is exactly the state at Head.
func (db *DB) History(ctx context.Context, room string, before int64, limit int) (Page, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := db.pool.Query(ctx, `
		select r.last_seq, coalesce((select min(seq) from messages where room = r.name), 0),
			m.room, m.seq, m.author, m.body, m.created_at, m.instance, coalesce(m.ref, ''),
			`+eventColumns("m")+`, m.reactions
		from rooms r
		left join lateral (
			select msg.*, (
				select '{' || string_agg(to_json(emoji)::text || ':' || n, ',' order by first) || '}'
				from (
					select emoji, count(*) as n, min(seq) as first
					from reactions x
					where x.room = msg.room and x.target = msg.seq
					group by emoji
				) g
			) as reactions
			from messages msg
			where msg.room = r.name and msg.kind is null and msg.seq < $2
			order by msg.seq desc
			limit $3
		) m on true
		where r.name = $1
		order by m.seq`, room, before, limit)
	if err != nil {
		return Page{}, fmt.Errorf("history of %q: %w", room, err)
	}
	defer rows.Close()
	var p Page
	for rows.Next() {
		// A room without messages before `before` yields one row of NULLs.
		var (
			seq                           *int64
			mroom, author, body, instance *string
			ts                            *time.Time
			ref                           string
			es                            eventScan
			reactions                     *string
		)
		dest := append([]any{&p.Head, &p.Oldest, &mroom, &seq, &author, &body, &ts, &instance, &ref}, es.fields()...)
		if err := rows.Scan(append(dest, &reactions)...); err != nil {
			return Page{}, fmt.Errorf("history of %q: %w", room, err)
		}
		p.Exists = true
		if seq == nil {
			continue
		}
		m := Message{Room: *mroom, Seq: *seq, Author: *author, Body: *body, Time: *ts, Instance: *instance, Ref: ref}
		es.apply(&m)
		if reactions != nil {
			m.Reactions = *reactions
		}
		p.Messages = append(p.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("history of %q: %w", room, err)
	}
	return p, nil
}
