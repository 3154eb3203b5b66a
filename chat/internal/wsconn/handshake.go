package wsconn

import (
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

// acceptGUID is RFC 6455's key suffix (section 1.3).
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// acceptKey is the Sec-WebSocket-Accept value for a client's key.
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// HandshakeError is a refused upgrade: Upgrade has answered the request
// with Status.
type HandshakeError struct {
	Status int
	Msg    string
}

func (e *HandshakeError) Error() string { return e.Msg }

// checkRequest returns the client's key, or why the request is not an
// acceptable WebSocket upgrade. Extensions and subprotocols are never
// negotiated: their request headers are ignored.
func checkRequest(r *http.Request, originPatterns []string) (string, *HandshakeError) {
	if r.Method != http.MethodGet {
		return "", &HandshakeError{http.StatusMethodNotAllowed, "WebSocket upgrades use GET"}
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		return "", &HandshakeError{http.StatusUpgradeRequired, "this endpoint speaks WebSocket: send Connection: Upgrade and Upgrade: websocket"}
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		return "", &HandshakeError{http.StatusBadRequest, "unsupported Sec-WebSocket-Version: only 13 is"}
	}
	key := strings.TrimSpace(r.Header.Get("Sec-WebSocket-Key"))
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		return "", &HandshakeError{http.StatusBadRequest, "invalid Sec-WebSocket-Key"}
	}
	if err := checkOrigin(r, originPatterns); err != nil {
		return "", err
	}
	return key, nil
}

// checkOrigin allows requests without Origin (not from a browser), from
// the host they are addressed to, and from hosts matching one of patterns
// (path.Match syntax; a pattern with "://" is matched against
// scheme://host).
func checkOrigin(r *http.Request, patterns []string) *HandshakeError {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return &HandshakeError{http.StatusForbidden, fmt.Sprintf("request Origin %q is not a valid URL with a host", origin)}
	}
	if strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return nil
		}
	}
	return &HandshakeError{http.StatusForbidden, fmt.Sprintf("request Origin %q is not allowed", origin)}
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// UpgradeOptions configures one connection.
type UpgradeOptions struct {
	// OriginPatterns lists extra Origin hosts allowed besides the request's
	// own host (path.Match syntax).
	OriginPatterns []string
	// ReadLimit is the largest message, fragments summed; larger: close
	// 1009 (32 KiB).
	ReadLimit int
}

// Upgrade answers a WebSocket upgrade request and returns the connection,
// not yet started (see Conn.Start). It hijacks the request's connection;
// bytes the client sent after its request (a first frame in the same
// segment) are kept. On a refused request it has answered with a
// *HandshakeError's status and returns that error.
func (s *Set) Upgrade(w http.ResponseWriter, r *http.Request, opts UpgradeOptions) (*Conn, error) {
	key, herr := checkRequest(r, opts.OriginPatterns)
	if herr != nil {
		if herr.Status == http.StatusUpgradeRequired || herr.Status == http.StatusBadRequest {
			w.Header().Set("Sec-WebSocket-Version", "13")
		}
		http.Error(w, herr.Msg, herr.Status)
		return nil, herr
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "cannot upgrade this connection", http.StatusInternalServerError)
		return nil, fmt.Errorf("hijack: %w", err)
	}
	c := s.newConn(nc)
	c.readLimit = opts.ReadLimit
	if c.readLimit <= 0 {
		c.readLimit = 32 << 10
	}
	if n := brw.Reader.Buffered(); n > 0 { // the client did not wait for our answer
		early, _ := brw.Reader.Peek(n)
		c.rd.buf = append(getReadBuf(n), early...)
	}
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
	nc.SetDeadline(time.Now().Add(s.opts.WriteTimeout))
	_, err = nc.Write([]byte(resp))
	nc.SetDeadline(time.Time{})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("write handshake response: %w", err)
	}
	return c, nil
}
