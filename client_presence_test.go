package main

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgchat/pgchat/client"
)

// events collects a client's presence, typing and read callbacks.
type events struct {
	mu       sync.Mutex
	presence []client.Presence
	typing   []string
	reads    []client.ReadReceipt
	changed  chan struct{}
}

func newEvents() *events { return &events{changed: make(chan struct{}, 1)} }

func (e *events) poke() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

func (e *events) options(o *client.Options) {
	o.OnPresence = func(p client.Presence) { e.mu.Lock(); e.presence = append(e.presence, p); e.mu.Unlock(); e.poke() }
	o.OnTyping = func(room, author string) {
		e.mu.Lock()
		e.typing = append(e.typing, room+"/"+author)
		e.mu.Unlock()
		e.poke()
	}
	o.OnRead = func(r client.ReadReceipt) { e.mu.Lock(); e.reads = append(e.reads, r); e.mu.Unlock(); e.poke() }
}

// wait waits until ok holds, with e locked while ok runs.
func (e *events) wait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		e.mu.Lock()
		done := ok()
		e.mu.Unlock()
		if done {
			return
		}
		select {
		case <-e.changed:
		case <-deadline:
			t.Fatalf("waiting for %s", what)
		}
	}
}

func runClient(t *testing.T, o client.Options) *client.Client {
	t.Helper()
	c := client.New(o)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client %s: %v", o.Name, err)
		}
	})
	return c
}

// The Go client exposes presence, typing and read state across instances.
func TestClientPresenceTypingReads(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, fastPresence(db, "a"))
	b := startInstance(t, fastPresence(db, "b"))
	const room = "cli"

	ae, be := newEvents(), newEvents()
	ao := client.Options{URL: a.URL, Name: "alice", Rooms: []string{room}}
	ae.options(&ao)
	alice := runClient(t, ao)
	ae.wait(t, "alice's snapshot", func() bool { return len(ae.presence) > 0 && ae.presence[0].Snapshot })
	waitPresence(t, b, room, "alice")
	bo := client.Options{URL: b.URL, Name: "bob", Rooms: []string{room}}
	be.options(&bo)
	bob := runClient(t, bo)

	ae.wait(t, "bob's join", func() bool {
		p := ae.presence[len(ae.presence)-1]
		return slices.Contains(p.Joins, "bob") && p.Count == 2 && slices.Equal(p.Members, []string{"alice", "bob"})
	})
	if m, n, complete := alice.Members(room); !slices.Equal(m, []string{"alice", "bob"}) || n != 2 || !complete {
		t.Fatalf("alice.Members = %v %d %v", m, n, complete)
	}

	be.wait(t, "bob's snapshot", func() bool { return len(be.presence) > 0 })
	if err := bob.Typing(t.Context(), room); err != nil {
		t.Fatal(err)
	}
	ae.wait(t, "bob typing", func() bool { return slices.Equal(ae.typing, []string{room + "/bob"}) })

	seq, err := bob.Send(t.Context(), room, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.MarkRead(t.Context(), room, seq); err != nil {
		t.Fatal(err)
	}
	want := client.ReadReceipt{Room: room, Author: "alice", Seq: seq}
	be.wait(t, "alice's receipt at bob", func() bool { return slices.Contains(be.reads, want) })
	ae.wait(t, "alice's receipt at alice", func() bool { return slices.Contains(ae.reads, want) })

	// A new client for alice on b: joined carries her cursor.
	ce := newEvents()
	co := client.Options{URL: b.URL, Name: "alice", Rooms: []string{room}}
	ce.options(&co)
	alice2 := runClient(t, co)
	ce.wait(t, "second alice joined", func() bool { return len(ce.presence) > 0 })
	if rs := alice2.ReadState(room); rs.Read != seq || rs.Unread != 0 {
		t.Fatalf("alice2.ReadState = %+v, want read %d, unread 0", rs, seq)
	}
}

// pgchat tail -presence prints the members, then joins and leaves.
func TestTailPresence(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, fastPresence(db, "app-1"))
	ws := "ws" + strings.TrimPrefix(a.URL, "http")
	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"tail", "-url", ws, "-room", "r", "-name", "watcher", "-presence"}, nil, &out, &errOut)
	}()
	waitOut := func(line string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), line+"\n") {
			if time.Now().After(deadline) {
				t.Fatalf("tail printed %q, want a line %q", out.String(), line)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitOut("r presence 1: watcher")
	dave := dial(t, a.URL, name("dave"))
	dave.pjoin("r")
	waitOut("r presence 2: +dave")
	dave.conn.CloseNow()
	waitOut("r presence 1: -dave")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("tail: %v", err)
	}
}
