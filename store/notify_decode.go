package store

import (
	"encoding/json"
	"strings"
	"time"
)

// decodeFast decodes a payload in exactly the form EncodeNotifications
// writes, as DecodeNotification does, without encoding/json's reflection:
// every instance decodes every message, so this is on the hot path.
// Strings without escapes are slices of payload, not copies. Anything
// unexpected reports false, and DecodeNotification falls back to
// encoding/json.
func decodeFast(p string) (Notification, bool) {
	const head, list = `{"room":`, `,"msgs":[`
	if !strings.HasPrefix(p, head) {
		return Notification{}, false
	}
	room, i, ok := jsonString(p, len(head))
	if !ok || room == "" || !strings.HasPrefix(p[i:], list) {
		return Notification{}, false
	}
	i += len(list)
	n := Notification{Room: room, Messages: make([]Message, 0, strings.Count(p[i:], `{"seq":`))}
	for {
		if i >= len(p) || p[i] != '{' {
			return Notification{}, false
		}
		i++
		m := Message{Room: room}
		stub := false
		for {
			key, j, ok := jsonString(p, i)
			if !ok || j >= len(p) || p[j] != ':' {
				return Notification{}, false
			}
			i = j + 1
			switch key {
			case "seq":
				m.Seq, i, ok = jsonInt(p, i)
			case "target":
				m.Target, i, ok = jsonInt(p, i)
			case "kind":
				m.Kind, i, ok = jsonString(p, i)
			case "emoji":
				m.Emoji, i, ok = jsonString(p, i)
			case "author":
				m.Author, i, ok = jsonString(p, i)
			case "body":
				m.Body, i, ok = jsonString(p, i)
			case "instance":
				m.Instance, i, ok = jsonString(p, i)
			case "ts":
				var ts string
				ts, i, ok = jsonString(p, i)
				if ok {
					m.Time, ok = parseTime(ts)
				}
			case "stub":
				ok = strings.HasPrefix(p[i:], "true")
				stub, i = true, i+4
			default:
				return Notification{}, false
			}
			if !ok || i >= len(p) {
				return Notification{}, false
			}
			if p[i] == '}' {
				i++
				break
			}
			if p[i] != ',' {
				return Notification{}, false
			}
			i++
		}
		n.Last = max(n.Last, m.Seq)
		if !stub {
			n.Messages = append(n.Messages, m)
		}
		if i >= len(p) {
			return Notification{}, false
		}
		if p[i] == ']' {
			break
		}
		if p[i] != ',' {
			return Notification{}, false
		}
		i++
	}
	if p[i:] != "]}" || n.Last == 0 {
		return Notification{}, false
	}
	return n, true
}

// jsonInt reads the non-negative integer at p[i] and returns it and the
// index after it.
func jsonInt(p string, i int) (int64, int, bool) {
	var n int64
	j := i
	for j < len(p) && p[j] >= '0' && p[j] <= '9' && j-i < 18 {
		n = n*10 + int64(p[j]-'0')
		j++
	}
	if j == i || j < len(p) && p[j] >= '0' && p[j] <= '9' {
		return 0, 0, false
	}
	return n, j, true
}

// jsonString reads the JSON string at p[i] and returns it and the index
// after it. Without escapes it is a slice of p.
func jsonString(p string, i int) (string, int, bool) {
	if i >= len(p) || p[i] != '"' {
		return "", 0, false
	}
	escaped := false
	for j := i + 1; j < len(p); j++ {
		switch p[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			if !escaped {
				return p[i+1 : j], j + 1, true
			}
			var s string
			if json.Unmarshal([]byte(p[i:j+1]), &s) != nil {
				return "", 0, false
			}
			return s, j + 1, true
		}
	}
	return "", 0, false
}

// parseTime parses a time as time.Time's UnmarshalJSON does.
func parseTime(s string) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339, s)
	return t, err == nil
}
