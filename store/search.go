package store

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultSearchConfig is the text search configuration used unless
// SEARCH_CONFIG says otherwise: language-neutral, no stemming, no stop words.
const DefaultSearchConfig = "simple"

var configName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// UseSearchConfig makes name, a text search configuration of the database
// (select cfgname from pg_ts_config lists them), the one Search and the
// Indexer use. Call it before the DB is used. The index holds tsvectors of
// one configuration: after changing it, empty message_search and
// search_progress so that the Indexer builds it again (README).
func (db *DB) UseSearchConfig(ctx context.Context, name string) error {
	if !configName.MatchString(name) {
		return fmt.Errorf("search config %q: want a name like simple or english", name)
	}
	var exists bool
	if err := db.pool.QueryRow(ctx, `select exists (select from pg_ts_config where cfgname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("search config %q: %w", name, err)
	}
	if !exists {
		return fmt.Errorf("search config %q does not exist in the database (see pg_ts_config)", name)
	}
	db.search = name
	return nil
}

// regconfig is the configuration as an SQL constant: its name was checked
// against configName.
func (db *DB) regconfig() string { return "'" + db.search + "'::regconfig" }

// Hit is a message found by Search.
type Hit struct {
	Message
	// Snippet is HTML: the message's text, escaped, shortened around the
	// matches, which are wrapped in <mark>…</mark>.
	Snippet string
}

// SearchQuery is a full-text search over some rooms.
type SearchQuery struct {
	Rooms  []string
	Text   string // websearch_to_tsquery syntax: words, "quoted phrases", -word, or
	Before int64  // only seqs below it (one room); <= 0: no bound
	Limit  int
}

// Search returns the plain messages of q.Rooms whose current text matches
// q.Text, newest first (by seq in one room, by time across rooms), at most
// q.Limit. Deleted messages are never found: their text is gone. A query
// without words (only operators, say) matches nothing. Messages are found
// once the Indexer has seen them, normally within a second.
func (db *DB) Search(ctx context.Context, q SearchQuery) ([]Hit, error) {
	if len(q.Rooms) != 1 {
		return db.searchRooms(ctx, q)
	}
	room := q.Rooms[0]
	hi := q.Before
	if hi <= 0 {
		heads, err := db.Heads(ctx, q.Rooms)
		if err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		hi = heads[room] + 1
	}
	// One room, newest first. The planner only knows how frequent the
	// words are in the whole table, not in this room or near its head, so
	// Search measures it: it walks the room's newest searchWindow seqs back
	// from hi (at most searchWindow rows; a common word stops after a few
	// dozen). If that is not enough, what the window found says how dense
	// the matches are: walking on would read about need×window/found rows,
	// finding every match below with the GIN index and sorting them costs
	// about found×rest/window heap fetches of this room's matches, plus
	// those of other rooms (counted as as many again), each some 20 times
	// a walked row: a factor of 40 (docs/performance.md, "Query latency on
	// 2,000,000 messages"). Dense matches are walked, for 3 times the rows
	// expected; sparse ones, and whatever the walk did not reach, are found
	// and sorted, so that a word common elsewhere but rare here never walks
	// the whole room.
	lo := max(0, hi-searchWindow)
	hits, err := db.searchFill(ctx, room, q.Text, lo, hi, q.Limit, true)
	if err != nil || len(hits) >= q.Limit || lo <= 0 {
		return hits, err
	}
	if found := int64(len(hits)); found > 0 {
		need := int64(q.Limit) - found
		rows := need * searchWindow / found
		if rows < 40*found*lo/searchWindow {
			next := max(0, lo-3*rows)
			more, err := db.searchFill(ctx, room, q.Text, next, lo+1, int(need), true)
			hits = append(hits, more...)
			if err != nil || len(hits) >= q.Limit || next <= 0 {
				return hits, err
			}
			lo = next
		}
	}
	more, err := db.searchFill(ctx, room, q.Text, 0, lo+1, q.Limit-len(hits), false)
	return append(hits, more...), err
}

// searchFill returns room's newest limit matches with after < seq <
// before: fewer only if there are no more. It repeats searchRange below
// the index rows it got as long as some of them were dropped.
func (db *DB) searchFill(ctx context.Context, room, text string, after, before int64, limit int, walk bool) ([]Hit, error) {
	var hits []Hit
	for len(hits) < limit {
		want := limit - len(hits)
		more, read, lowest, err := db.searchRange(ctx, room, text, after, before, want, walk)
		hits = append(hits, more...)
		if err != nil || read < want {
			return hits, err
		}
		before = lowest
	}
	return hits, nil
}

// searchWindow is how many of a room's newest seqs Search walks first.
const searchWindow = 4096

// searchRange returns room's matches with after < seq < before, newest
// first, at most limit, and how many rows of the index it read for them
// and the lowest of their seqs. With walk it reads the range's rows back
// from before and stops at limit matches (the subquery's offset 0 keeps
// the planner from the GIN index); without, it finds every match with the
// GIN index and sorts them (seq + 0 is no order the primary key gives).
//
// The limit is applied to message_search before messages is joined: the
// table only holds plain messages that are not deleted (the Indexer adds
// only those; edits, deletes and retention keep it so under
// searchStepLock), so joining the rows read is enough. The join's filter
// is a safety net: a row that breaks that rule is dropped, not shown, and
// searchFill reads on. The query runs without a prepared statement
// (QueryExecModeExec): planned for its own words, not as a generic plan.
func (db *DB) searchRange(ctx context.Context, room, text string, after, before int64, limit int, walk bool) (hits []Hit, read int, lowest int64, err error) {
	cfg := db.regconfig()
	match := `
			select s.seq
			from message_search s
			where s.room = $1 and s.seq > $3 and s.seq < $4 and s.tsv @@ websearch_to_tsquery(` + cfg + `, $2)
			order by s.seq + 0 desc
			limit $5`
	if walk {
		match = `
			select s.seq
			from (
				select seq, tsv from message_search
				where room = $1 and seq > $3 and seq < $4
				order by seq desc
				offset 0
			) s
			where s.tsv @@ websearch_to_tsquery(` + cfg + `, $2)
			limit $5`
	}
	rows, err := db.pool.Query(ctx, `
		select s.seq, m.seq is not null and m.kind is null and m.deleted_at is null,
			coalesce(m.author, ''), coalesce(m.body, ''), m.created_at, coalesce(m.instance, ''), coalesce(m.ref, ''), m.edited_at,
			coalesce(ts_headline(`+cfg+`, replace(replace(replace(m.body, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), websearch_to_tsquery(`+cfg+`, $2),
				'StartSel=<mark>, StopSel=</mark>, MaxWords=35, MinWords=15'), '')
		from (`+match+`
		) s
		left join messages m on m.room = $1 and m.seq = s.seq
		order by s.seq desc`,
		pgx.QueryExecModeExec, room, text, after, before, limit)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("search: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			h       = Hit{Message: Message{Room: room}}
			ok      bool
			created *time.Time
			edited  *time.Time
		)
		if err := rows.Scan(&h.Seq, &ok, &h.Author, &h.Body, &created, &h.Instance, &h.Ref, &edited, &h.Snippet); err != nil {
			return nil, 0, 0, fmt.Errorf("search: %w", err)
		}
		read, lowest = read+1, h.Seq
		if !ok {
			continue
		}
		h.Time = *created
		if edited != nil {
			h.Edited = *edited
		}
		hits = append(hits, h)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, fmt.Errorf("search: %w", err)
	}
	return hits, read, lowest, nil
}

// searchRooms searches several rooms: every match is found and the newest
// (by time) kept.
func (db *DB) searchRooms(ctx context.Context, q SearchQuery) ([]Hit, error) {
	cfg := db.regconfig()
	rows, err := db.pool.Query(ctx, `
		with q as (select websearch_to_tsquery(`+cfg+`, $2) as q)
		select m.room, m.seq, m.author, m.body, m.created_at, m.instance, coalesce(m.ref, ''), m.edited_at,
			ts_headline(`+cfg+`, replace(replace(replace(m.body, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), q.q,
				'StartSel=<mark>, StopSel=</mark>, MaxWords=35, MinWords=15')
		from (
			select m.*
			from message_search s
			join messages m on m.room = s.room and m.seq = s.seq, q
			where s.room = any($1) and s.tsv @@ q.q
			  and m.kind is null and m.deleted_at is null
			order by m.created_at desc, m.room, m.seq desc
			limit $3
		) m, q
		order by m.created_at desc, m.room, m.seq desc`,
		q.Rooms, q.Text, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	return collectHits(rows)
}

func collectHits(rows pgx.Rows) ([]Hit, error) {
	hits, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Hit, error) {
		var (
			h      Hit
			edited *time.Time
		)
		err := row.Scan(&h.Room, &h.Seq, &h.Author, &h.Body, &h.Time, &h.Instance, &h.Ref, &edited, &h.Snippet)
		if edited != nil {
			h.Edited = *edited
		}
		return h, err
	})
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	return hits, nil
}
