package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// BenchmarkAppend commits one message per transaction versus 100 per
// transaction (what the Batcher does under load), on a real server: each
// notifying commit takes PostgreSQL's commit-time NOTIFY lock and a WAL
// flush, so the per-message cost falls with the batch size.
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		name  string
		batch int
		rooms int
	}{
		{"one", 1, 1},
		{"batch100", 100, 1},
		{"batch100_10rooms", 100, 10},
		{"batch500_100rooms", 500, 100}, // the durable ingest scenario's batches
	} {
		b.Run(tc.name, func(b *testing.B) {
			db := open(b, storetest.NewDB(b), "bench")
			body := strings.Repeat("x", 128)
			msgs := make([]store.NewMessage, tc.batch)
			for i := range msgs {
				msgs[i] = store.NewMessage{Room: fmt.Sprintf("room-%d", i%tc.rooms), Author: "alice", Body: body}
			}
			k := 0
			b.ReportAllocs()
			for b.Loop() {
				for i := range msgs {
					k++
					msgs[i].Ref = fmt.Sprint("r-", k)
				}
				if _, err := db.Append(b.Context(), msgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*tc.batch), "ns/msg")
		})
	}
}

func notificationMessages(n int) []store.Message {
	msgs := make([]store.Message, n)
	ts := time.Date(2026, 11, 28, 22, 0, 0, 123456000, time.UTC)
	for i := range msgs {
		msgs[i] = store.Message{Room: "general", Seq: int64(i + 1), Author: "alice", Body: strings.Repeat("x", 128), Time: ts, Instance: "app-1"}
	}
	return msgs
}

// BenchmarkEncodeNotifications packs a batch of 30 messages of one room
// (about one 8000-byte payload).
func BenchmarkEncodeNotifications(b *testing.B) {
	msgs := notificationMessages(30)
	b.ReportAllocs()
	for b.Loop() {
		store.EncodeNotifications(msgs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/msg")
}

// BenchmarkDecodeNotification reads such a payload back, as every
// instance's listener does for every notification.
func BenchmarkDecodeNotification(b *testing.B) {
	payloads := store.EncodeNotifications(notificationMessages(30))
	if len(payloads) != 1 {
		b.Fatalf("%d payloads, want 1", len(payloads))
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := store.DecodeNotification(payloads[0]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*30), "ns/msg")
}
