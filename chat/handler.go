package chat

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// HandlerOptions configures NewHandler.
type HandlerOptions struct {
	// Ready reports whether the instance can serve (database reachable,
	// listener connected); /readyz answers 503 with its error otherwise.
	Ready func(ctx context.Context) error
	// AllowedOrigins lists extra origin host patterns (path.Match syntax,
	// e.g. "chat.example.com" or "*.example.com") allowed to open a
	// WebSocket besides the page's own host.
	AllowedOrigins []string
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
	return mux
}

type server struct {
	hub    *Hub
	opts   HandlerOptions
	nextID atomic.Uint64
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
	fmt.Fprintln(w, "ready")
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.hub.Draining() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "instance is shutting down: retry", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	name := q.Get("name")
	if name == "" {
		name = fmt.Sprintf("guest-%04d", s.nextID.Load()%10000)
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
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OriginPatterns:  s.opts.AllowedOrigins,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return // Accept has answered the request
	}
	// Frames may carry a body of MaxMessageBytes, JSON-escaped (up to 6
	// bytes per byte), plus the other fields: larger frames close the
	// connection with 1009; bodies between the two get a too_large error.
	conn.SetReadLimit(int64(6*s.hub.opts.MaxMessageBytes + 1024))
	id := s.nextID.Add(1)
	c := newClient(s.hub, conn, name)
	c.log = s.hub.log.With("conn", id, "author", name)
	// The request's context must not be used after Accept (http.Hijacker),
	// so connections live on a context of their own; Hub.Close ends them.
	c.serve(context.WithoutCancel(r.Context()), rooms)
}

var _ = slog.Default
