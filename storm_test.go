package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

// TestStorm throws more than 10,000 random and malformed frames at one
// instance from many connections at once. The instance stays up and ready,
// serves a new client normally afterwards, keeps its rooms in order and,
// once the storm's connections are gone, runs no more goroutines than
// before it.
//
// Not parallel: counting goroutines needs the process to itself, and Go
// starts parallel tests only once the sequential ones are done.
func TestStorm(t *testing.T) {
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1",
		"RATE_LIMIT=20", "RATE_BURST=20", "MAX_ROOMS_PER_CONN=5", "MAX_MESSAGE_BYTES=1024",
		"MAX_CONNECTIONS_PER_IP=0", "MAX_INFLIGHT=8"))
	before := goleak.IgnoreCurrent()

	const (
		workers = 24
		target  = 12000
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var sent, conns, closedByServer, refusedHandshakes atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for sent.Load() < target && ctx.Err() == nil {
				conn, bad, err := stormDial(ctx, rng, a.URL)
				if bad {
					if err == nil {
						t.Errorf("a malformed handshake was accepted")
					}
					refusedHandshakes.Add(1)
					continue
				}
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("dial: %v", err)
					}
					return
				}
				conns.Add(1)
				// Every batch ends with a frame whose answer names a room
				// only it uses: frames are handled in order, so once that
				// answer is back the server has handled the whole batch.
				synced := make(chan struct{}, 1)
				readerDone := make(chan struct{})
				var reader sync.WaitGroup
				reader.Go(func() { // the server's answers must be read
					defer close(readerDone)
					for {
						_, data, err := conn.Read(ctx)
						if err != nil {
							return
						}
						if bytes.Contains(data, []byte(`"sync-`)) {
							synced <- struct{}{}
						}
					}
				})
			batches:
				for batch := 0; sent.Load() < target; batch++ {
					n := 0
					for range 100 {
						typ, data := stormFrame(rng)
						if err := stormWrite(ctx, conn, typ, data); err != nil {
							closedByServer.Add(1) // after an oversized frame (1009) or invalid UTF-8 (1007), or stuck
							break batches
						}
						n++
					}
					if err := stormWrite(ctx, conn, websocket.MessageText, fmt.Appendf(nil, `{"type":"leave","room":"sync-%d"}`, batch)); err != nil {
						closedByServer.Add(1)
						break
					}
					select {
					case <-synced:
						sent.Add(int64(n))
					case <-readerDone: // closed by the server after an oversized frame
						closedByServer.Add(1)
						break batches
					case <-time.After(30 * time.Second):
						t.Errorf("no answer to a batch within 30s")
						break batches
					case <-ctx.Done():
						break batches
					}
				}
				conn.CloseNow()
				reader.Wait()
			}
		})
	}
	wg.Wait()
	if sent.Load() < target {
		t.Fatalf("only %d frames sent before the deadline, want %d", sent.Load(), target)
	}
	t.Logf("%d frames over %d connections (%d ended by the server, %d bad handshakes refused)",
		sent.Load(), conns.Load(), closedByServer.Load(), refusedHandshakes.Load())

	// Still up and ready; a new client is served normally.
	resp, err := http.Get(a.URL + "/readyz")
	if err != nil {
		t.Fatalf("after the storm: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the storm /readyz = %d", resp.StatusCode)
	}
	probe := dial(t, a.URL, name("probe"))
	probe.join("calm")
	probe.send("calm", "anyone there?", "p-1")
	var acked, echoed bool
	for !acked || !echoed {
		switch f := probe.next(); f.Type {
		case "ack":
			acked = f.Ref == "p-1" && f.Seq == 1
		case "message":
			echoed = f.Body == "anyone there?" && f.Seq == 1 && f.Author == "probe"
		default:
			t.Fatalf("probe got %+v", f)
		}
	}
	// The rooms the storm wrote to are gap-free.
	for i := range 4 {
		replay, joined := probe.join(fmt.Sprint("storm-", i))
		if len(replay) > 0 {
			checkSeqs(t, fmt.Sprint("storm-", i), replay, joined.Seq-int64(len(replay))+1)
		}
	}
	probe.conn.Close(websocket.StatusNormalClosure, "")

	// No goroutine is left from the storm: the server's connection handlers
	// and writers, the test's readers. Poll until the closes are through.
	// Database connections the pool opened under the load stay open, each
	// with pgx's background reader: bounded by the pool size, not leaks.
	pgxReader := goleak.IgnoreAnyFunction("github.com/jackc/pgx/v5/pgconn/internal/bgreader.(*BGReader).bgRead")
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := goleak.Find(before, pgxReader)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after the storm: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling for the handlers to return
	}
}

func stormWrite(ctx context.Context, conn *websocket.Conn, typ websocket.MessageType, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return conn.Write(ctx, typ, data)
}

// stormDial opens a connection or, with a small chance, tries a malformed
// handshake (bad is true), which the server must refuse.
func stormDial(ctx context.Context, rng *rand.Rand, base string) (conn *websocket.Conn, bad bool, err error) {
	q := url.Values{"name": {fmt.Sprint("storm-", rng.IntN(1000))}}
	bad = rng.IntN(20) == 0
	if bad {
		switch rng.IntN(4) {
		case 0:
			q.Set("name", " padded ")
		case 1:
			q.Set("name", "bell\a")
		case 2:
			q.Set("room", "no spaces allowed")
		case 3:
			q.Set("name", strings.Repeat("n", 100))
		}
	} else if rng.IntN(4) == 0 {
		q.Set("room", fmt.Sprint("storm-", rng.IntN(8)))
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, _, err = websocket.Dial(dctx, "ws"+strings.TrimPrefix(base, "http")+"/ws?"+q.Encode(), nil)
	if err != nil {
		return nil, bad, err
	}
	if bad {
		conn.CloseNow()
		return nil, bad, nil
	}
	conn.SetReadLimit(1 << 20)
	return conn, false, nil
}

// stormFrame returns one random, mostly malformed, client frame.
func stormFrame(rng *rand.Rand) (websocket.MessageType, []byte) {
	room := fmt.Sprint("storm-", rng.IntN(8))
	junk := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	text := func(s string) (websocket.MessageType, []byte) { return websocket.MessageText, []byte(s) }
	switch rng.IntN(24) {
	case 0:
		if rng.IntN(16) == 0 { // mostly invalid UTF-8: the server closes with 1007
			return websocket.MessageText, junk(rng.IntN(300))
		}
		return websocket.MessageText, []byte(strings.ToValidUTF8(string(junk(rng.IntN(300))), "\uFFFD"))
	case 1:
		return websocket.MessageBinary, junk(rng.IntN(300))
	case 2: // truncated JSON
		f := fmt.Sprintf(`{"type":"send","room":%q,"body":"truncated","ref":"r"}`, room)
		return text(f[:rng.IntN(len(f))])
	case 3:
		return text(`{"type":1,"room":["x"],"since":"yesterday","body":{},"ref":7}`)
	case 4:
		return text(fmt.Sprintf(`{"type":%q,"room":%q}`, []string{"dance", "", "JOIN", "join ", "ack", "welcome"}[rng.IntN(6)], room))
	case 5:
		return text(fmt.Sprintf(`{"type":"join","room":%q}`, []string{"", " ", "-x", "a b", "é", strings.Repeat("r", 65), "x\u0000"}[rng.IntN(7)]))
	case 6:
		return text(fmt.Sprintf(`{"type":"join","room":%q,"since":%s}`, room, []string{"-1", "9223372036854775807", "1e999", "1.5", "null", `"3"`}[rng.IntN(6)]))
	case 7:
		return text(fmt.Sprintf(`{"type":"send","room":%q,"body":%s,"ref":"n"}`, room, []string{`"a\u0000b"`, `"   "`, `""`, `null`, `"\ud800"`, `"\udfff\ud800"`}[rng.IntN(6)]))
	case 8:
		return text(fmt.Sprintf(`{"type":"send","room":%q,"body":%q}`, room, strings.Repeat("x", 1025+rng.IntN(2000)))) // too_large
	case 9:
		return text(fmt.Sprintf(`{"type":"send","room":%q,"body":"b","ref":%q}`, room, []string{strings.Repeat("r", 65), "tab\there", "é", "\u007f"}[rng.IntN(4)]))
	case 10:
		depth := 1 + rng.IntN(3000)
		return text(strings.Repeat("[", depth) + strings.Repeat("]", depth))
	case 11:
		return text(`{"type":"join","type":"send","room":"a","room":"` + room + `","body":"dup keys"}`)
	case 12:
		// Invalid UTF-8 inside a string, in a binary frame (a text frame
		// would be closed with 1007).
		return websocket.MessageBinary, []byte(`{"type":"send","room":"` + room + `","body":"\xff\xfe"}`)
	case 13:
		if rng.IntN(16) == 0 { // over the read limit: the server closes with 1009
			return text(`{"type":"send","room":"r","body":"` + strings.Repeat(`\u0041`, 2000) + `"}`)
		}
		return text(`[]`)
	case 14:
		return text(`"just a string"`)
	case 15:
		return text(fmt.Sprintf(`{"type":"leave","room":%q}`, room))
	case 16, 17, 18:
		return text(fmt.Sprintf(`{"type":"join","room":%q}`, room))
	default: // a well-formed send, to a joined room or not, likely rate limited
		return text(fmt.Sprintf(`{"type":"send","room":%q,"body":"storm %d","ref":"s-%d"}`, room, rng.IntN(1e6), rng.IntN(1e6)))
	}
}
