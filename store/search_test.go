package store_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// TestSearchRoomPaths: a search of one large room finds exactly what a
// plain sort of every match would, newest first, whichever way Search goes
// about it: matches dense at the head (the first window), dense further
// down (a walk on), sparse (found and sorted), dense only far below the
// head (a word common elsewhere), with before, and never a deleted
// message, even one the index still holds.
func TestSearchRoomPaths(t *testing.T) {
	t.Parallel()
	url := storetest.NewDB(t)
	db := open(t, url, "app-1")
	conn := connect(t, url)
	ctx := t.Context()
	const n = 30000
	// Every message has "all"; "third" every 3rd seq; "rare" every
	// 2,500th; "old" every 7th below 2,000 (none near the head); "mid"
	// in 3 seqs of the newest 4,096 and every 50th below 20,000; "x<k>"
	// the seq's last digit, for pairs; "head" every 2nd of the newest
	// 4,096 and every 1,000th below.
	if _, err := conn.Exec(ctx, strings.ReplaceAll(`
		insert into rooms (name, last_seq) values ('big', $1), ('other', 10);
		insert into messages (room, seq, author, body, created_at, instance)
		select 'big', s, 'alice', concat_ws(' ', 'all',
				case when s % 3 = 0 then 'third' end,
				case when s % 2500 = 0 then 'rare' end,
				case when s < 2000 and s % 7 = 0 then 'old' end,
				case when s in ($1 - 10, $1 - 1000, $1 - 4000) or (s < 20000 and s % 50 = 0) then 'mid' end,
				case when (s > $1 - 4096 and s % 2 = 0) or s % 1000 = 0 then 'head' end,
				'x' || (s % 10)),
			now() - make_interval(secs => $1 - s), 'gen'
		from generate_series(1, $1) s;
		insert into messages (room, seq, author, body, created_at, instance)
		select 'other', s, 'bob', 'all third rare old mid', now(), 'gen' from generate_series(1, 10) s;
		insert into message_search (room, seq, tsv) select room, seq, to_tsvector('simple', body) from messages;
		insert into search_progress (room, seq) select name, last_seq from rooms;
		-- Deleted, as a delete leaves it, and one whose index row a bug left behind.
		update messages set body = '', deleted_at = now() where room = 'big' and seq in ($1, $1 - 3);
		delete from message_search where room = 'big' and seq = $1;
		analyze`, "$1", strconv.Itoa(n))); err != nil {
		t.Fatal(err)
	}

	want := func(text string, before int64, limit int) []int64 {
		t.Helper()
		rows, err := conn.Query(ctx, `
			select m.seq from messages m
			where m.room = 'big' and m.deleted_at is null and m.kind is null and ($2 <= 0 or m.seq < $2)
			  and to_tsvector('simple', m.body) @@ websearch_to_tsquery('simple', $1)
			order by m.seq desc limit $3`, text, before, limit)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []int64
		for rows.Next() {
			var s int64
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	for _, tc := range []struct {
		text   string
		before int64
		limit  int
	}{
		{"all", 0, 20},
		{"third", 0, 100},
		{"rare", 0, 20},
		{"old", 0, 20},
		{"mid", 0, 20},
		{"mid", 0, 100},
		{"mid x0", 0, 20},
		{"third x7", 0, 20},
		{"rare x0", 0, 20},
		{"old -x0", 0, 5},
		{"nothing", 0, 20},
		{"x3", 0, 500},
		{"head", 0, 3000},
		{"head x0", 0, 100},
		{"all", n - 2, 3},
		{"third", 5000, 20},
		{"mid", n - 500, 20},
		{"rare", 4000, 20},
		{"old", 1000, 20},
		{"all", 2, 20},
		{"all", 1, 20},
	} {
		hits, err := db.Search(ctx, store.SearchQuery{Rooms: []string{"big"}, Text: tc.text, Before: tc.before, Limit: tc.limit})
		if err != nil {
			t.Fatalf("Search(%q, before %d): %v", tc.text, tc.before, err)
		}
		var got []int64
		for _, h := range hits {
			got = append(got, h.Seq)
			if h.Room != "big" {
				t.Errorf("Search(%q): hit in room %q", tc.text, h.Room)
			}
		}
		if w := want(tc.text, tc.before, tc.limit); !slices.Equal(got, w) {
			t.Errorf("Search(%q, before %d, limit %d) = %v, want %v", tc.text, tc.before, tc.limit, got, w)
		}
	}
}
