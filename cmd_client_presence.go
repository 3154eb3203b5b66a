package main

import (
	"fmt"
	"strings"

	"github.com/pgchat/pgchat/client"
)

// formatPresence is one line of pgchat tail -presence: the members after a
// join ("general presence 3: alice, bob, carol"), then the changes
// ("general presence 4: +dave", "general presence 3: -bob"; names are
// separated by commas, as they may hold spaces).
func formatPresence(p client.Presence) string {
	head := fmt.Sprintf("%s presence %d", p.Room, p.Count)
	switch {
	case !p.Complete:
		return head + " (counts only)"
	case p.Snapshot:
		return head + ": " + strings.Join(p.Members, ", ")
	}
	var parts []string
	for _, a := range p.Joins {
		parts = append(parts, "+"+a)
	}
	for _, a := range p.Leaves {
		parts = append(parts, "-"+a)
	}
	return head + ": " + strings.Join(parts, ", ")
}
