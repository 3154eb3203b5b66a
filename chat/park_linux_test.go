package chat

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func parkedCount(h *Hub) int {
	h.poll.mu.Lock()
	defer h.poll.mu.Unlock()
	return len(h.poll.parked)
}

// waitFor polls cond every 5ms for up to 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// parkedConn dials the hub and waits until its connection is parked.
func parkedConn(t *testing.T, h *Hub, url string) *websocket.Conn {
	t.Helper()
	conn, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := conn.Read(ctx); err != nil { // welcome
		t.Fatal(err)
	}
	waitFor(t, "the connection is parked", func() bool { return parkedCount(h) == 1 })
	return conn
}

// TestParkedConnectionResumes: an idle connection has no goroutine; a frame
// resumes it, and it parks again once idle.
func TestParkedConnectionResumes(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn := parkedConn(t, h, url)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"leave","room":"nowhere","ref":"r"}`)); err != nil {
			t.Fatal(err)
		}
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var f struct{ Type, Code, Ref string }
		json.Unmarshal(data, &f)
		if f.Type != TypeError || f.Code != string(CodeNotJoined) || f.Ref != "r" {
			t.Fatalf("round %d: got %s, want a not_joined error for ref r", i, data)
		}
		waitFor(t, "the connection is parked again", func() bool { return parkedCount(h) == 1 })
	}
}

// TestParkedConnectionPeerCloses: a peer that goes away while its
// connection is parked is unregistered.
func TestParkedConnectionPeerCloses(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn := parkedConn(t, h, url)
	conn.CloseNow()
	waitFor(t, "the connection is gone", func() bool { return connCount(h) == 0 && parkedCount(h) == 0 })
}

// TestParkedConnectionShutdown: Hub.Close ends parked connections with
// 1001 and waits for them.
func TestParkedConnectionShutdown(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn := parkedConn(t, h, url)
	readErr := make(chan error, 1)
	go func() {
		_, _, err := conn.Read(context.Background())
		readErr <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := connCount(h); n != 0 {
		t.Fatalf("%d connections after Close, want 0", n)
	}
	if err := <-readErr; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("client read %v, want close 1001", err)
	}
}

// TestParkedConnectionAnswersPings: a client's pings are answered while
// its connection stays parked, and so are the hub's keepalives.
func TestParkedConnectionAnswersPings(t *testing.T) {
	t.Parallel()
	h, url := pingServer(t)
	conn := parkedConn(t, h, url)
	go conn.Read(context.Background()) // reads the pongs (and answers the hub's pings)
	for i := range 5 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err := conn.Ping(ctx)
		cancel()
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		time.Sleep(30 * time.Millisecond) // the hub pings every 50ms
	}
	waitFor(t, "the connection is parked", func() bool { return parkedCount(h) == 1 })
	if n := connCount(h); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}
