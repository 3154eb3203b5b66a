package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/pgchat/pgchat/chat"
	"github.com/pgchat/pgchat/client"
)

// clientFlags are the flags tail and send share.
type clientFlags struct {
	url, room, name, token string
	verbose                bool
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "url", "ws://localhost:8080", "server (or load balancer) URL")
	fs.StringVar(&f.room, "room", "general", "room")
	fs.StringVar(&f.name, "name", "", "author name (default: a guest name chosen by the server)")
	fs.StringVar(&f.token, "token", "", "access token, for servers with AUTH_SECRET (see pgchat token)")
	fs.BoolVar(&f.verbose, "v", false, "log connection events to stderr")
}

func (f *clientFlags) check() error {
	if !chat.ValidRoom(f.room) {
		return fmt.Errorf("-room %q is not a valid room name", f.room)
	}
	if f.name != "" && !chat.ValidName(f.name) {
		return fmt.Errorf("-name %q is not a valid name", f.name)
	}
	return nil
}

func (f *clientFlags) logger(stderr io.Writer) *slog.Logger {
	if !f.verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(stderr, nil))
}

// parseFlags parses args; help is true when -h was asked for (and printed).
func parseFlags(fs *flag.FlagSet, args []string) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

func runTail(ctx context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f clientFlags
	f.register(fs)
	since := fs.Int64("since", -1, "print messages after this seq (default: the room's recent history)")
	presence := fs.Bool("presence", false, "also print who is in the room on each join, then joins and leaves (lines starting with \"room presence\")")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pgchat tail [-url ws://localhost:8080] [-room general] [-name NAME] [-since SEQ]

Prints a room's messages as they come, one per line: room, seq, time (UTC),
author, instance that accepted it, body. Reconnects by itself (backoff with
full jitter) and resumes from the last seq printed: no gap, no duplicate.
Connection changes go to stderr. Stops on Ctrl-C.

`)
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args); help || err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	opts := client.Options{
		URL:   f.url,
		Name:  f.name,
		Token: f.token,
		Rooms: []string{f.room},
		Log:   f.logger(stderr),
		OnConnect: func(instance string) {
			fmt.Fprintf(stderr, "connected to %s\n", instance)
		},
		OnMessage: func(m client.Message) {
			fmt.Fprintln(stdout, formatMessage(m))
		},
	}
	if *since >= 0 {
		opts.Since = map[string]int64{f.room: *since}
	}
	if *presence {
		opts.OnPresence = func(p client.Presence) { fmt.Fprintln(stdout, formatPresence(p)) }
	}
	return client.New(opts).Run(ctx)
}

// formatMessage is one line of pgchat tail.
func formatMessage(m client.Message) string {
	body := m.Body
	if strings.ContainsFunc(body, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		body = strconv.Quote(body) // keep one message on one line
	}
	return fmt.Sprintf("%s #%d %s %s@%s: %s", m.Room, m.Seq, m.Time.UTC().Format("2006-01-02T15:04:05.000Z"), m.Author, m.Instance, body)
}

func runSend(ctx context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f clientFlags
	f.register(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "give up when the message is not acked within this time")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pgchat send [-url ws://localhost:8080] [-room general] [-name NAME] MESSAGE...

Sends one message (the arguments, joined by spaces) and waits for its ack,
reconnecting and resending with the same ref if needed, so it is stored
once. Prints "room #seq" and exits 0 once it is committed; exits non-zero on
an error or after -timeout.

`)
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args); help || err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	body := strings.Join(fs.Args(), " ")
	if strings.TrimSpace(body) == "" {
		return errors.New("send: no message: pgchat send -room general \"hello\"")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := client.New(client.Options{URL: f.url, Name: f.name, Token: f.token, Rooms: []string{f.room}, Log: f.logger(stderr)})
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	seq, err := c.Send(ctx, f.room, body)
	cancel()
	if rerr := <-runErr; err == nil {
		err = rerr
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("send: no ack within %s (-timeout); the message may or may not be stored", *timeout)
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	fmt.Fprintf(stdout, "%s #%d\n", f.room, seq)
	return nil
}
