package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Append stores msgs in one transaction that also notifies Channel, and
// returns one Result per message, in order.
//
// Each room's row is locked (rooms in name order, so concurrent appends never
// deadlock) and its last_seq bumped in the same transaction, so seqs are
// assigned in commit order without gaps. A message whose (Room, Author, Ref)
// is already stored, or repeated within msgs, is not stored again: its
// Result is the stored message with Duplicate set.
//
// Batching matters: PostgreSQL holds a database-wide lock from a notifying
// transaction's commit until its WAL flush, so notifying commits run one at
// a time and many messages must share one.
func (db *DB) Append(ctx context.Context, msgs []NewMessage) (results []Result, err error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	conn, err := db.writes().Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("append: acquire connection: %w", err)
	}
	defer conn.Release() // the pool destroys a connection left inside a transaction
	defer func() {
		if err != nil && !conn.Conn().IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_, _ = conn.Exec(rctx, "rollback")
		}
	}()

	rooms := make([]string, 0, 1)
	for _, m := range msgs {
		rooms = append(rooms, m.Room)
	}
	slices.Sort(rooms)
	rooms = slices.Compact(rooms)

	// Most batches have no resent ref: append them in one round trip. A
	// ref stored before makes the fast path fail on the unique index, and
	// the batch is appended again the careful way.
	results, err = db.appendFast(ctx, conn.Conn(), msgs, rooms)
	switch {
	case err == nil:
		return results, nil
	case !errors.Is(err, errRefStored):
		return nil, err
	}
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		return nil, fmt.Errorf("append: roll back: %w", err)
	}

	// Round trip 1: begin, create missing rooms, lock the rooms, find refs
	// stored before. The ref lookup runs after the locks are granted, so it
	// sees every earlier append to these rooms.
	var keyRooms, keyAuthors, keyRefs []string
	for _, m := range msgs {
		if m.Ref != "" {
			keyRooms, keyAuthors, keyRefs = append(keyRooms, m.Room), append(keyAuthors, m.Author), append(keyRefs, m.Ref)
		}
	}
	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(createRoomsSQL, rooms)
	b.Queue(`select name, last_seq, clock_timestamp() from rooms where name = any($1) order by name for update`, rooms)
	if len(keyRefs) > 0 {
		b.Queue(`
			select m.room, m.seq, m.author, m.body, m.created_at, m.instance, m.ref
			from messages m
			join unnest($1::text[], $2::text[], $3::text[]) k (room, author, ref)
			  on m.room = k.room and m.author = k.author and m.ref = k.ref`,
			keyRooms, keyAuthors, keyRefs)
	}
	br := conn.SendBatch(ctx, b)
	heads := make(map[string]int64, len(rooms))
	times := make(map[string]time.Time, len(rooms))
	stored := make(map[refKey]Message)
	err = func() error {
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		var (
			name string
			head int64
			ts   time.Time
		)
		rows, err := br.Query()
		if err != nil {
			return err
		}
		if _, err := pgx.ForEachRow(rows, []any{&name, &head, &ts}, func() error {
			heads[name], times[name] = head, ts
			return nil
		}); err != nil {
			return err
		}
		if len(keyRefs) > 0 {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			prev, err := pgx.CollectRows(rows, scanMessage)
			if err != nil {
				return err
			}
			for _, m := range prev {
				stored[refKey{m.Room, m.Author, m.Ref}] = m
			}
		}
		return br.Close()
	}()
	if err != nil {
		br.Close()
		return nil, fmt.Errorf("append: lock rooms: %w", err)
	}

	// Assign seqs in input order per room; repeats of a ref resolve to the
	// stored (or earlier in this batch) message.
	results = make([]Result, len(msgs))
	var fresh []Message
	for i, m := range msgs {
		key := refKey{m.Room, m.Author, m.Ref}
		if m.Ref != "" {
			if prev, ok := stored[key]; ok {
				results[i] = Result{Message: prev, Duplicate: true}
				continue
			}
		}
		heads[m.Room]++
		msg := Message{
			Room: m.Room, Seq: heads[m.Room], Author: m.Author, Body: m.Body,
			Time: times[m.Room], Instance: db.instance, Ref: m.Ref,
		}
		results[i] = Result{Message: msg}
		fresh = append(fresh, msg)
		if m.Ref != "" {
			stored[key] = msg
		}
	}

	// Round trip 2: insert, move the heads, notify, commit.
	if len(fresh) == 0 {
		if _, err := conn.Exec(ctx, "commit"); err != nil {
			return nil, fmt.Errorf("append: commit: %w", err)
		}
		return results, nil
	}
	cols := messageColumns(fresh)
	headRooms := make([]string, 0, len(heads))
	headSeqs := make([]int64, 0, len(heads))
	for room, seq := range heads {
		headRooms, headSeqs = append(headRooms, room), append(headSeqs, seq)
	}
	b = &pgx.Batch{}
	b.Queue(`
		insert into messages (room, seq, author, body, created_at, instance, ref)
		select room, seq, author, body, created_at, $6, nullif(ref, '')
		from unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[], $7::text[])
		  as u (room, seq, author, body, created_at, ref)`,
		cols.rooms, cols.seqs, cols.authors, cols.bodies, cols.times, db.instance, cols.refs)
	b.Queue(`update rooms set last_seq = h.seq from unnest($1::text[], $2::int8[]) h (name, seq) where rooms.name = h.name`,
		headRooms, headSeqs)
	b.Queue(`select pg_notify($1, p) from unnest($2::text[]) p`, Channel, EncodeNotifications(fresh))
	b.Queue("commit")
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("append: insert and commit: %w", err)
	}
	return results, nil
}

// createRoomsSQL creates the rooms $1 that do not exist yet.
const createRoomsSQL = `insert into rooms (name) select unnest($1::text[]) on conflict do nothing`

type refKey struct{ room, author, ref string }

type columns struct {
	rooms, authors, bodies, refs []string
	seqs                         []int64
	times                        []time.Time
}

func messageColumns(msgs []Message) columns {
	slices.SortFunc(msgs, func(a, b Message) int {
		return cmp.Or(cmp.Compare(a.Room, b.Room), cmp.Compare(a.Seq, b.Seq))
	})
	var c columns
	for _, m := range msgs {
		c.rooms = append(c.rooms, m.Room)
		c.seqs = append(c.seqs, m.Seq)
		c.authors = append(c.authors, m.Author)
		c.bodies = append(c.bodies, m.Body)
		c.times = append(c.times, m.Time)
		c.refs = append(c.refs, m.Ref)
	}
	return c
}
