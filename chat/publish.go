package chat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pgchat/pgchat/store"
)

// MaxPublishBatch is the most messages one POST /api/messages may carry.
const MaxPublishBatch = 100

// publishMessage is one message of the publish API's request bodies.
type publishMessage struct {
	Room   string  `json:"room"` // POST /api/messages only; the path's otherwise
	Body   *string `json:"body"`
	Ref    string  `json:"ref"`
	Author string  `json:"author"`
}

// publishResult answers one published message.
type publishResult struct {
	Room      string `json:"room"`
	Seq       int64  `json:"seq"`
	Time      string `json:"ts"`
	Ref       string `json:"ref,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"` // the ref was stored before: seq is the original's
}

// servePublish answers POST /api/rooms/{room}/messages: 201 with the new
// message's seq, or 200 with the original's when its ref was stored
// before. It goes through the batcher, like a WebSocket send, and so
// shares its transactions and its NOTIFY.
func (s *server) servePublish(w http.ResponseWriter, r *http.Request) {
	var m publishMessage
	grant, ok := s.publishRequest(w, r, 1, &m)
	if !ok {
		return
	}
	m.Room = r.PathValue("room")
	msg, err := s.checkPublish(grant, m)
	if err == nil {
		err = s.publishLimit(r, grant, 1)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.hub.opts.WriteTimeout)
	defer cancel()
	type outcome struct {
		res store.Result
		err error
	}
	done := make(chan outcome, 1)
	if err := s.hub.batcher.Submit(ctx, msg, func(res store.Result, err error) { done <- outcome{res, err} }); err != nil {
		writeUnavailable(w, errShuttingDown)
		return
	}
	// The batcher answers every submitted message, within its own timeout.
	o := <-done
	if o.err != nil {
		writeUnavailable(w, o.err) // the batcher logged it
		return
	}
	status := http.StatusCreated
	if o.res.Duplicate {
		status = http.StatusOK
	}
	writeJSON(w, status, resultOf(o.res))
}

// servePublishBatch answers POST /api/messages {"messages":[...]}: up to
// MaxPublishBatch messages for any rooms, stored in one transaction (all
// or none), answered in order. 201 when at least one was new, 200 when
// every one was a stored ref.
func (s *server) servePublishBatch(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []publishMessage `json:"messages"`
	}
	grant, ok := s.publishRequest(w, r, MaxPublishBatch, &req)
	if !ok {
		return
	}
	var err error
	switch n := len(req.Messages); {
	case n == 0:
		err = errorf(CodeBadRequest, `no messages: send {"messages":[{"room":…,"body":…}]}`)
	case n > MaxPublishBatch:
		err = errorf(CodeTooLarge, "%d messages, the limit is %d per request", n, MaxPublishBatch)
	}
	msgs := make([]store.NewMessage, len(req.Messages))
	for i := 0; err == nil && i < len(req.Messages); i++ {
		if msgs[i], err = s.checkPublish(grant, req.Messages[i]); err != nil {
			var e *Error
			if errors.As(err, &e) {
				err = &Error{Code: e.Code, Message: fmt.Sprintf("messages[%d]: %s", i, e.Message)}
			}
		}
	}
	if err == nil {
		err = s.publishLimit(r, grant, len(msgs))
	}
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.hub.opts.WriteTimeout)
	defer cancel()
	start := time.Now()
	results, err := s.hub.db.Append(ctx, msgs)
	if s.opts.OnAppend != nil {
		fresh := 0
		for _, res := range results {
			if !res.Duplicate {
				fresh++
			}
		}
		s.opts.OnAppend(len(msgs), fresh, time.Since(start), err)
	}
	if err != nil {
		s.hub.log.Error("publish: messages not stored", "messages", len(msgs), "err", err)
		writeUnavailable(w, err)
		return
	}
	out := struct {
		Results []publishResult `json:"results"`
	}{make([]publishResult, len(results))}
	status := http.StatusOK
	for i, res := range results {
		out.Results[i] = resultOf(res)
		if !res.Duplicate {
			status = http.StatusCreated
		}
	}
	writeJSON(w, status, out)
}

// publishRequest does what both publish endpoints do first: refuse while
// draining, authenticate, check the content type, read and decode at most
// maxMessages messages' worth of JSON into v. When it returns false it has
// answered the request.
func (s *server) publishRequest(w http.ResponseWriter, r *http.Request, maxMessages int, v any) (*Grant, bool) {
	if s.hub.Draining() {
		writeUnavailable(w, errShuttingDown)
		return nil, false
	}
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, true)
		return nil, false
	}
	// A cross-site HTML form can only send urlencoded, multipart or plain
	// text bodies; JSON needs a CORS preflight, which pgchat never grants.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeJSONError(w, http.StatusUnsupportedMediaType, errorf(CodeBadRequest, "Content-Type must be application/json"))
		return nil, false
	}
	// Room for maxMessages bodies written entirely as JSON escapes.
	limit := int64(maxMessages) * s.opts.Limits.readLimit(s.hub.opts.MaxMessageBytes)
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeJSONError(w, http.StatusRequestEntityTooLarge, errorf(CodeTooLarge, "request body is over %d bytes", limit))
		} else {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "reading the request body: %v", err))
		}
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // a misspelt field is an error, not a silent default
	if err := dec.Decode(v); err != nil {
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "request body is not the expected JSON: %s", jsonProblem(err)))
		return nil, false
	}
	if dec.More() {
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "request body has data after the JSON object"))
		return nil, false
	}
	return grant, true
}

// jsonProblem describes a decoding error without echoing the input.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return fmt.Sprintf("field %q has the wrong type", typeErr.Field)
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown field " + f
	}
	return "malformed JSON"
}

// checkPublish validates m as DecodeFrame validates a send, checks that
// grant allows its room and picks its author: in token mode the token's
// sub, or m.Author if the token has the pub claim; in anonymous mode
// m.Author, which is required.
func (s *server) checkPublish(grant *Grant, m publishMessage) (store.NewMessage, error) {
	maxBody := s.hub.opts.MaxMessageBytes
	switch {
	case !ValidRoom(m.Room):
		return store.NewMessage{}, errorf(CodeBadRequest, "room must be 1 to %d characters of A-Z a-z 0-9 _ - . : starting with a letter or digit", MaxRoomLen)
	case !validRef(m.Ref):
		return store.NewMessage{}, errorf(CodeBadRequest, "ref must be 1 to %d printable ASCII characters", MaxRefLen)
	case m.Body == nil || strings.TrimSpace(*m.Body) == "":
		return store.NewMessage{}, errorf(CodeBadRequest, "body is empty")
	case len(*m.Body) > maxBody:
		return store.NewMessage{}, errorf(CodeTooLarge, "body is %d bytes, the limit is %d", len(*m.Body), maxBody)
	case strings.IndexByte(*m.Body, 0) >= 0:
		return store.NewMessage{}, errorf(CodeBadRequest, "body contains a NUL character")
	case !grant.Allows(m.Room):
		return store.NewMessage{}, errForbidden(m.Room)
	}
	author := m.Author
	switch {
	case grant != nil && author == "":
		author = grant.Author
	case grant != nil && author != grant.Author && !grant.Publisher:
		return store.NewMessage{}, errorf(CodeForbidden, `your token may only post as %s: a backend's token needs the "pub" claim to choose the author`, grant.Author)
	case grant == nil && author == "":
		return store.NewMessage{}, errorf(CodeBadRequest, "author is required")
	}
	if !ValidName(author) {
		return store.NewMessage{}, errorf(CodeBadRequest, "author must be 1 to %d printable characters without leading or trailing spaces", MaxNameLen)
	}
	return store.NewMessage{Room: m.Room, Author: author, Body: *m.Body, Ref: m.Ref}, nil
}

// publishLimit charges n messages to the poster's token bucket (RATE_LIMIT
// and RATE_BURST, as for a connection): by token sub, or by client address
// in anonymous mode. Tokens with the pub claim are backends and are not
// limited.
func (s *server) publishLimit(r *http.Request, grant *Grant, n int) error {
	opts := &s.hub.opts
	if opts.RateLimit < 0 || grant != nil && grant.Publisher {
		return nil
	}
	key := "ip " + s.opts.Limits.clientIP(r).String()
	if grant != nil {
		key = "sub " + grant.Author
	}
	if !s.posters.allow(key, n, rate.Limit(opts.RateLimit), max(opts.RateBurst, n)) {
		return errorf(CodeRateLimited, "more than %g messages per second: slow down and retry with the same refs", opts.RateLimit)
	}
	return nil
}

// posterLimits holds a token bucket per poster. Idle buckets (full again)
// are dropped when the map grows, so it stays as large as the set of
// recent posters.
type posterLimits struct {
	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

const maxIdlePosters = 10000

func (p *posterLimits) allow(key string, n int, limit rate.Limit, burst int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.buckets == nil {
		p.buckets = make(map[string]*rate.Limiter)
	}
	if len(p.buckets) >= maxIdlePosters {
		for k, l := range p.buckets {
			if l.TokensAt(now) >= float64(l.Burst()) {
				delete(p.buckets, k)
			}
		}
	}
	l := p.buckets[key]
	if l == nil {
		l = rate.NewLimiter(limit, burst)
		p.buckets[key] = l
	}
	if l.Burst() < burst {
		l.SetBurstAt(now, burst) // a larger batch than any before: it may still pass when the bucket is full
	}
	return l.AllowN(now, n)
}

func resultOf(res store.Result) publishResult {
	return publishResult{Room: res.Room, Seq: res.Seq, Time: res.Time.UTC().Format(TimeFormat), Ref: res.Ref, Duplicate: res.Duplicate}
}

// statusOf is the HTTP status of an error code.
func statusOf(err error) int {
	switch ErrorCode(err) {
	case CodeBadRequest, CodeNotJoined:
		return http.StatusBadRequest
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeForbidden:
		return http.StatusForbidden
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeNotFound:
		return http.StatusNotFound
	}
	return http.StatusServiceUnavailable
}

// writeError answers err with its code's status; a poster that is rate
// limited or refused for now is told when to retry.
func writeError(w http.ResponseWriter, err error) {
	status := statusOf(err)
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSONError(w, status, err)
}

// writeUnavailable answers 503 with Retry-After: the poster retries with
// the same refs.
func writeUnavailable(w http.ResponseWriter, err error) {
	w.Header().Set("Retry-After", "1")
	writeJSONError(w, http.StatusServiceUnavailable, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body := encode(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
