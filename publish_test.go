package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgchat/pgchat/chat"
	"github.com/pgchat/pgchat/store/storetest"
)

// apiReply is a publish API answer: a result, a batch's results or an error.
type apiReply struct {
	status int
	Room   string `json:"room"`
	Seq    int64  `json:"seq"`
	Ts     string `json:"ts"`
	Ref    string `json:"ref"`
	Dup    bool   `json:"duplicate"`
	Code   string `json:"code"`
	Msg    string `json:"message"`

	Results []apiReply `json:"results"`
}

// postJSON posts body to base+path with contentType (and a Bearer token if
// set) and decodes the JSON answer.
func postJSON(t testing.TB, base, path, contentType, token, body string) apiReply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	r := apiReply{status: resp.StatusCode}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("POST %s: %s: answer is not JSON: %q", path, resp.Status, data)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("POST %s: Content-Type %q", path, ct)
	}
	return r
}

func publish(t testing.TB, base, room, body string) apiReply {
	t.Helper()
	return postJSON(t, base, "/api/rooms/"+room+"/messages", "application/json", "", body)
}

func (r apiReply) want(t testing.TB, what string, status int, code string) {
	t.Helper()
	if r.status != status || r.Code != code {
		t.Fatalf("%s: got %d %q (%s), want %d %q", what, r.status, r.Code, r.Msg, status, code)
	}
}

// The acceptance: a curl POST is delivered to WebSocket members on
// another instance; the same request again returns the same seq and stores
// one row; a form-encoded post is refused.
func TestPublishDeliveredOnAnotherInstanceOnce(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-a"))
	b := startInstance(t, testEnv(db, "app-b"))
	member := dial(t, b.URL, name("alice"))
	member.join("general")

	req := `{"body":"hi","ref":"r1","author":"bot"}`
	first := publish(t, a.URL, "general", req)
	first.want(t, "first post", http.StatusCreated, "")
	if first.Room != "general" || first.Seq != 1 || first.Ref != "r1" || first.Ts == "" || first.Dup {
		t.Fatalf("first post: %+v", first)
	}
	if _, err := time.Parse(time.RFC3339Nano, first.Ts); err != nil {
		t.Errorf("ts %q: %v", first.Ts, err)
	}
	m := member.nextOf("message")
	if m.Seq != 1 || m.Author != "bot" || m.Body != "hi" || m.Instance != "app-a" {
		t.Fatalf("member on app-b got %+v", m)
	}

	again := publish(t, b.URL, "general", req) // through the other instance
	again.want(t, "repeat", http.StatusOK, "")
	if again.Seq != first.Seq || !again.Dup {
		t.Fatalf("repeat: %+v, want seq %d duplicate", again, first.Seq)
	}
	var rows int
	if err := queryRow(t, db, `select count(*) from messages where room = 'general' and ref = 'r1'`, &rows); err != nil || rows != 1 {
		t.Fatalf("%d rows for ref r1 (err %v), want 1", rows, err)
	}

	// A later message proves the repeat was not delivered again.
	publish(t, a.URL, "general", `{"body":"second","author":"bot"}`).want(t, "second", http.StatusCreated, "")
	if m := member.nextOf("message"); m.Seq != 2 || m.Body != "second" {
		t.Fatalf("after the repeat the member got %+v, want seq 2", m)
	}

	for _, ct := range []string{"application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", ""} {
		r := postJSON(t, a.URL, "/api/rooms/general/messages", ct, "", req)
		r.want(t, "Content-Type "+ct, http.StatusUnsupportedMediaType, "bad_request")
	}
	r := postJSON(t, a.URL, "/api/rooms/general/messages", "application/json; charset=utf-8", "", `{"body":"with charset","author":"bot"}`)
	r.want(t, "charset", http.StatusCreated, "")
	member.nextOf("message")

	var stdout, stderr strings.Builder
	if err := run(t.Context(), []string{"send", "-http", "-url", b.URL, "-room", "general", "-name", "cli", "from", "the", "CLI"}, nil, &stdout, &stderr); err != nil {
		t.Fatalf("pgchat send -http: %v (%s)", err, stderr.String())
	}
	if got := stdout.String(); got != "general #4\n" {
		t.Fatalf("pgchat send -http printed %q", got)
	}
	if m := member.nextOf("message"); m.Author != "cli" || m.Body != "from the CLI" {
		t.Fatalf("member got %+v", m)
	}
}

func TestPublishValidation(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1", "MAX_MESSAGE_BYTES=100"))
	cases := []struct {
		name, room, body string
		status           int
		code             string
	}{
		{"no author", "general", `{"body":"x"}`, 400, "bad_request"},
		{"bad author", "general", `{"body":"x","author":" bot"}`, 400, "bad_request"},
		{"empty body", "general", `{"body":"  ","author":"bot"}`, 400, "bad_request"},
		{"no body", "general", `{"author":"bot"}`, 400, "bad_request"},
		{"body too large", "general", fmt.Sprintf(`{"body":%q,"author":"bot"}`, strings.Repeat("x", 101)), 413, "too_large"},
		{"request too large", "general", fmt.Sprintf(`{"body":%q,"author":"bot"}`, strings.Repeat("x", 2000)), 413, "too_large"},
		{"bad room", "-bad", `{"body":"x","author":"bot"}`, 400, "bad_request"},
		{"bad ref", "general", `{"body":"x","author":"bot","ref":"é"}`, 400, "bad_request"},
		{"unknown field", "general", `{"bdy":"x","author":"bot"}`, 400, "bad_request"},
		{"wrong type", "general", `{"body":1,"author":"bot"}`, 400, "bad_request"},
		{"not JSON", "general", `body=x`, 400, "bad_request"},
		{"two objects", "general", `{"body":"x","author":"bot"}{}`, 400, "bad_request"},
		{"NUL", "general", `{"body":"a\u0000b","author":"bot"}`, 400, "bad_request"},
	}
	for _, c := range cases {
		publish(t, in.URL, c.room, c.body).want(t, c.name, c.status, c.code)
	}
	var rows int
	if err := queryRow(t, db, `select count(*) from messages`, &rows); err != nil || rows != 0 {
		t.Fatalf("%d messages stored by refused posts (err %v)", rows, err)
	}
}

func TestPublishBatch(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-a"))
	b := startInstance(t, testEnv(db, "app-b"))
	one, two := dial(t, b.URL, name("alice")), dial(t, b.URL, name("bob"))
	one.join("one")
	two.join("two")

	batch := `{"messages":[
		{"room":"one","body":"1a","author":"bot","ref":"a"},
		{"room":"two","body":"2a","author":"bot"},
		{"room":"one","body":"1b","author":"bot","ref":"b"},
		{"room":"one","body":"1a again","author":"bot","ref":"a"}]}`
	r := postJSON(t, a.URL, "/api/messages", "application/json", "", batch)
	r.want(t, "batch", http.StatusCreated, "")
	got := fmt.Sprint(r.Results[0].Seq, r.Results[1].Seq, r.Results[2].Seq, r.Results[3].Seq, r.Results[3].Dup)
	if len(r.Results) != 4 || got != "1 1 2 1 true" || r.Results[1].Room != "two" {
		t.Fatalf("batch results %+v", r.Results)
	}
	checkSeqs(t, "member of one", one.messages(2), 1)
	if m := two.nextOf("message"); m.Body != "2a" {
		t.Fatalf("member of two got %+v", m)
	}
	// The same batch again stores nothing new: 200, the original seqs.
	r = postJSON(t, b.URL, "/api/messages", "application/json", "", `{"messages":[{"room":"one","body":"1a","author":"bot","ref":"a"},{"room":"one","body":"1b","author":"bot","ref":"b"}]}`)
	r.want(t, "batch again", http.StatusOK, "")
	if r.Results[0].Seq != 1 || r.Results[1].Seq != 2 {
		t.Fatalf("batch again: %+v", r.Results)
	}

	// All or nothing: one bad message refuses the whole batch.
	r = postJSON(t, a.URL, "/api/messages", "application/json", "", `{"messages":[{"room":"one","body":"ok","author":"bot"},{"room":"one","body":"","author":"bot"}]}`)
	r.want(t, "batch with a bad message", http.StatusBadRequest, "bad_request")
	if !strings.HasPrefix(r.Msg, "messages[1]: ") {
		t.Errorf("message %q does not say which message", r.Msg)
	}
	var msgs []string
	for i := range chat.MaxPublishBatch + 1 {
		msgs = append(msgs, fmt.Sprintf(`{"room":"one","body":"m%d","author":"bot"}`, i))
	}
	r = postJSON(t, a.URL, "/api/messages", "application/json", "", `{"messages":[`+strings.Join(msgs, ",")+`]}`)
	r.want(t, "101 messages", http.StatusRequestEntityTooLarge, "too_large")
	postJSON(t, a.URL, "/api/messages", "application/json", "", `{"messages":[]}`).want(t, "empty batch", http.StatusBadRequest, "bad_request")

	var rows int
	if err := queryRow(t, db, `select count(*) from messages`, &rows); err != nil || rows != 3 {
		t.Fatalf("%d messages stored (err %v), want 3", rows, err)
	}
	r = postJSON(t, a.URL, "/api/messages", "application/json", "", `{"messages":[`+strings.Join(msgs[:100], ",")+`]}`)
	r.want(t, "100 messages", http.StatusCreated, "")
	if n := len(r.Results); n != 100 || r.Results[99].Seq != 102 {
		t.Fatalf("100 messages: %d results, last %+v", n, r.Results[n-1])
	}
}

func TestPublishTokenMode(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	alice := mint(t, testAuthSecret, "alice", time.Hour, "team-*")
	now := time.Now()
	backend, err := chat.NewToken([]byte(testAuthSecret), chat.Grant{Author: "backend", Rooms: []string{"*"}, Expires: now.Add(time.Hour), Publisher: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	expired := mint(t, testAuthSecret, "alice", -time.Minute, "*")
	post := func(tok, room, body string) apiReply {
		return postJSON(t, in.URL, "/api/rooms/"+room+"/messages", "application/json", tok, body)
	}

	post("", "team-a", `{"body":"x"}`).want(t, "no token", 401, "unauthorized")
	if r := post(expired, "team-a", `{"body":"x"}`); r.status != 401 || r.Msg != "token expired" {
		t.Fatalf("expired token: %d %q", r.status, r.Msg)
	}
	post(alice, "general", `{"body":"x"}`).want(t, "room outside the token", 403, "forbidden")
	post(alice, "team-a", `{"body":"x","author":"mallory"}`).want(t, "another author without pub", 403, "forbidden")
	post(alice, "team-a", `{"body":"as alice","author":"alice"}`).want(t, "own name", 201, "")
	post(alice, "team-a", `{"body":"as sub"}`).want(t, "no author", 201, "")
	post(backend, "general", `{"body":"deployed","author":"deploy-bot"}`).want(t, "pub token", 201, "")
	post(backend, "general", `{"body":"no author"}`).want(t, "pub token without author", 201, "")
	r := postJSON(t, in.URL, "/api/messages", "application/json", alice, `{"messages":[{"room":"team-a","body":"ok"},{"room":"general","body":"no"}]}`)
	r.want(t, "batch with a forbidden room", 403, "forbidden")

	var authors string
	if err := queryRow(t, db, `select string_agg(author, ',' order by room, seq) from messages`, &authors); err != nil {
		t.Fatal(err)
	}
	if authors != "deploy-bot,backend,alice,alice" {
		t.Fatalf("authors %q", authors)
	}

	// whoami says why a token is refused, for the page.
	for tok, want := range map[string]string{"": "missing token", expired: "token expired", "x.y.z": "malformed token"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, in.URL+"/api/whoami", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e apiReply
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(e.Msg, want) {
			t.Errorf("whoami with %q: %d %q, want 401 %q", tok, resp.StatusCode, e.Msg, want)
		}
	}
	resp, err := http.Get(in.URL + "/api/whoami?token=" + alice)
	if err != nil {
		t.Fatal(err)
	}
	var who struct{ Auth, Author string }
	json.NewDecoder(resp.Body).Decode(&who)
	resp.Body.Close()
	if resp.StatusCode != 200 || who.Auth != "token" || who.Author != "alice" {
		t.Fatalf("whoami with a good token: %d %+v", resp.StatusCode, who)
	}
}

func TestPublishRateLimit(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1", "RATE_LIMIT=0.001", "RATE_BURST=3"))
	for i := range 3 {
		publish(t, in.URL, "general", fmt.Sprintf(`{"body":"m%d","author":"bot"}`, i)).want(t, "within the burst", 201, "")
	}
	publish(t, in.URL, "general", `{"body":"over","author":"bot"}`).want(t, "over the burst", 429, "rate_limited")
	r := postJSON(t, in.URL, "/api/messages", "application/json", "", `{"messages":[{"room":"a","body":"x","author":"bot"}]}`)
	r.want(t, "batch over the burst", 429, "rate_limited")
}

// BenchmarkPublishBatch measures acked messages per second through POST
// /api/messages with 100 messages per request (10 rooms), from 4 posters,
// into one instance on the test database (docs/performance.md).
func BenchmarkPublishBatch(b *testing.B) {
	cfg, err := loadConfig(testEnv(storetest.NewDB(b), "bench-1", "LOG_LEVEL=warn"))
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), ln) }()
	defer func() { cancel(); <-done }()
	base := "http://" + ln.Addr().String()
	for {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	const perRequest = 100
	var poster atomic.Int64
	b.SetParallelism(2) // 2 × GOMAXPROCS posters
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := poster.Add(1)
		var sb strings.Builder
		for n := 0; pb.Next(); n++ {
			sb.Reset()
			sb.WriteString(`{"messages":[`)
			for i := range perRequest {
				if i > 0 {
					sb.WriteByte(',')
				}
				fmt.Fprintf(&sb, `{"room":"bench-%d","body":"message %d of request %d","author":"poster-%d","ref":"p%d-%d-%d"}`, i%10, i, n, id, id, n, i)
			}
			sb.WriteString(`]}`)
			resp, err := http.Post(base+"/api/messages", "application/json", strings.NewReader(sb.String()))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				b.Errorf("POST /api/messages: %s", resp.Status)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*perRequest)/b.Elapsed().Seconds(), "acked_msgs/s")
}
