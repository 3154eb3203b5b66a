package chat

import (
	"strings"
	"testing"
	"time"

	"github.com/pgchat/pgchat/store"
)

// BenchmarkEncodeMessage: the hub encodes each message once per room.
func BenchmarkEncodeMessage(b *testing.B) {
	m := store.Message{Room: "general", Seq: 123456, Author: "alice", Body: strings.Repeat("x", 128),
		Time: time.Date(2026, 11, 28, 22, 0, 0, 123456000, time.UTC), Instance: "app-1"}
	b.ReportAllocs()
	for b.Loop() {
		EncodeMessage(m)
	}
}

// BenchmarkDecodeFrame: every frame a client sends is decoded once.
func BenchmarkDecodeFrame(b *testing.B) {
	data := []byte(`{"type":"send","room":"general","body":"` + strings.Repeat("x", 128) + `","ref":"k3x9-17"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeFrame(data, 4096); err != nil {
			b.Fatal(err)
		}
	}
}
