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
		return db.searchRange(ctx, q, 0, 1<<63-1, q.Limit)
	}
	// One room, newest first: search windows of seqs going back, each 8
	// times the last, until enough is found. A common word is found in
	// the first window, without reading its every match to sort them; a
	// rare one costs a few cheap index scans.
	hi := q.Before
	if hi <= 0 {
		heads, err := db.Heads(ctx, q.Rooms)
		if err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		hi = heads[q.Rooms[0]] + 1
	}
	var hits []Hit
	for w := int64(4096); hi > 1 && len(hits) < q.Limit; w *= 8 {
		lo := max(0, hi-w)
		more, err := db.searchRange(ctx, q, lo, hi, q.Limit-len(hits))
		if err != nil {
			return nil, err
		}
		hits = append(hits, more...)
		hi = lo + 1
	}
	return hits, nil
}

// searchRange returns the matches with after < seq < before.
func (db *DB) searchRange(ctx context.Context, q SearchQuery, after, before int64, limit int) ([]Hit, error) {
	order := "m.created_at desc, m.room, m.seq desc"
	if len(q.Rooms) == 1 {
		order = "m.seq desc"
	}
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
			where s.room = any($1) and s.seq > $5 and s.seq < $3 and s.tsv @@ q.q
			  and m.kind is null and m.deleted_at is null
			order by `+order+`
			limit $4
		) m, q
		order by `+order,
		q.Rooms, q.Text, before, limit, after)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
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
