package chat

import "net/http"

// serveWhoami answers GET /api/whoami with what the request's token grants,
// or 401 with the reason it is refused ("token expired", "missing token:
// ..."). A browser cannot read the status of a refused WebSocket upgrade:
// the page asks here why, says so, and stops retrying. In anonymous mode
// it answers {"auth":"anonymous"}.
func (s *server) serveWhoami(w http.ResponseWriter, r *http.Request) {
	grant, err := s.authenticate(r)
	if err != nil {
		unauthorized(w, err, true)
		return
	}
	if grant == nil {
		writeJSON(w, http.StatusOK, struct {
			Auth string `json:"auth"`
		}{"anonymous"})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Auth      string   `json:"auth"`
		Author    string   `json:"author"`
		Rooms     []string `json:"rooms"`
		Expires   string   `json:"expires"`
		Publisher bool     `json:"pub,omitempty"`
	}{"token", grant.Author, grant.Rooms, grant.Expires.UTC().Format(TimeFormat), grant.Publisher})
}
