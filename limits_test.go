package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestOriginCheck: browsers may open /ws only from the page's own host or an
// ALLOWED_ORIGINS one (cross-site WebSocket hijacking); clients that send no
// Origin (not browsers) are not concerned.
func TestOriginCheck(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "ALLOWED_ORIGINS=chat.example.com,*.example.org"))
	host := strings.TrimPrefix(a.URL, "http://")
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"https://evil.example", false},
		{"https://chat.example.com.evil.example", false},
		{"null", false},
		{"https://chat.example.com", true},
		{"https://eu.example.org", true},
		{"http://" + host, true}, // the page's own origin
		{"", true},               // not a browser
	} {
		sub := tc.origin
		if sub == "" {
			sub = "none"
		}
		t.Run(sub, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			c, resp, body := dialWith(t, a.URL, name("alice"), h)
			switch {
			case tc.ok && c == nil:
				t.Fatalf("Origin %q refused: %d %s", tc.origin, resp.StatusCode, body)
			case !tc.ok && c != nil:
				t.Fatalf("Origin %q accepted", tc.origin)
			case !tc.ok && resp.StatusCode != http.StatusForbidden:
				t.Fatalf("Origin %q answered %d, want 403", tc.origin, resp.StatusCode)
			}
		})
	}
}

// attempt is the outcome of a dial: a client, or the refusal.
type attempt struct {
	c    *wsClient
	resp *http.Response
	body string
}

func try(t *testing.T, base string, query url.Values, header http.Header) attempt {
	t.Helper()
	c, resp, body := dialWith(t, base, query, header)
	return attempt{c, resp, body}
}

// refused checks that the dial was answered 503 with a Retry-After.
func (a attempt) refused(t *testing.T, what string) {
	t.Helper()
	if a.c != nil {
		t.Fatalf("%s: connected, want 503", what)
	}
	if a.resp.StatusCode != http.StatusServiceUnavailable || a.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s: answered %d %q, Retry-After %q; want 503 with Retry-After", what, a.resp.StatusCode, a.body, a.resp.Header.Get("Retry-After"))
	}
}

func (a attempt) accepted(t *testing.T, what string) *wsClient {
	t.Helper()
	if a.c == nil {
		t.Fatalf("%s: refused with %d %q", what, a.resp.StatusCode, a.body)
	}
	return a.c
}

func xff(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }

// TestConnectionCapPerInstance: past MAX_CONNECTIONS new connections get 503
// with Retry-After; a closed one frees its place.
func TestConnectionCapPerInstance(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_CONNECTIONS=2"))
	first := try(t, a.URL, name("a"), nil).accepted(t, "first")
	try(t, a.URL, name("b"), nil).accepted(t, "second")
	try(t, a.URL, name("c"), nil).refused(t, "third")
	// Other addresses don't help when the instance is full.
	try(t, a.URL, name("c"), xff("198.51.100.1")).refused(t, "third from elsewhere")

	first.conn.Close(websocket.StatusNormalClosure, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, resp, body := dialWith(t, a.URL, name("c"), nil)
		if c != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a close, still refused: %d %s", resp.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond) // polling for the server to notice the close
	}
}

// TestConnectionCapPerIP: past MAX_CONNECTIONS_PER_IP connections from one
// client address get 503 with Retry-After. Behind a trusted proxy the address
// is X-Forwarded-For's right-most untrusted entry, so a client can't get
// more by writing its own entries in front.
func TestConnectionCapPerIP(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_CONNECTIONS_PER_IP=2", "TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8"))
	try(t, a.URL, name("a"), xff("203.0.113.1")).accepted(t, "first from .1")
	try(t, a.URL, name("a"), xff("1.1.1.1, 203.0.113.1")).accepted(t, "second from .1")
	try(t, a.URL, name("a"), xff("203.0.113.1")).refused(t, "third from .1")
	try(t, a.URL, name("a"), xff("9.9.9.9, 203.0.113.1")).refused(t, "third from .1 with a made-up hop")
	try(t, a.URL, name("a"), xff("203.0.113.1, 10.0.0.7")).refused(t, "third from .1 through two proxies")
	try(t, a.URL, name("b"), xff("203.0.113.2")).accepted(t, "first from .2")
	// The proxy's own connections (no header) count for the proxy.
	try(t, a.URL, name("p"), nil).accepted(t, "the proxy itself")
}

// TestUntrustedPeerCannotSpoofItsAddress: a peer that is not a trusted proxy
// is counted by its own address whatever X-Forwarded-For or Fly-Client-IP
// says, even on Fly.
func TestUntrustedPeerCannotSpoofItsAddress(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_CONNECTIONS_PER_IP=2", "TRUSTED_PROXIES=none", "FLY_MACHINE_ID=148e1"))
	try(t, a.URL, name("a"), xff("198.51.100.1")).accepted(t, "first")
	try(t, a.URL, name("a"), http.Header{"Fly-Client-IP": {"198.51.100.2"}}).accepted(t, "second")
	try(t, a.URL, name("a"), xff("198.51.100.3")).refused(t, "third with another X-Forwarded-For")
	try(t, a.URL, name("a"), http.Header{"Fly-Client-IP": {"198.51.100.4"}}).refused(t, "third with another Fly-Client-IP")
}

// TestFlyClientIP: on Fly (FLY_MACHINE_ID set) the client address is the
// Fly-Client-IP header of the trusted proxy, not X-Forwarded-For, whose last
// entry is the app's own address there.
func TestFlyClientIP(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_CONNECTIONS_PER_IP=1", "FLY_MACHINE_ID=148e1")) // TRUSTED_PROXIES=private
	fly := func(client string) http.Header {
		return http.Header{"Fly-Client-IP": {client}, "X-Forwarded-For": {client + ", 203.0.113.80"}}
	}
	try(t, a.URL, name("a"), fly("198.51.100.1")).accepted(t, "first from .1")
	try(t, a.URL, name("a"), fly("198.51.100.1")).refused(t, "second from .1")
	try(t, a.URL, name("b"), fly("198.51.100.2")).accepted(t, "first from .2")
}

// TestHandshakeTimeout: a client that opens a connection and never finishes
// its request headers (slowloris) is cut off after HANDSHAKE_TIMEOUT.
func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "HANDSHAKE_TIMEOUT=200ms"))
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"); err != nil {
		t.Fatal(err)
	}
	// Well past the timeout; the server must close first.
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a half-sent request open for 20s")
	}
	if err == nil && resp.StatusCode < 400 {
		t.Fatalf("a half-sent request got %s", resp.Status)
	}
	// Complete requests are still served.
	try(t, a.URL, name("a"), nil).accepted(t, "a normal client")
}

// TestMaxFrameBytes: a frame over MAX_FRAME_BYTES closes the connection with
// 1009 (message too big) without the server reading it all.
func TestMaxFrameBytes(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_MESSAGE_BYTES=1000", "MAX_FRAME_BYTES=2100"))
	c := dial(t, a.URL, name("alice"))
	c.join("r")
	c.send("r", strings.Repeat("x", 1000), "fits") // a 1000-byte body fits in 2100
	if ack := c.nextOf("ack"); ack.Ref != "fits" {
		t.Fatalf("ack = %+v", ack)
	}
	c.writeRaw(`{"type":"send","room":"r","ref":"big","body":"` + strings.Repeat(`\u0041`, 400) + `"}`)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		var f frame
		err := readFrame(ctx, c.conn, &f)
		if err == nil {
			if f.Type == "ack" {
				t.Fatalf("an over-limit frame was acked: %+v", f)
			}
			continue
		}
		if s := websocket.CloseStatus(err); s != websocket.StatusMessageTooBig {
			t.Fatalf("connection ended with %v, want close 1009", err)
		}
		return
	}
}

// TestFloodIsRateLimited: a client sending far over RATE_LIMIT gets
// rate_limited for the excess, which is not stored; the others in the room
// get every stored message and stay connected, and their own sends are not
// limited by the flooder's.
func TestFloodIsRateLimited(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "RATE_LIMIT=5", "RATE_BURST=5"))
	flooder, observer, talker := dial(t, a.URL, name("flooder")), dial(t, a.URL, name("observer")), dial(t, a.URL, name("talker"))
	flooder.join("r")
	observer.join("r")
	talker.join("r")

	const flood = 300
	for i := range flood {
		flooder.send("r", fmt.Sprint("spam ", i), fmt.Sprint("f-", i))
		if i == flood/2 {
			for k := range 3 { // mid-flood, within the talker's own burst
				talker.send("r", fmt.Sprint("talk ", k), fmt.Sprint("t-", k))
			}
		}
	}
	// Every flood send is answered once: ack or rate_limited.
	answers := map[string]string{}
	var acked []string
	for len(answers) < flood {
		f := flooder.next()
		switch f.Type {
		case "ack":
			acked = append(acked, f.Ref)
		case "error":
			if f.Code != "rate_limited" {
				t.Fatalf("flooder got %+v, want ack or rate_limited", f)
			}
		default:
			continue
		}
		if prev, dup := answers[f.Ref]; dup {
			t.Fatalf("%s answered twice: %s then %s", f.Ref, prev, f.Type)
		}
		answers[f.Ref] = f.Type + f.Code
	}
	if len(acked) == 0 || len(acked) == flood {
		t.Fatalf("%d of %d flood sends acked, want some but not all", len(acked), flood)
	}
	for k := range 3 {
		if ack := talker.nextOf("ack"); ack.Ref != fmt.Sprint("t-", k) {
			t.Fatalf("talker got %+v, want the ack of t-%d: its sends are not limited by the flooder's", ack, k)
		}
	}

	// The observer gets every stored message, in order, and nothing else.
	stored := len(acked) + 3
	got := observer.messages(stored)
	checkSeqs(t, "observer", got, 1)
	talker.send("r", "still there?", "t-last")
	if m := observer.messages(1)[0]; m.Seq != int64(stored+1) || m.Body != "still there?" {
		t.Fatalf("observer then got %+v, want seq %d from the talker: it is still connected", m, stored+1)
	}

	var refs []string
	if err := queryRow(t, db, "select coalesce(array_agg(ref order by ref), '{}') from messages where author = 'flooder'", &refs); err != nil {
		t.Fatal(err)
	}
	slices.Sort(acked)
	if !slices.Equal(refs, acked) {
		t.Fatalf("stored flooder refs %v, want exactly the %d acked ones %v", refs, len(acked), acked)
	}
	t.Logf("%d of %d flood sends acked, the rest rate_limited and not stored", len(acked), flood)
}

// TestJoinChurnIsRateLimited: every join reads the table, so joining and
// leaving in a loop is limited too: a burst of MAX_ROOMS_PER_CONN joins,
// then RATE_LIMIT per second; the connection stays.
func TestJoinChurnIsRateLimited(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "RATE_LIMIT=0.5", "RATE_BURST=1", "MAX_ROOMS_PER_CONN=2"))
	c := dial(t, a.URL, name("churner"))
	limited := 0
	for i := range 20 { // 18 joins over the burst take 36s at 0.5/s
		c.write(map[string]any{"type": "join", "room": "r", "ref": fmt.Sprint("j-", i)})
		f := c.next()
		for f.Type == "message" {
			f = c.next()
		}
		switch {
		case f.Type == "joined":
			c.write(map[string]any{"type": "leave", "room": "r"})
			if l := c.next(); l.Type != "left" {
				t.Fatalf("leave answered %+v", l)
			}
		case f.Type == "error" && f.Code == "rate_limited" && f.Ref == fmt.Sprint("j-", i):
			limited++
		default:
			t.Fatalf("join %d answered %+v", i, f)
		}
	}
	if limited < 10 {
		t.Fatalf("%d of 20 joins rate_limited, want at least 10 (burst 2, then 0.5/s)", limited)
	}
	c.write(map[string]any{"type": "leave", "room": "elsewhere"})
	if f := c.next(); f.Code != "not_joined" {
		t.Fatalf("after the churn the connection answered %+v, want not_joined", f)
	}
}
