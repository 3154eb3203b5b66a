package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Tests of the socket layer from the outside, with raw TCP clients that
// write hand-built frames (chat/internal/wsconn has the conformance cases).

// rawDial upgrades a TCP connection to base's /ws?query, writing early in
// the same write as the request, and returns it with its reader.
func rawDial(t *testing.T, base, query string, early []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	req := "GET /ws?" + query + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := nc.Write(append([]byte(req), early...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	return nc, br
}

// masked is a client frame with first byte b0, masked with a zero key.
func masked(b0 byte, payload string) []byte {
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	default:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	}
	return append(append(b, 0, 0, 0, 0), payload...)
}

// readServerFrame reads one frame the server sent.
func readServerFrame(br *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		_, err = io.ReadFull(br, b[:])
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		_, err = io.ReadFull(br, b[:])
		n = int(binary.BigEndian.Uint64(b[:]))
	}
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(br, payload)
	return h[0] & 0x0f, payload, err
}

// closeCode reads frames until a close frame and returns its code, or 0
// if the connection ended without one.
func closeCode(nc net.Conn, br *bufio.Reader, timeout time.Duration) int {
	nc.SetReadDeadline(time.Now().Add(timeout))
	for {
		op, p, err := readServerFrame(br)
		if err != nil {
			return 0
		}
		if op == 0x8 && len(p) >= 2 {
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// TestFloodsCostOnlyTheFlooder: while clients flood one instance with
// pings, pongs and 1-byte fragments (each reconnecting when cut), a
// receiver in another room on that instance gets every message of a
// sender's 20/s, and every flooder is closed with 1008.
func TestFloodsCostOnlyTheFlooder(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "MAX_CONNECTIONS_PER_IP=0"))
	sender, receiver := dial(t, a.URL, name("sender")), dial(t, a.URL, name("receiver"))
	sender.join("calm")
	receiver.join("calm")

	ping, pong := masked(0x89, ""), masked(0x8a, "")
	fragments := masked(0x01, "x")
	for range 2000 {
		fragments = append(fragments, masked(0x00, "x")...)
	}
	floods := map[string][]byte{
		"ping":      bytes.Repeat(ping, 2000),
		"pong":      bytes.Repeat(pong, 2000),
		"fragments": fragments,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var mu sync.Mutex
	cuts := map[string]int{}
	var wg sync.WaitGroup
	for kind, flood := range floods {
		for range 2 { // two attackers of each kind
			wg.Go(func() {
				for ctx.Err() == nil {
					nc, br := rawDial(t, a.URL, "name=flood&room=f", nil)
					got := make(chan int, 1)
					go func() { got <- closeCode(nc, br, 15*time.Second) }()
					for ctx.Err() == nil {
						if _, err := nc.Write(flood); err != nil {
							break // cut
						}
					}
					code := <-got
					nc.Close()
					mu.Lock()
					if code == 1008 {
						cuts[kind]++
					} else if ctx.Err() == nil {
						t.Errorf("%s flooder ended with close code %d, want 1008", kind, code)
					}
					mu.Unlock()
				}
			})
		}
	}
	const n = 60
	var worst time.Duration
	for i := range n {
		start := time.Now()
		sender.send("calm", fmt.Sprint("m", i), fmt.Sprint("c", i))
		for {
			f := receiver.next()
			if f.Type == "message" {
				if f.Body != fmt.Sprint("m", i) {
					t.Fatalf("receiver got %q, want m%d", f.Body, i)
				}
				break
			}
		}
		worst = max(worst, time.Since(start))
		time.Sleep(50 * time.Millisecond) // 20 messages per second
	}
	cancel()
	wg.Wait()
	t.Logf("receiver got all %d messages, worst send→receive %v; flooders cut: %v", n, worst, cuts)
	for kind := range floods {
		if cuts[kind] == 0 {
			t.Errorf("no %s flooder was closed with 1008", kind)
		}
	}
	m := scrape(t, a.URL)
	if m[`pgchat_disconnects_total{cause="control_flood"}`] == 0 || m[`pgchat_disconnects_total{cause="fragment_flood"}`] == 0 {
		t.Errorf("floods not counted: %v", m)
	}
}

// TestJoinWithTheUpgrade: a join written in the same write as the upgrade
// request is read and answered.
func TestJoinWithTheUpgrade(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	for _, join := range []string{
		`{"type":"join","room":"r"}`,
		`{"type":"join","room":"r2"}`, // 27 bytes: the length byte, masked, is 0x9b
		`{"type":"join","room":"r","ref":"12"}`,
	} {
		nc, br := rawDial(t, a.URL, "name=early", masked(0x81, join))
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		var types []string
		for len(types) < 2 {
			op, p, err := readServerFrame(br)
			if err != nil {
				t.Fatalf("%s: after %v: %v", join, types, err)
			}
			if op == 0x1 {
				var f frame
				if err := json.Unmarshal(p, &f); err != nil {
					t.Fatal(err)
				}
				types = append(types, f.Type)
			}
		}
		if types[0] != "welcome" || types[1] != "joined" {
			t.Errorf("%s: got %v, want welcome then joined", join, types)
		}
		nc.Close()
	}
}

// TestKeepalive: a peer that answers no ping is dropped after the
// keepalive window; one that resumes many rooms while reading slowly,
// keeping the server's read side busy with the replays, is not.
func TestKeepalive(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "PING_INTERVAL=100ms", "WRITE_TIMEOUT=3s", "MAX_CONNECTIONS_PER_IP=0"))

	// Fill 10 rooms with 200 messages of 1 KB: 2 MB of replay.
	const rooms, per = 10, 200
	filler := dial(t, a.URL, name("filler"))
	body := strings.Repeat("x", 1000)
	for r := range rooms {
		filler.join(fmt.Sprint("room", r))
	}
	for i := range rooms * per {
		filler.send(fmt.Sprint("room", i%rooms), body, fmt.Sprint("f", i))
	}
	for range rooms * per {
		filler.nextOf("message")
	}
	filler.conn.Close(websocket.StatusNormalClosure, "") // it stops reading: not a keepalive case

	silent, br := rawDial(t, a.URL, "name=silent", nil)
	dropped := make(chan struct{})
	go func() { // reads (the pings) but never answers
		defer close(dropped)
		silent.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, _, err := readServerFrame(br); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Error("a peer that answers no ping is still connected after 30s")
				}
				return
			}
		}
	}()

	slow := dial(t, a.URL, name("slow"))
	for r := range rooms {
		slow.write(map[string]any{"type": "join", "room": fmt.Sprint("room", r), "since": 0})
	}
	joined, messages := 0, 0
	start := time.Now()
	for joined < rooms {
		f, err := slow.tryNext(10 * time.Second)
		if err != nil {
			t.Fatalf("slow reader after %d messages, %d joined, %v: %v", messages, joined, time.Since(start), err)
		}
		switch f.Type {
		case "message":
			messages++
			if messages%20 == 0 {
				time.Sleep(10 * time.Millisecond) // about 2 MB/s at most
			}
		case "joined":
			joined++
		case "error":
			t.Fatalf("slow reader got %+v", f)
		}
	}
	if messages != rooms*per {
		t.Errorf("slow reader got %d messages, want %d", messages, rooms*per)
	}
	t.Logf("slow reader resumed %d rooms, %d messages, in %v", rooms, messages, time.Since(start))
	slow.conn.Close(websocket.StatusNormalClosure, "")
	<-dropped
	// The end is counted in Closed, once both sides are done: just after
	// the socket closes, so wait for the counter to move, then check it.
	series := `pgchat_disconnects_total{cause="keepalive"}`
	waitMetric(t, a.URL, series, func(v float64) bool { return v >= 1 })
	if got := scrape(t, a.URL)[series]; got != 1 {
		t.Errorf("keepalive disconnects = %v, want 1", got)
	}
}

// TestShutdownWithAStuckHistoryClient: history clients that never read
// their answers hold the address's history slots, and do not keep the
// WebSockets from their 1001 at shutdown.
func TestShutdownWithAStuckHistoryClient(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	// SEND_BUFFER_BYTES holds alice's own 6 MB echo, however slowly a
	// loaded machine lets her read it: this test is about the history
	// clients, not about slow consumers.
	a := startInstance(t, testEnv(db, "app-1", "SHUTDOWN_TIMEOUT=3s", "WRITE_TIMEOUT=60s", "MAX_MESSAGE_BYTES=65536", "SEND_BUFFER_BYTES=16777216"))
	c := dial(t, a.URL, name("alice"))
	c.join("big")
	// Pages of 6 MB: more than the socket buffers hold (4 MB at most here).
	body := strings.Repeat("x", 60000)
	for i := range 100 {
		c.send("big", body, fmt.Sprint("b", i))
	}
	for range 100 {
		c.nextOf("ack")
	}
	// Many history clients ask for the largest page and never read it: more
	// than the socket buffers hold.
	for range 8 {
		nc, err := net.Dial("tcp", strings.TrimPrefix(a.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetReadBuffer(4096)
		}
		fmt.Fprintf(nc, "GET /api/rooms/big/messages?limit=200 HTTP/1.1\r\nHost: x\r\n\r\n")
		var b [1]byte // the answer has started: its handler is writing
		if _, err := nc.Read(b[:]); err != nil {
			t.Fatal(err)
		}
	}
	// They are stuck writing: a ninth request from the same address is
	// refused until one of them is done.
	resp, err := http.Get(a.URL + "/api/rooms/big/messages?limit=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a ninth history request got %s (Retry-After %q), want 429 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()
	for {
		var f frame
		err := readFrame(t.Context(), c.conn, &f)
		if err != nil {
			if s := websocket.CloseStatus(err); s != websocket.StatusGoingAway {
				t.Fatalf("WebSocket ended with %v, want close 1001", err)
			}
			break
		}
	}
	<-stopped
}
