package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgchat/pgchat/chat"
)

// evFrame is a server frame with the event fields (issue 13).
type evFrame struct {
	Type      string         `json:"type"`
	Room      string         `json:"room"`
	Seq       int64          `json:"seq"`
	Kind      string         `json:"kind"`
	Target    int64          `json:"target"`
	Author    string         `json:"author"`
	Body      *string        `json:"body"`
	Emoji     string         `json:"emoji"`
	Edited    string         `json:"edited"`
	Deleted   bool           `json:"deleted"`
	Reactions map[string]int `json:"reactions"`
	Instance  string         `json:"instance"`
	Recovered *bool          `json:"recovered"`
	Ref       string         `json:"ref"`
	Code      string         `json:"code"`
}

func (c *wsClient) nextEv() evFrame {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	var f evFrame
	if err := readFrameInto(ctx, c.conn, &f); err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

// joinEv joins room (with since if given) and returns the replay.
func (c *wsClient) joinEv(room string, since ...int64) ([]evFrame, evFrame) {
	c.t.Helper()
	j := map[string]any{"type": "join", "room": room}
	if len(since) > 0 {
		j["since"] = since[0]
	}
	c.write(j)
	var msgs []evFrame
	for {
		switch f := c.nextEv(); f.Type {
		case "message":
			msgs = append(msgs, f)
		case "joined":
			return msgs, f
		default:
			c.t.Fatalf("join %s: unexpected frame %+v", room, f)
		}
	}
}

// do writes frame v (with ref) and returns the ack or error for it,
// collecting message frames that arrive meanwhile into c's caller's slice.
func (c *wsClient) do(v map[string]any, seen *[]evFrame) evFrame {
	c.t.Helper()
	c.write(v)
	for {
		f := c.nextEv()
		switch f.Type {
		case "message":
			*seen = append(*seen, f)
		case "ack", "error":
			if f.Ref != v["ref"] {
				c.t.Fatalf("%v: answer for ref %q: %+v", v, f.Ref, f)
			}
			return f
		}
	}
}

// expectAck fails unless f is an ack with seq.
func expectAck(t *testing.T, what string, f evFrame, seq int64) {
	t.Helper()
	if f.Type != "ack" || f.Seq != seq {
		t.Fatalf("%s: got %+v, want ack with seq %d", what, f, seq)
	}
}

func expectError(t *testing.T, what string, f evFrame, code string) {
	t.Helper()
	if f.Type != "error" || f.Code != code {
		t.Fatalf("%s: got %+v, want error %s", what, f, code)
	}
}

func ev(typ, room string, target int64, ref string, kv ...string) map[string]any {
	m := map[string]any{"type": typ, "room": room, "target": target, "ref": ref}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestEventsAcrossInstances: edits, deletes and reactions are events with
// their own gap-free seqs, acked like sends, refused when they should be,
// delivered on both instances in seq order, replayed exactly with since,
// shown in their current state without it, and a delete leaves no trace of
// the text in any table.
func TestEventsAcrossInstances(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice := dial(t, a.URL, name("alice"))
	bob := dial(t, b.URL, name("bob"))
	alice.joinEv("r")
	bob.joinEv("r")
	var aliceSaw, bobSaw []evFrame

	const secret = "the secret plan"
	expectAck(t, "send 1", alice.do(map[string]any{"type": "send", "room": "r", "body": secret, "ref": "s1"}, &aliceSaw), 1)
	expectAck(t, "send 2", bob.do(map[string]any{"type": "send", "room": "r", "body": "hi", "ref": "s2"}, &bobSaw), 2)
	expectAck(t, "edit", alice.do(ev("edit", "r", 1, "e1", "body", secret+" v2"), &aliceSaw), 3)
	expectAck(t, "resent edit", alice.do(ev("edit", "r", 1, "e1", "body", secret+" v2"), &aliceSaw), 3)
	expectAck(t, "react", bob.do(ev("react", "r", 1, "r1", "emoji", "👍"), &bobSaw), 4)
	expectAck(t, "react again", bob.do(ev("react", "r", 1, "r2", "emoji", "👍"), &bobSaw), 4)
	expectError(t, "bob edits alice's", bob.do(ev("edit", "r", 1, "x1", "body", "mine now"), &bobSaw), "forbidden")
	expectError(t, "bob deletes alice's", bob.do(ev("delete", "r", 1, "x2"), &bobSaw), "forbidden")
	expectError(t, "edit of an event", alice.do(ev("edit", "r", 3, "x3", "body", "x"), &aliceSaw), "not_found")
	expectError(t, "no such message", alice.do(ev("react", "r", 99, "x4", "emoji", "👍"), &aliceSaw), "not_found")
	expectError(t, "control emoji", alice.do(ev("react", "r", 2, "x5", "emoji", "a\x01"), &aliceSaw), "bad_request")
	expectAck(t, "react to 2", alice.do(ev("react", "r", 2, "r3", "emoji", "🎉"), &aliceSaw), 5)
	expectAck(t, "second emoji", alice.do(ev("react", "r", 2, "r4", "emoji", "👍"), &aliceSaw), 6)
	expectAck(t, "unreact", alice.do(ev("unreact", "r", 2, "u1", "emoji", "🎉"), &aliceSaw), 7)
	expectAck(t, "unreact again: no-op at the head", alice.do(ev("unreact", "r", 2, "u2", "emoji", "🎉"), &aliceSaw), 7)
	expectAck(t, "edit again", alice.do(ev("edit", "r", 1, "e2", "body", secret+" v3"), &aliceSaw), 8)
	expectAck(t, "delete", alice.do(ev("delete", "r", 1, "d1"), &aliceSaw), 9)
	expectError(t, "edit deleted", alice.do(ev("edit", "r", 1, "x6", "body", "back"), &aliceSaw), "gone")
	expectError(t, "react to deleted", bob.do(ev("react", "r", 1, "x7", "emoji", "👍"), &bobSaw), "gone")
	expectAck(t, "edit of a plain message", bob.do(ev("edit", "r", 2, "e3", "body", "hello"), &bobSaw), 10)

	// Both instances deliver 1..10, in order, with the right kinds.
	wantKinds := []string{"", "", "edit", "react", "react", "react", "unreact", "edit", "delete", "edit"}
	for _, who := range []struct {
		c    *wsClient
		saw  *[]evFrame
		name string
	}{{alice, &aliceSaw, "alice"}, {bob, &bobSaw, "bob"}} {
		for len(*who.saw) < len(wantKinds) {
			if f := who.c.nextEv(); f.Type == "message" {
				*who.saw = append(*who.saw, f)
			}
		}
		checkStream(t, who.name, *who.saw, 1, wantKinds)
	}
	if d := aliceSaw[8]; d.Body != nil || d.Target != 1 || d.Author != "alice" {
		t.Errorf("delete event %+v: want target 1, no body", d)
	}
	if r := bobSaw[3]; r.Emoji != "👍" || r.Target != 1 || r.Author != "bob" || r.Instance != "app-2" {
		t.Errorf("react event %+v", r)
	}

	// Resume: exactly every event after since, on either instance.
	for _, since := range []int64{0, 3, 8} {
		c := dial(t, a.URL, name("carol"))
		msgs, joined := c.joinEv("r", since)
		if joined.Seq != 10 || joined.Recovered == nil || !*joined.Recovered {
			t.Errorf("since %d: joined %+v", since, joined)
		}
		checkStream(t, fmt.Sprintf("since %d", since), msgs, since+1, wantKinds[since:])
		if since == 0 && (!msgs[0].Deleted || msgs[0].Body != nil) {
			t.Errorf("replayed message 1 = %+v, want deleted without body", msgs[0])
		}
	}

	// Without since: the messages in their current state.
	c := dial(t, b.URL, name("dave"))
	msgs, joined := c.joinEv("r")
	if joined.Seq != 10 || len(msgs) != 2 {
		t.Fatalf("join without since: %d messages, joined %+v", len(msgs), joined)
	}
	if m := msgs[0]; m.Seq != 1 || !m.Deleted || m.Body != nil || m.Kind != "" {
		t.Errorf("current message 1 = %+v, want deleted", m)
	}
	if m := msgs[1]; m.Seq != 2 || m.Body == nil || *m.Body != "hello" || m.Edited == "" || len(m.Reactions) != 1 || m.Reactions["👍"] != 1 {
		t.Errorf("current message 2 = %+v, want edited to hello with one 👍", m)
	}

	// The history endpoint agrees.
	var page struct {
		Head, Oldest int64
		Messages     []evFrame
	}
	mustGetJSON(t, a.URL+"/api/rooms/r/messages", &page)
	if page.Head != 10 || page.Oldest != 1 || len(page.Messages) != 2 || !page.Messages[0].Deleted || page.Messages[0].Body != nil ||
		*page.Messages[1].Body != "hello" || page.Messages[1].Reactions["👍"] != 1 {
		t.Errorf("history = %+v", page)
	}

	// No trace of the deleted text in any table.
	conn := dbConn(t, db)
	var n int
	if err := conn.QueryRow(t.Context(), `
		select (select count(*) from messages where body like '%secret%')
		     + (select count(*) from message_versions where body like '%secret%')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows still hold the deleted text", n)
	}
	var versions int
	if err := conn.QueryRow(t.Context(), `select count(*) from message_versions where room = 'r' and seq = 2`).Scan(&versions); err != nil || versions != 1 {
		t.Errorf("versions of message 2 = %d, %v; want 1 (the text before the edit)", versions, err)
	}
}

// checkStream fails unless msgs are seqs from, from+1, ... with kinds.
func checkStream(t *testing.T, who string, msgs []evFrame, from int64, kinds []string) {
	t.Helper()
	if len(msgs) != len(kinds) {
		t.Fatalf("%s: %d messages, want %d: %+v", who, len(msgs), len(kinds), msgs)
	}
	for i, m := range msgs {
		if m.Seq != from+int64(i) || m.Kind != kinds[i] {
			t.Fatalf("%s: message %d is seq %d kind %q, want seq %d kind %q", who, i, m.Seq, m.Kind, from+int64(i), kinds[i])
		}
	}
}

func mustGetJSON(t *testing.T, url string, v any) {
	t.Helper()
	if code := getJSON(t, url, v); code != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, code)
	}
}

// TestModeratorDeletes: in token mode only the author edits, and a token
// with "mod":true deletes anyone's message.
func TestModeratorDeletes(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	b := startInstance(t, testEnv(db, "app-2", "AUTH_SECRET="+testAuthSecret))
	alice := dial(t, a.URL, tokenQuery(mint(t, testAuthSecret, "alice", time.Hour, "r")))
	eve := dial(t, b.URL, tokenQuery(mint(t, testAuthSecret, "eve", time.Hour, "r")))
	now := time.Now()
	modTok, err := chat.NewToken([]byte(testAuthSecret), chat.Grant{Author: "mia", Rooms: []string{"*"}, Expires: now.Add(time.Hour), Moderator: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	mod := dial(t, b.URL, tokenQuery(modTok))
	var seen []evFrame
	alice.joinEv("r")
	eve.joinEv("r")
	mod.joinEv("r")
	expectAck(t, "send", alice.do(map[string]any{"type": "send", "room": "r", "body": "spam", "ref": "s"}, &seen), 1)
	expectError(t, "eve deletes", eve.do(ev("delete", "r", 1, "d"), &seen), "forbidden")
	expectError(t, "moderator edits", mod.do(ev("edit", "r", 1, "e", "body", "x"), &seen), "forbidden")
	expectAck(t, "moderator deletes", mod.do(ev("delete", "r", 1, "d"), &seen), 2)
	for {
		if f := alice.nextEv(); f.Type == "message" && f.Seq == 2 {
			if f.Kind != "delete" || f.Author != "mia" || f.Target != 1 {
				t.Fatalf("delete event %+v", f)
			}
			break
		}
	}
}

// TestSameReactFromTwoInstances: the same reaction sent through two
// instances at once is stored once, and both are acked with its seq.
func TestSameReactFromTwoInstances(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	var seen []evFrame
	poster := dial(t, a.URL, name("poster"))
	poster.joinEv("r")
	expectAck(t, "send", poster.do(map[string]any{"type": "send", "room": "r", "body": "vote", "ref": "s"}, &seen), 1)
	for round := range 5 {
		c1, c2 := dial(t, a.URL, name("carol")), dial(t, b.URL, name("carol"))
		c1.joinEv("r")
		c2.joinEv("r")
		emoji := fmt.Sprintf("e%d", round)
		var wg sync.WaitGroup
		acks := make([]evFrame, 2)
		for i, c := range []*wsClient{c1, c2} {
			wg.Go(func() {
				b, _ := json.Marshal(ev("react", "r", 1, fmt.Sprintf("ref-%d-%d", round, i), "emoji", emoji))
				if err := c.conn.Write(t.Context(), websocket.MessageText, b); err != nil {
					t.Error(err)
					return
				}
				for {
					f, err := c.tryNext(10 * time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					if f.Type == "ack" || f.Type == "error" {
						acks[i] = evFrame{Type: f.Type, Seq: f.Seq, Code: f.Code}
						return
					}
				}
			})
		}
		wg.Wait()
		if acks[0].Type != "ack" || acks[1].Type != "ack" || acks[0].Seq != acks[1].Seq || acks[0].Seq != int64(round+2) {
			t.Fatalf("round %d: acks %+v, want both acked with seq %d", round, acks, round+2)
		}
	}
	conn := dbConn(t, db)
	var rows, head int64
	if err := conn.QueryRow(t.Context(), `select (select count(*) from reactions), (select last_seq from rooms where name = 'r')`).Scan(&rows, &head); err != nil {
		t.Fatal(err)
	}
	if rows != 5 || head != 6 {
		t.Errorf("%d reactions, head %d; want 5 and 6", rows, head)
	}
}
