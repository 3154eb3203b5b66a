package chat

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pgchat/pgchat/store"
)

// FuzzEncodeEventMessage checks the hand-written frames of events and of
// messages in their current state against encoding/json.
func FuzzEncodeEventMessage(f *testing.F) {
	for _, s := range []string{"", "hello", `"q" \ /`, "a\x00b", "é 😀", "\u2028", "\xff bad"} {
		for kind := range 6 {
			f.Add(s, kind, int64(42), int64(1_700_000_000_123_456_789))
		}
	}
	f.Fuzz(func(t *testing.T, text string, kind int, seq, nanos int64) {
		if seq < 1 {
			return // seqs and targets start at 1
		}
		m := store.Message{Room: "r", Seq: seq, Author: text, Body: text, Time: time.Unix(0, nanos), Instance: "i"}
		switch kind % 6 {
		case 0:
			m.Kind, m.Target = store.KindEdit, seq
		case 1:
			m.Kind, m.Target, m.Body = store.KindDelete, seq, ""
		case 2:
			m.Kind, m.Target, m.Emoji, m.Body = store.KindReact, seq, "👍", ""
		case 3:
			m.Deleted, m.Body = true, ""
		case 4:
			m.Edited, m.Reactions = time.Unix(0, nanos+1), `{"👍":2}`
		case 5:
			m.Reactions = `{"🎉":1}`
		}
		want := eventMessageFrame{Type: TypeMessage, Room: m.Room, Seq: m.Seq, Kind: m.Kind, Target: m.Target, Deleted: m.Deleted,
			Author: m.Author, Emoji: m.Emoji, Time: m.Time.UTC().Format(TimeFormat), Instance: m.Instance}
		if hasBody(m) {
			want.Body = &m.Body
		}
		if !m.Edited.IsZero() {
			want.Edited = m.Edited.UTC().Format(TimeFormat)
		}
		if m.Reactions != "" {
			want.Reactions = json.RawMessage(m.Reactions)
		}
		if got := EncodeMessage(m); string(got) != string(encode(want)) {
			t.Fatalf("EncodeMessage =\n%s\nencoding/json:\n%s", got, encode(want))
		}
	})
}

func TestValidEmoji(t *testing.T) {
	for s, want := range map[string]bool{
		"👍": true, "👨‍👩‍👧": true, "+1": true, "❤️": true,
		"": false, " ": false, "a\x01": false, "\x7f": false, "a\u0085": false, "\xff": false,
		"12345678901234567890123456789012": true, "123456789012345678901234567890123": false,
	} {
		if ValidEmoji(s) != want {
			t.Errorf("ValidEmoji(%q) = %v, want %v", s, !want, want)
		}
	}
}
