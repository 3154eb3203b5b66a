package chat

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	testNow    = time.Date(2026, 11, 28, 22, 0, 0, 0, time.UTC)
)

// forge builds a JWT from raw header and claims JSON, signed with HMAC-SHA256
// over secret whatever the header says.
func forge(header, claims string, secret []byte) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// unsigned builds a JWT with an empty signature.
func unsigned(header, claims string) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims)) + "."
}

func mustToken(t testing.TB, secret []byte, g Grant) string {
	t.Helper()
	tok, err := NewToken(secret, g, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestParseToken(t *testing.T) {
	t.Parallel()
	exp := testNow.Add(time.Hour)
	valid := mustToken(t, testSecret, Grant{Author: "alice", Rooms: []string{"general", "team-*"}, Expires: exp})
	g, err := ParseToken(testSecret, valid, testNow)
	if err != nil {
		t.Fatalf("ParseToken(valid) error = %v", err)
	}
	if g.Author != "alice" || len(g.Rooms) != 2 || !g.Expires.Equal(exp) {
		t.Fatalf("ParseToken(valid) = %+v, want alice, 2 rooms, exp %v", g, exp)
	}

	claims := func(extra string) string {
		return `{"sub":"alice","rooms":["general"],"exp":` + jsonNum(exp) + extra + `}`
	}
	hs256 := `{"alg":"HS256","typ":"JWT"}`
	noneTok, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice", "rooms": []string{"general"}, "exp": exp.Unix()}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	hs512, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"sub": "alice", "rooms": []string{"general"}, "exp": exp.Unix()}).
		SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(valid, ".")
	for _, tc := range []struct {
		name, token, want string
	}{
		{"Missing", "", "missing token"},
		{"Expired", mustToken(t, testSecret, Grant{Author: "alice", Rooms: []string{"general"}, Expires: testNow.Add(-time.Second)}), "token expired"},
		{"OtherSecret", mustToken(t, []byte("another-secret-another-secret-xx"), Grant{Author: "alice", Rooms: []string{"general"}, Expires: exp}), "invalid token signature"},
		{"TamperedClaims", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(claims(`,"x":1`))) + "." + parts[2], "invalid token signature"},
		{"AlgNone", noneTok, "invalid token signature"},
		{"AlgNoneNoSignature", unsigned(`{"alg":"none"}`, claims("")), "invalid token signature"},
		{"AlgHS256NoSignature", unsigned(hs256, claims("")), "invalid token signature"},
		{"AlgRS256SignedWithHMAC", forge(`{"alg":"RS256","typ":"JWT"}`, claims(""), testSecret), "invalid token signature"},
		{"AlgHS512", hs512, "invalid token signature"},
		{"AlgLowercase", forge(`{"alg":"hs256"}`, claims(""), testSecret), "invalid token signature"},
		{"NoExp", forge(hs256, `{"sub":"alice","rooms":["general"]}`, testSecret), "token has no exp"},
		{"NotYetValid", forge(hs256, claims(`,"nbf":`+jsonNum(testNow.Add(time.Minute))), testSecret), "token not valid yet"},
		{"NoSub", forge(hs256, `{"rooms":["general"],"exp":`+jsonNum(exp)+`}`, testSecret), "sub must be a valid name"},
		{"BadSub", forge(hs256, `{"sub":"  alice","rooms":["general"],"exp":`+jsonNum(exp)+`}`, testSecret), "sub must be a valid name"},
		{"ControlCharSub", forge(hs256, `{"sub":"al\u0007ice","rooms":["general"],"exp":`+jsonNum(exp)+`}`, testSecret), "sub must be a valid name"},
		{"NoRooms", forge(hs256, `{"sub":"alice","exp":`+jsonNum(exp)+`}`, testSecret), "no rooms claim"},
		{"RoomsNotAList", forge(hs256, `{"sub":"alice","rooms":"general","exp":`+jsonNum(exp)+`}`, testSecret), "malformed token"},
		{"BadPattern", forge(hs256, `{"sub":"alice","rooms":["te*am"],"exp":`+jsonNum(exp)+`}`, testSecret), "invalid entry"},
		{"ExpNotANumber", forge(hs256, `{"sub":"alice","rooms":["general"],"exp":"tomorrow"}`, testSecret), "malformed token"},
		{"Garbage", "not a token", "malformed token"},
		{"TwoParts", parts[0] + "." + parts[1], "malformed token"},
		{"BadBase64", parts[0] + ".!!!." + parts[2], "malformed token"},
		{"TooLong", strings.Repeat("a", maxTokenLen+1), "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := ParseToken(testSecret, tc.token, testNow)
			if err == nil {
				t.Fatalf("ParseToken = %+v, want an error containing %q", g, tc.want)
			}
			if ErrorCode(err) != CodeUnauthorized || !strings.Contains(clientMessage(err), tc.want) {
				t.Fatalf("ParseToken error = %v, want %s containing %q", err, CodeUnauthorized, tc.want)
			}
		})
	}
}

func TestParseTokenNeedsASecret(t *testing.T) {
	t.Parallel()
	tok := forge(`{"alg":"HS256"}`, `{"sub":"alice","rooms":["general"],"exp":`+jsonNum(testNow.Add(time.Hour))+`}`, nil)
	if g, err := ParseToken(nil, tok, testNow); err == nil {
		t.Fatalf("ParseToken with an empty secret accepted a token signed with an empty key: %+v", g)
	}
}

func jsonNum(t time.Time) string {
	b, _ := json.Marshal(t.Unix())
	return string(b)
}

func TestGrantAllows(t *testing.T) {
	t.Parallel()
	g := &Grant{Rooms: []string{"general", "team-*", "ops"}}
	for room, want := range map[string]bool{
		"general":   true,
		"General":   false, // rooms are case-sensitive
		"general2":  false,
		"team-":     true,
		"team-blue": true,
		"team":      false,
		"teamx":     false,
		"ops":       true,
		"ops-2":     false,
	} {
		if got := g.Allows(room); got != want {
			t.Errorf("Allows(%q) = %v, want %v", room, got, want)
		}
	}
	if !(&Grant{Rooms: []string{"*"}}).Allows("anything") {
		t.Errorf(`"*" does not allow every room`)
	}
	var anonymous *Grant
	if !anonymous.Allows("general") {
		t.Errorf("a nil grant (anonymous mode) does not allow every room")
	}
	if (&Grant{}).Allows("general") {
		t.Errorf("a grant without rooms allows a room")
	}
}

func TestValidRoomPattern(t *testing.T) {
	t.Parallel()
	for p, want := range map[string]bool{
		"general": true, "team-*": true, "*": true, "a*": true,
		"": false, "**": false, "*team": false, "te*am": false, "-*": false, "team-**": false,
		strings.Repeat("a", MaxRoomLen) + "*": true, strings.Repeat("a", MaxRoomLen+1): false,
	} {
		if got := ValidRoomPattern(p); got != want {
			t.Errorf("ValidRoomPattern(%q) = %v, want %v", p, got, want)
		}
	}
}

// FuzzParseToken: whatever the input, ParseToken does not panic, and what it
// accepts is an HS256 token whose signature is the secret's, with a valid
// sub, valid room patterns and an exp after now.
func FuzzParseToken(f *testing.F) {
	exp := testNow.Add(time.Hour)
	claims := `{"sub":"alice","rooms":["general","team-*"],"exp":` + jsonNum(exp) + `}`
	f.Add(mustToken(f, testSecret, Grant{Author: "alice", Rooms: []string{"general", "team-*"}, Expires: exp}))
	f.Add(mustToken(f, testSecret, Grant{Author: "zoë ✓", Rooms: []string{"*"}, Expires: exp}))
	f.Add(mustToken(f, testSecret, Grant{Author: "alice", Rooms: []string{"general"}, Expires: testNow.Add(-time.Minute)}))
	f.Add(mustToken(f, []byte("another-secret-another-secret-xx"), Grant{Author: "alice", Rooms: []string{"general"}, Expires: exp}))
	f.Add(forge(`{"alg":"none"}`, claims, nil))
	f.Add(forge(`{"alg":"RS256"}`, claims, testSecret))
	f.Add(forge(`{"alg":"HS256"}`, `{"sub":"alice","rooms":["general"],"exp":1e400}`, testSecret))
	f.Add(forge(`{"alg":"HS256"}`, `{"sub":"alice","rooms":[null,1],"exp":`+jsonNum(exp)+`}`, testSecret))
	f.Add(forge(`{"alg":"HS256","crit":["x"]}`, `{"sub":"","rooms":[],"exp":-1}`, testSecret))
	f.Add(forge(`{"alg":["HS256"]}`, claims, testSecret))
	f.Add(forge(`null`, `null`, testSecret))
	f.Add("eyJhbGciOiJIUzI1NiJ9..")
	f.Add("...")
	f.Add("a.b.c.d")
	f.Add("\xff\xfe.\x00.")
	f.Fuzz(func(t *testing.T, token string) {
		g, err := ParseToken(testSecret, token, testNow)
		if err != nil {
			if g != nil {
				t.Fatalf("ParseToken(%q) returned a grant with error %v", token, err)
			}
			if ErrorCode(err) != CodeUnauthorized || !utf8.ValidString(clientMessage(err)) {
				t.Fatalf("ParseToken(%q) error = %v, want %s", token, err, CodeUnauthorized)
			}
			return
		}
		parts := strings.Split(token, ".")
		if len(parts) != 3 {
			t.Fatalf("ParseToken accepted %q, which has %d parts", token, len(parts))
		}
		header, err1 := base64.RawURLEncoding.DecodeString(parts[0])
		sig, err2 := base64.RawURLEncoding.DecodeString(parts[2])
		var h struct{ Alg string }
		if err1 != nil || err2 != nil || json.Unmarshal(header, &h) != nil || h.Alg != "HS256" {
			t.Fatalf("ParseToken accepted %q: header %q (alg %q), signature error %v", token, header, h.Alg, err2)
		}
		mac := hmac.New(sha256.New, testSecret)
		mac.Write([]byte(parts[0] + "." + parts[1]))
		if !hmac.Equal(sig, mac.Sum(nil)) {
			t.Fatalf("ParseToken accepted %q, which is not signed with the secret", token)
		}
		if !ValidName(g.Author) || len(g.Rooms) == 0 || !g.Expires.After(testNow) {
			t.Fatalf("ParseToken(%q) = %+v: invalid author, no rooms or expired", token, g)
		}
		for _, p := range g.Rooms {
			if !ValidRoomPattern(p) {
				t.Fatalf("ParseToken(%q) = %+v: invalid room pattern %q", token, g, p)
			}
		}
	})
}
