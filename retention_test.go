package main

import (
	"fmt"
	"testing"
	"time"
)

// TestRetention: while appends run, retention deletes exactly the seqs
// below each room's floor (RETENTION_MAX_MESSAGES, or a room's own
// override), and old messages by age; a join with since below the floor
// replays from the oldest kept seq with recovered false.
func TestRetention(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "RETENTION_MAX_MESSAGES=20", "RETENTION_INTERVAL=20ms"))
	conn := dbConn(t, db)
	alice := dial(t, a.URL, name("alice"))
	var seen []evFrame
	for _, room := range []string{"r", "keep", "aged"} {
		alice.joinEv(room)
	}
	// keep: no count limit; aged: only an age limit.
	for i := 1; i <= 30; i++ {
		for _, room := range []string{"keep", "aged"} {
			expectAck(t, "send", alice.do(map[string]any{"type": "send", "room": room, "body": fmt.Sprint("m", i), "ref": fmt.Sprint(room, i)}, &seen), int64(i))
		}
		if i == 1 {
			if _, err := conn.Exec(t.Context(), `
				update rooms set retention_max_messages = 0 where name = 'keep';
				update rooms set retention_max_messages = 0, retention_max_age = '1 hour' where name = 'aged'`); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := conn.Exec(t.Context(), `update messages set created_at = now() - interval '2 hours' where room = 'aged' and seq <= 5`); err != nil {
		t.Fatal(err)
	}

	// 300 sends, pipelined, while retention runs every 20ms.
	const n = 300
	for i := 1; i <= n; i++ {
		alice.send("r", fmt.Sprint("msg ", i), fmt.Sprint("r", i))
	}
	for acked := 0; acked < n; {
		if f := alice.nextEv(); f.Type == "ack" {
			acked++
		} else if f.Type == "error" {
			t.Fatalf("send: %+v", f)
		}
	}

	// Wait for the last round to catch up, then check what is left.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var oldest int64
		if err := conn.QueryRow(t.Context(), `select min(seq) from messages where room = 'r'`).Scan(&oldest); err != nil {
			t.Fatal(err)
		}
		if oldest == n-19 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("room r's oldest seq is %d, want %d", oldest, n-19)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for room, want := range map[string][2]int64{"r": {n - 19, n}, "keep": {1, 30}, "aged": {6, 30}} {
		var lo, hi, count int64
		if err := conn.QueryRow(t.Context(), `select min(seq), max(seq), count(*) from messages where room = $1`, room).Scan(&lo, &hi, &count); err != nil {
			t.Fatal(err)
		}
		if lo != want[0] || hi != want[1] || count != hi-lo+1 {
			t.Errorf("room %s keeps seqs %d..%d (%d rows), want %d..%d without gaps", room, lo, hi, count, want[0], want[1])
		}
	}

	// Below the floor: replay from the oldest, not recovered.
	bob := dial(t, a.URL, name("bob"))
	msgs, joined := bob.joinEv("r", 5)
	if joined.Recovered == nil || *joined.Recovered || joined.Seq != n || len(msgs) != 20 || msgs[0].Seq != n-19 {
		t.Errorf("join since 5: %d messages from %d, joined %+v; want 20 from %d, recovered false", len(msgs), msgs[0].Seq, joined, n-19)
	}
	msgs, joined = bob.joinEv("keep", 5)
	if joined.Recovered == nil || !*joined.Recovered || len(msgs) != 25 {
		t.Errorf("join keep since 5: %d messages, joined %+v", len(msgs), joined)
	}
	var page struct{ Head, Oldest int64 }
	mustGetJSON(t, a.URL+"/api/rooms/r/messages", &page)
	if page.Head != n || page.Oldest != n-19 {
		t.Errorf("history head %d oldest %d, want %d and %d", page.Head, page.Oldest, n, n-19)
	}
	// Seqs are not reused.
	expectAck(t, "send after retention", alice.do(map[string]any{"type": "send", "room": "r", "body": "after", "ref": "after"}, &seen), n+1)
}
