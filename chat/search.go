package chat

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pgchat/pgchat/store"
)

// Search limits.
const (
	defaultSearchPage = 20
	maxSearchPage     = 100
	maxSearchQuery    = 256 // bytes of q
	maxSearchRooms    = 100 // room parameters of /api/search
)

type searchHit struct {
	Room     string `json:"room,omitempty"`
	Seq      int64  `json:"seq"`
	Author   string `json:"author"`
	Body     string `json:"body"`
	Edited   string `json:"edited,omitempty"`
	Time     string `json:"ts"`
	Instance string `json:"instance"`
	Snippet  string `json:"snippet"`
}

// serveRoomSearch answers GET /api/rooms/{room}/search?q=TEXT&limit=N&before=SEQ.
func (s *server) serveRoomSearch(w http.ResponseWriter, r *http.Request) {
	room := r.PathValue("room")
	s.search(w, r, []string{room}, true)
}

// serveSearch answers GET /api/search?q=TEXT&room=a&room=b&limit=N.
func (s *server) serveSearch(w http.ResponseWriter, r *http.Request) {
	rooms := r.URL.Query()["room"]
	if len(rooms) == 0 || len(rooms) > maxSearchRooms {
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "give 1 to %d room parameters", maxSearchRooms))
		return
	}
	s.search(w, r, rooms, false)
}

func (s *server) search(w http.ResponseWriter, r *http.Request, rooms []string, one bool) {
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, true)
		return
	}
	for _, room := range rooms {
		if !ValidRoom(room) {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "invalid room name %s", quote(room)))
			return
		}
		if !grant.Allows(room) {
			writeJSONError(w, http.StatusForbidden, errForbidden(room))
			return
		}
	}
	q := r.URL.Query()
	text := q.Get("q")
	switch {
	case strings.TrimSpace(text) == "":
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "q is empty: give the words to search for"))
		return
	case len(text) > maxSearchQuery:
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "q is %d bytes, the limit is %d", len(text), maxSearchQuery))
		return
	case !utf8.ValidString(text) || strings.IndexByte(text, 0) >= 0:
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "q must be UTF-8 text without NUL"))
		return
	}
	sq := store.SearchQuery{Rooms: rooms, Text: text, Limit: defaultSearchPage}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxSearchPage {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "limit must be 1 to %d", maxSearchPage))
			return
		}
		sq.Limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || !one {
			writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "before must be a seq (1 or more), in a search of one room"))
			return
		}
		sq.Before = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.hub.opts.WriteTimeout)
	defer cancel()
	hits, err := s.hub.db.Search(ctx, sq)
	if err != nil {
		s.hub.log.Error("search", "rooms", rooms, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, err)
		return
	}
	page := struct {
		Room    string      `json:"room,omitempty"`
		Results []searchHit `json:"results"`
	}{Results: make([]searchHit, 0, len(hits))}
	if one {
		page.Room = rooms[0]
	}
	for _, h := range hits {
		sh := searchHit{Seq: h.Seq, Author: h.Author, Body: h.Body, Time: h.Time.UTC().Format(TimeFormat), Instance: h.Instance, Snippet: h.Snippet}
		if !one {
			sh.Room = h.Room
		}
		if !h.Edited.IsZero() {
			sh.Edited = h.Edited.UTC().Format(TimeFormat)
		}
		page.Results = append(page.Results, sh)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(encode(page))
}
