package chat

import (
	"bytes"
	"context"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// pingServer is a hub without a database that pings every 50ms and
// drops peers that do not answer within a second.
func pingServer(t *testing.T) (*Hub, string) {
	t.Helper()
	h := NewHub(nil, nil, Options{PingInterval: 50 * time.Millisecond, WriteTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	t.Cleanup(func() {
		h.Close(context.Background())
		srv.Close()
		cancel()
		<-done
	})
	return h, "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws?name=tester"
}

func connCount(h *Hub) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// TestPingDropsDeadPeer: a peer that never reads never answers the hub's
// pings and is dropped.
func TestPingDropsDeadPeer(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	deadline := time.Now().Add(10 * time.Second)
	for connCount(h) == 0 { // registered
		if time.Now().After(deadline) {
			t.Fatal("the connection was never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for connCount(h) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a peer that answers no ping is still connected after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPingKeepsLivePeer: a peer that reads (and so answers pings) stays
// connected over many ping intervals.
func TestPingKeepsLivePeer(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	frames := make(chan error, 10)
	go func() { // reading answers the pings
		for {
			_, _, err := conn.Read(context.Background())
			frames <- err
			if err != nil {
				return
			}
		}
	}()
	if err := <-frames; err != nil { // welcome
		t.Fatal(err)
	}
	select {
	case err := <-frames:
		t.Fatalf("got %v, want nothing after the welcome", err)
	case <-time.After(600 * time.Millisecond): // 12 ping intervals
	}
	if n := connCount(h); n != 1 {
		t.Fatalf("%d connections after 12 ping intervals, want 1", n)
	}
}

// fakeConn records the writes made to it.
type fakeConn struct {
	net.Conn
	mu        sync.Mutex
	writes    [][]byte
	deadlines int
}

func (f *fakeConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, bytes.Clone(p))
	return len(p), nil
}

func (f *fakeConn) SetWriteDeadline(time.Time) error {
	f.deadlines++
	return nil
}

func TestCorkWriter(t *testing.T) {
	t.Parallel()
	fc := &fakeConn{}
	w := &corkWriter{conn: fc, timeout: time.Second}
	w.Write([]byte("through"))
	w.cork()
	for _, s := range []string{"a", "b", "c"} {
		w.Write([]byte(s))
	}
	if len(fc.writes) != 1 {
		t.Fatalf("%d socket writes while corked, want only the earlier 1", len(fc.writes))
	}
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("after"))
	want := []string{"through", "abc", "after"}
	if len(fc.writes) != len(want) {
		t.Fatalf("writes %q, want %q", fc.writes, want)
	}
	for i := range want {
		if string(fc.writes[i]) != want[i] {
			t.Fatalf("writes %q, want %q", fc.writes, want)
		}
	}
	if fc.deadlines != 2 {
		t.Errorf("%d deadline changes, want 2 (set and clear around the corked write)", fc.deadlines)
	}

	// A batch past corkFlushSize goes out in chunks while still corked.
	fc.writes = nil
	w.cork()
	chunk := make([]byte, corkFlushSize/2+1)
	for range 4 {
		w.Write(chunk)
	}
	w.uncork()
	if len(fc.writes) != 2 || len(fc.writes[0])+len(fc.writes[1]) != 4*len(chunk) {
		t.Errorf("%d writes for 4 half-limit chunks, want 2 with every byte", len(fc.writes))
	}
}

// TestFramesBatchedIntact: many frames queued at once reach the client in
// order and intact, corked into few socket writes.
func TestFramesBatchedIntact(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn.Read(ctx) // welcome
	h.mu.Lock()
	var c *client
	for c = range h.conns {
	}
	h.mu.Unlock()
	const n = 2000
	c.mu.Lock() // queue them all before the writer starts
	for i := range n {
		c.queue = append(c.queue, []byte(strings.Repeat(string(rune('a'+i%26)), 1+i%300)))
	}
	c.kickLocked()
	c.mu.Unlock()
	for i := range n {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want := strings.Repeat(string(rune('a'+i%26)), 1+i%300); string(data) != want {
			t.Fatalf("frame %d = %.20q (%d bytes), want %.20q (%d bytes)", i, data, len(data), want, len(want))
		}
	}
}

// TestWriteText: text frames of every length encoding, and none after the
// library's close frame.
func TestWriteText(t *testing.T) {
	t.Parallel()
	fc := &fakeConn{}
	w := &corkWriter{conn: fc, timeout: time.Second}
	sizes := []int{0, 1, 125, 126, 65535, 65536, 70000}
	w.cork()
	for _, n := range sizes {
		if err := w.writeText(bytes.Repeat([]byte{'x'}, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for _, b := range fc.writes {
		stream = append(stream, b...)
	}
	for _, want := range sizes {
		if len(stream) < 2 || stream[0] != 0x81 || stream[1]&0x80 != 0 {
			t.Fatalf("frame of %d: header % x, want 81 and an unmasked length", want, stream[:min(len(stream), 2)])
		}
		n, hdr := int(stream[1]), 2
		switch n {
		case 126:
			n, hdr = int(stream[2])<<8|int(stream[3]), 4
		case 127:
			n = 0
			for i := range 8 {
				n = n<<8 | int(stream[2+i])
			}
			hdr = 10
		}
		if n != want || len(stream) < hdr+n || !bytes.Equal(stream[hdr:hdr+n], bytes.Repeat([]byte{'x'}, n)) {
			t.Fatalf("frame of %d bytes read back as %d bytes", want, n)
		}
		stream = stream[hdr+n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes after the frames", len(stream))
	}

	w.Write([]byte{0x88, 2, 0x03, 0xe8}) // the library's close frame
	w.cork()
	if err := w.writeText([]byte("late")); err == nil {
		t.Error("writeText after a close frame succeeded, want an error")
	}
	w.uncork()
}
