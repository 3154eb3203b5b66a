package chat

import (
	"testing"
	"time"

	"github.com/pgchat/pgchat/store"
)

// FuzzEncodeMessage checks the hand-written frames against encoding/json.
func FuzzEncodeMessage(f *testing.F) {
	for _, s := range []string{"", "hello", `"q" \ /`, "a\x00b\x1fc\x7f", "<b>&amp;</b>", "é 😀", "\u2028\u2029", "\xff\xfe bad", "tab\there\r\n", "\b\f"} {
		f.Add(s, s, int64(42), int64(1_700_000_000_123_456_789))
	}
	f.Fuzz(func(t *testing.T, room, text string, seq, nanos int64) {
		m := store.Message{Room: room, Seq: seq, Author: text, Body: text + room, Time: time.Unix(0, nanos), Instance: room}
		want := encode(messageFrame{TypeMessage, m.Room, m.Seq, m.Author, m.Body, m.Time.UTC().Format(TimeFormat), m.Instance})
		if got := EncodeMessage(m); string(got) != string(want) {
			t.Fatalf("EncodeMessage =\n%s\nencoding/json:\n%s", got, want)
		}
		for _, ref := range []string{"", text} {
			want := encode(ackFrame{TypeAck, ref, room, seq})
			if got := encodeAck(ref, room, seq); string(got) != string(want) {
				t.Fatalf("encodeAck =\n%s\nencoding/json:\n%s", got, want)
			}
		}
	})
}
