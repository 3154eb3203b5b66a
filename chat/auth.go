package chat

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
)

// StatusTokenExpired is the close code of a connection whose token expired
// while it was open (reason "token expired"). The client needs a new token
// before it reconnects.
const StatusTokenExpired websocket.StatusCode = 4001

var errTokenExpired = &closeCause{code: StatusTokenExpired, reason: "token expired", label: "token_expired"}

// maxTokenLen bounds the tokens ParseToken looks at; a token with a few
// hundred room patterns is still far below it.
const maxTokenLen = 8 << 10

// Grant is what a token allows: who the connection speaks as, which rooms it
// may join, send to and read, and until when. A nil *Grant is anonymous mode:
// every room is allowed and the connection never expires.
type Grant struct {
	Author  string    // the token's sub: the author of every message sent
	Rooms   []string  // room names, or prefixes ending in "*" ("team-*"; "*" is every room)
	Expires time.Time // the token's exp
	// Moderator is the token's "mod":true claim: the connection may delete
	// anyone's messages (events.go).
	Moderator bool
	// Publisher is the token's "pub" claim: a backend's token, which may
	// choose the author of what it posts with the publish API.
	Publisher bool
}

// Allows reports whether g lets a connection into room. A nil g allows
// every room.
func (g *Grant) Allows(room string) bool {
	if g == nil {
		return true
	}
	for _, p := range g.Rooms {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(room, prefix) {
				return true
			}
		} else if p == room {
			return true
		}
	}
	return false
}

// ValidRoomPattern reports whether p can be in a token's rooms claim: a
// valid room name, or "*", or a valid room name followed by "*".
func ValidRoomPattern(p string) bool {
	if prefix, ok := strings.CutSuffix(p, "*"); ok {
		return prefix == "" || ValidRoom(prefix)
	}
	return ValidRoom(p)
}

// tokenClaims are the claims pgchat reads: sub, exp, rooms and pub.
type tokenClaims struct {
	Rooms []string `json:"rooms"`
	Mod   bool     `json:"mod,omitempty"`
	Pub   bool     `json:"pub,omitempty"`
	jwt.RegisteredClaims
}

// NewToken returns an HS256 JWT for g signed with secret: sub is g.Author,
// rooms g.Rooms, exp g.Expires, iat now.
func NewToken(secret []byte, g Grant, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("no secret")
	}
	if err := g.validate(); err != nil {
		return "", err
	}
	claims := tokenClaims{
		Rooms: g.Rooms,
		Mod:   g.Moderator,
		Pub:   g.Publisher,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   g.Author,
			ExpiresAt: jwt.NewNumericDate(g.Expires),
			IssuedAt:  jwt.NewNumericDate(now),
		},
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// ParseToken verifies token, an HS256 JWT signed with secret, at time now
// and returns what it grants. Only HS256 is accepted ("none", RS256 and the
// other algorithms are refused whatever their signature), exp is required
// and must be after now, sub must be a valid name and every rooms entry a
// valid room pattern. Errors are *Error with CodeUnauthorized and a short
// reason safe to show.
func ParseToken(secret []byte, token string, now time.Time) (*Grant, error) {
	switch {
	case token == "":
		return nil, errorf(CodeUnauthorized, "missing token: pass ?token= or an Authorization: Bearer header")
	case len(token) > maxTokenLen:
		return nil, errorf(CodeUnauthorized, "token is too long")
	case len(secret) == 0:
		return nil, errorf(CodeUnauthorized, "tokens are not accepted here")
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	var claims tokenClaims
	_, err := p.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		// WithValidMethods already refuses the others; this keeps the key
		// from ever reaching another algorithm.
		if t.Method != jwt.SigningMethodHS256 {
			return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
		}
		return secret, nil
	})
	if err != nil {
		return nil, tokenError(err)
	}
	g := &Grant{Author: claims.Subject, Rooms: claims.Rooms, Expires: claims.ExpiresAt.Time, Moderator: claims.Mod, Publisher: claims.Pub}
	if err := g.validate(); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Grant) validate() error {
	if !ValidName(g.Author) {
		return errorf(CodeUnauthorized, "token sub must be a valid name: 1 to %d printable characters", MaxNameLen)
	}
	if len(g.Rooms) == 0 {
		return errorf(CodeUnauthorized, "token has no rooms claim")
	}
	for _, p := range g.Rooms {
		if !ValidRoomPattern(p) {
			return errorf(CodeUnauthorized, "token rooms claim has an invalid entry %s", quote(p))
		}
	}
	return nil
}

// tokenError maps the jwt package's errors to a short reason for the client.
func tokenError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errorf(CodeUnauthorized, "malformed token")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		// An unknown or refused alg is reported like a bad signature: the
		// token was not signed by this server's secret with HS256.
		return errorf(CodeUnauthorized, "invalid token signature")
	case errors.Is(err, jwt.ErrTokenExpired):
		return errorf(CodeUnauthorized, "token expired")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return errorf(CodeUnauthorized, "token has no exp")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errorf(CodeUnauthorized, "token not valid yet")
	}
	return errorf(CodeUnauthorized, "invalid token")
}

// bearerToken returns the token of r: the Authorization: Bearer header
// (for non-browser clients), else the token query parameter (browsers can't
// set headers on a WebSocket).
func bearerToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	return r.URL.Query().Get("token")
}

// authenticate returns r's grant: nil in anonymous mode (no secret), else
// the verified token's, or an *Error with CodeUnauthorized.
func (s *server) authenticate(r *http.Request) (*Grant, error) {
	if len(s.opts.AuthSecret) == 0 {
		return nil, nil
	}
	return ParseToken(s.opts.AuthSecret, bearerToken(r), time.Now())
}

// unauthorized answers 401 with err's reason, as plain text (for /ws) or as a
// JSON error (for the API).
func unauthorized(w http.ResponseWriter, err error, asJSON bool) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="pgchat"`)
	if asJSON {
		writeJSONError(w, http.StatusUnauthorized, err)
		return
	}
	http.Error(w, clientMessage(err), http.StatusUnauthorized)
}

func errForbidden(room string) *Error {
	return errorf(CodeForbidden, "your token does not allow room %s", room)
}
