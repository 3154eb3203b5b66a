package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgchat/pgchat/chat"
)

// testAuthSecret is AUTH_SECRET in the token-mode tests.
const testAuthSecret = "test-secret-0123456789abcdef0123456789"

// mint returns a token for sub and rooms signed with secret, valid for ttl.
func mint(t testing.TB, secret, sub string, ttl time.Duration, rooms ...string) string {
	t.Helper()
	now := time.Now()
	tok, err := chat.NewToken([]byte(secret), chat.Grant{Author: sub, Rooms: rooms, Expires: now.Add(ttl)}, now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dialWith opens /ws with query and header. It returns the client once the
// welcome frame is read, or, when the server refuses the handshake, nil and
// the response with its body read into body.
func dialWith(t testing.TB, base string, query url.Values, header http.Header) (c *wsClient, resp *http.Response, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws?" + query.Encode()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		if resp == nil {
			t.Fatalf("dial %s: %v", u, err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp, string(b)
	}
	conn.SetReadLimit(1 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	c = &wsClient{t: t, conn: conn}
	if err := readFrame(ctx, conn, &c.welcome); err != nil || c.welcome.Type != "welcome" {
		t.Fatalf("first frame %+v (err %v), want welcome", c.welcome, err)
	}
	return c, resp, ""
}

func tokenQuery(tok string, kv ...string) url.Values {
	q := url.Values{"token": {tok}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Add(kv[i], kv[i+1])
	}
	return q
}

// TestTokenModeAuthorIsTheSubject: in token mode the name parameter does not
// change the author, in the welcome frame, in messages and in the table,
// whether the token comes in the query or in an Authorization header.
func TestTokenModeAuthorIsTheSubject(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	tok := mint(t, testAuthSecret, "alice", time.Hour, "general")

	viaQuery, _, _ := dialWith(t, a.URL, tokenQuery(tok, "name", "mallory"), nil)
	viaHeader, _, _ := dialWith(t, a.URL, url.Values{"name": {"mallory"}}, http.Header{"Authorization": {"Bearer " + tok}})
	for _, c := range []*wsClient{viaQuery, viaHeader} {
		if c == nil {
			t.Fatal("a valid token was refused")
		}
		if c.welcome.Author != "alice" {
			t.Fatalf("welcome author = %q with name=mallory, want the token's sub alice", c.welcome.Author)
		}
	}
	viaQuery.join("general")
	viaHeader.join("general")
	viaQuery.send("general", "it's me", "c-1")
	if ack := viaQuery.nextOf("ack"); ack.Seq != 1 {
		t.Fatalf("ack = %+v, want seq 1", ack)
	}
	if m := viaHeader.messages(1)[0]; m.Author != "alice" {
		t.Fatalf("message author = %q, want alice", m.Author)
	}
	var author string
	if err := queryRow(t, db, "select author from messages where ref = 'c-1'", &author); err != nil || author != "alice" {
		t.Fatalf("stored author = %q (err %v), want alice", author, err)
	}
}

// TestTokenModeRefusesBadTokens: every connection needs a valid HS256 token
// signed with AUTH_SECRET; the others get 401 with a short reason before the
// upgrade.
func TestTokenModeRefusesBadTokens(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	exp := time.Now().Add(time.Hour).Unix()
	claims := `{"sub":"alice","rooms":["general"],"exp":` + jsonInt(exp) + `}`
	valid := mint(t, testAuthSecret, "alice", time.Hour, "general")
	parts := strings.Split(valid, ".")
	for _, tc := range []struct {
		name   string
		query  url.Values
		header http.Header
		reason string
	}{
		{"NoToken", url.Values{"name": {"alice"}}, nil, "missing token"},
		{"Expired", tokenQuery(mint(t, testAuthSecret, "alice", -time.Minute, "general")), nil, "token expired"},
		{"OtherSecret", tokenQuery(mint(t, "another-secret-0123456789abcdef0123", "alice", time.Hour, "general")), nil, "invalid token signature"},
		{"BadSignature", tokenQuery(parts[0] + "." + parts[1] + "." + flipFirst(parts[2])), nil, "invalid token signature"},
		{"ClaimsChanged", tokenQuery(parts[0] + "." + b64(strings.Replace(claims, "general", "secret", 1)) + "." + parts[2]), nil, "invalid token signature"},
		{"AlgNone", tokenQuery(b64(`{"alg":"none","typ":"JWT"}`) + "." + b64(claims) + "."), nil, "invalid token signature"},
		{"AlgRS256", tokenQuery(signHMAC(`{"alg":"RS256","typ":"JWT"}`, claims, testAuthSecret)), nil, "invalid token signature"},
		{"Malformed", tokenQuery("definitely.not.a-jwt"), nil, "malformed token"},
		{"MalformedHeader", nil, http.Header{"Authorization": {"Bearer x"}}, "malformed token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, resp, body := dialWith(t, a.URL, tc.query, tc.header)
			if c != nil {
				t.Fatalf("connected as %q, want 401", c.welcome.Author)
			}
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, tc.reason) {
				t.Fatalf("handshake answered %d %q, want 401 saying %q", resp.StatusCode, body, tc.reason)
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q, want Bearer", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

// TestTokenModeForbiddenRooms: a room outside the token's rooms claim gets
// forbidden on join and send, and the connection stays; the history
// endpoint applies the same rule.
func TestTokenModeForbiddenRooms(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	tok := mint(t, testAuthSecret, "alice", time.Hour, "general", "team-*")
	c, _, body := dialWith(t, a.URL, tokenQuery(tok, "room", "secret"), nil)
	if c == nil {
		t.Fatalf("refused: %s", body)
	}
	if e := c.next(); e.Type != "error" || e.Code != "forbidden" || e.Room != "secret" {
		t.Fatalf("?room=secret answered %+v, want error forbidden for secret", e)
	}
	c.write(map[string]any{"type": "join", "room": "secret", "ref": "j-1"})
	if e := c.next(); e.Type != "error" || e.Code != "forbidden" || e.Room != "secret" || e.Ref != "j-1" {
		t.Fatalf("join secret answered %+v, want error forbidden, ref j-1", e)
	}
	c.send("secret", "let me in", "s-1")
	if e := c.next(); e.Type != "error" || e.Code != "forbidden" || e.Ref != "s-1" {
		t.Fatalf("send to secret answered %+v, want error forbidden, ref s-1", e)
	}
	// Allowed rooms, by name and by pattern; the connection is still open.
	c.join("general")
	c.join("team-blue")
	c.send("team-blue", "hi team", "s-2")
	if ack := c.nextOf("ack"); ack.Ref != "s-2" || ack.Seq != 1 {
		t.Fatalf("ack = %+v, want s-2 seq 1", ack)
	}
	var n int
	if err := queryRow(t, db, "select count(*) from messages where room = 'secret'", &n); err != nil || n != 0 {
		t.Fatalf("%d messages stored in secret (err %v), want 0", n, err)
	}

	// The history endpoint: 401 without a token, 403 outside the claim
	// (whether or not the room exists), 200 inside it.
	bob := mint(t, testAuthSecret, "bob", time.Hour, "secret")
	b, _, _ := dialWith(t, a.URL, tokenQuery(bob), nil)
	b.join("secret")
	b.send("secret", "classified", "b-1")
	b.nextOf("ack")
	for _, tc := range []struct {
		name, path, auth string
		status           int
		code             string
	}{
		{"NoToken", "/api/rooms/general/messages", "", 401, "unauthorized"},
		{"BadToken", "/api/rooms/general/messages", "Bearer nope", 401, "unauthorized"},
		{"Forbidden", "/api/rooms/secret/messages", "Bearer " + tok, 403, "forbidden"},
		{"ForbiddenAndMissing", "/api/rooms/nowhere/messages", "Bearer " + tok, 403, "forbidden"},
		{"Allowed", "/api/rooms/team-blue/messages", "Bearer " + tok, 200, ""},
		{"AllowedViaQuery", "/api/rooms/team-blue/messages?token=" + tok, "", 200, ""},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", a.URL+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Code     string `json:"code"`
			Message  string `json:"message"`
			Messages []struct {
				Author string `json:"author"`
				Body   string `json:"body"`
			} `json:"messages"`
		}
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || got.Code != tc.code {
			t.Errorf("%s: GET %s = %d %+v (err %v), want %d code %q", tc.name, tc.path, resp.StatusCode, got, err, tc.status, tc.code)
		}
		if tc.status == 200 && (len(got.Messages) != 1 || got.Messages[0].Author != "alice") {
			t.Errorf("%s: history = %+v, want alice's one message", tc.name, got.Messages)
		}
		if tc.status != 200 && (got.Message == "" || bytes.Contains([]byte(got.Message), []byte("classified"))) {
			t.Errorf("%s: error message %q", tc.name, got.Message)
		}
	}
}

// TestTokenExpiresWhileConnected: a connection outliving its token is closed
// with 4001 "token expired", which the page shows as "session expired".
func TestTokenExpiresWhileConnected(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	// exp has a one-second resolution: this one is 1 to 2 s away.
	tok := mint(t, testAuthSecret, "alice", 2*time.Second, "general")
	c, _, body := dialWith(t, a.URL, tokenQuery(tok), nil)
	if c == nil {
		t.Fatalf("refused: %s", body)
	}
	c.join("general")
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	for {
		var f frame
		err := readFrame(ctx, c.conn, &f)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != chat.StatusTokenExpired || ce.Reason != "token expired" {
			t.Fatalf("connection ended with %v, want close 4001 \"token expired\"", err)
		}
		return
	}
}

// TestTokenCommand: pgchat token mints a token the server accepts, and
// refuses to run without AUTH_SECRET.
func TestTokenCommand(t *testing.T) {
	t.Parallel()
	environ := []string{"AUTH_SECRET=" + testAuthSecret}
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"token", "-sub", "alice", "-rooms", "general, team-*", "-ttl", "1h"}, environ, &out, &errOut)
	if err != nil {
		t.Fatalf("pgchat token: %v (%s)", err, errOut.String())
	}
	g, err := chat.ParseToken([]byte(testAuthSecret), strings.TrimSpace(out.String()), time.Now())
	if err != nil {
		t.Fatalf("minted token %q does not verify: %v", out.String(), err)
	}
	if g.Author != "alice" || strings.Join(g.Rooms, ",") != "general,team-*" || time.Until(g.Expires) > time.Hour || time.Until(g.Expires) < 59*time.Minute {
		t.Fatalf("minted grant = %+v, want alice, general and team-*, expiring in 1h", g)
	}
	for _, tc := range []struct {
		args    []string
		environ []string
		want    string
	}{
		{[]string{"token", "-sub", "alice", "-rooms", "general"}, nil, "AUTH_SECRET is not set"},
		{[]string{"token", "-sub", "alice", "-rooms", "general"}, []string{"AUTH_SECRET=short"}, "AUTH_SECRET"},
		{[]string{"token", "-rooms", "general"}, environ, "-sub and -rooms are required"},
		{[]string{"token", "-sub", " alice", "-rooms", "general"}, environ, "not a valid name"},
		{[]string{"token", "-sub", "alice", "-rooms", "te*am"}, environ, "te*am"},
		{[]string{"token", "-sub", "alice", "-rooms", "general", "-ttl", "-1h"}, environ, "-ttl"},
	} {
		out.Reset()
		err := run(t.Context(), tc.args, tc.environ, &out, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) || out.Len() > 0 {
			t.Errorf("pgchat %s with %v: error %v, output %q; want an error about %q and no token", strings.Join(tc.args, " "), tc.environ, err, out.String(), tc.want)
		}
	}
}

func queryRow(t *testing.T, db, sql string, dest ...any) error {
	t.Helper()
	conn := dbConn(t, db)
	return conn.QueryRow(t.Context(), sql).Scan(dest...)
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

// signHMAC builds a JWT signed with HMAC-SHA256 over secret whatever alg
// its header names.
func signHMAC(header, claims, secret string) string {
	s := b64(header) + "." + b64(claims)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(s))
	return s + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// flipFirst changes the first character of a base64url string (all six of
// its bits are data), so that the bytes it decodes to differ.
func flipFirst(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}
