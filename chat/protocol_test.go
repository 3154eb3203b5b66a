package chat

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pgchat/pgchat/store"
)

// testMaxBody is the body limit the decoding tests use.
const testMaxBody = 100

var decodeTests = []struct {
	name     string
	in       string
	wantCode Code   // "" means valid
	wantRef  string // the ref DecodeFrame returns (to echo, on error)
}{
	// Valid frames.
	{"join", `{"type":"join","room":"general"}`, "", ""},
	{"join since", `{"type":"join","room":"general","since":41}`, "", ""},
	{"join since 0", `{"type":"join","room":"general","since":0}`, "", ""},
	{"join since null", `{"type":"join","room":"general","since":null}`, "", ""},
	{"leave", `{"type":"leave","room":"general"}`, "", ""},
	{"send", `{"type":"send","room":"general","body":"hello","ref":"c-17"}`, "", "c-17"},
	{"send without ref", `{"type":"send","room":"general","body":"hello"}`, "", ""},
	{"send unicode body", `{"type":"send","room":"general","body":"héllo 😀 \u2028 <b>"}`, "", ""},
	{"send body at limit", `{"type":"send","room":"r","body":"` + strings.Repeat("x", testMaxBody) + `"}`, "", ""},
	{"send body at limit in runes", `{"type":"send","room":"r","body":"` + strings.Repeat("é", testMaxBody/2) + `"}`, "", ""},
	{"send escaped body at limit", `{"type":"send","room":"r","body":"` + strings.Repeat(`\n`, testMaxBody-1) + `x"}`, "", ""},
	{"send ref at limit", `{"type":"send","room":"r","body":"b","ref":"` + strings.Repeat("r", MaxRefLen) + `"}`, "", strings.Repeat("r", MaxRefLen)},
	{"room chars", `{"type":"join","room":"Aa0_-.:z"}`, "", ""},
	{"room at limit", `{"type":"join","room":"` + strings.Repeat("r", MaxRoomLen) + `"}`, "", ""},
	{"unknown field", `{"type":"join","room":"r","color":"red"}`, "", ""},
	{"whitespace around", " \n{\"type\":\"leave\",\"room\":\"r\"}\t", "", ""},

	// since.
	{"since negative", `{"type":"join","room":"r","since":-1,"ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"since string", `{"type":"join","room":"r","since":"5","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"since float", `{"type":"join","room":"r","since":1.5}`, CodeBadRequest, ""},
	{"since exponent", `{"type":"join","room":"r","since":1e3}`, CodeBadRequest, ""},
	{"since overflow", `{"type":"join","room":"r","since":99999999999999999999}`, CodeBadRequest, ""},
	{"since bool", `{"type":"join","room":"r","since":true}`, CodeBadRequest, ""},

	// type.
	{"no type", `{"room":"r","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"empty type", `{"type":"","room":"r"}`, CodeBadRequest, ""},
	{"type not a string", `{"type":1,"room":"r","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"unknown type", `{"type":"shout","room":"r","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"server type", `{"type":"message","room":"r","body":"hi"}`, CodeBadRequest, ""},
	{"type in capitals", `{"type":"JOIN","room":"r"}`, CodeBadRequest, ""},

	// room.
	{"no room", `{"type":"join","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"empty room", `{"type":"join","room":""}`, CodeBadRequest, ""},
	{"room too long", `{"type":"join","room":"` + strings.Repeat("r", MaxRoomLen+1) + `"}`, CodeBadRequest, ""},
	{"room with space", `{"type":"join","room":"a b"}`, CodeBadRequest, ""},
	{"room with slash", `{"type":"leave","room":"a/b"}`, CodeBadRequest, ""},
	{"room with non-ASCII", `{"type":"join","room":"café"}`, CodeBadRequest, ""},
	{"room with NUL", `{"type":"join","room":"a\u0000"}`, CodeBadRequest, ""},
	{"room leading dash", `{"type":"join","room":"-r"}`, CodeBadRequest, ""},
	{"room leading dot", `{"type":"join","room":".r"}`, CodeBadRequest, ""},
	{"room leading underscore", `{"type":"join","room":"_r"}`, CodeBadRequest, ""},
	{"room not a string", `{"type":"join","room":5}`, CodeBadRequest, ""},
	{"send to bad room", `{"type":"send","room":"a b","body":"hi","ref":"c-1"}`, CodeBadRequest, "c-1"},

	// body.
	{"no body", `{"type":"send","room":"r","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"null body", `{"type":"send","room":"r","body":null}`, CodeBadRequest, ""},
	{"empty body", `{"type":"send","room":"r","body":"","ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"whitespace body", `{"type":"send","room":"r","body":" \n\t\r "}`, CodeBadRequest, ""},
	{"body not a string", `{"type":"send","room":"r","body":42,"ref":"c-1"}`, CodeBadRequest, "c-1"},
	{"body over limit", `{"type":"send","room":"r","body":"` + strings.Repeat("x", testMaxBody+1) + `","ref":"c-1"}`, CodeTooLarge, "c-1"},
	{"escaped body over limit", `{"type":"send","room":"r","body":"` + strings.Repeat(`\n`, testMaxBody) + `x"}`, CodeTooLarge, ""},
	{"body over limit in bytes", `{"type":"send","room":"r","body":"` + strings.Repeat("é", testMaxBody/2) + `x"}`, CodeTooLarge, ""},
	{"body with NUL", `{"type":"send","room":"r","body":"a\u0000b","ref":"c-1"}`, CodeBadRequest, "c-1"},

	// Not a frame.
	{"invalid UTF-8", "{\"type\":\"send\",\"room\":\"r\",\"body\":\"\xff\"}", CodeBadRequest, ""},
	{"invalid UTF-8 outside strings", "{\"type\":\"join\",\"room\":\"r\"}\xc3", CodeBadRequest, ""},
	{"empty", ``, CodeBadRequest, ""},
	{"not JSON", `hello`, CodeBadRequest, ""},
	{"truncated", `{"type":"join","room":"r","ref":"c-1"`, CodeBadRequest, ""},
	{"trailing data", `{"type":"join","room":"r"} {}`, CodeBadRequest, ""},
	{"array", `[{"type":"join","room":"r"}]`, CodeBadRequest, ""},
	{"string", `"join"`, CodeBadRequest, ""},
	{"number", `42`, CodeBadRequest, ""},
	{"null", `null`, CodeBadRequest, ""},

	// ref.
	{"ref too long", `{"type":"send","room":"r","body":"b","ref":"` + strings.Repeat("r", MaxRefLen+1) + `"}`, CodeBadRequest, ""},
	{"ref with newline", `{"type":"send","room":"r","body":"b","ref":"c\n1"}`, CodeBadRequest, ""},
	{"ref with NUL", `{"type":"send","room":"r","body":"b","ref":"c\u00001"}`, CodeBadRequest, ""},
	{"ref with DEL", `{"type":"send","room":"r","body":"b","ref":"c\u007f"}`, CodeBadRequest, ""},
	{"ref non-ASCII", `{"type":"send","room":"r","body":"b","ref":"ré"}`, CodeBadRequest, ""},
	{"ref not a string", `{"type":"send","room":"r","body":"b","ref":17}`, CodeBadRequest, ""},
	{"bad ref and bad room", `{"type":"send","room":"","body":"b","ref":"c\t1"}`, CodeBadRequest, ""},
	{"ref with wrong since", `{"ref":"c-9","type":"join","room":"r","since":[]}`, CodeBadRequest, "c-9"},
}

func TestDecodeFrame(t *testing.T) {
	t.Parallel()
	for _, tc := range decodeTests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := DecodeFrame([]byte(tc.in), testMaxBody)
			var code Code
			if err != nil {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("DecodeFrame(%q) error = %v (%T), want a *chat.Error", tc.in, err, err)
				}
				code = e.Code
			}
			if code != tc.wantCode {
				t.Errorf("DecodeFrame(%q) code = %q, want %q (error %v)", tc.in, code, tc.wantCode, err)
			}
			if f.Ref != tc.wantRef {
				t.Errorf("DecodeFrame(%q) ref = %q, want %q", tc.in, f.Ref, tc.wantRef)
			}
		})
	}
}

func TestDecodeFrameFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Frame
	}{
		{`{"type":"join","room":"general"}`, Frame{Type: TypeJoin, Room: "general"}},
		{`{"type":"join","room":"general","since":41}`, Frame{Type: TypeJoin, Room: "general", Since: 41, HasSince: true}},
		{`{"type":"join","room":"general","since":0}`, Frame{Type: TypeJoin, Room: "general", HasSince: true}},
		{`{"type":"leave","room":"general","ref":"x"}`, Frame{Type: TypeLeave, Room: "general", Ref: "x"}},
		{`{"type":"send","room":"general","body":"  hello \u003c\n","ref":"c-17"}`, Frame{Type: TypeSend, Room: "general", Body: "  hello <\n", Ref: "c-17"}},
	} {
		f, err := DecodeFrame([]byte(tc.in), testMaxBody)
		if err != nil || f != tc.want {
			t.Errorf("DecodeFrame(%q) = %+v, %v; want %+v, nil", tc.in, f, err, tc.want)
		}
	}
}

func TestValidRoom(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		room string
		want bool
	}{
		{"general", true},
		{"a", true},
		{"7", true},
		{"Team_1-dev.ops:eu", true},
		{strings.Repeat("r", MaxRoomLen), true},
		{"", false},
		{strings.Repeat("r", MaxRoomLen+1), false},
		{"-general", false},
		{"_general", false},
		{".general", false},
		{":general", false},
		{"gen eral", false},
		{"gen/eral", false},
		{"général", false},
		{"general\n", false},
		{"a\x00", false},
		{"\xff", false},
	} {
		if got := ValidRoom(tc.room); got != tc.want {
			t.Errorf("ValidRoom(%q) = %v, want %v", tc.room, got, tc.want)
		}
	}
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"alice", true},
		{"Alice Smith", true},
		{"élodie 😀", true},
		{"<script>", true}, // printable; escaped where it is shown
		{strings.Repeat("a", MaxNameLen), true},
		{strings.Repeat("é", MaxNameLen), true}, // characters, not bytes
		{"", false},
		{strings.Repeat("a", MaxNameLen+1), false},
		{" alice", false},
		{"alice ", false},
		{"   ", false},
		{"al\tice", false},
		{"al\nice", false},
		{"al\x00ice", false},
		{"al\u200bice", false}, // zero-width space: a format character
		{"al\u202eice", false}, // right-to-left override
	} {
		if got := ValidName(tc.name); got != tc.want {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestValidNameInvalidUTF8: the name comes from the URL query, where %FF
// decodes to a lone 0xff byte. PostgreSQL rejects such text, so a name like
// that would fail every send with "unavailable".
func TestValidNameInvalidUTF8(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"\xff", "alice\xff", "al\xc3ice", "\xed\xa0\x80"} {
		if ValidName(name) {
			t.Errorf("ValidName(%q) = true, want false (invalid UTF-8)", name)
		}
	}
}

func TestEncodeMessage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		m    store.Message
		want string
	}{
		{
			store.Message{Room: "general", Seq: 42, Author: "alice", Body: "hello",
				Time: time.Date(2026, 11, 28, 22, 0, 0, 123456789, time.UTC), Instance: "app-1", Ref: "c-17"},
			`{"type":"message","room":"general","seq":42,"author":"alice","body":"hello","ts":"2026-11-28T22:00:00.123456Z","instance":"app-1"}`,
		},
		{
			// Not HTML-escaped; JSON escapes only what it must. The time is
			// written in UTC with all six digits.
			store.Message{Room: "r", Seq: 1, Author: "<b>", Body: "a < b && c > d \"q\" \\ \n é 😀",
				Time: time.Date(2026, 11, 29, 1, 0, 0, 0, time.FixedZone("EET", 3*3600)), Instance: "app-2"},
			`{"type":"message","room":"r","seq":1,"author":"<b>","body":"a < b && c > d \"q\" \\ \n é 😀","ts":"2026-11-28T22:00:00.000000Z","instance":"app-2"}`,
		},
	} {
		if got := string(EncodeMessage(tc.m)); got != tc.want {
			t.Errorf("EncodeMessage(%+v) =\n%s\nwant\n%s", tc.m, got, tc.want)
		}
	}
}

// FuzzDecodeFrame checks that DecodeFrame never panics, that what it accepts
// obeys protocol v1's rules, and that what it rejects is a client error with
// a ref that is safe to echo.
func FuzzDecodeFrame(f *testing.F) {
	for _, tc := range decodeTests {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeFrame(data, testMaxBody)
		if !validRef(fr.Ref) {
			t.Errorf("DecodeFrame(%q) ref = %q, want printable ASCII of at most %d bytes", data, fr.Ref, MaxRefLen)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || (e.Code != CodeBadRequest && e.Code != CodeTooLarge) {
				t.Errorf("DecodeFrame(%q) error = %v, want a *chat.Error with code bad_request or too_large", data, err)
			}
			if e != nil && !utf8.ValidString(e.Message) {
				t.Errorf("DecodeFrame(%q) error message %q is not valid UTF-8", data, e.Message)
			}
			return
		}
		if !utf8.Valid(data) {
			t.Errorf("DecodeFrame(%q) accepted invalid UTF-8", data)
		}
		if !ValidRoom(fr.Room) {
			t.Errorf("DecodeFrame(%q) room = %q, want a valid room", data, fr.Room)
		}
		switch fr.Type {
		case TypeJoin:
			if fr.Since < 0 || !fr.HasSince && fr.Since != 0 {
				t.Errorf("DecodeFrame(%q) since = %d (given: %v), want >= 0, 0 when not given", data, fr.Since, fr.HasSince)
			}
		case TypeLeave:
		case TypeSend:
			switch {
			case strings.TrimSpace(fr.Body) == "":
				t.Errorf("DecodeFrame(%q) accepted an empty body", data)
			case len(fr.Body) > testMaxBody:
				t.Errorf("DecodeFrame(%q) body is %d bytes, want at most %d", data, len(fr.Body), testMaxBody)
			case strings.IndexByte(fr.Body, 0) >= 0:
				t.Errorf("DecodeFrame(%q) body %q contains NUL", data, fr.Body)
			case !utf8.ValidString(fr.Body):
				t.Errorf("DecodeFrame(%q) body %q is not valid UTF-8", data, fr.Body)
			}
		default:
			t.Errorf("DecodeFrame(%q) type = %q, want join, leave or send", data, fr.Type)
		}
	})
}
