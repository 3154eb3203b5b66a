package store

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// maxPayload keeps a notification under PostgreSQL's 8000-byte limit.
const maxPayload = 7900

// Notification is what one NOTIFY on Channel says about one room: messages
// committed together, in seq order. A message too big for a notification is
// announced without its content, so Messages may skip seqs up to Last; the
// receiver reads those from the table.
type Notification struct {
	Room     string
	Messages []Message
	Last     int64 // the highest seq announced
}

type notifiedMessage struct {
	Seq      int64     `json:"seq"`
	Author   string    `json:"author,omitempty"`
	Body     string    `json:"body,omitempty"`
	Time     time.Time `json:"ts,omitzero"`
	Instance string    `json:"instance,omitempty"`
	Stub     bool      `json:"stub,omitempty"` // content left out: read it from the table
	// Events (events.go). Instances from before them ignore these fields.
	Kind   string `json:"kind,omitempty"`
	Target int64  `json:"target,omitempty"`
	Emoji  string `json:"emoji,omitempty"`
}

// payloadHead bounds a payload's {"room":"…","msgs":[ for room, its name
// escaped at worst.
func payloadHead(room string) int { return len(room)*6 + 32 }

// fitsAlone reports whether an entry of n bytes for room fits a payload of
// its own; a message whose entry does not is announced as a stub.
func fitsAlone(room string, n int) bool { return payloadHead(room)+n+2 <= maxPayload }

// fitsAfter reports whether an entry of n bytes still fits a payload of
// used bytes, its comma and the closing ]} included.
func fitsAfter(used, n int) bool { return used+n+3 <= maxPayload }

// EncodeNotifications packs msgs, sorted by room then seq, into as few
// payloads as fit the NOTIFY size limit. Each payload is about one room and
// payloads keep seq order, so a listener sees each room's messages in order.
func EncodeNotifications(msgs []Message) []string {
	var (
		payloads []string
		buf      []byte
		room     string
		entries  int
	)
	flush := func() {
		if entries > 0 {
			payloads = append(payloads, string(append(buf, "]}"...)))
		}
		buf, entries = buf[:0], 0
	}
	for _, m := range msgs {
		entry, _ := json.Marshal(notifiedMessage{Seq: m.Seq, Author: m.Author, Body: m.Body, Time: m.Time, Instance: m.Instance,
			Kind: m.Kind, Target: m.Target, Emoji: m.Emoji})
		if !fitsAlone(m.Room, len(entry)) {
			entry, _ = json.Marshal(notifiedMessage{Seq: m.Seq, Stub: true})
		}
		if m.Room != room || !fitsAfter(len(buf), len(entry)) {
			flush()
			room = m.Room
		}
		if entries == 0 {
			quoted, _ := json.Marshal(m.Room)
			buf = append(append(append(buf, `{"room":`...), quoted...), `,"msgs":[`...)
		} else {
			buf = append(buf, ',')
		}
		buf = append(buf, entry...)
		entries++
	}
	flush()
	return payloads
}

// DecodeNotification parses a payload made by EncodeNotifications.
func DecodeNotification(payload string) (Notification, error) {
	if n, ok := decodeFast(payload); ok {
		return n, nil
	}
	var p struct {
		Room string            `json:"room"`
		Msgs []notifiedMessage `json:"msgs"`
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		return Notification{}, fmt.Errorf("decode notification: %w", err)
	}
	if p.Room == "" || len(p.Msgs) == 0 {
		return Notification{}, fmt.Errorf("decode notification: no room or messages in %s", strconv.Quote(truncate(payload, 64)))
	}
	n := Notification{Room: p.Room, Messages: make([]Message, 0, len(p.Msgs))}
	for _, e := range p.Msgs {
		n.Last = max(n.Last, e.Seq)
		if !e.Stub {
			n.Messages = append(n.Messages, Message{Room: p.Room, Seq: e.Seq, Author: e.Author, Body: e.Body, Time: e.Time, Instance: e.Instance,
				Kind: e.Kind, Target: e.Target, Emoji: e.Emoji})
		}
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
