package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgchat/pgchat/chat"
)

// runToken prints a token for AUTH_SECRET mode: pgchat token -sub alice
// -rooms 'general,team-*' -ttl 24h.
func runToken(_ context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pgchat token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sub := fs.String("sub", "", "the author name the token speaks as (required)")
	rooms := fs.String("rooms", "", `comma-separated rooms or prefix patterns like "team-*"; "*" is every room (required)`)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	mod := fs.Bool("mod", false, `a moderator's token ("mod":true): may delete anyone's messages`)
	pub := fs.Bool("pub", false, `add the "pub" claim: a backend's token, which may choose the author on POST /api/.../messages`)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: pgchat token -sub NAME -rooms ROOMS [-ttl 24h] [-mod] [-pub]\n\n"+
			"Prints an HS256 token signed with AUTH_SECRET (from the environment)\n"+
			"for /ws?token=... or an Authorization: Bearer header.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	if cfg.AuthSecret == "" {
		return errors.New("token: AUTH_SECRET is not set: tokens are signed with the servers' AUTH_SECRET")
	}
	if *sub == "" || *rooms == "" {
		return errors.New("token: -sub and -rooms are required")
	}
	if *ttl <= 0 {
		return errors.New("token: -ttl must be positive")
	}
	var patterns []string
	for _, p := range strings.Split(*rooms, ",") {
		if p = strings.TrimSpace(p); p != "" {
			patterns = append(patterns, p)
		}
	}
	if !chat.ValidName(*sub) {
		return fmt.Errorf("token: -sub %q is not a valid name: 1 to %d printable characters, no leading or trailing space", *sub, chat.MaxNameLen)
	}
	if len(patterns) == 0 {
		return errors.New("token: -rooms lists no room")
	}
	for _, p := range patterns {
		if !chat.ValidRoomPattern(p) {
			return fmt.Errorf("token: -rooms entry %q is neither a room name nor a pattern like team-*", p)
		}
	}
	now := time.Now()
	tok, err := chat.NewToken([]byte(cfg.AuthSecret), chat.Grant{Author: *sub, Rooms: patterns, Expires: now.Add(*ttl), Moderator: *mod, Publisher: *pub}, now)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
