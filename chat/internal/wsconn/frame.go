package wsconn

import (
	"encoding/binary"
	"unicode/utf8"
)

// Opcodes (RFC 6455 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// Close codes (RFC 6455 7.4.1) that this package sends or reports.
const (
	StatusNormalClosure   = 1000
	StatusGoingAway       = 1001
	StatusProtocolError   = 1002
	StatusNoStatusRcvd    = 1005 // reported, never sent: the peer's close had no code
	StatusAbnormalClosure = 1006 // reported, never sent: no close frame
	StatusInvalidData     = 1007
	StatusPolicyViolation = 1008
	StatusMessageTooBig   = 1009
	StatusInternalError   = 1011
)

// maxControlPayload is the largest control frame payload (RFC 6455 5.5).
const maxControlPayload = 125

// validCloseCode reports whether a peer may send code in a close frame
// (RFC 6455 7.4): the defined codes other than those reserved for reports,
// and the ranges for libraries (3000-3999) and applications (4000-4999).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1011:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// header is a frame's header as read from a client.
type header struct {
	fin    bool
	rsv    byte // the three reserved bits
	op     byte
	masked bool
	mask   [4]byte
	length int64
}

// parseHeader parses the header at the start of b. It returns the header's
// size, or 0 if b does not hold it whole yet.
func parseHeader(b []byte) (h header, size int) {
	if len(b) < 2 {
		return h, 0
	}
	h.fin = b[0]&0x80 != 0
	h.rsv = b[0] & 0x70
	h.op = b[0] & 0x0f
	h.masked = b[1]&0x80 != 0
	size = 2
	switch n := b[1] & 0x7f; n {
	case 126:
		if len(b) < 4 {
			return h, 0
		}
		h.length = int64(binary.BigEndian.Uint16(b[2:]))
		size = 4
	case 127:
		if len(b) < 10 {
			return h, 0
		}
		h.length = int64(binary.BigEndian.Uint64(b[2:])) // negative if the top bit is set: rejected
		size = 10
	default:
		h.length = int64(n)
	}
	if h.masked {
		if len(b) < size+4 {
			return h, 0
		}
		copy(h.mask[:], b[size:])
		size += 4
	}
	return h, size
}

// unmask applies mask to p in place, p starting at offset pos of the
// payload. It returns the position after p.
func unmask(p []byte, mask [4]byte, pos int) int {
	for i := range p {
		p[i] ^= mask[(pos+i)&3]
	}
	return pos + len(p)
}

// appendHeader appends the header of an unmasked, final server frame.
func appendHeader(b []byte, op byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, 0x80|op, byte(n))
	case n <= 0xffff:
		return append(b, 0x80|op, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|op, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// appendFrame appends a whole server frame.
func appendFrame(b []byte, op byte, payload []byte) []byte {
	return append(appendHeader(b, op, len(payload)), payload...)
}

// closePayload is the payload of a close frame with code and reason; the
// reason is cut to fit a control frame, on a rune boundary.
func closePayload(code int, reason string) []byte {
	if code == 0 || code == StatusNoStatusRcvd || code == StatusAbnormalClosure {
		return nil
	}
	for len(reason) > maxControlPayload-2 {
		_, size := utf8.DecodeLastRuneInString(reason)
		reason = reason[:len(reason)-size]
	}
	return append([]byte{byte(code >> 8), byte(code)}, reason...)
}
