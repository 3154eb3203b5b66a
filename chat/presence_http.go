package chat

import (
	"context"
	"net/http"
)

// maxReadsPage bounds GET /api/rooms/{room}/reads.
const maxReadsPage = 10000

// roomRequest authenticates an API request about the room in its path,
// with the history endpoint's rules, and returns the room; on failure it
// has answered the request.
func (s *server) roomRequest(w http.ResponseWriter, r *http.Request) (string, bool) {
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, true)
		return "", false
	}
	room := r.PathValue("room")
	if !ValidRoom(room) {
		writeJSONError(w, http.StatusBadRequest, errorf(CodeBadRequest, "invalid room name"))
		return "", false
	}
	if !grant.Allows(room) {
		writeJSONError(w, http.StatusForbidden, errForbidden(room))
		return "", false
	}
	return room, true
}

// servePresence answers GET /api/rooms/{room}/presence with who is in the
// room now, as this instance sees it (at most PRESENCE_INTERVAL behind
// the other instances). A room nobody is in has count 0.
func (s *server) servePresence(w http.ResponseWriter, r *http.Request) {
	room, ok := s.roomRequest(w, r)
	if !ok {
		return
	}
	count, members, complete := s.hub.presence.view(room)
	w.Header().Set("Content-Type", "application/json")
	if !complete {
		w.Write(encode(struct {
			Room     string `json:"room"`
			Count    int    `json:"count"`
			Complete bool   `json:"complete"`
		}{room, count, false}))
		return
	}
	w.Write(encode(struct {
		Room    string   `json:"room"`
		Count   int      `json:"count"`
		Members []string `json:"members"`
	}{room, count, members}))
}

type readEntry struct {
	Author string `json:"author"`
	Seq    int64  `json:"seq"`
	Time   string `json:"ts"`
}

// serveReads answers GET /api/rooms/{room}/reads with the room's read
// cursors, by author.
func (s *server) serveReads(w http.ResponseWriter, r *http.Request) {
	room, ok := s.roomRequest(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.hub.opts.WriteTimeout)
	defer cancel()
	reads, err := s.hub.db.Reads(ctx, room, maxReadsPage)
	if err != nil {
		s.hub.log.Error("reads", "room", room, "err", err)
		writeJSONError(w, http.StatusServiceUnavailable, err)
		return
	}
	page := struct {
		Room  string      `json:"room"`
		Reads []readEntry `json:"reads"`
	}{room, make([]readEntry, 0, len(reads))}
	for _, rc := range reads {
		page.Reads = append(page.Reads, readEntry{rc.Author, rc.Seq, rc.Time.UTC().Format(TimeFormat)})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(encode(page))
}
