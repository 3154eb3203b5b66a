package store

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Indexer fills message_search, the full-text index, off the append path:
// a GIN index maintained by every append made durable ingest much slower
// (docs/performance.md), so appends only store messages and the Indexer
// adds their tsvectors shortly after, in batches. Every instance runs one;
// an advisory lock lets one of them work at a time. It works at
// most an eighth of the time: under a sustained load the index lags (a
// message is found once it is indexed) rather than slowing appends.
//
// Set the fields before calling Run and do not change them after.
type Indexer struct {
	DB *DB
	// Interval is the pause once everything is indexed; default 1s.
	Interval time.Duration
	// PerRoom and Rooms bound one step: messages per room and rooms;
	// defaults 1000 and 100.
	PerRoom, Rooms int
	// Log gets failed steps. Nil discards them.
	Log *slog.Logger
}

// Run indexes until ctx is cancelled.
func (ix *Indexer) Run(ctx context.Context) {
	log := ix.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := cmpDefault(ix.Interval, time.Second)
	for {
		start := time.Now()
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, more, err := ix.DB.IndexSearch(sctx, cmpInt(ix.PerRoom, 1000), cmpInt(ix.Rooms, 100))
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Warn("search indexer", "err", err)
		}
		// Leave the database seven eighths of the time, behind or not, so
		// that indexing slows ingest by little; a backlog (a burst, an
		// upgrade's backfill) is caught up later.
		pause := 7 * time.Since(start)
		if !more || err != nil {
			pause = max(pause, interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// IndexSearch indexes up to perRoom new messages in each of up to rooms
// rooms, in one transaction, unless another instance is doing it. It
// returns how many messages it indexed and whether there is more to do.
//
// Edits, deletes and retention change message_search themselves; they take
// the lock searchStepLock shared, and a step takes it exclusively before it
// reads the messages: a step sees every change committed before it, and a
// change waits for the step, so the index never keeps text that was edited
// away or deleted. (Row locks would do too, but they write WAL for every
// message indexed.)
func (db *DB) IndexSearch(ctx context.Context, perRoom, rooms int) (indexed int64, more bool, err error) {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("index search: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var mine bool
	if err := tx.QueryRow(ctx, `select pg_try_advisory_xact_lock(hashtext('pgchat search indexer'))`).Scan(&mine); err != nil {
		return 0, false, fmt.Errorf("index search: lock: %w", err)
	}
	if !mine {
		return 0, false, nil
	}
	if _, err := tx.Exec(ctx, `select pg_advisory_xact_lock(`+searchStepLock+`)`); err != nil {
		return 0, false, fmt.Errorf("index search: lock: %w", err)
	}
	var busy int64
	err = tx.QueryRow(ctx, `
		with todo as (
			select r.name, coalesce(p.seq, 0) as done, least(r.last_seq, coalesce(p.seq, 0) + $1) as upto
			from rooms r
			left join search_progress p on p.room = r.name
			where r.last_seq > coalesce(p.seq, 0)
			order by r.name
			limit $2
		), ins as (
			insert into message_search (room, seq, tsv)
			select m.room, m.seq, to_tsvector(`+db.regconfig()+`, m.body)
			from todo
			join messages m on m.room = todo.name and m.seq > todo.done and m.seq <= todo.upto
			where m.kind is null and m.deleted_at is null
			on conflict do nothing
			returning 1
		), prog as (
			insert into search_progress (room, seq)
			select name, upto from todo
			on conflict (room) do update set seq = excluded.seq
		)
		select (select count(*) from ins), (select count(*) from todo where upto - done = $1), (select count(*) from todo)`,
		perRoom, rooms).Scan(&indexed, &busy, new(int64))
	if err != nil {
		return 0, false, fmt.Errorf("index search: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, false, fmt.Errorf("index search: commit: %w", err)
	}
	return indexed, busy > 0, nil
}

// searchStepLock is the advisory lock between an indexing step and the
// changes to message_search made elsewhere.
const searchStepLock = `hashtext('pgchat search step')`

func cmpInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}
