package chat

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pgchat/pgchat/chat/internal/wsconn"
)

// HandlerOptions configures NewHandler.
type HandlerOptions struct {
	// Ready reports whether the instance can serve (database reachable,
	// listener connected); /readyz answers 503 with its error otherwise.
	Ready func(ctx context.Context) error
	// ReadyNote, if set, returns a warning for /readyz's body that does
	// not make it fail ("" for none).
	ReadyNote func() string
	// AllowedOrigins lists extra origin host patterns (path.Match syntax,
	// e.g. "chat.example.com" or "*.example.com") allowed to open a
	// WebSocket besides the page's own host.
	AllowedOrigins []string
	// AuthSecret, when set, requires an HS256 token signed with it on /ws
	// and the history endpoint (see ParseToken). Empty: anonymous mode.
	AuthSecret []byte
	// Limits caps connections and frames (zero value: no caps).
	Limits Limits
	// OnAppend, if set, is called after each POST /api/messages
	// transaction, as BatcherOptions.OnCommit is after the batcher's.
	OnAppend func(size, fresh int, took time.Duration, err error)
}

// NewHandler serves protocol v1 on GET /ws, and /healthz and /readyz.
func NewHandler(h *Hub, opts HandlerOptions) http.Handler {
	mux := http.NewServeMux()
	s := &server{hub: h, opts: opts}
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.HandleFunc("GET /api/rooms/{room}/messages", s.serveHistory)
	mux.HandleFunc("GET /api/rooms/{room}/search", s.serveRoomSearch) // search.go
	mux.HandleFunc("GET /api/search", s.serveSearch)
	mux.HandleFunc("POST /api/rooms/{room}/messages", s.servePublish)
	mux.HandleFunc("POST /api/messages", s.servePublishBatch)
	mux.HandleFunc("GET /api/whoami", s.serveWhoami)
	mux.HandleFunc("GET /pgchat-client.js", serveJSClient)
	mux.HandleFunc("GET /api/rooms/{room}/presence", s.servePresence)
	mux.HandleFunc("GET /api/rooms/{room}/reads", s.serveReads)
	mux.Handle("GET /", http.FileServerFS(webRoot))
	return mux
}

// The chat page, served at /.
//
//go:embed web
var webFS embed.FS

var webRoot, _ = fs.Sub(webFS, "web")

// History page limits of GET /api/rooms/{room}/messages.
const (
	defaultHistoryPage = 50
	maxHistoryPage     = 200
	// maxHistoryPerIP bounds the history requests one client address has
	// in progress; more get 429.
	maxHistoryPerIP = 8
)

var historyLimits = Limits{MaxConnsPerIP: maxHistoryPerIP}

// serveHistory answers GET /api/rooms/{room}/messages?before=SEQ&limit=N
// with the room's messages before SEQ (default: the newest), oldest first.
func (s *server) serveHistory(w http.ResponseWriter, r *http.Request) {
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, true)
		return
	}
	release, _, err := s.history.acquire(&historyLimits, s.opts.Limits.clientIP(r))
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeJSONError(w, http.StatusTooManyRequests, errorf(CodeRateLimited, "more than %d history requests at once from your address: wait for their answers", maxHistoryPerIP))
		return
	}
	defer release()
	room := r.PathValue("room")
	if !ValidRoom(room) {
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "invalid room name"))
		return
	}
	if !grant.Allows(room) { // before the lookup: a 403 does not tell whether the room exists
		writeJSONError(w, http.StatusForbidden, errForbidden(room))
		return
	}
	q := r.URL.Query()
	limit, before := defaultHistoryPage, int64(0)
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHistoryPage {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "limit must be 1 to %d", maxHistoryPage))
			return
		}
		limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "before must be a seq (1 or more)"))
			return
		}
		before = n
	}
	// The instance's history slot bounds the reads from the database, not
	// the answers: a client that never reads its answer holds only its own
	// address's slot above.
	if !s.hub.history.tryAcquire() {
		historyBusy(w)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.hub.opts.WriteTimeout)
	p, err := s.hub.db.History(ctx, room, before, limit)
	cancel()
	s.hub.history.release()
	if err != nil {
		s.hub.log.Error("history", "room", room, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, err)
		return
	}
	if !p.Exists {
		writeJSONError(w, http.StatusNotFound, errorf(CodeNotFound, "no room %s", room))
		return
	}
	writeHistory(w, room, p) // history.go
}

func writeJSONError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(encode(struct {
		Code    Code   `json:"code"`
		Message string `json:"message"`
	}{ErrorCode(err), clientMessage(err)}))
}

type server struct {
	hub     *Hub
	opts    HandlerOptions
	nextID  atomic.Uint64
	conns   connCounter  // open WebSockets, for Limits
	history connCounter  // history requests being answered, per client address
	posters posterLimits // publish API rate limits, per poster
}

func (s *server) serveReady(w http.ResponseWriter, r *http.Request) {
	if s.hub.Draining() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	if s.opts.ReadyNote != nil {
		if note := s.opts.ReadyNote(); note != "" {
			fmt.Fprintln(w, "ready; warning:", note)
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.hub.Draining() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "instance is shutting down: retry", http.StatusServiceUnavailable)
		return
	}
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, false)
		return
	}
	q := r.URL.Query()
	name := q.Get("name")
	if grant != nil {
		name = grant.Author // the name parameter is ignored: nobody speaks as someone else
	} else if name == "" {
		name = fmt.Sprintf("guest-%04d", rand.IntN(10000))
	}
	if !ValidName(name) {
		http.Error(w, fmt.Sprintf("name must be 1 to %d printable characters without leading or trailing spaces", MaxNameLen), http.StatusBadRequest)
		return
	}
	rooms := q["room"]
	for _, room := range rooms {
		if !ValidRoom(room) {
			http.Error(w, fmt.Sprintf("invalid room %s: rooms are 1 to %d characters of A-Z a-z 0-9 _ - . : starting with a letter or digit", quote(room), MaxRoomLen), http.StatusBadRequest)
			return
		}
	}
	ip := s.opts.Limits.clientIP(r)
	release, retryAfter, err := s.conns.acquire(&s.opts.Limits, ip)
	if err != nil {
		s.hub.log.Debug("connection refused", "peer", r.RemoteAddr, "client", ip, "err", err)
		w.Header().Set("Retry-After", retryAfter)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	conn, err := s.hub.sockets.Upgrade(w, r, wsconn.UpgradeOptions{
		OriginPatterns: s.opts.AllowedOrigins,
		// Larger frames close the connection with 1009; by default there
		// is room for a body of MaxMessageBytes JSON-escaped (up to 6
		// bytes per byte) plus the other fields, so bodies over it get
		// too_large.
		ReadLimit: int(s.opts.Limits.readLimit(s.hub.opts.MaxMessageBytes)),
	})
	if err != nil {
		release()
		return // Upgrade has answered the request
	}
	c := newClient(s.hub, conn, name)
	c.id, c.grant, c.release = s.nextID.Add(1), grant, release
	// The handler returns at once: that frees what net/http holds per
	// request (its buffers, the request, a goroutine stack grown by the
	// handshake), a large part of an idle connection's footprint
	// (docs/performance.md). The connection's context is its own
	// (conn.Context); Hub.Close ends it and waits for it.
	go c.serve(conn, rooms)
}
