package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/pgchat/pgchat/store"
)

// Frame types of protocol v1 (docs/protocol.md).
const (
	// Client to server.
	TypeJoin  = "join"
	TypeLeave = "leave"
	TypeSend  = "send"
	// Events about a message (events.go).
	TypeEdit    = "edit"
	TypeDelete  = "delete"
	TypeReact   = "react"
	TypeUnreact = "unreact"
	// Both ways (docs/protocol.md, "Presence, typing and read state").
	TypeTyping = "typing"
	TypeRead   = "read"
	// Server to client.
	TypeWelcome = "welcome"
	TypeMessage = "message"
	TypeJoined  = "joined"
	TypeLeft    = "left"
	TypeAck     = "ack"
	TypeError   = "error"
	// Presence, server to client.
	TypePresence     = "presence"
	TypePresenceDiff = "presence_diff"
)

// Limits of protocol v1.
const (
	MaxRoomLen = 64 // bytes; see ValidRoom
	MaxRefLen  = 64 // bytes of printable ASCII
	MaxNameLen = 32 // characters
)

// Frame is a decoded client frame.
type Frame struct {
	Type     string
	Room     string
	Since    int64
	HasSince bool // Since was given
	Body     string
	Ref      string
	Target   int64  // edit, delete, react, unreact: the seq of the message
	Emoji    string // react, unreact
	Seq      int64  // read: the seq read up to
}

type rawFrame struct {
	Type   string  `json:"type"`
	Room   string  `json:"room"`
	Since  *int64  `json:"since"`
	Body   *string `json:"body"`
	Ref    string  `json:"ref"`
	Target int64   `json:"target"`
	Emoji  string  `json:"emoji"`
	Seq    *int64  `json:"seq"`
}

// DecodeFrame parses and validates one client frame. Bodies longer than
// maxBody bytes are CodeTooLarge. On error it returns a *Error and, as far as
// it could be read, the frame, so that the error can echo the ref.
func DecodeFrame(data []byte, maxBody int) (Frame, error) {
	if !utf8.Valid(data) {
		return Frame{}, errorf(CodeBadRequest, "frame is not valid UTF-8")
	}
	var raw rawFrame
	if err := json.Unmarshal(data, &raw); err != nil {
		f := Frame{Ref: raw.Ref}
		if !validRef(f.Ref) {
			f.Ref = ""
		}
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return f, errorf(CodeBadRequest, "field %q has the wrong type", typeErr.Field)
		}
		return f, errorf(CodeBadRequest, "frame is not a JSON object")
	}
	f := Frame{Type: raw.Type, Room: raw.Room, Ref: raw.Ref, Target: raw.Target, Emoji: raw.Emoji}
	if raw.Since != nil {
		f.Since, f.HasSince = *raw.Since, true
	}
	if raw.Body != nil {
		f.Body = *raw.Body
	}
	if raw.Seq != nil && f.Type == TypeRead {
		f.Seq = *raw.Seq
	}
	if !validRef(f.Ref) {
		f.Ref = ""
		return f, errorf(CodeBadRequest, "ref must be 1 to %d printable ASCII characters", MaxRefLen)
	}
	switch f.Type {
	case TypeJoin, TypeLeave, TypeSend, TypeEdit, TypeDelete, TypeReact, TypeUnreact, TypeTyping, TypeRead:
	case "":
		return f, errorf(CodeBadRequest, "frame has no type")
	default:
		return f, errorf(CodeBadRequest, "unknown frame type %s", quote(f.Type))
	}
	if !ValidRoom(f.Room) {
		return f, errorf(CodeBadRequest, "room must be 1 to %d characters of A-Z a-z 0-9 _ - . : starting with a letter or digit", MaxRoomLen)
	}
	switch f.Type {
	case TypeJoin:
		if f.HasSince && f.Since < 0 {
			return f, errorf(CodeBadRequest, "since must not be negative")
		}
	case TypeEdit, TypeDelete, TypeReact, TypeUnreact:
		if err := validateEvent(f, raw.Body != nil, maxBody); err != nil {
			return f, err
		}
	case TypeRead:
		if raw.Seq == nil || *raw.Seq < 0 {
			return f, errorf(CodeBadRequest, "seq must be a whole number, 0 or more")
		}
	case TypeSend:
		if raw.Body == nil || strings.TrimSpace(f.Body) == "" {
			return f, errorf(CodeBadRequest, "body is empty")
		}
		if len(f.Body) > maxBody {
			return f, errorf(CodeTooLarge, "body is %d bytes, the limit is %d", len(f.Body), maxBody)
		}
		if strings.IndexByte(f.Body, 0) >= 0 {
			return f, errorf(CodeBadRequest, "body contains a NUL character")
		}
	}
	return f, nil
}

// ValidRoom reports whether name is a valid room name: 1 to MaxRoomLen
// characters from A-Z a-z 0-9 _ - . :, the first a letter or digit.
func ValidRoom(name string) bool {
	if name == "" || len(name) > MaxRoomLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-' && c != '.' && c != ':') {
			return false
		}
	}
	return true
}

// validRef reports whether ref is empty or 1 to MaxRefLen printable ASCII
// characters.
func validRef(ref string) bool {
	if len(ref) > MaxRefLen {
		return false
	}
	for i := 0; i < len(ref); i++ {
		if ref[i] < 0x20 || ref[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidName reports whether name can be a display name: 1 to MaxNameLen
// printable characters, no leading or trailing space.
func ValidName(name string) bool {
	if name == "" || !utf8.ValidString(name) || utf8.RuneCountInString(name) > MaxNameLen || strings.TrimSpace(name) != name {
		return false
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func quote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	b, _ := json.Marshal(s)
	return string(b)
}

// Server frames.

type welcomeFrame struct {
	Type     string `json:"type"`
	Instance string `json:"instance"`
	Author   string `json:"author"`
}

type messageFrame struct {
	Type     string `json:"type"`
	Room     string `json:"room"`
	Seq      int64  `json:"seq"`
	Author   string `json:"author"`
	Body     string `json:"body"`
	Time     string `json:"ts"`
	Instance string `json:"instance"`
}

type joinedFrame struct {
	Type      string `json:"type"`
	Room      string `json:"room"`
	Seq       int64  `json:"seq"`
	Recovered bool   `json:"recovered"`
	Read      int64  `json:"read"`   // the author's read cursor
	Unread    int64  `json:"unread"` // others' messages after it, up to maxUnread
}

type leftFrame struct {
	Type string `json:"type"`
	Room string `json:"room"`
}

type ackFrame struct {
	Type string `json:"type"`
	Ref  string `json:"ref,omitempty"`
	Room string `json:"room"`
	Seq  int64  `json:"seq"`
}

type errorFrame struct {
	Type    string `json:"type"`
	Ref     string `json:"ref,omitempty"`
	Room    string `json:"room,omitempty"`
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// TimeFormat is how message times are written: RFC 3339, UTC, microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// EncodeMessage returns the "message" frame for m. The hub encodes each
// message once and sends the same bytes to every member.
func EncodeMessage(m store.Message) []byte {
	return appendMessage(make([]byte, 0, 160+len(m.Room)+len(m.Author)+len(m.Body)+len(m.Instance)), m)
}

func encode(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("chat: encode %T: %v", v, err)) // only fixed frame types get here
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
