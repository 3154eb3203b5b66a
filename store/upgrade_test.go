package store_test

import (
	"context"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/pgchat/pgchat/migrations"
	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// migrationsBefore is migrations.FS without the files from number n on:
// the schema an older binary ran.
func migrationsBefore(t *testing.T, n string) fs.FS {
	t.Helper()
	old := fstest.MapFS{}
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f < n {
			b, err := fs.ReadFile(migrations.FS, f)
			if err != nil {
				t.Fatal(err)
			}
			old[f] = &fstest.MapFile{Data: b}
		}
	}
	return old
}

// TestRollingUpgradeToEvents: rows written by the old schema's binary read
// as plain messages after migration 002; the old binary's insert (its
// column list) still works on the new schema while new instances store
// events beside it, with seqs that stay gap-free.
func TestRollingUpgradeToEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := storetest.NewEmptyDB(t)
	if _, err := store.Migrate(ctx, url, migrationsBefore(t, "002")); err != nil {
		t.Fatalf("old migrations: %v", err)
	}
	conn := connect(t, url)
	// What the old binary's Append writes (store/append.go before 002).
	oldAppend := func(seq int64, body string) {
		t.Helper()
		if _, err := conn.Exec(ctx, `
			insert into rooms (name) values ('r') on conflict do nothing;
			update rooms set last_seq = last_seq + 1 where name = 'r';`); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `
			insert into messages (room, seq, author, body, created_at, instance, ref)
			values ('r', $1, 'old', $2, now(), 'old-1', null)`, seq, body); err != nil {
			t.Fatalf("old insert: %v", err)
		}
	}
	oldAppend(1, "from before the upgrade")

	if v, err := store.Migrate(ctx, url, migrations.FS); err != nil || v < 2 {
		t.Fatalf("Migrate = %d, %v", v, err)
	}
	db := open(t, url, "new-1")
	oldAppend(2, "old instance, new schema")
	res, err := db.Append(ctx, []store.NewMessage{{Room: "r", Author: "new", Body: "new instance"}})
	if err != nil || res[0].Seq != 3 {
		t.Fatalf("Append = %+v, %v", res, err)
	}
	ev, err := db.ApplyEvent(ctx, store.Event{Room: "r", Author: "old", Kind: store.KindEdit, Target: 1, Body: "edited after the upgrade"})
	if err != nil || ev.Seq != 4 {
		t.Fatalf("edit of an old row = %+v, %v", ev, err)
	}
	if _, err := db.ApplyEvent(ctx, store.Event{Room: "r", Author: "new", Kind: store.KindReact, Target: 2, Emoji: "👍"}); err != nil {
		t.Fatalf("react to an old instance's row: %v", err)
	}
	oldAppend(6, "old instance after events")

	// The stream: gap-free, old rows plain, events with their kind.
	msgs, err := db.Since(ctx, "r", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{"", "", "", store.KindEdit, store.KindReact, ""}
	if len(msgs) != len(kinds) {
		t.Fatalf("Since = %d messages, want %d", len(msgs), len(kinds))
	}
	for i, m := range msgs {
		if m.Seq != int64(i+1) || m.Kind != kinds[i] {
			t.Errorf("message %d: seq %d kind %q, want %d %q", i, m.Seq, m.Kind, i+1, kinds[i])
		}
	}
	if msgs[0].Body != "edited after the upgrade" || msgs[0].Edited.IsZero() {
		t.Errorf("old row after the edit: %+v", msgs[0])
	}
	// What the old binary's Since reads of the new rows: plain messages.
	rows, err := conn.Query(ctx, `select seq, author, body from messages where room = 'r' and seq > 0 order by seq`)
	if err != nil {
		t.Fatalf("old Since: %v", err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Err() != nil || n != 6 {
		t.Errorf("old Since read %d rows, %v", n, rows.Err())
	}
	// An old binary's decoder reads an event notification as a message: it
	// ignores fields it does not know (encoding/json, its fallback).
	p := store.EncodeNotifications([]store.Message{{Room: "r", Seq: 4, Kind: store.KindEdit, Target: 1, Body: "x", Author: "old"}})
	if len(p) != 1 || !strings.Contains(p[0], `"seq":4`) || !strings.Contains(p[0], `"kind":"edit"`) {
		t.Errorf("notification %q", p)
	}
}
