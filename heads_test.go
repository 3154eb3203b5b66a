package main

import (
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// loseCommits simulates a failover that lost room's newest commits: the
// rows after seq keep go, and the head goes back to keep.
func loseCommits(t *testing.T, db, room string, keep int64) {
	t.Helper()
	conn := dbConn(t, db)
	if _, err := conn.Exec(t.Context(), `delete from messages where room = $1 and seq > $2`, room, keep); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), `update rooms set last_seq = $2 where name = $1`, room, keep); err != nil {
		t.Fatal(err)
	}
}

// waitClose reads until the connection closes and returns its status.
func (c *wsClient) waitClose() websocket.StatusCode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := c.conn.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// TestHeadMovesBackwards: when a room's head in the table falls below what
// an instance delivered (lost commits), the instance resets the room: its
// members are closed with 1011 and rejoin with since, which says
// recovered:false; new joins work at once; new messages flow again. Both
// ways of noticing: a join on the instance, and a notification from
// another instance announcing a head below the delivered one.
func TestHeadMovesBackwards(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))

	for _, room := range []string{"j", "n"} {
		alice := dial(t, a.URL, name("alice"))
		alice.join(room)
		for i := range 5 {
			alice.send(room, "before", "b"+string(rune('0'+i)))
		}
		alice.messages(5)
		loseCommits(t, db, room, 2)

		switch room {
		case "j": // a join on the instance notices
			carol := dial(t, a.URL, name("carol"))
			msgs, j := carol.join(room)
			if j.Seq != 2 || len(msgs) != 2 {
				t.Fatalf("join after the loss: joined at %d with %d messages, want 2 and 2", j.Seq, len(msgs))
			}
		case "n": // a notification from another instance notices
			bob := dial(t, b.URL, name("bob"))
			bob.join(room)
			bob.send(room, "after the loss", "n1")
			if m := bob.nextOf("message"); m.Seq != 3 {
				t.Fatalf("bob: %+v, want seq 3", m)
			}
		}
		if code := alice.waitClose(); code != websocket.StatusInternalError {
			t.Fatalf("room %s: alice's connection closed with %v, want 1011", room, code)
		}
		// Alice rejoins with what she had: the server says it cannot
		// recover that, and replays the room as it is now.
		alice = dial(t, a.URL, name("alice"))
		_, j := alice.join(room, 5)
		if j.Recovered == nil || *j.Recovered {
			t.Fatalf("room %s: rejoin with since 5: %+v, want recovered false", room, j)
		}
		alice.send(room, "flowing again", "x")
		want := int64(3)
		if room == "n" {
			want = 4
		}
		if m := alice.nextOf("message"); m.Seq != want || m.Body != "flowing again" {
			t.Fatalf("room %s: alice got %+v, want seq %d", room, m, want)
		}
	}
}
