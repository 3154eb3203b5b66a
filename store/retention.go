package store

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Retention deletes old messages: those older than MaxAge and those more
// than MaxMessages seqs below their room's head, unless the room's
// retention_max_age / retention_max_messages columns say otherwise (0
// there keeps everything by that measure). Events count as seqs. Seqs are
// never reused: the rooms' heads do not move, and a join with since below
// a room's oldest kept seq replays from it with recovered false.
//
// Every instance runs one; each batch takes an advisory lock, so one
// instance deletes at a time. Batches are small and lock no room row, so
// appends carry on meanwhile.
//
// Set the fields before calling Run and do not change them after.
type Retention struct {
	DB          *DB
	MaxAge      time.Duration // 0: no age limit
	MaxMessages int64         // 0: no count limit
	Interval    time.Duration // between rounds; default 1m
	Batch       int           // rows per transaction; default 1000
	// Rest is the pause after each batch that deleted rows, as a multiple
	// of the time the batch took: default 7, so that a large backlog (the
	// first round after retention is turned on) is deleted working at
	// most an eighth of the time, as the Indexer does, rather than
	// slowing appends; negative: no pause.
	Rest int
	Log  *slog.Logger // nil discards
	// OnRound, if set, gets the rows a round deleted and the age of the
	// oldest message left (0 if none).
	OnRound func(deleted int64, oldest time.Duration)
}

// Run applies retention every Interval until ctx is cancelled.
func (r *Retention) Run(ctx context.Context) {
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rest := r.Rest
	if rest == 0 {
		rest = 7
	}
	tick := time.NewTicker(cmpDefault(r.Interval, time.Minute))
	defer tick.Stop()
	for {
		deleted, err := r.DB.ApplyRetention(ctx, r.MaxAge, r.MaxMessages, cmpInt(r.Batch, 1000), rest)
		if err != nil && ctx.Err() == nil {
			log.Warn("retention", "err", err, "deleted", deleted)
		}
		if r.OnRound != nil && ctx.Err() == nil {
			oldest, err := r.DB.OldestAge(ctx)
			if err != nil {
				log.Warn("retention: oldest message", "err", err)
			}
			r.OnRound(deleted, oldest)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// ApplyRetention runs one round: it deletes the messages older than their
// room's age limit, oldest first across rooms, then for every room with a
// count limit the seqs below its floor, oldest first, batch rows per
// transaction, pausing rest times as long as each batch took after it
// (rest <= 0: no pause). It stops early, without error, when another
// instance holds the lock or ctx is done.
//
// Age goes by time across rooms, not room by room, because a table page
// holds the messages of every room that was busy when it was written:
// deleting one room's oldest rows at a time touches every old page once
// per room, and each first touch after a checkpoint writes a full page
// image to the WAL that appends share (docs/performance.md, "Retention").
func (db *DB) ApplyRetention(ctx context.Context, maxAge time.Duration, maxMessages int64, batch, rest int) (deleted int64, err error) {
	rows, err := db.pool.Query(ctx, `
		select name,
		       case when coalesce(retention_max_messages, $2) > 0 then last_seq - coalesce(retention_max_messages, $2) else 0 end,
		       case when coalesce(retention_max_age, $1) > interval '0' then now() - coalesce(retention_max_age, $1) end
		from rooms
		where coalesce(retention_max_messages, $2) > 0 or coalesce(retention_max_age, $1) > interval '0'
		order by name`, pgInterval(maxAge), maxMessages)
	if err != nil {
		return 0, fmt.Errorf("retention: rooms: %w", err)
	}
	type policy struct {
		room   string
		floor  int64      // seqs up to it go
		cutoff *time.Time // messages before it go
	}
	policies, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (policy, error) {
		var p policy
		return p, row.Scan(&p.room, &p.floor, &p.cutoff)
	})
	if err != nil {
		return 0, fmt.Errorf("retention: rooms: %w", err)
	}
	var (
		aged    []string
		cutoffs []time.Time
		latest  time.Time
	)
	for _, p := range policies {
		if p.cutoff != nil {
			aged, cutoffs = append(aged, p.room), append(cutoffs, *p.cutoff)
			if p.cutoff.After(latest) {
				latest = *p.cutoff
			}
		}
	}
	// pause waits rest times as long as since start, unless ctx is done.
	pause := func(start time.Time) bool {
		if rest <= 0 {
			return ctx.Err() == nil
		}
		t := time.NewTimer(time.Duration(rest) * time.Since(start))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for from := (time.Time{}); len(aged) > 0; {
		start := time.Now()
		n, last, locked, err := db.deleteAged(ctx, aged, cutoffs, from, latest, batch)
		deleted += n
		if err != nil {
			return deleted, err
		}
		if !locked {
			return deleted, nil // another instance is at it
		}
		if n == 0 {
			break
		}
		if !pause(start) {
			return deleted, nil
		}
		from = last
	}
	for _, p := range policies {
		for p.floor > 0 {
			start := time.Now()
			n, locked, err := db.deleteBelow(ctx, p.room, p.floor, batch)
			deleted += n
			if err != nil {
				return deleted, err
			}
			if !locked {
				return deleted, nil
			}
			if n == 0 {
				break
			}
			if !pause(start) {
				return deleted, nil
			}
		}
	}
	return deleted, nil
}

// inRetentionBatch runs one batch of deletions in a transaction of its
// own, holding the retention lock (one instance at a time) and the search
// step lock shared (searchindex.go). It reports false, having done
// nothing, if another instance holds the retention lock.
func (db *DB) inRetentionBatch(ctx context.Context, batch func(pgx.Tx) error) (locked bool, err error) {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("retention: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := tx.QueryRow(ctx, `select pg_try_advisory_xact_lock(hashtext('pgchat retention'))`).Scan(&locked); err != nil || !locked {
		return false, err
	}
	if _, err := tx.Exec(ctx, `select pg_advisory_xact_lock_shared(`+searchStepLock+`)`); err != nil {
		return true, fmt.Errorf("retention: %w", err)
	}
	if err := batch(tx); err != nil {
		return true, err
	}
	if err := tx.Commit(ctx); err != nil {
		return true, fmt.Errorf("retention: commit: %w", err)
	}
	return true, nil
}

// deleteAged deletes the batch oldest messages, from from on, of the rooms
// in rooms created before their cutoff (cutoffs[i] is rooms[i]'s; latest is
// the latest of them), and returns when the newest of them was created:
// the next batch starts there.
func (db *DB) deleteAged(ctx context.Context, rooms []string, cutoffs []time.Time, from, latest time.Time, batch int) (deleted int64, last time.Time, locked bool, err error) {
	locked, err = db.inRetentionBatch(ctx, func(tx pgx.Tx) error {
		// The oldest first, through messages_created_at; a room's cutoff
		// is looked up in the arrays (null for a room without one: kept).
		var newest *time.Time
		err := tx.QueryRow(ctx, `
			with oldest as (
				select room, seq from messages
				where created_at >= $3 and created_at < $4
				  and created_at < ($2::timestamptz[])[array_position($1::text[], room)]
				order by created_at
				limit $5
			), gone as (
				delete from messages m
				using oldest o
				where m.room = o.room and m.seq = o.seq
				returning m.room, m.seq, m.created_at
			), unindexed as (
				delete from message_search s using gone where s.room = gone.room and s.seq = gone.seq
			)
			select count(*), max(created_at) from gone`,
			rooms, cutoffs, from, latest, batch).Scan(&deleted, &newest)
		if err != nil {
			return fmt.Errorf("retention: delete by age: %w", err)
		}
		if newest != nil {
			last = *newest
		}
		return nil
	})
	if err != nil || !locked {
		return 0, time.Time{}, locked, err
	}
	return deleted, last, true, nil
}

// deleteBelow deletes the room's seqs up to floor among its batch oldest
// rows.
func (db *DB) deleteBelow(ctx context.Context, room string, floor int64, batch int) (deleted int64, locked bool, err error) {
	locked, err = db.inRetentionBatch(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			with oldest as (
				select seq from messages where room = $1 order by seq limit $3
			), gone as (
				delete from messages m
				using oldest o
				where m.room = $1 and m.seq = o.seq and o.seq <= $2
				returning m.seq
			), unindexed as (
				delete from message_search s using gone where s.room = $1 and s.seq = gone.seq
			)
			select count(*) from gone`,
			room, floor, batch).Scan(&deleted)
		if err != nil {
			return fmt.Errorf("retention: delete from %q: %w", room, err)
		}
		return nil
	})
	if err != nil || !locked {
		return 0, locked, err
	}
	return deleted, true, nil
}

// OldestAge returns the age of the oldest stored message, 0 if there is
// none.
func (db *DB) OldestAge(ctx context.Context) (time.Duration, error) {
	var oldest *time.Time
	if err := db.pool.QueryRow(ctx, `select min(created_at) from messages`).Scan(&oldest); err != nil {
		return 0, fmt.Errorf("oldest message: %w", err)
	}
	if oldest == nil {
		return 0, nil
	}
	return time.Since(*oldest), nil
}

// pgInterval is d as an interval string.
func pgInterval(d time.Duration) string {
	return fmt.Sprintf("%d microseconds", d.Microseconds())
}
