package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

type searchPage struct {
	Room    string `json:"room"`
	Results []struct {
		Room    string `json:"room"`
		Seq     int64  `json:"seq"`
		Author  string `json:"author"`
		Body    string `json:"body"`
		Edited  string `json:"edited"`
		Snippet string `json:"snippet"`
	} `json:"results"`
}

// searchGet returns the status and page of GET base+path.
func searchGet(t *testing.T, base, path string, header ...string) (int, searchPage) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", base+path, nil)
	if len(header) == 2 {
		req.Header.Set(header[0], header[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p searchPage
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("GET %s: %v in %s", path, err, b)
		}
	}
	return resp.StatusCode, p
}

// seqsOf lists the result seqs.
func seqsOf(p searchPage) []int64 {
	var s []int64
	for _, r := range p.Results {
		s = append(s, r.Seq)
	}
	return s
}

// waitIndexed waits until a search for q in room finds seq: the indexer
// runs off the append path.
func waitIndexed(t *testing.T, base, room, q string, seq int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, p := searchGet(t, base, "/api/rooms/"+room+"/search?q="+url.QueryEscape(q))
		for _, s := range seqsOf(p) {
			if s == seq {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("search %q in %s never found seq %d", q, room, seq)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSearch: search finds current text, never deleted or edited-away
// text, snippets are HTML-safe, rooms are searched together, and junk
// queries get 400 or nothing, never a 500.
func TestSearch(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	alice := dial(t, a.URL, name("alice"))
	alice.joinEv("r")
	alice.joinEv("s")
	var seen []evFrame
	send := func(room, body string, want int64) {
		t.Helper()
		expectAck(t, "send "+body, alice.do(map[string]any{"type": "send", "room": room, "body": body, "ref": room + body}, &seen), want)
	}
	send("r", "the quick brown fox", 1)
	send("r", "a <b>bold</b> & daring fox", 2)
	send("r", "quick thinking", 3)
	send("s", "quick in another room", 1)
	waitIndexed(t, b.URL, "r", "thinking", 3)
	expectAck(t, "edit 3", alice.do(ev("edit", "r", 3, "e", "body", "slow pondering"), &seen), 4)
	expectAck(t, "delete 1", alice.do(ev("delete", "r", 1, "d"), &seen), 5)
	send("r", "quick again", 6)
	waitIndexed(t, b.URL, "r", "again", 6)

	for q, want := range map[string][]int64{
		"quick":                      {6},    // 1 is deleted, 3 edited away
		"pondering":                  {3},    // the current text of 3
		"fox":                        {2},    // not the deleted 1
		`"daring fox"`:               {2},    // a phrase
		"fox -bold":                  nil,    // excluded word
		"quick or daring":            {6, 2}, // newest first
		"-":                          nil,    // only operators
		`"" or -`:                    nil,
		"'; drop table messages; --": nil,
		"&<>|!:*":                    nil,
	} {
		code, p := searchGet(t, b.URL, "/api/rooms/r/search?q="+url.QueryEscape(q))
		if code != http.StatusOK || !equalSeqs(seqsOf(p), want) {
			t.Errorf("search %q: %d %v, want 200 %v", q, code, seqsOf(p), want)
		}
	}
	_, p := searchGet(t, a.URL, "/api/rooms/r/search?q=bold")
	if len(p.Results) != 1 || p.Room != "r" {
		t.Fatalf("search bold: %+v", p)
	}
	if s := p.Results[0].Snippet; !strings.Contains(s, "&lt;b&gt;<mark>bold</mark>&lt;/b&gt;") || strings.Contains(s, "<b>") {
		t.Errorf("snippet %q: want the body escaped and the match marked", s)
	}
	if _, p := searchGet(t, a.URL, "/api/rooms/r/search?q=pondering"); len(p.Results) != 1 || p.Results[0].Edited == "" || p.Results[0].Body != "slow pondering" {
		t.Errorf("edited hit %+v", p)
	}
	if _, p := searchGet(t, a.URL, "/api/rooms/r/search?q=quick&before=6"); len(p.Results) != 0 {
		t.Errorf("before=6: %+v", p)
	}

	// Across rooms, newest first.
	code, p := searchGet(t, a.URL, "/api/search?q=quick&room=r&room=s")
	if code != http.StatusOK || len(p.Results) != 2 || p.Results[0].Room != "r" || p.Results[0].Seq != 6 || p.Results[1].Room != "s" {
		t.Errorf("search across rooms: %d %+v", code, p)
	}

	// Junk that is refused.
	for _, path := range []string{
		"/api/rooms/r/search",
		"/api/rooms/r/search?q=",
		"/api/rooms/r/search?q=%20%20",
		"/api/rooms/r/search?q=" + strings.Repeat("word+", 2048),
		"/api/rooms/r/search?q=a%00b",
		"/api/rooms/r/search?q=%ff%fe",
		"/api/rooms/r/search?q=x&limit=0",
		"/api/rooms/r/search?q=x&limit=1000",
		"/api/rooms/r/search?q=x&before=-1",
		"/api/rooms/bad%20room/search?q=x",
		"/api/search?q=x",
		"/api/search?q=x&room=r&before=3",
	} {
		if code, _ := searchGet(t, a.URL, path); code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", path, code)
		}
	}

	// No trace of the deleted text in the index either.
	var n int
	if err := dbConn(t, db).QueryRow(t.Context(), `select count(*) from message_search where tsv @@ 'brown'::tsquery`).Scan(&n); err != nil || n != 0 {
		t.Errorf("message_search still has the deleted text: %d, %v", n, err)
	}
}

func equalSeqs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestSearchTokenRooms: in token mode a search is limited to the token's
// rooms.
func TestSearchTokenRooms(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	tok := mint(t, testAuthSecret, "alice", time.Hour, "team-*")
	alice := dial(t, a.URL, tokenQuery(tok))
	alice.joinEv("team-a")
	var seen []evFrame
	expectAck(t, "send", alice.do(map[string]any{"type": "send", "room": "team-a", "body": "hello team", "ref": "s"}, &seen), 1)
	auth := []string{"Authorization", "Bearer " + tok}
	for path, want := range map[string]int{
		"/api/rooms/team-a/search?q=hello":             http.StatusOK,
		"/api/rooms/general/search?q=hello":            http.StatusForbidden,
		"/api/search?q=hello&room=team-a&room=general": http.StatusForbidden,
		"/api/search?q=hello&room=team-a&room=team-b":  http.StatusOK,
	} {
		if code, _ := searchGet(t, a.URL, path, auth...); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	if code, _ := searchGet(t, a.URL, "/api/rooms/team-a/search?q=hello"); code != http.StatusUnauthorized {
		t.Errorf("search without a token: %d, want 401", code)
	}
}
