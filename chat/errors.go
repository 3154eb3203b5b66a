package chat

import (
	"errors"
	"fmt"

	"github.com/pgchat/pgchat/store"
)

// Code is an error code of protocol v1.
type Code string

// Error codes of protocol v1 (docs/protocol.md).
const (
	CodeBadRequest  Code = "bad_request"  // malformed or invalid frame
	CodeNotJoined   Code = "not_joined"   // send or leave for a room not joined
	CodeTooLarge    Code = "too_large"    // body over MAX_MESSAGE_BYTES
	CodeRateLimited Code = "rate_limited" // over the per-connection rate or room limit
	CodeForbidden   Code = "forbidden"    // not allowed in this room
	CodeUnavailable Code = "unavailable"  // database trouble or shutting down: retry with the same ref

	// CodeNotFound: an edit, delete, react or unreact whose target is not a
	// message of the room; over HTTP, an unknown room.
	CodeNotFound Code = "not_found"
	// CodeGone: an edit, delete, react or unreact of a deleted message.
	CodeGone Code = "gone"
	// CodeUnauthorized answers a missing, invalid or expired token over
	// HTTP (401): on the history endpoint and before a WebSocket upgrade.
	CodeUnauthorized Code = "unauthorized"
)

// Error is a failure reported to the client in an "error" frame.
type Error struct {
	Code    Code
	Message string // safe to show to the client
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns err's protocol code; any error that is not an *Error is
// CodeUnavailable.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeUnavailable
}

// clientMessage is the text a client may see for err: an *Error's own
// message, a generic one for anything else (which the owner logs).
func clientMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	if store.IsNotifyQueueFull(err) {
		return "not stored: the database's notification queue is full (an operator must find the listener that stopped consuming); retry later with the same ref"
	}
	return "temporarily unavailable, retry with the same ref"
}
