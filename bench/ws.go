package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// wsConn is a minimal WebSocket client connection (RFC 6455), enough for a
// load generator: text frames out (masked), text frames in (read in place
// from a large buffer, no allocation per frame), pings answered, close
// handled. One goroutine reads (next); any goroutine may write.
type wsConn struct {
	nc net.Conn
	br *bufio.Reader

	wmu  sync.Mutex // guards writes and wbuf
	wbuf []byte
	mask uint32 // cheap per-connection mask sequence (masking is not for secrecy here)

	frag []byte // a fragmented message being reassembled
	big  []byte // a message larger than br's buffer
}

// closeError is a close frame received from the server.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("closed by server: %d %s", e.code, e.reason)
}

// handshakeError is an HTTP answer other than 101 to the upgrade request.
type handshakeError struct {
	status int
	body   string
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("upgrade refused: HTTP %d: %s", e.status, e.body)
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// dialWS opens a WebSocket to u (http://, ws://; https and wss are not
// supported: the bench is for local targets) with header added to the
// upgrade request. bufSize is the read buffer size.
func dialWS(ctx context.Context, u *url.URL, header http.Header, bufSize int) (*wsConn, error) {
	switch u.Scheme {
	case "http", "ws":
	default:
		return nil, fmt.Errorf("unsupported scheme %q: use http:// or ws://", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	var keyBytes [16]byte
	rand.Read(keyBytes[:])
	key := base64.StdEncoding.EncodeToString(keyBytes[:])

	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", u.RequestURI(), u.Host, key)
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(nc, req.String()); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, bufSize)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		nc.Close()
		return nil, &handshakeError{resp.StatusCode, strings.TrimSpace(string(b))}
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		nc.Close()
		return nil, errors.New("bad Sec-WebSocket-Accept in the upgrade response")
	}
	nc.SetDeadline(time.Time{})
	return &wsConn{nc: nc, br: br, mask: binary.LittleEndian.Uint32(keyBytes[:4]) | 1}, nil
}

const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// next returns the next data message. The slice is only valid until the
// next call. Pings are answered; a close frame is answered and returned as
// a *closeError.
func (c *wsConn) next() ([]byte, error) {
	c.frag = c.frag[:0]
	fragmented := false
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return nil, err
		}
		fin, op := hdr[0]&0x80 != 0, hdr[0]&0x0f
		if hdr[1]&0x80 != 0 {
			return nil, errors.New("server sent a masked frame")
		}
		n := int64(hdr[1] & 0x7f)
		switch n {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(c.br, ext[:]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint16(ext[:]))
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(c.br, ext[:]); err != nil {
				return nil, err
			}
			n = int64(binary.BigEndian.Uint64(ext[:]))
			if n < 0 || n > 64<<20 {
				return nil, fmt.Errorf("frame of %d bytes", n)
			}
		}
		p, err := c.payload(int(n))
		if err != nil {
			return nil, err
		}
		switch op {
		case opPing:
			if err := c.write(opPong, p); err != nil {
				return nil, err
			}
			continue
		case opPong:
			continue
		case opClose:
			ce := &closeError{code: 1005}
			if len(p) >= 2 {
				ce.code, ce.reason = int(binary.BigEndian.Uint16(p)), string(p[2:])
			}
			var echo [2]byte
			binary.BigEndian.PutUint16(echo[:], uint16(min(ce.code, 4999)))
			if ce.code == 1005 {
				c.write(opClose, nil)
			} else {
				c.write(opClose, echo[:])
			}
			return nil, ce
		case opText, opBinary:
			if fin && !fragmented {
				return p, nil
			}
			fragmented = true
			c.frag = append(c.frag[:0], p...)
		case opContinuation:
			if !fragmented {
				return nil, errors.New("continuation frame without a start")
			}
			c.frag = append(c.frag, p...)
			if fin {
				return c.frag, nil
			}
		default:
			return nil, fmt.Errorf("unknown opcode %d", op)
		}
	}
}

// payload reads n bytes: in place from the read buffer when they fit.
func (c *wsConn) payload(n int) ([]byte, error) {
	if n <= c.br.Size() {
		p, err := c.br.Peek(n)
		if err != nil {
			return nil, err
		}
		c.br.Discard(n)
		return p, nil
	}
	if cap(c.big) < n {
		c.big = make([]byte, n)
	}
	c.big = c.big[:n]
	_, err := io.ReadFull(c.br, c.big)
	return c.big, err
}

// writeText sends one text message.
func (c *wsConn) writeText(p []byte) error { return c.write(opText, p) }

func (c *wsConn) write(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := append(c.wbuf[:0], 0x80|op)
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	// xorshift: a fresh key per frame, cheaply.
	c.mask ^= c.mask << 13
	c.mask ^= c.mask >> 17
	c.mask ^= c.mask << 5
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], c.mask)
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, p...)
	for i := range b[start:] {
		b[start+i] ^= key[i&3]
	}
	c.wbuf = b
	_, err := c.nc.Write(b)
	return err
}

// close sends a normal close frame and closes the socket without waiting
// for the server's answer.
func (c *wsConn) close() {
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.write(opClose, []byte{0x03, 0xe8}) // 1000
	c.nc.Close()
}
