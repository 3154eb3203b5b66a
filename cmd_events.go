package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/pgchat/pgchat/client"
)

// eventFlags are pgchat send's -edit, -delete, -react and -unreact.
type eventFlags struct {
	edit, del, react, unreact int64
}

func (f *eventFlags) register(fs *flag.FlagSet) {
	fs.Int64Var(&f.edit, "edit", 0, "replace the text of your message `SEQ` with MESSAGE")
	fs.Int64Var(&f.del, "delete", 0, "delete message `SEQ` (yours, or anyone's with a moderator's token)")
	fs.Int64Var(&f.react, "react", 0, "react to message `SEQ` with the emoji given as MESSAGE")
	fs.Int64Var(&f.unreact, "unreact", 0, "take back your reaction (the emoji given as MESSAGE) to message `SEQ`")
}

// kind is the event asked for, "" for a plain send.
func (f *eventFlags) kind() string {
	switch {
	case f.edit != 0:
		return "edit"
	case f.del != 0:
		return "delete"
	case f.react != 0:
		return "react"
	case f.unreact != 0:
		return "unreact"
	}
	return ""
}

func (f *eventFlags) check(text string) error {
	n := 0
	for _, v := range []int64{f.edit, f.del, f.react, f.unreact} {
		if v < 0 {
			return errors.New("send: -edit, -delete, -react and -unreact take a seq (1 or more)")
		}
		if v > 0 {
			n++
		}
	}
	if n > 1 {
		return errors.New("send: give only one of -edit, -delete, -react, -unreact")
	}
	if f.del != 0 && strings.TrimSpace(text) != "" {
		return errors.New("send: -delete takes no message")
	}
	return nil
}

// do sends text, or the event asked for, and returns the seq of the ack.
func (f *eventFlags) do(ctx context.Context, c *client.Client, room, text string) (int64, error) {
	switch f.kind() {
	case "edit":
		return c.Edit(ctx, room, f.edit, text)
	case "delete":
		return c.Delete(ctx, room, f.del)
	case "react":
		return c.React(ctx, room, f.react, text)
	case "unreact":
		return c.Unreact(ctx, room, f.unreact, text)
	}
	return c.Send(ctx, room, text)
}

// describeEvent is what pgchat tail prints after the author for m, whose
// body is printable as body: the event, or the message's state.
func describeEvent(m client.Message, body string) string {
	switch m.Kind {
	case "edit":
		return fmt.Sprintf("(edit of #%d) %s", m.Target, body)
	case "delete":
		return fmt.Sprintf("(deleted #%d)", m.Target)
	case "react":
		return fmt.Sprintf("(reacted %s to #%d)", m.Emoji, m.Target)
	case "unreact":
		return fmt.Sprintf("(took back %s on #%d)", m.Emoji, m.Target)
	}
	if m.Deleted {
		return "(deleted)"
	}
	if !m.Edited.IsZero() {
		body += " (edited)"
	}
	if m.Reactions != "" {
		body += " " + m.Reactions
	}
	return body
}
