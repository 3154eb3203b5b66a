package chat

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// hubServer is a hub behind a real HTTP server, with no listener: the test
// decides which notifications the hub sees.
func hubServer(t *testing.T) (*Hub, *store.DB, string) {
	t.Helper()
	db, err := store.Open(t.Context(), storetest.NewDB(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	b := store.NewBatcher(db, store.BatcherOptions{})
	h := NewHub(db, b, Options{Instance: "test", RateLimit: -1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { b.Run(ctx); done <- struct{}{} }()
	go func() { h.Run(ctx); done <- struct{}{} }()
	srv := httptest.NewServer(NewHandler(h, HandlerOptions{}))
	t.Cleanup(func() {
		h.Close(context.Background())
		srv.Close()
		cancel()
		<-done
		<-done
	})
	return h, db, "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws?name=tester"
}

func readMessages(t *testing.T, conn *websocket.Conn, n int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var seqs []int64
	for len(seqs) < n {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read after %v: %v", seqs, err)
		}
		var f struct {
			Type string
			Seq  int64
		}
		json.Unmarshal(data, &f)
		if f.Type == TypeMessage {
			seqs = append(seqs, f.Seq)
		}
	}
	return seqs
}

// TestHubFillsGapsAndDropsRepeats: notifications that skip seqs make the
// hub read the missing ones from the table; repeats are not delivered.
func TestHubFillsGapsAndDropsRepeats(t *testing.T) {
	t.Parallel()
	h, db, url := hubServer(t)
	conn, _, err := websocket.Dial(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.Write(t.Context(), websocket.MessageText, []byte(`{"type":"join","room":"g"}`))
	readUntil(t, conn, TypeJoined)

	var stored []store.Message
	for i := range 6 {
		res, err := db.Append(t.Context(), []store.NewMessage{{Room: "g", Author: "a", Body: strings.Repeat("x", i+1)}})
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, res[0].Message)
	}
	// Only seq 4 is announced: 1..3 must come from the table, in order.
	h.Deliver(store.EncodeNotifications(stored[3:4])[0])
	if got := readMessages(t, conn, 4); !slices.Equal(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("after a notification of seq 4 the client got %v, want [1 2 3 4]", got)
	}
	// Repeats are dropped; 5 and 6 follow.
	h.Deliver(store.EncodeNotifications(stored[0:2])[0])
	h.Deliver(store.EncodeNotifications(stored[4:6])[0])
	if got := readMessages(t, conn, 2); !slices.Equal(got, []int64{5, 6}) {
		t.Fatalf("after repeats and seqs 5-6 the client got %v, want [5 6]", got)
	}
	// A stub (content too big for a notification) is read from the table.
	big := store.Message{Room: "g", Seq: 7, Body: strings.Repeat("y", 9000)}
	if _, err := db.Append(t.Context(), []store.NewMessage{{Room: "g", Author: "a", Body: big.Body}}); err != nil {
		t.Fatal(err)
	}
	h.Deliver(store.EncodeNotifications([]store.Message{big})[0])
	if got := readMessages(t, conn, 1); !slices.Equal(got, []int64{7}) {
		t.Fatalf("after a stub for seq 7 the client got %v, want [7]", got)
	}
}

func readUntil(t *testing.T, conn *websocket.Conn, typ string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v", typ, err)
		}
		var f struct{ Type string }
		json.Unmarshal(data, &f)
		if f.Type == typ {
			return
		}
	}
}
