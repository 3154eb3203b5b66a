package chat

import (
	"strconv"
	"unicode/utf8"

	"github.com/pgchat/pgchat/store"
)

// The frames sent most often (message, ack) are written by hand: the same
// bytes encoding/json writes with SetEscapeHTML(false), in one allocation
// instead of four, several times faster (BenchmarkEncodeMessage).

// appendMessage appends the "message" frame for m (EncodeMessage).
func appendMessage(b []byte, m store.Message) []byte {
	if m.Kind != "" || m.Deleted || !m.Edited.IsZero() || len(m.Reactions) > 0 {
		return appendEventMessage(b, m) // events.go
	}
	b = append(b, `{"type":"message","room":`...)
	b = appendString(b, m.Room)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, m.Seq, 10)
	b = append(b, `,"author":`...)
	b = appendString(b, m.Author)
	b = append(b, `,"body":`...)
	b = appendString(b, m.Body)
	b = append(b, `,"ts":"`...)
	b = m.Time.UTC().AppendFormat(b, TimeFormat)
	b = append(b, `","instance":`...)
	b = appendString(b, m.Instance)
	return append(b, '}')
}

// encodeAck returns the "ack" frame for a send.
func encodeAck(ref, room string, seq int64) []byte {
	b := make([]byte, 0, 48+len(ref)+len(room))
	b = append(b, `{"type":"ack",`...)
	if ref != "" {
		b = append(b, `"ref":`...)
		b = appendString(b, ref)
		b = append(b, ',')
	}
	b = append(b, `"room":`...)
	b = appendString(b, room)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, '}')
}

// appendString appends s as a JSON string the way encoding/json does
// without HTML escaping: quotes, backslashes and control characters
// escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
