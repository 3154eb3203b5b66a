package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// pframe is a server frame with the presence, typing and read fields.
type pframe struct {
	Type     string   `json:"type"`
	Room     string   `json:"room"`
	Author   string   `json:"author"`
	Seq      int64    `json:"seq"`
	Count    int      `json:"count"`
	Members  []string `json:"members"`
	Complete *bool    `json:"complete"`
	Joins    []string `json:"joins"`
	Leaves   []string `json:"leaves"`
	Read     *int64   `json:"read"`
	Unread   *int64   `json:"unread"`
	Code     string   `json:"code"`
	Ref      string   `json:"ref"`
	raw      string
}

// pnext reads the next frame, failing the test after 15 s.
func (c *wsClient) pnext() pframe {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 15*time.Second)
	defer cancel()
	_, data, err := c.conn.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var f pframe
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("frame %s: %v", data, err)
	}
	f.raw = string(data)
	if testing.Verbose() {
		c.t.Logf("%s got %s", c.welcome.Author, data)
	}
	return f
}

// until reads frames until ok accepts one, which it returns; seen gets
// every frame read, that one included.
func (c *wsClient) until(ok func(pframe) bool, seen func(pframe)) pframe {
	c.t.Helper()
	for {
		f := c.pnext()
		if seen != nil {
			seen(f)
		}
		if ok(f) {
			return f
		}
	}
}

// pjoin joins room and returns its joined frame and presence snapshot.
func (c *wsClient) pjoin(room string) (joined, snapshot pframe) {
	c.t.Helper()
	c.write(map[string]any{"type": "join", "room": room})
	joined = c.until(func(f pframe) bool { return f.Type == "joined" || f.Type == "error" }, nil)
	if joined.Type != "joined" {
		c.t.Fatalf("join %s: %s", room, joined.raw)
	}
	snapshot = c.until(func(f pframe) bool { return f.Type == "presence" }, nil)
	return joined, snapshot
}

// diffWith reads presence diffs until one for room lists author among
// joins (join) or leaves; it fails on a diff saying the opposite.
func (c *wsClient) diffWith(room, author string, join bool) pframe {
	c.t.Helper()
	return c.until(func(f pframe) bool {
		if f.Type != "presence_diff" || f.Room != room {
			return false
		}
		if slices.Contains(f.Joins, author) && !join || slices.Contains(f.Leaves, author) && join {
			c.t.Fatalf("diff %s, waiting for %s to %s", f.raw, author, map[bool]string{true: "join", false: "leave"}[join])
		}
		if join {
			return slices.Contains(f.Joins, author)
		}
		return slices.Contains(f.Leaves, author)
	}, nil)
}

type presencePage struct {
	Room    string   `json:"room"`
	Count   int      `json:"count"`
	Members []string `json:"members"`
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
	return resp.StatusCode
}

// waitPresence polls in's presence endpoint until room has exactly want.
func waitPresence(t *testing.T, in *instance, room string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var p presencePage
	for time.Now().Before(deadline) {
		p = presencePage{}
		if getJSON(t, in.URL+"/api/rooms/"+room+"/presence", &p) == http.StatusOK && p.Count == len(want) && slices.Equal(p.Members, want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: presence of %s is %+v, want %v", in.ID, room, p, want)
}

func fastPresence(db, id string) []string {
	return testEnv(db, id, "PRESENCE_INTERVAL=100ms")
}

func startThree(t *testing.T) (db string, ins []*instance) {
	db = newDB(t)
	for _, id := range []string{"a", "b", "c"} {
		ins = append(ins, startInstance(t, fastPresence(db, id)))
	}
	return db, ins
}

// TestPresenceAcrossInstances: snapshots and coalesced diffs across three
// instances; an author on two instances counts once and leaves once.
func TestPresenceAcrossInstances(t *testing.T) {
	t.Parallel()
	_, in := startThree(t)
	const room = "lobby"

	alice := dial(t, in[0].URL, name("alice"))
	joined, snap := alice.pjoin(room)
	if joined.Read == nil || joined.Unread == nil || *joined.Read != 0 || *joined.Unread != 0 {
		t.Fatalf("joined %s, want read 0 and unread 0", joined.raw)
	}
	if snap.Count != 1 || !slices.Equal(snap.Members, []string{"alice"}) || snap.Complete != nil {
		t.Fatalf("alice's snapshot %s", snap.raw)
	}
	waitPresence(t, in[1], room, "alice")

	bob := dial(t, in[1].URL, name("bob"))
	if _, snap := bob.pjoin(room); snap.Count != 2 || !slices.Equal(snap.Members, []string{"alice", "bob"}) {
		t.Fatalf("bob's snapshot %s, want alice and bob", snap.raw)
	}
	if d := alice.diffWith(room, "bob", true); d.Count != 2 || len(d.Leaves) != 0 {
		t.Fatalf("alice got %s", d.raw)
	}

	// dave on two instances: one join, and no leave until both are gone.
	daveA := dial(t, in[0].URL, name("dave"))
	daveA.pjoin(room)
	daveC := dial(t, in[2].URL, name("dave"))
	daveC.pjoin(room)
	seen := 0
	count := func(f pframe) {
		if f.Type == "presence_diff" && slices.Contains(f.Joins, "dave") {
			seen++
		}
	}
	bob.until(func(f pframe) bool { return slices.Contains(f.Joins, "dave") }, count)
	waitPresence(t, in[1], room, "alice", "bob", "dave")
	daveA.write(map[string]any{"type": "leave", "room": room})
	daveA.until(func(f pframe) bool { return f.Type == "left" }, nil)
	erin := dial(t, in[0].URL, name("erin"))
	erin.pjoin(room)
	// erin's join left instance a after dave's leave there: once bob sees
	// erin, he has seen all that leave could do.
	bob.until(func(f pframe) bool {
		if slices.Contains(f.Leaves, "dave") {
			t.Fatalf("bob saw dave leave while dave is still on c: %s", f.raw)
		}
		return slices.Contains(f.Joins, "erin")
	}, count)
	if seen != 1 {
		t.Fatalf("bob saw dave join %d times, want 1", seen)
	}
	daveC.write(map[string]any{"type": "leave", "room": room})
	if d := bob.diffWith(room, "dave", false); d.Count != 3 {
		t.Fatalf("after dave left: %s, want count 3", d.raw)
	}
	alice.until(func(f pframe) bool { return f.Type == "presence_diff" && slices.Contains(f.Leaves, "dave") }, nil)
	for _, i := range in {
		waitPresence(t, i, room, "alice", "bob", "erin")
	}
}

// TestPresenceDiffsCoalesced: joins and leaves within one interval reach a
// member as one diff with the net change.
func TestPresenceDiffsCoalesced(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "a", "PRESENCE_INTERVAL=1s"))
	b := startInstance(t, testEnv(db, "b", "PRESENCE_INTERVAL=1s"))
	const room = "busy"
	watcher := dial(t, a.URL, name("watcher"))
	watcher.pjoin(room)
	waitPresence(t, b, room, "watcher")

	// Ten join on b, and the odd ones leave again at once.
	var clients []*wsClient
	for i := range 10 {
		c := dial(t, b.URL, name(fmt.Sprintf("u%d", i)))
		c.pjoin(room)
		clients = append(clients, c)
	}
	for i, c := range clients {
		if i%2 == 1 {
			c.write(map[string]any{"type": "leave", "room": room})
			c.until(func(f pframe) bool { return f.Type == "left" }, nil)
		}
	}
	waitPresence(t, b, room, "u0", "u2", "u4", "u6", "u8", "watcher")
	// Now count the watcher's diffs until the view is right.
	members := map[string]bool{"watcher": true}
	var times []time.Time
	for len(members) != 6 {
		f := watcher.until(func(f pframe) bool { return f.Type == "presence_diff" }, nil)
		times = append(times, time.Now())
		for _, j := range f.Joins {
			members[j] = true
		}
		for _, l := range f.Leaves {
			delete(members, l)
		}
		if f.Count != len(members) {
			t.Fatalf("diff %s: count %d, but the joins and leaves make %d", f.raw, f.Count, len(members))
		}
	}
	for i := 1; i < len(times); i++ {
		// Frames are read as they come; two diffs a second apart may be
		// read a little closer, never much.
		if gap := times[i].Sub(times[i-1]); gap < 500*time.Millisecond {
			t.Fatalf("diffs %v apart, PRESENCE_INTERVAL is 1s", gap)
		}
	}
	for _, l := range []string{"u1", "u3", "u5", "u7", "u9"} {
		if members[l] {
			t.Fatalf("%s is still a member", l)
		}
	}
}

// TestPresenceKilledInstance: kill -9 of an instance removes its members
// everywhere within 10 s (default PRESENCE_TIMEOUT).
func TestPresenceKilledInstance(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "a"))
	child := startProcess(t, testEnv(db, "child"))
	const room = "doomed"
	alice := dial(t, a.URL, name("alice"))
	alice.pjoin(room)
	for i := range 3 { // members on the child, which will be killed
		dial(t, child.URL, name(fmt.Sprintf("v%d", i))).pjoin(room)
	}
	// v0 is also present on a: it must stay.
	v0 := dial(t, a.URL, name("v0"))
	v0.pjoin(room)
	waitPresence(t, a, room, "alice", "v0", "v1", "v2")

	killed := time.Now()
	child.cmd.Process.Kill()
	left := map[string]bool{}
	f := alice.until(func(f pframe) bool {
		if f.Type == "presence_diff" {
			for _, l := range f.Leaves {
				left[l] = true
			}
		}
		return left["v1"] && left["v2"]
	}, nil)
	if took := time.Since(killed); took > 10*time.Second {
		t.Fatalf("members of the killed instance left after %v, want within 10s", took)
	}
	if left["v0"] || f.Count != 2 {
		t.Fatalf("last diff %s, left %v: v0 is still on a, count should be 2", f.raw, left)
	}
	t.Logf("members of the killed instance left after %v", time.Since(killed).Round(10*time.Millisecond))
	conn := dbConn(t, db)
	var rows int
	if err := conn.QueryRow(t.Context(), "select count(*) from presence where room = $1", room).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("presence rows of %s: %d (%v), want 2 (alice and v0 on a)", room, rows, err)
	}
}

// userTableRows counts the rows of every table in the public schema.
func userTableRows(t *testing.T, db string) map[string]int64 {
	t.Helper()
	conn := dbConn(t, db)
	rows, err := conn.Query(t.Context(), "select tablename from pg_tables where schemaname = 'public'")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	for _, n := range names {
		var c int64
		if err := conn.QueryRow(t.Context(), fmt.Sprintf("select count(*) from %q", n)).Scan(&c); err != nil {
			t.Fatal(err)
		}
		counts[n] = c
	}
	return counts
}

// TestTypingAcrossInstances: typing reaches the other members on every
// instance once, not the typist's own connections, is throttled, and
// writes no row.
func TestTypingAcrossInstances(t *testing.T) {
	t.Parallel()
	db, in := startThree(t)
	const room = "typing"
	alice := dial(t, in[0].URL, name("alice"))
	alice.pjoin(room)
	carol := dial(t, in[0].URL, name("carol"))
	carol.pjoin(room)
	bob := dial(t, in[1].URL, name("bob"))
	bob.pjoin(room)
	alice2 := dial(t, in[2].URL, name("alice"))
	alice2.pjoin(room)
	dan := dial(t, in[2].URL, name("dan"))
	dan.pjoin(room)
	for _, i := range in {
		waitPresence(t, i, room, "alice", "bob", "carol", "dan")
	}
	before := userTableRows(t, db)

	for range 5 {
		alice.write(map[string]any{"type": "typing", "room": room})
	}
	alice2.write(map[string]any{"type": "typing", "room": room}) // the same author elsewhere: throttled too
	// carol is on alice's instance, and alice's typing reaches her first.
	// Frames of different connections are handled in no set order, so
	// carol types only once alice's typing has reached her: then it leaves
	// a after alice's (or after alice2's, which a has already seen) and
	// marks the end for the others.
	got := carol.until(func(f pframe) bool { return f.Type == "typing" }, nil)
	if got.Author != "alice" {
		t.Fatalf("carol got %s first, want alice's typing", got.raw)
	}
	carol.write(map[string]any{"type": "typing", "room": room})

	check := func(who string, c *wsClient, want int) {
		t.Helper()
		got := 0
		c.until(func(f pframe) bool { return f.Type == "typing" && f.Author == "carol" }, func(f pframe) {
			if f.Type == "typing" && f.Author == "alice" {
				if f.Room != room {
					t.Fatalf("%s got %s", who, f.raw)
				}
				got++
			}
		})
		if got != want {
			t.Fatalf("%s got alice's typing %d times, want %d", who, got, want)
		}
	}
	check("bob (b)", bob, 1)
	check("dan (c)", dan, 1)
	check("alice (c)", alice2, 0)
	// carol got alice's typing once, and not her own.
	carol.write(map[string]any{"type": "typing", "room": "elsewhere", "ref": "t0"})
	carol.until(func(f pframe) bool { return f.Type == "error" && f.Ref == "t0" }, func(f pframe) {
		if f.Type == "typing" {
			t.Fatalf("carol got %s after alice's typing, want none", f.raw)
		}
	})

	// Typing in a room not joined: not_joined, and the connection stays.
	bob.write(map[string]any{"type": "typing", "room": "elsewhere", "ref": "t1"})
	if f := bob.until(func(f pframe) bool { return f.Type == "error" }, nil); f.Code != "not_joined" {
		t.Fatalf("typing in a room not joined: %s", f.raw)
	}

	// No row anywhere: compare every table.
	if after := userTableRows(t, db); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("typing changed table rows: before %v, after %v", before, after)
	}
}

// TestReadState: read cursors are monotonic, clamped, durable across
// reconnects, give the right unread, and their receipts reach every member
// connection, the reader's others included.
func TestReadState(t *testing.T) {
	t.Parallel()
	_, in := startThree(t)
	const room = "reads"
	bob := dial(t, in[0].URL, name("bob"))
	bob.pjoin(room)
	for i := range 5 {
		bob.send(room, fmt.Sprintf("m%d", i), fmt.Sprintf("r%d", i))
		bob.until(func(f pframe) bool { return f.Type == "ack" }, nil)
	}
	alice := dial(t, in[1].URL, name("alice"))
	if j, _ := alice.pjoin(room); *j.Read != 0 || *j.Unread != 5 || j.Seq != 5 {
		t.Fatalf("alice joined %s, want read 0, unread 5", j.raw)
	}
	alice2 := dial(t, in[2].URL, name("alice"))
	alice2.pjoin(room)

	receipt := func(c *wsClient, seq int64) {
		t.Helper()
		f := c.until(func(f pframe) bool { return f.Type == "read" }, nil)
		if f.Author != "alice" || f.Seq != seq || f.Room != room {
			t.Fatalf("receipt %s, want alice at %d", f.raw, seq)
		}
	}
	alice.write(map[string]any{"type": "read", "room": room, "seq": 3})
	receipt(alice, 3)
	receipt(alice2, 3)
	receipt(bob, 3)

	// Lower: ignored. Past the head: clamped to it.
	alice.write(map[string]any{"type": "read", "room": room, "seq": 2})
	alice.write(map[string]any{"type": "read", "room": room, "seq": 99})
	receipt(alice2, 5)
	receipt(bob, 5)

	// Bad frames get errors; the connection stays.
	for _, bad := range []string{
		`{"type":"read","room":"reads","seq":-1,"ref":"b1"}`,
		`{"type":"read","room":"reads","seq":1.5,"ref":"b2"}`,
		`{"type":"read","room":"reads","seq":"4","ref":"b3"}`,
		`{"type":"read","room":"reads","ref":"b4"}`,
	} {
		alice.writeRaw(bad)
		if f := alice.until(func(f pframe) bool { return f.Type == "error" }, nil); f.Code != "bad_request" {
			t.Fatalf("%s: got %s, want bad_request", bad, f.raw)
		}
	}
	alice.writeRaw(`{"type":"read","room":"other","seq":1,"ref":"b5"}`)
	if f := alice.until(func(f pframe) bool { return f.Type == "error" }, nil); f.Code != "not_joined" {
		t.Fatalf("read of a room not joined: got %s", f.raw)
	}

	// Two more from bob, one from alice: unread counts only bob's.
	bob.send(room, "m5", "r5")
	bob.send(room, "m6", "r6")
	for range 2 {
		bob.until(func(f pframe) bool { return f.Type == "ack" }, nil)
	}
	alice.send(room, "mine", "a1")
	alice.until(func(f pframe) bool { return f.Type == "ack" }, nil)
	alice.conn.Close(websocket.StatusNormalClosure, "")
	alice3 := dial(t, in[2].URL, name("alice"))
	if j, _ := alice3.pjoin(room); *j.Read != 5 || *j.Unread != 2 || j.Seq != 8 {
		t.Fatalf("alice rejoined %s, want read 5, unread 2 (bob's two, not her own)", j.raw)
	}

	var page struct {
		Room  string `json:"room"`
		Reads []struct {
			Author string `json:"author"`
			Seq    int64  `json:"seq"`
			Ts     string `json:"ts"`
		} `json:"reads"`
	}
	if code := getJSON(t, in[0].URL+"/api/rooms/"+room+"/reads", &page); code != http.StatusOK {
		t.Fatalf("GET reads: %d", code)
	}
	if page.Room != room || len(page.Reads) != 1 || page.Reads[0].Author != "alice" || page.Reads[0].Seq != 5 || !strings.HasSuffix(page.Reads[0].Ts, "Z") {
		t.Fatalf("reads page %+v", page)
	}
}
