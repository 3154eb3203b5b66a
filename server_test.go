package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/store/storetest"
)

func TestCrossInstanceDelivery(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice, bob := dial(t, a.URL, name("alice")), dial(t, b.URL, name("bob"))
	if alice.welcome.Instance != "app-1" || alice.welcome.Author != "alice" {
		t.Fatalf("alice's welcome = %+v, want instance app-1, author alice", alice.welcome)
	}
	alice.join("general")
	bob.join("general")
	alice.send("general", "hi from app-1", "c-1")

	ack := alice.nextOf("ack")
	if ack.Ref != "c-1" || ack.Seq != 1 || ack.Room != "general" {
		t.Fatalf("ack = %+v, want ref c-1 seq 1 room general", ack)
	}
	got := bob.messages(1)[0]
	if got.Seq != 1 || got.Body != "hi from app-1" || got.Author != "alice" || got.Instance != "app-1" || got.Ts == "" {
		t.Fatalf("bob got %+v, want seq 1 from alice tagged app-1", got)
	}

	var room, author, body, inst string
	var seq int64
	conn := dbConn(t, db)
	err := conn.QueryRow(t.Context(), "select room, seq, author, body, instance from messages").Scan(&room, &seq, &author, &body, &inst)
	if err != nil || room != "general" || seq != 1 || author != "alice" || body != "hi from app-1" || inst != "app-1" {
		t.Fatalf("messages row = %s %d %s %q %s (err %v), want general 1 alice %q app-1", room, seq, author, body, inst, err, "hi from app-1")
	}
}

// TestConcurrentSendersEveryInstance: every member on every instance ends
// with the identical, gap-free sequence.
func TestConcurrentSendersEveryInstance(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var instances []*instance
	for i := range 3 {
		instances = append(instances, startInstance(t, testEnv(db, fmt.Sprintf("app-%d", i+1))))
	}
	const perInstance, perSender = 3, 40
	var clients []*wsClient
	for i, in := range instances {
		for j := range perInstance {
			c := dial(t, in.URL, name(fmt.Sprintf("u%d-%d", i, j)))
			c.join("busy")
			clients = append(clients, c)
		}
	}
	total := len(clients) * perSender
	var wg sync.WaitGroup
	results := make([][]frame, len(clients))
	for i, c := range clients {
		wg.Go(func() {
			// Each client sends and reads on one goroutine: writes are
			// small and the server never blocks on a client, so this
			// cannot deadlock.
			var got []frame
			acks := 0
			for k := range perSender {
				if err := c.trySend("busy", fmt.Sprintf("m %d/%d", i, k), fmt.Sprintf("r-%d", k)); err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
			}
			for len(got) < total || acks < perSender {
				f, err := c.tryNext(30 * time.Second)
				if err != nil {
					t.Errorf("client %d after %d messages, %d acks: %v", i, len(got), acks, err)
					return
				}
				switch f.Type {
				case "message":
					got = append(got, f)
				case "ack":
					acks++
				default:
					t.Errorf("client %d: unexpected %+v", i, f)
					return
				}
			}
			results[i] = got
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, got := range results {
		checkSeqs(t, fmt.Sprintf("client %d", i), got, 1)
		for k := range got {
			if got[k] != results[0][k] {
				t.Fatalf("client %d message %d = %+v, client 0 has %+v", i, k, got[k], results[0][k])
			}
		}
	}
}

func TestJoinSinceReplaysExactlyTheRest(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	for i := range 10 {
		alice.send("r", fmt.Sprint("m", i+1), fmt.Sprint("c", i))
		alice.nextOf("ack")
	}
	// A client that saw up to seq 4 reconnects elsewhere.
	bob := dial(t, b.URL, name("bob"))
	replay, joined := bob.join("r", 4)
	checkSeqs(t, "replay", replay, 5)
	if len(replay) != 6 || joined.Seq != 10 || joined.Recovered == nil || !*joined.Recovered {
		t.Fatalf("replay of %d messages, joined %+v; want 6 messages (5..10), seq 10, recovered", len(replay), joined)
	}
	// Live messages follow the replay without a gap.
	alice.send("r", "m11", "c11")
	if got := bob.messages(1)[0]; got.Seq != 11 {
		t.Fatalf("after the replay bob got seq %d, want 11", got.Seq)
	}
	// Default history: the last HISTORY_LIMIT.
	carol := dial(t, b.URL, name("carol"))
	replay, joined = carol.join("r")
	if len(replay) != 11 || joined.Seq != 11 {
		t.Fatalf("default join replayed %d, joined %+v; want 11 messages and seq 11", len(replay), joined)
	}
	// Up to date: nothing to replay.
	dave := dial(t, b.URL, name("dave"))
	replay, joined = dave.join("r", 11)
	if len(replay) != 0 || joined.Seq != 11 || !*joined.Recovered {
		t.Fatalf("join since 11 replayed %d, joined %+v; want none, seq 11, recovered", len(replay), joined)
	}
}

func TestReplayCap(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "REPLAY_LIMIT=20", "HISTORY_LIMIT=5"))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	for i := range 50 {
		alice.send("r", fmt.Sprint("m", i+1), fmt.Sprint("c", i))
	}
	for range 50 {
		alice.nextOf("ack")
	}
	bob := dial(t, a.URL, name("bob"))
	replay, joined := bob.join("r", 5)
	checkSeqs(t, "capped replay", replay, 31)
	if len(replay) != 20 || joined.Seq != 50 || joined.Recovered == nil || *joined.Recovered {
		t.Fatalf("replay of %d, joined %+v; want the newest 20 (31..50), seq 50, recovered false", len(replay), joined)
	}
	carol := dial(t, a.URL, name("carol"))
	replay, joined = carol.join("r", 30)
	if len(replay) != 20 || !*joined.Recovered {
		t.Fatalf("join since 30 replayed %d, joined %+v; want 20, recovered", len(replay), joined)
	}
}

func TestResendSameRefIsStoredOnce(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	alice.send("r", "first", "x-1")
	first := alice.nextOf("ack")
	alice.send("r", "second", "x-2")
	alice.nextOf("ack")
	alice.conn.Close(websocket.StatusNormalClosure, "")

	// After a reconnect, on another instance, alice resends x-1.
	again := dial(t, b.URL, name("alice"))
	again.join("r")
	again.send("r", "first", "x-1")
	ack := again.nextOf("ack")
	if ack.Seq != first.Seq || ack.Ref != "x-1" {
		t.Fatalf("resent x-1 acked %+v, want seq %d", ack, first.Seq)
	}
	// Same ref from someone else is a different message.
	bob := dial(t, b.URL, name("bob"))
	bob.join("r")
	bob.send("r", "bob's", "x-1")
	if ack := bob.nextOf("ack"); ack.Seq != 3 {
		t.Fatalf("bob's x-1 acked seq %d, want 3", ack.Seq)
	}
	var n int
	conn := dbConn(t, db)
	if err := conn.QueryRow(t.Context(), "select count(*) from messages where author = 'alice' and ref = 'x-1'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("alice's x-1 stored %d times (err %v), want once", n, err)
	}
}

// TestListenerKilledMidStream: the listening connection is terminated while
// messages flow; the other instance's members still get every message once.
func TestListenerKilledMidStream(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice, bob := dial(t, a.URL, name("alice")), dial(t, b.URL, name("bob"))
	alice.join("r")
	bob.join("r")
	conn := dbConn(t, db)
	const total = 300
	for i := range total {
		alice.send("r", fmt.Sprint("m", i), fmt.Sprint("c", i))
		if i%60 == 30 {
			killListeners(t, conn, 2)
		}
	}
	got := bob.messages(total)
	checkSeqs(t, "bob", got, 1)
	// Nothing more is queued for bob: a duplicate would show up here.
	alice.send("r", "last", "c-last")
	if f := bob.messages(1)[0]; f.Seq != total+1 {
		t.Fatalf("after the stream bob got seq %d, want %d", f.Seq, total+1)
	}
}

func TestMessageTooBigForNotification(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_MESSAGE_BYTES=20000"))
	b := startInstance(t, testEnv(db, "app-2", "MAX_MESSAGE_BYTES=20000"))
	alice, bob := dial(t, a.URL, name("alice")), dial(t, b.URL, name("bob"))
	alice.join("r")
	bob.join("r")
	big := strings.Repeat("é", 7500) // 15000 bytes
	alice.send("r", "small", "c1")
	alice.send("r", big, "c2")
	alice.send("r", "small again", "c3")
	got := bob.messages(3)
	checkSeqs(t, "bob", got, 1)
	if got[1].Body != big {
		t.Fatalf("big message arrived with %d bytes, want %d", len(got[1].Body), len(big))
	}

	// Over MAX_MESSAGE_BYTES: too_large, and the connection stays open.
	alice.send("r", strings.Repeat("x", 20001), "c4")
	if e := alice.nextOf("error"); e.Code != "too_large" || e.Ref != "c4" {
		t.Fatalf("oversized send answered %+v, want too_large for c4", e)
	}
	alice.send("r", "still here", "c5")
	if ack := alice.nextOf("ack"); ack.Ref != "c5" || ack.Seq != 4 {
		t.Fatalf("after too_large, ack %+v, want c5 seq 4", ack)
	}
}

func TestBadFramesKeepTheConnection(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	c := dial(t, a.URL, name("alice"))
	cases := []struct{ in, code string }{
		{`not json`, "bad_request"},
		{`{"type":"dance","room":"r"}`, "bad_request"},
		{`{"type":"join","room":"bad room!"}`, "bad_request"},
		{`{"type":"send","room":"r","body":"hi","ref":"a"}`, "not_joined"},
		{`{"type":"leave","room":"r"}`, "not_joined"},
	}
	for _, tc := range cases {
		c.writeRaw(tc.in)
		if f := c.next(); f.Type != "error" || f.Code != tc.code {
			t.Errorf("%s answered %+v, want error %s", tc.in, f, tc.code)
		}
	}
	c.join("r")
	c.send("r", "fine", "ok")
	if ack := c.nextOf("ack"); ack.Ref != "ok" {
		t.Fatalf("after bad frames, ack = %+v", ack)
	}
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "SEND_BUFFER_BYTES=524288", "WRITE_TIMEOUT=60s"))
	sender, fast := dial(t, a.URL, name("sender")), dial(t, a.URL, name("fast"))
	slow := dial(t, a.URL, name("slow"))
	sender.join("r")
	fast.join("r")
	slow.join("r")     // and then never reads
	const total = 3000 // 6 MB: more than the socket buffers and the queue hold
	body := strings.Repeat("x", 2000)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		for i := range total {
			if ctx.Err() != nil {
				return
			}
			if err := sender.trySend("r", body, fmt.Sprint("c", i)); err != nil && ctx.Err() == nil {
				t.Errorf("sender: %v", err)
				return
			}
		}
	}()
	go func() { // the sender's acks and copies must be read too
		for ctx.Err() == nil {
			if _, _, err := sender.conn.Read(ctx); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	got := fast.messages(total)
	checkSeqs(t, "fast", got, 1)
	t.Logf("fast got %d in %v", total, time.Since(start))

	// The slow one, reading at last, finds a close frame after what had
	// been written to it (it would not if it never read: no close frame
	// fits in a full TCP window, and WRITE_TIMEOUT drops the connection).
	defer func() { t.Logf("slow done after %v", time.Since(start)) }()
	for {
		var f frame
		err := readFrame(t.Context(), slow.conn, &f)
		if err != nil {
			if s := websocket.CloseStatus(err); s != websocket.StatusPolicyViolation {
				t.Fatalf("slow consumer ended with %v (status %v), want close 1008", err, s)
			}
			break
		}
	}
	if got := scrape(t, a.URL)["pgchat_slow_consumer_disconnects_total"]; got != 1 {
		t.Errorf("pgchat_slow_consumer_disconnects_total = %v, want 1", got)
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	c := dial(t, a.URL, name("alice"))
	c.join("r")
	const n = 200
	for i := range n {
		c.send("r", fmt.Sprint("m", i), fmt.Sprint("c", i))
	}
	// Stop while sends are in flight.
	answered := map[string]string{}
	first := c.nextOf("ack")
	answered[first.Ref] = "ack"
	acked := []string{first.Ref}
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()

	for {
		var f frame
		err := readFrame(t.Context(), c.conn, &f)
		if err != nil {
			if s := websocket.CloseStatus(err); s != websocket.StatusGoingAway {
				t.Fatalf("connection ended with %v, want close 1001", err)
			}
			break
		}
		switch f.Type {
		case "ack":
			answered[f.Ref] = "ack"
			acked = append(acked, f.Ref)
		case "error":
			answered[f.Ref] = f.Code
		}
	}
	if err := <-stopped; err != nil {
		t.Fatalf("serve returned %v", err)
	}
	conn := dbConn(t, db)
	var stored []string
	if err := conn.QueryRow(t.Context(), "select coalesce(array_agg(ref), '{}') from messages").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	// Every send the server took in was answered: an acked one is stored,
	// and nothing is stored that was not acked (a stored, unanswered send
	// would mean the server closed with a send in flight). Sends it never
	// read are simply not stored; the client resends them.
	storedSet := map[string]bool{}
	for _, ref := range stored {
		storedSet[ref] = true
		if answered[ref] != "ack" {
			t.Errorf("%s is stored but was answered %q", ref, answered[ref])
		}
	}
	for _, ref := range acked {
		if !storedSet[ref] {
			t.Errorf("%s was acked but is not stored", ref)
		}
	}
	t.Logf("%d sends: %d acked, %d answered in all, the rest unread at close", n, len(acked), len(answered))
}

// killListeners waits until want listening connections are up, then
// terminates them.
func killListeners(t *testing.T, conn *pgx.Conn, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pids []int32
		err := conn.QueryRow(t.Context(), `select coalesce(array_agg(pid), '{}') from pg_stat_activity
			where datname = current_database() and query ilike 'listen%'`).Scan(&pids)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) >= want {
			if _, err := conn.Exec(t.Context(), "select pg_terminate_backend(p) from unnest($1::int[]) p", pids); err != nil {
				t.Fatal(err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d listeners connected, want %d", len(pids), want)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting for time to pass
	}
}

// TestKilledInstanceMessagesStillArrive: messages an instance committed
// reach the other instances' members even when it is killed with kill -9
// right after, and every message it acked is among them.
func TestKilledInstanceMessagesStillArrive(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	doomed := startProcess(t, testEnv(db, "app-doomed"))
	b := startInstance(t, testEnv(db, "app-2"))
	bob := dial(t, b.URL, name("bob"))
	bob.join("r")
	alice := dial(t, doomed.URL, name("alice"))
	alice.join("r")

	const total = 2000
	go func() {
		for i := range total {
			if err := alice.conn.Write(t.Context(), websocket.MessageText,
				fmt.Appendf(nil, `{"type":"send","room":"r","body":"m%d","ref":"c%d"}`, i, i)); err != nil {
				return // killed
			}
		}
	}()
	var acked []string
	for len(acked) < 100 {
		var f frame
		if err := readFrame(t.Context(), alice.conn, &f); err != nil {
			t.Fatalf("alice: %v", err)
		}
		if f.Type == "ack" {
			acked = append(acked, f.Ref)
		}
	}
	if err := doomed.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	doomed.cmd.Wait()
	// The dead instance's backends may still be committing: end them so
	// the table is final.
	conn := dbConn(t, db)
	if _, err := conn.Exec(t.Context(), `select pg_terminate_backend(pid) from pg_stat_activity
		where datname = current_database() and application_name like 'pgchat app-doomed%'`); err != nil {
		t.Fatal(err)
	}
	var stored int64
	var refs []string
	if err := conn.QueryRow(t.Context(), `select count(*), coalesce(array_agg(ref), '{}') from messages where room = 'r'`).Scan(&stored, &refs); err != nil {
		t.Fatal(err)
	}
	inTable := map[string]bool{}
	for _, r := range refs {
		inTable[r] = true
	}
	for _, r := range acked {
		if !inTable[r] {
			t.Fatalf("acked %s is not in the table", r)
		}
	}
	// bob gets all of them, in order, within next()'s deadline.
	got := bob.messages(int(stored))
	checkSeqs(t, "bob", got, 1)
	t.Logf("killed after %d acks; %d messages committed, all delivered to the survivor", len(acked), stored)
}

// TestDatabaseOutage: while the database refuses connections, sends get
// unavailable and /readyz 503, the instance keeps running, and it recovers
// by itself once the database is back.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice, bob := dial(t, a.URL, name("alice")), dial(t, b.URL, name("bob"))
	alice.join("r")
	bob.join("r")
	alice.send("r", "before", "c1")
	alice.nextOf("ack")

	admin, err := pgx.Connect(t.Context(), storetest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(t.Context())
	dbName := pgx.Identifier{strings.TrimPrefix(must(url.Parse(db)).Path, "/")}.Sanitize()
	setAllowed := func(allowed bool) {
		t.Helper()
		if _, err := admin.Exec(t.Context(), fmt.Sprintf("alter database %s allow_connections %t", dbName, allowed)); err != nil {
			t.Fatal(err)
		}
	}
	setAllowed(false)
	defer setAllowed(true)
	if _, err := admin.Exec(t.Context(), "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", strings.Trim(dbName, `"`)); err != nil {
		t.Fatal(err)
	}

	alice.send("r", "during", "c2")
	if e := alice.nextOf("error"); e.Code != "unavailable" || e.Ref != "c2" {
		t.Fatalf("send during the outage answered %+v, want unavailable for c2", e)
	}
	waitStatus(t, a.URL+"/readyz", http.StatusServiceUnavailable)
	if resp, err := http.Get(a.URL + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz during the outage: %v %v, want 200", resp, err)
	}

	setAllowed(true)
	waitStatus(t, a.URL+"/readyz", http.StatusOK)
	waitStatus(t, b.URL+"/readyz", http.StatusOK)
	alice.send("r", "during", "c2") // the resend the error asked for
	if ack := alice.nextOf("ack"); ack.Ref != "c2" || ack.Seq != 2 {
		t.Fatalf("resend after the outage acked %+v, want c2 seq 2", ack)
	}
	got := bob.messages(2)
	checkSeqs(t, "bob", got, 1)
}

// waitStatus polls url until it answers status.
func waitStatus(t *testing.T, url string, status int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d (last: %v %v)", url, status, resp, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestHistoryEndpoint(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	alice.join("empty")
	for i := range 5 {
		alice.send("r", fmt.Sprint("m", i+1), fmt.Sprint("c", i))
		alice.nextOf("ack")
	}
	type page struct {
		Head     int64   `json:"head"`
		Messages []frame `json:"messages"`
		Code     string  `json:"code"`
	}
	get := func(path string) (int, page) {
		t.Helper()
		resp, err := http.Get(a.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p page
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, p
	}
	for _, tc := range []struct {
		path     string
		status   int
		head     int64
		first, n int64
		code     string
	}{
		{"/api/rooms/r/messages", 200, 5, 1, 5, ""},
		{"/api/rooms/r/messages?limit=2", 200, 5, 4, 2, ""},
		{"/api/rooms/r/messages?before=4&limit=2", 200, 5, 2, 2, ""},
		{"/api/rooms/r/messages?before=100&limit=2", 200, 5, 4, 2, ""},
		{"/api/rooms/empty/messages", 404, 0, 0, 0, "not_found"}, // joined, never written to
		{"/api/rooms/nowhere/messages", 404, 0, 0, 0, "not_found"},
		{"/api/rooms/r/messages?limit=0", 400, 0, 0, 0, "bad_request"},
	} {
		status, p := get(tc.path)
		if status != tc.status || p.Code != tc.code || p.Head != tc.head || int64(len(p.Messages)) != tc.n {
			t.Errorf("GET %s = %d %+v, want %d code %q head %d with %d messages", tc.path, status, p, tc.status, tc.code, tc.head, tc.n)
			continue
		}
		checkSeqs(t, tc.path, p.Messages, tc.first)
	}
}
