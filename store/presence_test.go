package store_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// Large changes are split into payloads under the NOTIFY limit, and decode
// back to the same joins and leaves.
func TestEncodePresenceChanges(t *testing.T) {
	var joins, leaves []string
	for i := range 3000 {
		joins = append(joins, fmt.Sprintf("author-with-a-long-name-%04d", i))
	}
	for i := range 500 {
		leaves = append(leaves, fmt.Sprintf("gone-%d-\"quoted\"", i))
	}
	payloads := store.EncodePresenceChanges("a/1", []store.PresenceChange{{Room: "big", Joins: joins, Leaves: leaves}, {Room: "small", Joins: []string{"x"}}})
	if len(payloads) < 10 {
		t.Fatalf("%d payloads for 3,500 changes", len(payloads))
	}
	var gotJ, gotL []string
	rooms := map[string]bool{}
	for _, p := range payloads {
		if len(p) > 8000 {
			t.Fatalf("payload of %d bytes", len(p))
		}
		n, err := store.DecodePresence(p)
		if err != nil || n.Session != "a/1" || n.Change == nil {
			t.Fatalf("decode %.80s: %+v, %v", p, n, err)
		}
		rooms[n.Change.Room] = true
		if n.Change.Room == "big" {
			gotJ, gotL = append(gotJ, n.Change.Joins...), append(gotL, n.Change.Leaves...)
		}
	}
	if !slices.Equal(gotJ, joins) || !slices.Equal(gotL, leaves) || !rooms["small"] {
		t.Fatalf("round trip lost changes: %d joins, %d leaves, rooms %v", len(gotJ), len(gotL), rooms)
	}
}

// Heartbeat creates the session once, and sweeps a silent one with its
// rows, announcing it.
func TestHeartbeatSweeps(t *testing.T) {
	t.Parallel()
	url := storetest.NewDB(t)
	db := open(t, url, "a")
	ctx := t.Context()
	listen, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(ctx)
	if _, err := listen.Exec(ctx, "listen "+store.PresenceChannel); err != nil {
		t.Fatal(err)
	}

	a := store.PresenceSession{ID: "a/1", Instance: "a"}
	b := store.PresenceSession{ID: "b/1", Instance: "b"}
	for i, s := range []store.PresenceSession{a, b, a} {
		created, _, err := db.Heartbeat(ctx, s, 5*time.Second)
		if err != nil || created != (i < 2) {
			t.Fatalf("heartbeat %d of %s: created %v, %v", i, s.ID, created, err)
		}
	}
	if err := db.PublishPresence(ctx, b.ID, []store.PresenceChange{{Room: "r", Joins: []string{"bob", "bea"}}}); err != nil {
		t.Fatal(err)
	}
	// b falls silent.
	if _, err := listen.Exec(ctx, "update presence_sessions set seen_at = now() - interval '1 minute' where session = $1", b.ID); err != nil {
		t.Fatal(err)
	}
	_, swept, err := db.Heartbeat(ctx, a, 5*time.Second)
	if err != nil || !slices.Equal(swept, []string{b.ID}) {
		t.Fatalf("sweep: %v, %v; want [b/1]", swept, err)
	}
	rows, err := db.LoadPresence(ctx)
	if err != nil || len(rows) != 0 {
		t.Fatalf("rows after the sweep: %v, %v", rows, err)
	}
	// The listener saw the join, then the session gone.
	var kinds []string
	for len(kinds) < 2 {
		n, err := listen.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, err := store.DecodePresence(n.Payload)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case p.Change != nil:
			kinds = append(kinds, "change "+strings.Join(p.Change.Joins, ","))
		case p.Gone:
			kinds = append(kinds, "gone "+p.Session)
		}
	}
	if !slices.Equal(kinds, []string{"change bob,bea", "gone b/1"}) {
		t.Fatalf("notifications %v", kinds)
	}
	// A swept session cannot publish until its heartbeat recreates it.
	if err := db.PublishPresence(ctx, b.ID, []store.PresenceChange{{Room: "r", Joins: []string{"bob"}}}); err == nil {
		t.Fatal("a swept session published")
	}
	if created, _, err := db.Heartbeat(ctx, b, 5*time.Second); err != nil || !created {
		t.Fatalf("heartbeat after the sweep: created %v, %v; want true", created, err)
	}
}

// Read cursors only move forward, stop at the head, and unread counts
// others' messages up to a cap.
func TestReadCursors(t *testing.T) {
	t.Parallel()
	url := storetest.NewDB(t)
	db := open(t, url, "a")
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// 1,200 messages: odd seqs by alice, even by bob.
	if _, err := conn.Exec(ctx, `
		insert into rooms (name, last_seq) values ('r', 1200);
		insert into messages (room, seq, author, body, created_at, instance)
		select 'r', s, case when s % 2 = 1 then 'alice' else 'bob' end, 'x', now(), 'a'
		from generate_series(1, 1200) s`); err != nil {
		t.Fatal(err)
	}
	write := func(seq int64) []store.ReadCursor {
		t.Helper()
		moved, err := db.WriteReads(ctx, "a/1", []store.ReadCursor{{Room: "r", Author: "alice", Seq: seq}, {Room: "nowhere", Author: "alice", Seq: 5}})
		if err != nil {
			t.Fatal(err)
		}
		return moved
	}
	if m := write(100); len(m) != 1 || m[0].Seq != 100 {
		t.Fatalf("first write: %+v", m)
	}
	if m := write(50); len(m) != 0 {
		t.Fatalf("a lower seq moved the cursor: %+v", m)
	}
	if m := write(5000); len(m) != 1 || m[0].Seq != 1200 {
		t.Fatalf("past the head: %+v, want clamped to 1200", m)
	}
	read, unread, err := db.ReadState(ctx, "r", "alice", 0, 1200, 1000)
	if err != nil || read != 1200 || unread != 0 {
		t.Fatalf("alice: read %d unread %d (%v)", read, unread, err)
	}
	// bob never read: 600 of alice's messages, capped at 1000 only for more.
	if read, unread, _ := db.ReadState(ctx, "r", "bob", 0, 1200, 1000); read != 0 || unread != 600 {
		t.Fatalf("bob: read %d unread %d, want 0 and 600", read, unread)
	}
	if _, unread, _ := db.ReadState(ctx, "r", "carol", 0, 1200, 1000); unread != 1000 {
		t.Fatalf("carol: unread %d, want the cap, 1000", unread)
	}
	// A cursor not yet written counts (atLeast), clamped to head.
	if read, unread, _ := db.ReadState(ctx, "r", "carol", 1190, 1200, 1000); read != 1190 || unread != 10 {
		t.Fatalf("carol at 1190: read %d unread %d", read, unread)
	}
	reads, err := db.Reads(ctx, "r", 10)
	if err != nil || len(reads) != 1 || reads[0].Author != "alice" || reads[0].Seq != 1200 || reads[0].Time.IsZero() {
		t.Fatalf("Reads: %+v, %v", reads, err)
	}
}
