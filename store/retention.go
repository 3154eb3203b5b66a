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
	Log         *slog.Logger  // nil discards
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
	tick := time.NewTicker(cmpDefault(r.Interval, time.Minute))
	defer tick.Stop()
	for {
		deleted, err := r.DB.ApplyRetention(ctx, r.MaxAge, r.MaxMessages, cmpInt(r.Batch, 1000))
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

// ApplyRetention runs one round: for every room a limit applies to, it
// deletes its expired messages, oldest first, batch rows per transaction.
// It stops early, without error, when another instance holds the lock.
func (db *DB) ApplyRetention(ctx context.Context, maxAge time.Duration, maxMessages int64, batch int) (deleted int64, err error) {
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
	for _, p := range policies {
		for {
			n, locked, err := db.deleteExpired(ctx, p.room, p.floor, p.cutoff, batch)
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
		}
	}
	return deleted, nil
}

// deleteExpired deletes the expired ones among the room's batch oldest
// rows. Seqs and times grow together in a room, so once the oldest rows
// are not expired, none is.
func (db *DB) deleteExpired(ctx context.Context, room string, floor int64, cutoff *time.Time, batch int) (deleted int64, locked bool, err error) {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("retention: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := tx.QueryRow(ctx, `select pg_try_advisory_xact_lock(hashtext('pgchat retention'))`).Scan(&locked); err != nil || !locked {
		return 0, false, err
	}
	if _, err := tx.Exec(ctx, `select pg_advisory_xact_lock_shared(`+searchStepLock+`)`); err != nil {
		return 0, true, fmt.Errorf("retention: %w", err)
	}
	var n int64
	err = tx.QueryRow(ctx, `
		with oldest as (
			select seq, created_at from messages where room = $1 order by seq limit $4
		), gone as (
			delete from messages m
			using oldest o
			where m.room = $1 and m.seq = o.seq and (o.seq <= $2 or o.created_at < $3)
			returning m.seq
		)
		, unindexed as (
			delete from message_search s using gone where s.room = $1 and s.seq = gone.seq
		)
		select count(*) from gone`,
		room, floor, cutoff, batch).Scan(&n)
	if err != nil {
		return 0, true, fmt.Errorf("retention: delete from %q: %w", room, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, true, fmt.Errorf("retention: commit: %w", err)
	}
	return n, true, nil
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
