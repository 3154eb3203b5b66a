package store_test

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/migrations"
	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// open returns a DB with its own pool over url, closed when t ends.
func open(t testing.TB, url, instance string) *store.DB {
	t.Helper()
	db, err := store.Open(t.Context(), url, instance)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

// connect returns a plain connection to url, closed when t ends.
func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// listen runs a Listener on url until t ends. Payloads go to the returned
// channel (which must be big enough for the test: OnNotify must not block);
// Listen returns once LISTEN is live.
func listen(t testing.TB, url string, buffer int) <-chan string {
	t.Helper()
	payloads := make(chan string, buffer)
	ready := make(chan struct{})
	var once sync.Once
	l := &store.Listener{
		Connect:  func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
		OnListen: func(context.Context) { once.Do(func() { close(ready) }) },
		OnNotify: func(p string) {
			select {
			case payloads <- p:
			default:
				t.Errorf("listener: more than %d notifications", buffer)
			}
		},
		ReconnectDelay: 10 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Listen(ctx); err != nil {
			t.Errorf("Listen = %v, want nil", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("listener: no LISTEN after 10s")
	}
	return payloads
}

// withoutTime lets messages be compared with ==; compare Time with Equal.
func withoutTime(m store.Message) store.Message {
	m.Time = time.Time{}
	return m
}

func sameMessage(a, b store.Message) bool {
	return withoutTime(a) == withoutTime(b) && a.Time.Equal(b.Time)
}

func seqs(msgs []store.Message) []int64 {
	s := make([]int64, len(msgs))
	for i, m := range msgs {
		s[i] = m.Seq
	}
	return s
}

// span returns the seqs from..to (empty when to < from).
func span(from, to int64) []int64 {
	s := []int64{}
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestAppendSeq(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	db := open(t, storetest.NewDB(t), "app-1")

	start := time.Now()
	in := []store.NewMessage{
		{Room: "a", Author: "alice", Body: "a1", Ref: "r-1"},
		{Room: "b", Author: "bob", Body: "b1"},
		{Room: "a", Author: "bob", Body: "a2"},
		{Room: "a", Author: "alice", Body: "a3", Ref: "r-2"},
		{Room: "b", Author: "alice", Body: "b2", Ref: "r-1"},
	}
	wantSeqs := []int64{1, 1, 2, 3, 2}
	res, err := db.Append(ctx, in)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if len(res) != len(in) {
		t.Fatalf("Append returned %d results, want %d", len(res), len(in))
	}
	for i, r := range res {
		m := in[i]
		want := store.Message{Room: m.Room, Seq: wantSeqs[i], Author: m.Author, Body: m.Body, Instance: "app-1", Ref: m.Ref}
		if withoutTime(r.Message) != want || r.Duplicate {
			t.Errorf("Append result %d = %+v, want %+v", i, r, store.Result{Message: want})
		}
		// The database's clock; allow for skew between it and ours.
		if r.Time.Before(start.Add(-time.Minute)) || r.Time.After(time.Now().Add(time.Minute)) {
			t.Errorf("Append result %d Time = %v, want about %v", i, r.Time, start)
		}
	}

	// A later call carries on from each room's head.
	res2, err := db.Append(ctx, []store.NewMessage{
		{Room: "b", Author: "bob", Body: "b3"},
		{Room: "c", Author: "bob", Body: "c1"},
		{Room: "a", Author: "bob", Body: "a4"},
	})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if got, want := seqs([]store.Message{res2[0].Message, res2[1].Message, res2[2].Message}), []int64{3, 1, 4}; !slices.Equal(got, want) {
		t.Errorf("second Append seqs = %v, want %v", got, want)
	}

	// What Append returned is what was stored.
	all := append(res, res2...)
	for _, room := range []string{"a", "b", "c"} {
		stored, err := db.Since(ctx, room, 0, 100)
		if err != nil {
			t.Fatalf("Since: %v", err)
		}
		var want []store.Message
		for _, r := range all {
			if r.Room == room {
				want = append(want, r.Message)
			}
		}
		slices.SortFunc(want, func(a, b store.Message) int { return int(a.Seq - b.Seq) })
		if len(stored) != len(want) {
			t.Errorf("Since(%q, 0) = %d messages, want %d", room, len(stored), len(want))
			continue
		}
		for i := range want {
			if !sameMessage(stored[i], want[i]) {
				t.Errorf("Since(%q, 0)[%d] = %+v, want %+v", room, i, stored[i], want[i])
			}
		}
	}
	heads, err := db.Heads(ctx, []string{"a", "b", "c"})
	if err != nil {
		t.Fatalf("Heads: %v", err)
	}
	if want := map[string]int64{"a": 4, "b": 3, "c": 1}; !mapsEqual(heads, want) {
		t.Errorf("Heads = %v, want %v", heads, want)
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestAppendConcurrentInstances appends from several DBs, each with its own
// pool like separate instances, into one room at once. The room must end up
// with seqs 1..N without a gap or a duplicate, and the notifications must
// announce them in seq order (commit order == seq order).
func TestAppendConcurrentInstances(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	const (
		instances = 4
		writers   = 8 // per instance
		appends   = 25
		room      = "general"
		side      = "side" // shares some transactions, to exercise lock order
	)
	payloads := listen(t, url, 10*instances*writers*appends)

	var (
		mu      sync.Mutex
		results []store.Result
	)
	var wg sync.WaitGroup
	for i := range instances {
		instance := fmt.Sprintf("app-%d", i)
		db := open(t, url, instance)
		for w := range writers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for k := range appends {
					var batch []store.NewMessage
					for j := range 1 + rng.IntN(5) {
						batch = append(batch, store.NewMessage{Room: room, Author: instance, Body: fmt.Sprintf("%d/%d/%d/%d", i, w, k, j)})
					}
					if k%3 == 0 {
						batch = append(batch, store.NewMessage{Room: side, Author: instance, Body: "side"})
					}
					res, err := db.Append(ctx, batch)
					if err != nil {
						t.Errorf("%s: Append: %v", instance, err)
						return
					}
					for j, r := range res {
						if r.Instance != instance || r.Body != batch[j].Body || r.Duplicate {
							t.Errorf("%s: Append result %d = %+v, want body %q from %s", instance, j, r, batch[j].Body, instance)
						}
					}
					mu.Lock()
					results = append(results, res...)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	// Every Result of the room has its own seq, and together they are 1..N.
	bySeq := map[int64]store.Message{}
	var sideN int64
	for _, r := range results {
		if r.Room == side {
			sideN++
			continue
		}
		if prev, ok := bySeq[r.Seq]; ok {
			t.Errorf("seq %d given to %q and %q", r.Seq, prev.Body, r.Body)
		}
		bySeq[r.Seq] = r.Message
	}
	n := int64(len(results)) - sideN
	for seq := int64(1); seq <= n; seq++ {
		if _, ok := bySeq[seq]; !ok {
			t.Errorf("no Result has seq %d of 1..%d", seq, n)
		}
	}

	// The table agrees.
	conn := connect(t, url)
	for _, tc := range []struct {
		room string
		n    int64
	}{{room, n}, {side, sideN}} {
		var count, lo, hi, distinct, last int64
		err := conn.QueryRow(ctx, `
			select count(*), coalesce(min(seq), 0), coalesce(max(seq), 0), count(distinct seq),
			       (select last_seq from rooms where name = $1)
			from messages where room = $1`, tc.room).Scan(&count, &lo, &hi, &distinct, &last)
		if err != nil {
			t.Fatalf("query messages: %v", err)
		}
		if count != tc.n || lo != 1 || hi != tc.n || distinct != tc.n || last != tc.n {
			t.Errorf("room %q: count, min, max, distinct seq, last_seq = %d, %d, %d, %d, %d; want %d, 1, %d, %d, %d",
				tc.room, count, lo, hi, distinct, last, tc.n, tc.n, tc.n, tc.n)
		}
	}

	// Notifications announce each seq once, in order, with its message.
	var next int64 = 1
	for next <= n {
		var p string
		select {
		case p = <-payloads:
		case <-ctx.Done():
			t.Fatalf("notifications stop at seq %d, want up to %d", next-1, n)
		}
		note, err := store.DecodeNotification(p)
		if err != nil {
			t.Fatalf("DecodeNotification: %v", err)
		}
		if note.Room != room {
			continue
		}
		for _, m := range note.Messages {
			if m.Seq != next {
				t.Fatalf("notified seq %d after %d, want %d", m.Seq, next-1, next)
			}
			if want := bySeq[m.Seq]; m.Body != want.Body || m.Instance != want.Instance || m.Author != want.Author || !m.Time.Equal(want.Time) {
				t.Errorf("notified seq %d = %+v, want %+v", m.Seq, m, want)
			}
			next++
		}
		// Small bodies: nothing is left out as a stub.
		if note.Last != next-1 {
			t.Fatalf("notification Last = %d, want %d (the last message in it)", note.Last, next-1)
		}
	}
}

func TestAppendRef(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	db := open(t, url, "app-1")

	appendOne := func(m store.NewMessage) store.Result {
		t.Helper()
		res, err := db.Append(ctx, []store.NewMessage{m})
		if err != nil {
			t.Fatalf("Append(%+v): %v", m, err)
		}
		return res[0]
	}
	first := appendOne(store.NewMessage{Room: "r", Author: "alice", Body: "hi", Ref: "c-1"})
	if first.Seq != 1 || first.Duplicate {
		t.Fatalf("first Append = seq %d duplicate %v, want seq 1 duplicate false", first.Seq, first.Duplicate)
	}

	// A resend in a later call, even with another body, is the stored message.
	again := appendOne(store.NewMessage{Room: "r", Author: "alice", Body: "hi (resent)", Ref: "c-1"})
	if !again.Duplicate || !sameMessage(again.Message, first.Message) {
		t.Errorf("resend = %+v, want the first message %+v with Duplicate", again, first.Message)
	}

	// Twice within one call, around a message without a ref, and a resend
	// of c-1 in the same call.
	res, err := db.Append(ctx, []store.NewMessage{
		{Room: "r", Author: "alice", Body: "x", Ref: "c-2"},
		{Room: "r", Author: "carol", Body: "no ref"},
		{Room: "r", Author: "alice", Body: "x again", Ref: "c-2"},
		{Room: "r", Author: "alice", Body: "hi", Ref: "c-1"},
	})
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	for i, want := range []struct {
		seq  int64
		body string
		dup  bool
	}{{2, "x", false}, {3, "no ref", false}, {2, "x", true}, {1, "hi", true}} {
		if res[i].Seq != want.seq || res[i].Body != want.body || res[i].Duplicate != want.dup {
			t.Errorf("Append result %d = seq %d body %q duplicate %v, want seq %d body %q duplicate %v",
				i, res[i].Seq, res[i].Body, res[i].Duplicate, want.seq, want.body, want.dup)
		}
	}
	if !res[2].Time.Equal(res[0].Time) || res[2].Ref != "c-2" {
		t.Errorf("in-call duplicate = %+v, want the same as %+v", res[2].Message, res[0].Message)
	}

	// The same ref from another author or in another room is another message.
	if r := appendOne(store.NewMessage{Room: "r", Author: "bob", Body: "hi", Ref: "c-1"}); r.Seq != 4 || r.Duplicate {
		t.Errorf("c-1 from bob = seq %d duplicate %v, want seq 4 duplicate false", r.Seq, r.Duplicate)
	}
	if r := appendOne(store.NewMessage{Room: "r2", Author: "alice", Body: "hi", Ref: "c-1"}); r.Seq != 1 || r.Duplicate {
		t.Errorf("c-1 in r2 = seq %d duplicate %v, want seq 1 duplicate false", r.Seq, r.Duplicate)
	}
	// No ref: never deduplicated.
	if r := appendOne(store.NewMessage{Room: "r", Author: "carol", Body: "no ref"}); r.Seq != 5 || r.Duplicate {
		t.Errorf("second message without ref = seq %d duplicate %v, want seq 5 duplicate false", r.Seq, r.Duplicate)
	}

	conn := connect(t, url)
	var rows, c1, c2, last int64
	err = conn.QueryRow(ctx, `
		select count(*),
		       count(*) filter (where author = 'alice' and ref = 'c-1'),
		       count(*) filter (where author = 'alice' and ref = 'c-2'),
		       (select last_seq from rooms where name = 'r')
		from messages where room = 'r'`).Scan(&rows, &c1, &c2, &last)
	if err != nil {
		t.Fatalf("query messages: %v", err)
	}
	if rows != 5 || c1 != 1 || c2 != 1 || last != 5 {
		t.Errorf("room r rows, alice c-1 rows, alice c-2 rows, last_seq = %d, %d, %d, %d; want 5, 1, 1, 5", rows, c1, c2, last)
	}
}

// TestAppendRefConcurrent resends one ref through several instances at once,
// like a client that reconnected elsewhere while its first send was in
// flight: one message is stored and every instance answers with its seq.
func TestAppendRefConcurrent(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	const instances = 6
	dbs := make([]*store.DB, instances)
	for i := range dbs {
		dbs[i] = open(t, url, fmt.Sprintf("app-%d", i))
	}
	start := make(chan struct{})
	res := make([]store.Result, instances)
	var wg sync.WaitGroup
	for i, db := range dbs {
		wg.Go(func() {
			<-start
			r, err := db.Append(ctx, []store.NewMessage{{Room: "r", Author: "alice", Body: "hi", Ref: "c-1"}})
			if err != nil {
				t.Errorf("app-%d: Append: %v", i, err)
				return
			}
			res[i] = r[0]
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	fresh := 0
	for i, r := range res {
		if !r.Duplicate {
			fresh++
		}
		if r.Seq != 1 || !sameMessage(r.Message, res[0].Message) {
			t.Errorf("app-%d: Append = %+v, want %+v", i, r.Message, res[0].Message)
		}
	}
	if fresh != 1 {
		t.Errorf("%d of %d results are not duplicates, want 1", fresh, instances)
	}
}

func TestReads(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	db := open(t, url, "app-1")
	var in []store.NewMessage
	for i := range 10 {
		in = append(in, store.NewMessage{Room: "r", Author: "alice", Body: strconv.Itoa(i + 1)})
	}
	if _, err := db.Append(ctx, in); err != nil {
		t.Fatalf("Append: %v", err)
	}
	// A room that exists without messages (as after a join).
	if _, err := connect(t, url).Exec(ctx, "insert into rooms (name) values ('empty')"); err != nil {
		t.Fatalf("create room: %v", err)
	}

	check := func(call string, msgs []store.Message, want []int64) {
		t.Helper()
		if got := seqs(msgs); !slices.Equal(got, want) {
			t.Errorf("%s seqs = %v, want %v", call, got, want)
		}
		for _, m := range msgs {
			if m.Room != "r" || m.Body != strconv.FormatInt(m.Seq, 10) || m.Author != "alice" || m.Instance != "app-1" || m.Time.IsZero() {
				t.Errorf("%s message = %+v, want room r, body %d, author alice, instance app-1, a time", call, m, m.Seq)
			}
		}
	}

	for _, tc := range []struct {
		room         string
		after        int64
		limit        int
		wantSeqs     []int64
		wantSince    []int64 // nil: the same as wantSeqs
		wantRecentNs []int64 // Recent: the newest limit after after
	}{
		{room: "r", after: 0, limit: 100, wantSeqs: span(1, 10), wantRecentNs: span(1, 10)},
		{room: "r", after: 3, limit: 4, wantSeqs: span(4, 7), wantRecentNs: span(7, 10)},
		{room: "r", after: 0, limit: 3, wantSeqs: span(1, 3), wantRecentNs: span(8, 10)},
		{room: "r", after: 8, limit: 5, wantSeqs: span(9, 10), wantRecentNs: span(9, 10)},
		{room: "r", after: 2, limit: 5, wantSeqs: span(3, 7), wantRecentNs: span(6, 10)},
		{room: "r", after: 10, limit: 5, wantSeqs: span(1, 0), wantRecentNs: span(1, 0)},
		{room: "r", after: 50, limit: 5, wantSeqs: span(1, 0), wantRecentNs: span(1, 0)},
		{room: "r", after: 0, limit: 0, wantSeqs: span(1, 0), wantRecentNs: span(1, 0)},
		{room: "empty", after: 0, limit: 5, wantSeqs: span(1, 0), wantRecentNs: span(1, 0)},
		{room: "unknown", after: 0, limit: 5, wantSeqs: span(1, 0), wantRecentNs: span(1, 0)},
	} {
		msgs, err := db.Since(ctx, tc.room, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("Since: %v", err)
		}
		check(fmt.Sprintf("Since(%q, %d, %d)", tc.room, tc.after, tc.limit), msgs, tc.wantSeqs)

		call := fmt.Sprintf("Recent(%q, %d, %d)", tc.room, tc.after, tc.limit)
		head, msgs, err := db.Recent(ctx, tc.room, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("%s: %v", call, err)
		}
		check(call, msgs, tc.wantRecentNs)
		if want := map[string]int64{"r": 10}[tc.room]; head != want {
			t.Errorf("%s head = %d, want %d", call, head, want)
		}
	}

	for _, tc := range []struct {
		room   string
		before int64
		limit  int
		want   []int64
	}{
		{"r", 0, 3, span(8, 10)},
		{"r", -1, 3, span(8, 10)},
		{"r", 0, 100, span(1, 10)},
		{"r", 5, 3, span(2, 4)},
		{"r", 3, 5, span(1, 2)},
		{"r", 1, 5, span(1, 0)},
		{"r", 11, 3, span(8, 10)},
		{"r", 100, 3, span(8, 10)}, // past the head: still the newest before it
		{"r", 6, 0, span(1, 0)},
		{"empty", 0, 5, span(1, 0)},
		{"empty", 5, 5, span(1, 0)},
		{"unknown", 0, 5, span(1, 0)},
		{"unknown", 5, 5, span(1, 0)},
	} {
		call := fmt.Sprintf("History(%q, %d, %d)", tc.room, tc.before, tc.limit)
		p, err := db.History(ctx, tc.room, tc.before, tc.limit)
		if err != nil {
			t.Fatalf("%s: %v", call, err)
		}
		check(call, p.Messages, tc.want)
		if want := map[string]int64{"r": 10}[tc.room]; p.Head != want {
			t.Errorf("%s head = %d, want %d", call, p.Head, want)
		}
	}

	heads, err := db.Heads(ctx, []string{"r", "empty", "unknown"})
	if err != nil {
		t.Fatalf("Heads: %v", err)
	}
	if want := map[string]int64{"r": 10, "empty": 0}; !mapsEqual(heads, want) {
		t.Errorf("Heads(r, empty, unknown) = %v, want %v", heads, want)
	}
	if heads, err := db.Heads(ctx, nil); err != nil || len(heads) != 0 {
		t.Errorf("Heads(nil) = %v, %v; want an empty map, nil", heads, err)
	}
}

// TestMigrateConcurrent starts Migrate on one empty database from several
// goroutines at once, as instances starting together do.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	url := storetest.NewEmptyDB(t)

	// The version to end at: the highest NNN of migrations/NNN_name.sql.
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migrations: %v, %d files", err, len(files))
	}
	var want int32
	for _, f := range files {
		n, err := strconv.Atoi(f[:strings.IndexByte(f, '_')])
		if err != nil {
			t.Fatalf("migration %s: %v", f, err)
		}
		want = max(want, int32(n))
	}

	const n = 8
	versions := make([]int32, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			v, err := store.Migrate(ctx, url, migrations.FS)
			if err != nil {
				t.Errorf("Migrate #%d: %v", i, err)
			}
			versions[i] = v
		})
	}
	close(start)
	wg.Wait()
	for i, v := range versions {
		if v != want {
			t.Errorf("Migrate #%d = version %d, want %d", i, v, want)
		}
	}

	conn := connect(t, url)
	rows, err := conn.Query(ctx, "select version from "+store.VersionTable)
	if err != nil {
		t.Fatalf("query %s: %v", store.VersionTable, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatalf("query %s: %v", store.VersionTable, err)
	}
	if !slices.Equal(got, []int32{want}) {
		t.Errorf("%s rows = %v, want [%d]", store.VersionTable, got, want)
	}
	for _, table := range []string{"rooms", "messages"} {
		var exists bool
		if err := conn.QueryRow(ctx, "select to_regclass($1) is not null", table).Scan(&exists); err != nil {
			t.Fatalf("find table %s: %v", table, err)
		}
		if !exists {
			t.Errorf("table %s does not exist after Migrate", table)
		}
	}

	// Once more on the migrated database: nothing to do, same version.
	if v, err := store.Migrate(ctx, url, migrations.FS); err != nil || v != want {
		t.Errorf("Migrate again = %d, %v; want %d, nil", v, err, want)
	}
}

// TestAppendAwkwardBodies stores bodies that need JSON escaping and bodies
// too big for a notification: Append must succeed (no NOTIFY error) and the
// listener must hear about every seq, big messages as stubs.
func TestAppendAwkwardBodies(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	db := open(t, url, "app-1")
	payloads := listen(t, url, 100)

	escaped := "quote \" backslash \\ slash / newline \n tab \t cr \r <b>&amp;</b> \x01\x1f\x7f é 中文 😀 \u2028\u2029 \ufeff"
	bodies := []string{
		escaped,
		strings.Repeat("x", 7990),  // over the limit with any framing
		strings.Repeat("<", 2000),  // 2000 bytes, 12000 once escaped
		strings.Repeat("é", 3995),  // 7990 bytes of 2-byte runes
		strings.Repeat("\"", 4000), // 8000 once escaped
		"after the big ones",
	}
	var in []store.NewMessage
	for _, b := range bodies {
		in = append(in, store.NewMessage{Room: "r", Author: "alice", Body: b})
	}
	if _, err := db.Append(ctx, in); err != nil {
		t.Fatalf("Append: %v", err)
	}
	// A notifying transaction with nothing but a big message.
	if _, err := db.Append(ctx, []store.NewMessage{{Room: "r", Author: "alice", Body: bodies[1]}}); err != nil {
		t.Fatalf("Append big message alone: %v", err)
	}
	bodies = append(bodies, bodies[1])

	stored, err := db.Since(ctx, "r", 0, 100)
	if err != nil {
		t.Fatalf("Since: %v", err)
	}
	if len(stored) != len(bodies) {
		t.Fatalf("Since = %d messages, want %d", len(stored), len(bodies))
	}
	for i, m := range stored {
		if m.Body != bodies[i] {
			t.Errorf("stored body of seq %d = %.40q... (%d bytes), want %.40q... (%d bytes)", m.Seq, m.Body, len(m.Body), bodies[i], len(bodies[i]))
		}
	}

	var (
		last     int64
		notified = map[int64]store.Message{}
	)
	for last < int64(len(bodies)) {
		var p string
		select {
		case p = <-payloads:
		case <-ctx.Done():
			t.Fatalf("notifications stop at seq %d, want up to %d", last, len(bodies))
		}
		if len(p) >= 8000 {
			t.Errorf("payload is %d bytes, want < 8000", len(p))
		}
		note, err := store.DecodeNotification(p)
		if err != nil {
			t.Fatalf("DecodeNotification: %v", err)
		}
		for _, m := range note.Messages {
			if m.Seq <= last {
				t.Errorf("notified seq %d after %d", m.Seq, last)
			}
			notified[m.Seq] = m
		}
		if note.Last <= last {
			t.Errorf("notification Last = %d after %d, want more", note.Last, last)
		}
		last = note.Last
	}
	// The escaped body arrives verbatim; the small one after the big ones
	// arrives too; the big ones are stubs (left for the table).
	for seq, body := range map[int64]string{1: escaped, 6: "after the big ones"} {
		if m, ok := notified[seq]; !ok || m.Body != body {
			t.Errorf("notified seq %d = %q (present %v), want body %q", seq, m.Body, ok, body)
		}
	}
	for _, seq := range []int64{2, 3, 4, 5, 7} {
		if _, ok := notified[seq]; ok {
			t.Errorf("notification carries seq %d (%d bytes), want a stub", seq, len(bodies[seq-1]))
		}
	}
}

// TestAppendNotificationsFromTheDatabase checks the notifications the
// database completes (seq and ts) in a big batch over rooms with awkward
// names: each fits the limit, takes the fast decoder and says exactly what
// was stored, times included, in seq order per room.
func TestAppendNotificationsFromTheDatabase(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	url := storetest.NewDB(t)
	db := open(t, url, `app "1" é`)
	payloads := listen(t, url, 1000)

	rooms := []string{`quote " room`, "中文 😀", "plain", `back\slash`}
	var in []store.NewMessage
	for i := range 700 {
		body := strings.Repeat("x", i%300) + " <&> \n" + strconv.Itoa(i)
		if i%97 == 0 {
			body = strings.Repeat("é", 3990) // a stub
		}
		m := store.NewMessage{Room: rooms[i%len(rooms)], Author: "alice", Body: body}
		if i%3 == 0 {
			m.Ref = "ref-" + strconv.Itoa(i)
		}
		in = append(in, m)
	}
	in = append(in, in[3]) // a repeat within the batch: stored once
	res, err := db.Append(ctx, in)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if !res[len(res)-1].Duplicate || res[len(res)-1].Seq != res[3].Seq {
		t.Errorf("repeated ref: result %+v, want a duplicate of seq %d", res[len(res)-1], res[3].Seq)
	}

	stored := map[string][]store.Message{}
	for _, room := range rooms {
		msgs, err := db.Since(ctx, room, 0, 1000)
		if err != nil {
			t.Fatalf("Since: %v", err)
		}
		stored[room] = msgs
	}
	for i, r := range res[:len(res)-1] {
		want := stored[r.Room][r.Seq-1]
		if !sameMessage(r.Message, want) || !r.Time.Equal(want.Time) {
			t.Errorf("result %d = %+v, stored %+v", i, r.Message, want)
		}
	}

	last := map[string]int64{}
	for total := 0; total < 700; {
		var p string
		select {
		case p = <-payloads:
		case <-ctx.Done():
			t.Fatalf("notified %d of 700 messages", total)
		}
		if len(p) >= 8000 {
			t.Errorf("payload is %d bytes, want < 8000", len(p))
		}
		note, ok := store.DecodeFast(p)
		if !ok {
			t.Fatalf("the fast decoder refuses %.200q", p)
		}
		seq := last[note.Room]
		for _, m := range note.Messages {
			if m.Seq <= seq {
				t.Errorf("room %q: seq %d notified after %d", note.Room, m.Seq, seq)
			}
			want := stored[note.Room][m.Seq-1]
			want.Ref = "" // notifications leave refs out
			if !sameMessage(m, want) || !m.Time.Equal(want.Time) {
				t.Errorf("notified %+v, stored %+v", m, want)
			}
			seq = m.Seq
		}
		total += int(note.Last - last[note.Room])
		last[note.Room] = note.Last
	}
	for _, room := range rooms {
		if last[room] != int64(len(stored[room])) {
			t.Errorf("room %q: notified up to %d, stored %d", room, last[room], len(stored[room]))
		}
	}
}
