package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestDrainVisibleToLoadBalancers: after SIGTERM, for DRAIN_DELAY, /readyz
// answers 503 (instead of no answer), new upgrades get 503 with
// Retry-After, and the connections already open keep working; then every
// one of them is closed with 1001 and the process exits 0.
func TestDrainVisibleToLoadBalancers(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	p := startProcess(t, testEnv(db, "app-1", "DRAIN_DELAY=1s"))
	var clients []*wsClient
	for i := range 20 {
		c := dial(t, p.URL, name(fmt.Sprintf("u%d", i)))
		c.join("r")
		clients = append(clients, c)
	}
	exited := make(chan error, 1)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() { exited <- p.cmd.Wait() }()

	for {
		resp, err := http.Get(p.URL + "/readyz")
		if err != nil {
			t.Fatalf("/readyz gave no answer before it said 503: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := http.Get(p.URL + "/ws")
	if err != nil {
		t.Fatalf("a new upgrade during the drain got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("new upgrade during the drain: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}

	// The open connections still work.
	clients[0].send("r", "during the drain", "d1")
	for _, c := range clients {
		if m := c.nextOf("message"); m.Body != "during the drain" {
			t.Fatalf("got %+v", m)
		}
	}
	for i, c := range clients {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		var err error
		for err == nil {
			_, _, err = c.conn.Read(ctx)
		}
		cancel()
		if websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Errorf("client %d: %v, want close 1001", i, err)
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20 s after SIGTERM")
	}
	if _, err := http.Get(p.URL + "/readyz"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("/readyz after exit: %v, want connection refused", err)
	}
}
