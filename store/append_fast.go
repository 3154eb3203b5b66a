package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// errRefStored says a message of the batch repeats a ref stored before:
// the fast path cannot tell which seqs the others get.
var errRefStored = errors.New("a ref of the batch is stored already")

// appendFastSQL appends a batch whose seqs are assigned by the database in
// one statement: lock the rooms (in name order), stamp each room's time
// once its lock is granted, insert the messages at head + their position,
// move the heads and send the notifications, whose entries the database
// completes with the seq and the time. $1 rooms (sorted); per message $2
// room, $3 position in its room (from 1), $4 author, $5 body, $6 ref, $9
// notification tail (the entry after seq and ts) and $10 payload number;
// $7 instance, $8 per room the count of messages, $11 channel.
//
// The rooms stay locked from the grant to the commit, which follows in the
// same round trip: no client code runs while they are held.
const appendFastSQL = `
with locked as (
	select name, last_seq from rooms where name = any($1::text[]) order by name for update
), stamped as (
	select name, last_seq, clock_timestamp() as ts from locked
), ins as (
	insert into messages (room, seq, author, body, created_at, instance, ref)
	select u.room, s.last_seq + u.pos, u.author, u.body, s.ts, $7, nullif(u.ref, '')
	from unnest($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[]) as u (room, pos, author, body, ref)
	join stamped s on s.name = u.room
), heads as (
	update rooms set last_seq = s.last_seq + c.n
	from stamped s join unnest($1::text[], $8::int8[]) as c (name, n) on c.name = s.name
	where rooms.name = s.name
), payloads as (
	select '{"room":' || to_json(u.room)::text || ',"msgs":[' ||
		string_agg('{"seq":' || (s.last_seq + u.pos) || ',"ts":"' ||
			to_char(s.ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"' || u.tail, ',' order by u.pos) ||
		']}' as payload, u.chunk
	from unnest($2::text[], $3::int8[], $9::text[], $10::int4[]) as u (room, pos, tail, chunk)
	join stamped s on s.name = u.room
	group by u.room, u.chunk
), notified as (
	select count(pg_notify($11, p.payload)) as n
	from (select payload from payloads order by chunk) p
)
select s.name, s.last_seq, s.ts, (select n from notified),
	-- every room must be locked, or the transaction fails before its commit
	1 / (select (count(*) = cardinality($1::text[]))::int from stamped)
from stamped s`

// appendFast appends msgs, none of which repeats a ref stored before, in
// one round trip on conn, which is outside a transaction. Repeats within
// msgs are stored once, as Append does. It returns errRefStored, with
// the transaction failed and still open, if a ref was stored before.
func (db *DB) appendFast(ctx context.Context, conn *pgx.Conn, msgs []NewMessage, rooms []string) ([]Result, error) {
	results := make([]Result, len(msgs))
	first := make(map[refKey]int) // a ref's first message in msgs
	counts := make(map[string]int64, len(rooms))
	var (
		roomCol, authors, bodies, refs []string
		positions                      []int64
		fresh                          []int // index in msgs of each row
	)
	for i, m := range msgs {
		if m.Ref != "" {
			key := refKey{m.Room, m.Author, m.Ref}
			if j, ok := first[key]; ok {
				results[i].Seq = int64(-1 - j) // resolved below
				continue
			}
			first[key] = i
		}
		counts[m.Room]++
		results[i].Seq = counts[m.Room] // position until the heads are known
		roomCol, authors, bodies, refs = append(roomCol, m.Room), append(authors, m.Author), append(bodies, m.Body), append(refs, m.Ref)
		positions = append(positions, counts[m.Room])
		fresh = append(fresh, i)
	}
	tails, chunks := notificationTails(msgs, fresh, db.instance)
	roomCounts := make([]int64, len(rooms))
	for i, r := range rooms {
		roomCounts[i] = counts[r]
	}

	b := &pgx.Batch{}
	b.Queue("begin")
	b.Queue(createRoomsSQL, rooms)
	b.Queue(appendFastSQL, rooms, roomCol, positions, authors, bodies, refs, db.instance, roomCounts, tails, chunks, Channel)
	b.Queue("commit")
	br := conn.SendBatch(ctx, b)
	heads := make(map[string]int64, len(rooms))
	times := make(map[string]time.Time, len(rooms))
	err := func() error {
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		var (
			name     string
			head     int64
			ts       time.Time
			notified int64
			guard    int
		)
		if _, err := pgx.ForEachRow(rows, []any{&name, &head, &ts, &notified, &guard}, func() error {
			heads[name], times[name] = head, ts
			return nil
		}); err != nil {
			return err
		}
		if _, err := br.Exec(); err != nil { // commit
			return err
		}
		return br.Close()
	}()
	if err != nil {
		br.Close()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "messages_room_author_ref" {
			return nil, errRefStored
		}
		return nil, fmt.Errorf("append: %w", err)
	}
	for i, m := range msgs {
		if results[i].Seq < 0 {
			continue
		}
		results[i].Message = Message{
			Room: m.Room, Seq: heads[m.Room] + results[i].Seq, Author: m.Author, Body: m.Body,
			Time: times[m.Room], Instance: db.instance, Ref: m.Ref,
		}
	}
	for i := range results {
		if j := results[i].Seq; j < 0 {
			results[i] = Result{Message: results[-1-j].Message, Duplicate: true}
		}
	}
	return results, nil
}

// Sizes of what the database adds to a notification entry: {"seq":N,"ts":"…"
// with N up to 19 digits and the time in microseconds, UTC.
const entryHeadBytes = len(`{"seq":`) + 19 + len(`,"ts":"`) + len("2006-01-02T15:04:05.000000Z") + 1

// notificationTails returns, for the messages msgs[fresh[k]], the end of
// each one's notification entry (after seq and ts) and the payload it goes
// in, numbered in room and then input order. It packs payloads as
// EncodeNotifications does, counting the database's part of each entry at
// its largest, so that no payload passes the NOTIFY size limit; a message
// too big for one is a stub.
func notificationTails(msgs []NewMessage, fresh []int, instance string) ([]string, []int32) {
	tails := make([]string, len(fresh))
	chunks := make([]int32, len(fresh))
	// Payloads are per room: visit the rooms in order, each room's
	// messages in input order.
	order := make([]int, len(fresh))
	for k := range order {
		order[k] = k
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(msgs[fresh[a]].Room, msgs[fresh[b]].Room) })
	var (
		chunk   int32 = -1
		room    string
		used    int
		entries int
	)
	for _, k := range order {
		m := msgs[fresh[k]]
		tail := encodeTail(notifiedMessage{Author: m.Author, Body: m.Body, Instance: instance})
		if !fitsAlone(m.Room, entryHeadBytes+len(tail)) {
			tail = `,"stub":true}`
		}
		size := entryHeadBytes + len(tail)
		if entries == 0 || m.Room != room || !fitsAfter(used, size) {
			chunk++
			room, used, entries = m.Room, payloadHead(m.Room), 0
		}
		used += size + 1
		entries++
		tails[k], chunks[k] = tail, chunk
	}
	return tails, chunks
}

// encodeTail is e's JSON without its opening brace, led by a comma: what
// follows seq and ts in the entry. Seq and Time are left out.
func encodeTail(e notifiedMessage) string {
	b, _ := json.Marshal(struct {
		Author   string `json:"author,omitempty"`
		Body     string `json:"body,omitempty"`
		Instance string `json:"instance,omitempty"`
	}{e.Author, e.Body, e.Instance})
	if len(b) <= 2 {
		return "}"
	}
	return "," + string(b[1:])
}
