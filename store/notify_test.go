package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// notifyLimit is PostgreSQL's: a payload must be shorter than 8000 bytes.
const notifyLimit = 8000

// decodeAll decodes payloads, checking each against the NOTIFY limit and
// that it names exactly one room.
func decodeAll(t *testing.T, payloads []string) []Notification {
	t.Helper()
	var notes []Notification
	for i, p := range payloads {
		if len(p) >= notifyLimit {
			t.Errorf("payload %d is %d bytes, want < %d", i, len(p), notifyLimit)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(p), &raw); err != nil {
			t.Fatalf("payload %d is not a JSON object: %v", i, err)
		}
		if len(raw) != 2 || raw["room"] == nil || raw["msgs"] == nil {
			t.Errorf("payload %d keys = %v, want room and msgs", i, keys(raw))
		}
		n, err := DecodeNotification(p)
		if err != nil {
			t.Fatalf("DecodeNotification(payload %d): %v", i, err)
		}
		notes = append(notes, n)
	}
	return notes
}

func keys(m map[string]json.RawMessage) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	slices.Sort(k)
	return k
}

func msg(room string, seq int64, body string) Message {
	return Message{
		Room: room, Seq: seq, Author: "alice", Body: body,
		Time:     time.Date(2026, 11, 28, 22, 0, 0, 123456000, time.UTC).Add(time.Duration(seq) * time.Millisecond),
		Instance: "app-1", Ref: fmt.Sprintf("c-%d", seq),
	}
}

// notified is what a notification carries of m: everything but the ref.
func notified(m Message) Message {
	m.Ref = ""
	return m
}

func TestNotificationRoundTrip(t *testing.T) {
	t.Parallel()
	in := []Message{
		msg("a", 1, "hello"),
		msg("a", 2, "quote \" backslash \\ <b>&</b> \n é 😀 \u2028"),
		msg("b", 7, "in b"),
		{Room: "b", Seq: 8, Body: "no author, time or instance"},
	}
	notes := decodeAll(t, EncodeNotifications(in))
	if len(notes) != 2 {
		t.Fatalf("EncodeNotifications(2 rooms) = %d payloads, want 2", len(notes))
	}
	for i, want := range []Notification{
		{Room: "a", Messages: []Message{notified(in[0]), notified(in[1])}, Last: 2},
		{Room: "b", Messages: []Message{notified(in[2]), notified(in[3])}, Last: 8},
	} {
		got := notes[i]
		if got.Room != want.Room || got.Last != want.Last || len(got.Messages) != len(want.Messages) {
			t.Errorf("notification %d = room %q last %d, %d messages; want room %q last %d, %d messages",
				i, got.Room, got.Last, len(got.Messages), want.Room, want.Last, len(want.Messages))
			continue
		}
		for j, m := range got.Messages {
			w := want.Messages[j]
			if !m.Time.Equal(w.Time) {
				t.Errorf("notification %d message %d Time = %v, want %v", i, j, m.Time, w.Time)
			}
			m.Time, w.Time = time.Time{}, time.Time{}
			if m != w {
				t.Errorf("notification %d message %d = %+v, want %+v", i, j, m, w)
			}
		}
	}
}

func TestEncodeNotificationsSplits(t *testing.T) {
	t.Parallel()
	// 3 rooms × 400 messages of 100 bytes: far more than one payload each.
	var in []Message
	for _, room := range []string{"a", "b", "c"} {
		for seq := int64(1); seq <= 400; seq++ {
			in = append(in, msg(room, seq, strings.Repeat("m", 100)))
		}
	}
	payloads := EncodeNotifications(in)
	notes := decodeAll(t, payloads)
	if len(notes) < 3*5 {
		t.Errorf("EncodeNotifications(3×400 messages of 100 bytes) = %d payloads, want at least 15", len(notes))
	}
	next := map[string]int64{}
	var order []string
	for i, n := range notes {
		if len(order) == 0 || order[len(order)-1] != n.Room {
			order = append(order, n.Room)
		}
		for _, m := range n.Messages {
			if m.Room != n.Room || m.Seq != next[n.Room]+1 {
				t.Fatalf("payload %d: room %q seq %d after %d, want seq %d", i, m.Room, m.Seq, next[n.Room], next[n.Room]+1)
			}
			next[n.Room] = m.Seq
		}
		if n.Last != next[n.Room] {
			t.Errorf("payload %d Last = %d, want %d", i, n.Last, next[n.Room])
		}
	}
	for _, room := range []string{"a", "b", "c"} {
		if next[room] != 400 {
			t.Errorf("room %q: notified up to seq %d, want 400", room, next[room])
		}
	}
	// Payloads are filled, not one per message: a room's next payload
	// starts only when the next ~180-byte entry would not fit.
	for i := range len(notes) - 1 {
		if notes[i].Room == notes[i+1].Room && len(payloads[i]) < 7500 {
			t.Errorf("payload %d is %d bytes and room %q goes on in the next, want it filled to ~7900", i, len(payloads[i]), notes[i].Room)
		}
	}
	if !slices.Equal(order, []string{"a", "b", "c"}) {
		t.Errorf("payload rooms in order %v, want a, b, c, each once", order)
	}
}

func TestEncodeNotificationsStubs(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 8000)
	for _, tc := range []struct {
		name         string
		in           []Message
		wantMessages []int64
		wantLast     int64
	}{
		{"big in the middle", []Message{msg("r", 1, "a"), msg("r", 2, big), msg("r", 3, "b")}, []int64{1, 3}, 3},
		{"big last", []Message{msg("r", 1, "a"), msg("r", 2, big)}, []int64{1}, 2},
		{"big alone", []Message{msg("r", 5, big)}, []int64{}, 5},
		{"escaping makes it big", []Message{msg("r", 1, strings.Repeat("<", 2000))}, []int64{}, 1},
		{"big author", []Message{{Room: "r", Seq: 1, Author: big, Body: "hi"}}, []int64{}, 1},
		{"fits", []Message{msg("r", 1, strings.Repeat("x", 7000))}, []int64{1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			notes := decodeAll(t, EncodeNotifications(tc.in))
			var got []int64
			var last int64
			for _, n := range notes {
				for _, m := range n.Messages {
					got = append(got, m.Seq)
					if m.Body != tc.in[m.Seq-tc.in[0].Seq].Body {
						t.Errorf("seq %d body is %d bytes, want %d", m.Seq, len(m.Body), len(tc.in[m.Seq-tc.in[0].Seq].Body))
					}
				}
				last = max(last, n.Last)
			}
			if !slices.Equal(got, tc.wantMessages) && !(len(got) == 0 && len(tc.wantMessages) == 0) {
				t.Errorf("messages carried = %v, want %v", got, tc.wantMessages)
			}
			if last != tc.wantLast {
				t.Errorf("Last = %d, want %d", last, tc.wantLast)
			}
		})
	}
}

// TestEncodeNotificationsLimit tries bodies around the size where a message
// stops fitting, in rooms whose names escape badly: every payload must stay
// under PostgreSQL's limit and every seq must be announced.
func TestEncodeNotificationsLimit(t *testing.T) {
	t.Parallel()
	rooms := []string{
		"r",
		`quote"room`,
		strings.Repeat(`"`, 64),
		strings.Repeat("<", 64), // 6 bytes each once escaped
		strings.Repeat("é", 32), // 64 bytes
		"back\\slash\u2028\x01",
	}
	for _, room := range rooms {
		for size := 7300; size <= 7950; size += 3 {
			in := []Message{msg(room, 1, "small"), msg(room, 2, strings.Repeat("y", size)), msg(room, 3, strings.Repeat("z", size/2))}
			var last int64
			for i, p := range EncodeNotifications(in) {
				if len(p) >= notifyLimit {
					t.Fatalf("room %q, body of %d bytes: payload %d is %d bytes, want < %d", room, size, i, len(p), notifyLimit)
				}
				n, err := DecodeNotification(p)
				if err != nil {
					t.Fatalf("room %q: DecodeNotification: %v", room, err)
				}
				if n.Room != room {
					t.Fatalf("DecodeNotification room = %q, want %q", n.Room, room)
				}
				last = max(last, n.Last)
			}
			if last != 3 {
				t.Fatalf("room %q, body of %d bytes: Last = %d, want 3", room, size, last)
			}
		}
	}
}

func TestDecodeNotificationErrors(t *testing.T) {
	t.Parallel()
	for _, p := range []string{
		"",
		"not json",
		`{"room":"r","msgs":[]}`,
		`{"room":"","msgs":[{"seq":1}]}`,
		`{"msgs":[{"seq":1}]}`,
		`["r"]`,
	} {
		if n, err := DecodeNotification(p); err == nil {
			t.Errorf("DecodeNotification(%q) = %+v, want an error", p, n)
		}
	}
}
