package chat

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// benchRoom returns a hub whose room "general" has n local members that
// have joined it for real (over an empty room in a real database), but
// whose frames go nowhere: drain empties their queues.
func benchRoom(b *testing.B, n int) (h *Hub, drain func()) {
	b.Helper()
	db, err := store.Open(b.Context(), storetest.NewDB(b), "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	h = NewHub(db, nil, Options{Instance: "bench", SendBuffer: 1 << 30})
	clients := make([]*client, n)
	for i := range clients {
		c := newClient(h, &discardSocket{}, fmt.Sprintf("u%d", i))
		if err := h.join(b.Context(), c, "general", 0, false); err != nil {
			b.Fatal(err)
		}
		clients[i] = c
	}
	drain = func() {
		for _, c := range clients {
			c.sock.(*discardSocket).frames = 0
		}
	}
	drain()
	return h, drain
}

func benchMessage(seq int64) store.Message {
	return store.Message{Room: "general", Seq: seq, Author: "alice", Body: strings.Repeat("x", 128),
		Time: time.Date(2026, 11, 28, 22, 0, 0, 123456000, time.UTC), Instance: "app-1"}
}

// BenchmarkHubFanout delivers one message to a room of 1,000 local
// clients: it is encoded once, then queued for each member.
func BenchmarkHubFanout(b *testing.B) {
	h, drain := benchRoom(b, 1000)
	seq := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		h.mu.Lock()
		h.rooms["general"].offer(benchMessage(seq))
		h.mu.Unlock()
		if seq%64 == 0 {
			b.StopTimer()
			drain()
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/delivery")
}

// BenchmarkDeliver handles one notification of 30 messages (about one
// 8000-byte payload) as the listener hands it over: decode, then fan out
// to the room's local members (none: the room is not this instance's).
func BenchmarkDeliver(b *testing.B) {
	for _, members := range []int{0, 100} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			h, drain := benchRoom(b, members)
			const perPayload, batch = 30, 64
			payloads := make([]string, 0, batch)
			seq := int64(0)
			msgs := make([]store.Message, perPayload)
			b.ReportAllocs()
			for b.Loop() {
				if len(payloads) == 0 { // the next seqs, encoded ahead
					b.StopTimer()
					drain()
					for range batch {
						for i := range msgs {
							seq++
							msgs[i] = benchMessage(seq)
						}
						payloads = append(payloads, store.EncodeNotifications(msgs)...)
					}
					b.StartTimer()
				}
				h.Deliver(payloads[0])
				payloads = payloads[1:]
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perPayload), "ns/msg")
		})
	}
}

// discardSocket counts the frames queued to it and writes them nowhere.
type discardSocket struct{ frames int }

func (d *discardSocket) Queue([]byte) bool                     { d.frames++; return true }
func (d *discardSocket) WaitQueued(context.Context, int) error { return nil }
func (d *discardSocket) Close(string, int, string)             {}
func (d *discardSocket) CloseAfterQueued(string, int, string)  {}
func (d *discardSocket) Abort(string, string)                  {}
