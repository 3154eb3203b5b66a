package store

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// decodeJSON is DecodeNotification's encoding/json path.
func decodeJSON(t *testing.T, payload string) Notification {
	t.Helper()
	var p struct {
		Room string            `json:"room"`
		Msgs []notifiedMessage `json:"msgs"`
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		t.Fatalf("payload %q: %v", payload, err)
	}
	n := Notification{Room: p.Room}
	for _, e := range p.Msgs {
		n.Last = max(n.Last, e.Seq)
		if !e.Stub {
			n.Messages = append(n.Messages, Message{Room: p.Room, Seq: e.Seq, Author: e.Author, Body: e.Body, Time: e.Time, Instance: e.Instance,
				Kind: e.Kind, Target: e.Target, Emoji: e.Emoji})
		}
	}
	return n
}

// FuzzDecodeFast checks the fast decoder against encoding/json on what
// EncodeNotifications writes, stubs included.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range []string{"hello", `quote " backslash \ <b>&</b>`, "\n é 😀 \u2028", "\xff bad", "", "x"} {
		f.Add("general", s, s, int64(1_700_000_000_123_456_789), 3, 0)
	}
	f.Add("a:b.c-d_e", "alice", "big", int64(0), 1, 9000)
	f.Fuzz(func(t *testing.T, room, author, body string, nanos int64, count, big int) {
		if room == "" || count < 1 || count > 50 || big < 0 || big > 20000 {
			return
		}
		var msgs []Message
		for i := range count {
			b := body
			if i == 0 && big > 0 {
				b = fmt.Sprintf("%*s", big, body) // may turn into a stub
			}
			m := Message{Room: room, Seq: int64(i + 1), Author: author, Body: b,
				Time: time.Unix(0, nanos).In(time.FixedZone("x", 3600)), Instance: author}
			if i%3 == 1 { // every kind of event too
				m.Kind, m.Target, m.Emoji = []string{KindEdit, KindDelete, KindReact, KindUnreact}[i%4], int64(i), author
			}
			msgs = append(msgs, m)
		}
		for _, p := range EncodeNotifications(msgs) {
			want := decodeJSON(t, p)
			got, ok := decodeFast(p)
			if !ok {
				if len(want.Messages) > 0 || want.Last > 0 {
					t.Fatalf("decodeFast(%q) failed; encoding/json reads it", p)
				}
				continue
			}
			if got.Room != want.Room || got.Last != want.Last || len(got.Messages) != len(want.Messages) {
				t.Fatalf("decodeFast = room %q last %d %d msgs, want room %q last %d %d msgs", got.Room, got.Last, len(got.Messages), want.Room, want.Last, len(want.Messages))
			}
			for i, m := range got.Messages {
				w := want.Messages[i]
				if !m.Time.Equal(w.Time) || m.Time.Location().String() != w.Time.Location().String() {
					t.Fatalf("message %d Time = %v, want %v", i, m.Time, w.Time)
				}
				m.Time, w.Time = time.Time{}, time.Time{}
				if m != w {
					t.Fatalf("message %d = %+v, want %+v", i, m, w)
				}
			}
		}
	})
}

func TestDecodeFastRefusesOtherShapes(t *testing.T) {
	t.Parallel()
	for _, p := range []string{
		`{"msgs":[{"seq":1}],"room":"a"}`, // other key order: encoding/json reads it
		`{"room":"a","msgs":[]}`,
		`{"room":"a","msgs":[{"seq":1,"extra":2}]}`,
		`{"room":"a","msgs":[{"seq":1}]} `,
		`{"room":"a","msgs":[{"seq":-1}]}`,
		`{"room":"a","msgs":[{"seq":1,"ts":"yesterday"}]}`,
		`{"room":"a","msgs":[{"seq":1}`,
	} {
		if n, ok := decodeFast(p); ok {
			t.Errorf("decodeFast(%q) = %+v, want a refusal (left to encoding/json)", p, n)
		}
	}
	n, err := DecodeNotification(`{"msgs":[{"seq":4,"body":"b"}],"room":"a"}`)
	if err != nil || n.Room != "a" || n.Last != 4 || len(n.Messages) != 1 || n.Messages[0].Body != "b" {
		t.Errorf("DecodeNotification(other key order) = %+v, %v; want room a, one message, last 4", n, err)
	}
}
