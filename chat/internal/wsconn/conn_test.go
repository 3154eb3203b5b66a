package wsconn

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain checks that every goroutine started for a connection (readers,
// writers, the Set's) has ended once the tests' connections have.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo is a Handler that sends every text message back and reports the
// connection's end.
type echo struct {
	c     *Conn
	ends  chan End
	block chan struct{} // if set, a message "block" waits for it to close
}

func (e *echo) Message(ctx context.Context, text bool, data []byte) {
	if e.block != nil && string(data) == "block" {
		<-e.block
	}
	if !text {
		data = append([]byte("binary:"), data...)
	}
	e.c.Queue(append([]byte(nil), data...))
}

func (e *echo) Closed(end End) { e.ends <- end }

type testServer struct {
	set  *Set
	addr string
	ends chan End
	url  string
}

// startServer runs an echo server on a Set with opts; block, if not nil,
// holds messages "block".
func startServer(t *testing.T, opts Options, block chan struct{}) *testServer {
	t.Helper()
	ts := &testServer{set: NewSet(opts), ends: make(chan End, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ts.set.Run(ctx); close(done) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := ts.set.Upgrade(w, r, UpgradeOptions{ReadLimit: 1 << 17, OriginPatterns: []string{"*.example.com"}})
		if err != nil {
			return
		}
		go c.Serve(&echo{c: c, ends: ts.ends, block: block})
	}))
	ts.addr, ts.url = srv.Listener.Addr().String(), srv.URL
	t.Cleanup(func() {
		srv.Close()
		deadline := time.Now().Add(10 * time.Second)
		for ts.set.Len() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := ts.set.Len(); n > 0 {
			t.Errorf("%d connections did not end", n)
		}
		cancel()
		<-done
	})
	return ts
}

// end waits for the server's record of one connection's end.
func (ts *testServer) end(t *testing.T) End {
	t.Helper()
	select {
	case e := <-ts.ends:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end on the server")
		return End{}
	}
}

// rawClient speaks WebSocket byte by byte.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

const upgradeRequest = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// dialRaw upgrades a connection, writing early (frames) in the same write
// as the request.
func dialRaw(t *testing.T, ts *testServer, early ...[]byte) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.Write(append([]byte(upgradeRequest), bytes.Join(early, nil)...))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	// RFC 6455 1.3's example key and answer.
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("Sec-WebSocket-Accept = %q", got)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("extension negotiated: %q", ext)
	}
	return &rawClient{t: t, nc: nc, br: br}
}

// frame builds a client frame: first byte b0 (FIN, RSV, opcode), masked
// unless unmasked.
func frame(b0 byte, payload []byte, unmasked ...bool) []byte {
	b := []byte{b0}
	maskBit := byte(0x80)
	if len(unmasked) > 0 && unmasked[0] {
		maskBit = 0
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if maskBit == 0 {
		return append(b, payload...)
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

func text(s string) []byte { return frame(0x81, []byte(s)) }

func closeFrame(code int, reason string) []byte {
	return frame(0x88, append([]byte{byte(code >> 8), byte(code)}, reason...))
}

func (c *rawClient) write(frames ...[]byte) {
	c.t.Helper()
	if _, err := c.nc.Write(bytes.Join(frames, nil)); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one server frame, checking it is unmasked, final (we never
// fragment) and uses the shortest length encoding.
func (c *rawClient) read() (op byte, payload []byte) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	if h[0]&0xf0 != 0x80 || h[1]&0x80 != 0 {
		c.t.Fatalf("server frame header %x: want FIN, no RSV, unmasked", h)
	}
	n := int(h[1])
	switch n {
	case 126:
		var b [2]byte
		io.ReadFull(c.br, b[:])
		n = int(binary.BigEndian.Uint16(b[:]))
		if n < 126 {
			c.t.Fatalf("16-bit length %d", n)
		}
	case 127:
		var b [8]byte
		io.ReadFull(c.br, b[:])
		n = int(binary.BigEndian.Uint64(b[:]))
		if n <= 0xffff {
			c.t.Fatalf("64-bit length %d", n)
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		c.t.Fatalf("reading a payload of %d: %v", n, err)
	}
	return h[0] & 0x0f, payload
}

// expect reads a frame and checks it.
func (c *rawClient) expect(op byte, payload []byte) {
	c.t.Helper()
	gotOp, got := c.read()
	if gotOp != op || !bytes.Equal(got, payload) {
		c.t.Fatalf("got frame op %#x %q (%d bytes), want op %#x %q (%d bytes)", gotOp, trim(got), len(got), op, trim(payload), len(payload))
	}
}

func trim(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}

// expectClose reads frames up to a close frame with code (skipping
// others), answers it and checks that the server then closes the TCP
// connection. It returns the reason.
func (c *rawClient) expectClose(code int) string {
	c.t.Helper()
	for {
		op, p := c.read()
		if op != opClose {
			continue
		}
		got := 0
		if len(p) >= 2 {
			got = int(binary.BigEndian.Uint16(p))
		}
		if got != code {
			c.t.Fatalf("close code %d (%q), want %d", got, p, code)
		}
		c.nc.Write(closeFrame(code, ""))
		c.expectEOF()
		return string(p[2:])
	}
}

func (c *rawClient) expectEOF() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatal("the server did not close the TCP connection")
	}
}

func TestEchoLengths(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	c := dialRaw(t, ts)
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 100000} {
		msg := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		c.write(text(string(msg)))
		c.expect(opText, msg)
	}
	c.write(closeFrame(1000, "bye"))
	c.expect(opClose, append([]byte{0x03, 0xe8}, "bye"...))
	c.expectEOF()
	if e := ts.end(t); e.Cause != CausePeerClosed || e.Code != 1000 || e.Reason != "bye" {
		t.Errorf("end = %+v", e)
	}
}

func TestFragmentsWithInterleavedPings(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	c := dialRaw(t, ts)
	// "héllo" with the é split across two fragments, pings between.
	s := []byte("héllo")
	c.write(frame(0x01, s[:2]), frame(0x89, []byte("p1")), frame(0x00, s[2:4]), frame(0x89, []byte("p2")), frame(0x80, s[4:]))
	// Pongs answer p1 and p2, or only p2 if both were read before the
	// writer ran (RFC 6455 5.5.3).
	op, p := c.read()
	if op == opPong && string(p) == "p1" {
		op, p = c.read()
	}
	if op != opPong || string(p) != "p2" {
		t.Fatalf("got op %#x %q, want the pong to p2", op, p)
	}
	c.expect(opText, s)
	// A binary message in fragments.
	c.write(frame(0x02, []byte{1, 2}), frame(0x80, []byte{3}))
	c.expect(opText, []byte("binary:\x01\x02\x03"))
	// Empty fragments, and a ping of 125 bytes.
	big := bytes.Repeat([]byte("p"), 125)
	c.write(frame(0x01, nil), frame(0x00, []byte("x")), frame(0x89, big), frame(0x80, nil))
	c.expect(opPong, big)
	c.expect(opText, []byte("x"))
	c.write(frame(0x88, nil)) // close without a code: echoed without one
	c.expect(opClose, []byte{})
	c.expectEOF()
	if e := ts.end(t); e.Code != StatusNoStatusRcvd {
		t.Errorf("end = %+v", e)
	}
}

func TestProtocolViolations(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	cases := []struct {
		name  string
		frame []byte
		code  int
		cause string
	}{
		{"unmasked", frame(0x81, []byte("hi"), true), 1002, CauseProtocol},
		{"rsv1", frame(0xc1, []byte("hi")), 1002, CauseProtocol},
		{"rsv2", frame(0xa1, []byte("hi")), 1002, CauseProtocol},
		{"rsv3", frame(0x91, []byte("hi")), 1002, CauseProtocol},
		{"opcode 3", frame(0x83, nil), 1002, CauseProtocol},
		{"opcode 7", frame(0x87, nil), 1002, CauseProtocol},
		{"opcode 0xb", frame(0x8b, nil), 1002, CauseProtocol},
		{"opcode 0xf", frame(0x8f, nil), 1002, CauseProtocol},
		{"ping of 126", frame(0x89, make([]byte, 126)), 1002, CauseProtocol},
		{"fragmented ping", frame(0x09, []byte("x")), 1002, CauseProtocol},
		{"continuation first", frame(0x80, []byte("x")), 1002, CauseProtocol},
		{"text inside text", append(frame(0x01, []byte("a")), frame(0x81, []byte("b"))...), 1002, CauseProtocol},
		{"close of 1 byte", frame(0x88, []byte{3}), 1002, CauseProtocol},
		{"close 999", closeFrame(999, ""), 1002, CauseProtocol},
		{"close 1004", closeFrame(1004, ""), 1002, CauseProtocol},
		{"close 1005", closeFrame(1005, ""), 1002, CauseProtocol},
		{"close 1006", closeFrame(1006, ""), 1002, CauseProtocol},
		{"close 1015", closeFrame(1015, ""), 1002, CauseProtocol},
		{"close 2000", closeFrame(2000, ""), 1002, CauseProtocol},
		{"close 5000", closeFrame(5000, ""), 1002, CauseProtocol},
		{"invalid UTF-8", text("\xff\xfe"), 1007, CauseInvalidUTF8},
		{"invalid UTF-8 in fragments", append(frame(0x01, []byte("ok")), frame(0x80, []byte{0xc3})...), 1007, CauseInvalidUTF8},
		{"invalid UTF-8 close reason", closeFrame(1000, "\xff"), 1007, CauseInvalidUTF8},
		{"too large", text(strings.Repeat("x", 1<<17+1)), 1009, CauseTooLarge},
		{"too large in fragments", append(frame(0x01, make([]byte, 1<<16)), frame(0x80, make([]byte, 1<<16+1))...), 1009, CauseTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, ts)
			c.write(text("before"))
			c.expect(opText, []byte("before"))
			c.write(tc.frame, text("after")) // never echoed
			if reason := c.expectClose(tc.code); reason == "" {
				t.Error("close frame without a reason")
			}
			if e := ts.end(t); e.Cause != tc.cause || e.Code != tc.code {
				t.Errorf("end = %+v, want cause %s code %d", e, tc.cause, tc.code)
			}
		})
	}
}

func TestCloseCodesEchoed(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	for _, code := range []int{1000, 1001, 1002, 1003, 1007, 1011, 3000, 4001, 4999} {
		c := dialRaw(t, ts)
		reason := fmt.Sprintf("code %d ✓", code)
		c.write(closeFrame(code, reason))
		c.expect(opClose, append([]byte{byte(code >> 8), byte(code)}, reason...))
		c.expectEOF()
		if e := ts.end(t); e.Code != code || e.Reason != reason {
			t.Errorf("end = %+v", e)
		}
	}
}

func TestServerClose(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	c := dialRaw(t, ts)
	c.write(text("x"))
	c.expect(opText, []byte("x"))
	ts.set.mu.Lock()
	var conn *Conn
	for k := range ts.set.conns {
		conn = k
	}
	ts.set.mu.Unlock()
	conn.Queue([]byte("last"))
	conn.CloseAfterQueued("test", 4000, "going")
	conn.Queue([]byte("dropped"))
	c.expect(opText, []byte("last"))
	if reason := c.expectClose(4000); reason != "going" {
		t.Errorf("reason %q", reason)
	}
	if e := ts.end(t); e.Cause != "test" || e.Code != 4000 {
		t.Errorf("end = %+v", e)
	}
	<-conn.Done()
}

// TestServerCloseUnanswered: a peer that never answers our close frame is
// dropped after closeTimeout.
func TestServerCloseUnanswered(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{WriteTimeout: 200 * time.Millisecond}, nil)
	c := dialRaw(t, ts)
	c.write(text("x"))
	c.expect(opText, []byte("x"))
	ts.set.mu.Lock()
	for k := range ts.set.conns {
		k.Close("test", 1000, "")
	}
	ts.set.mu.Unlock()
	c.expect(opClose, []byte{0x03, 0xe8})
	c.expectEOF()
	ts.end(t)
}

func TestEarlyFrameWithUpgrade(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	// 9- and 10-byte payloads: length bytes 0x89 and 0x8a masked.
	c := dialRaw(t, ts, text("early"), text("123456789"), text("0123456789"))
	c.expect(opText, []byte("early"))
	c.expect(opText, []byte("123456789"))
	c.expect(opText, []byte("0123456789"))
}

func TestHandshakeRefusals(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	cases := []struct {
		name   string
		header map[string]string
		status int
	}{
		{"plain GET", map[string]string{"Connection": "", "Upgrade": ""}, http.StatusUpgradeRequired},
		{"version 8", map[string]string{"Sec-WebSocket-Version": "8"}, http.StatusBadRequest},
		{"bad key", map[string]string{"Sec-WebSocket-Key": "short"}, http.StatusBadRequest},
		{"foreign origin", map[string]string{"Origin": "https://evil.test"}, http.StatusForbidden},
		{"allowed origin", map[string]string{"Origin": "https://chat.example.com"}, http.StatusSwitchingProtocols},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest("GET", ts.url, nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
		if rwc, ok := resp.Body.(io.WriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
			rwc.Write(closeFrame(1000, ""))
			io.Copy(io.Discard, resp.Body)
			ts.end(t)
		}
		resp.Body.Close()
	}
}

// TestControlFlood: a client sending pings as fast as it can is closed
// with 1008 once over MaxControlRate.
func TestControlFlood(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	for _, op := range []byte{0x89, 0x8a} {
		c := dialRaw(t, ts)
		c.write(bytes.Repeat(frame(op, nil), 200))
		if reason := c.expectClose(1008); !strings.Contains(reason, "per second") {
			t.Errorf("reason %q", reason)
		}
		if e := ts.end(t); e.Cause != CauseControlFlood {
			t.Errorf("end = %+v", e)
		}
	}
}

func TestFragmentFlood(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{}, nil)
	c := dialRaw(t, ts)
	flood := [][]byte{frame(0x01, []byte("x"))}
	for range 1000 {
		flood = append(flood, frame(0x00, []byte("x")))
	}
	c.write(flood...)
	c.expectClose(1008)
	if e := ts.end(t); e.Cause != CauseFragmentFlood {
		t.Errorf("end = %+v", e)
	}
}

// TestKeepaliveDropsSilentPeer: a peer that answers no ping is dropped.
func TestKeepaliveDropsSilentPeer(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{PingInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}, nil)
	c := dialRaw(t, ts)
	op, _ := c.read()
	if op != opPing {
		t.Fatalf("op %#x, want a ping", op)
	}
	c.expectEOF()
	if e := ts.end(t); e.Cause != CauseKeepalive {
		t.Errorf("end = %+v", e)
	}
}

// TestKeepaliveWhileBusy: while the handler holds the read side far
// longer than the keepalive window, a peer answering pings is not dropped.
func TestKeepaliveWhileBusy(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	ts := startServer(t, Options{PingInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}, block)
	c := dialRaw(t, ts)
	c.write(text("block"))
	// One ping goes out (the next only once the pong is read); answer it,
	// then let 5 keepalive windows pass.
	if op, p := c.read(); op == opPing {
		c.write(frame(0x8a, p))
	} else {
		t.Fatalf("op %#x, want a ping", op)
	}
	time.Sleep(time.Second)
	close(block)
	for {
		op, p := c.read()
		if op == opText {
			if string(p) != "block" {
				t.Fatalf("got %q", p)
			}
			break
		}
		c.write(frame(0x8a, p))
	}
	c.write(closeFrame(1000, ""))
	for op, _ := c.read(); op != opClose; op, _ = c.read() {
	}
	if e := ts.end(t); e.Cause != CausePeerClosed {
		t.Errorf("end = %+v", e)
	}
}

// TestParking: an idle connection is parked without a goroutine; a frame
// resumes it.
func TestParking(t *testing.T) {
	t.Parallel()
	if newPoller() == nil {
		t.Skip("no poller on this system")
	}
	ts := startServer(t, Options{}, nil)
	c := dialRaw(t, ts)
	for i := range 3 {
		waitUntil(t, "the connection is parked", func() bool { return ts.set.Parked() == 1 })
		msg := fmt.Sprint("m", i)
		c.write(text(msg))
		c.expect(opText, []byte(msg))
	}
	waitUntil(t, "the connection is parked", func() bool { return ts.set.Parked() == 1 })
	c.nc.Close() // parked, the peer goes away
	if e := ts.end(t); e.Cause != CausePeerGone {
		t.Errorf("end = %+v", e)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSlowConsumer: Queue reports false past MaxQueued.
func TestSlowConsumer(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{MaxQueued: 1 << 16}, nil)
	c := dialRaw(t, ts)
	c.write(text("x"))
	c.expect(opText, []byte("x"))
	ts.set.mu.Lock()
	var conn *Conn
	for k := range ts.set.conns {
		conn = k
	}
	ts.set.mu.Unlock()
	big := make([]byte, 1<<15)
	ok := true
	for i := 0; ok && i < 10000; i++ { // the peer does not read: the socket fills
		ok = conn.Queue(big)
	}
	if ok {
		t.Fatal("Queue never reported a slow consumer")
	}
	conn.Close("slow", 1008, "slow consumer")
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if reason := c.expectClose(1008); reason != "slow consumer" {
		t.Errorf("reason %q", reason)
	}
	ts.end(t)
}
