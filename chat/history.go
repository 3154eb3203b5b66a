package chat

import (
	"encoding/json"
	"net/http"

	"github.com/pgchat/pgchat/store"
)

// historyMessage is a message of the history endpoint, in its current
// state: a deleted one has no body, an edited one says when.
type historyMessage struct {
	Seq       int64           `json:"seq"`
	Deleted   bool            `json:"deleted,omitempty"`
	Author    string          `json:"author"`
	Body      *string         `json:"body,omitempty"`
	Edited    string          `json:"edited,omitempty"`
	Reactions json.RawMessage `json:"reactions,omitempty"`
	Time      string          `json:"ts"`
	Instance  string          `json:"instance"`
}

func newHistoryMessage(m store.Message) historyMessage {
	h := historyMessage{Seq: m.Seq, Deleted: m.Deleted, Author: m.Author, Time: m.Time.UTC().Format(TimeFormat), Instance: m.Instance}
	if !m.Deleted {
		h.Body = &m.Body
		if !m.Edited.IsZero() {
			h.Edited = m.Edited.UTC().Format(TimeFormat)
		}
	}
	if m.Reactions != "" {
		h.Reactions = json.RawMessage(m.Reactions)
	}
	return h
}

// writeHistory answers a history request with page p.
func writeHistory(w http.ResponseWriter, room string, p store.Page) {
	page := struct {
		Room     string           `json:"room"`
		Head     int64            `json:"head"`
		Oldest   int64            `json:"oldest"`
		Messages []historyMessage `json:"messages"`
	}{room, p.Head, p.Oldest, make([]historyMessage, 0, len(p.Messages))}
	for _, m := range p.Messages {
		page.Messages = append(page.Messages, newHistoryMessage(m))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(encode(page))
}
