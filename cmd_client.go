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
	"sync"
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

func (f *clientFlags) logger(stderr io.Writer, last *lastError) *slog.Logger {
	var h slog.Handler = slog.DiscardHandler
	if f.verbose {
		h = slog.NewTextHandler(stderr, nil)
	}
	return slog.New(&lastErrorHandler{Handler: h, last: last})
}

// noAnswerAfter is how long tail and send wait for a first connection
// before they say that nothing answers.
const noAnswerAfter = 3 * time.Second

// warnIfNoAnswer prints one line to stderr if connected is not closed
// within noAnswerAfter; it returns when ctx ends or connected closes.
func warnIfNoAnswer(ctx context.Context, stderr io.Writer, cmd, url string, connected <-chan struct{}, last *lastError) {
	select {
	case <-ctx.Done():
	case <-connected:
	case <-time.After(noAnswerAfter):
		reason := "no answer"
		if err := last.get(); err != "" {
			reason = err
		}
		fmt.Fprintf(stderr, "pgchat %s: nothing answers at %s after %s (%s); still trying, Ctrl-C to stop\n", cmd, url, noAnswerAfter, reason)
	}
}

// lastError keeps the err attribute of the client's latest log record:
// why the last connection attempt failed.
type lastError struct {
	mu  sync.Mutex
	err string
}

func (l *lastError) get() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

type lastErrorHandler struct {
	slog.Handler
	last *lastError
}

func (h *lastErrorHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *lastErrorHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			h.last.mu.Lock()
			h.last.err = a.Value.String()
			h.last.mu.Unlock()
		}
		return true
	})
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *lastErrorHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lastErrorHandler{Handler: h.Handler.WithAttrs(attrs), last: h.last}
}

func (h *lastErrorHandler) WithGroup(name string) slog.Handler {
	return &lastErrorHandler{Handler: h.Handler.WithGroup(name), last: h.last}
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
	var last lastError
	connected := make(chan struct{})
	markConnected := sync.OnceFunc(func() { close(connected) })
	opts := client.Options{
		URL:   f.url,
		Name:  f.name,
		Token: f.token,
		Rooms: []string{f.room},
		Log:   f.logger(stderr, &last),
		OnConnect: func(instance string) {
			markConnected()
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
	wctx, stopWarn := context.WithCancel(ctx)
	defer stopWarn()
	go warnIfNoAnswer(wctx, stderr, "tail", f.url, connected, &last)
	if err := client.New(opts).Run(ctx); err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	return nil
}

// formatMessage is one line of pgchat tail.
func formatMessage(m client.Message) string {
	body := m.Body
	if strings.ContainsFunc(body, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		body = strconv.Quote(body) // keep one message on one line
	}
	body = describeEvent(m, body) // cmd_events.go
	return fmt.Sprintf("%s #%d %s %s@%s: %s", m.Room, m.Seq, m.Time.UTC().Format("2006-01-02T15:04:05.000Z"), m.Author, m.Instance, body)
}

func runSend(ctx context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f clientFlags
	f.register(fs)
	timeout := fs.Duration("timeout", 30*time.Second, "give up when the message is not acked within this time")
	var act eventFlags
	act.register(fs)
	useHTTP := fs.Bool("http", false, "post through the publish API (POST /api/rooms/ROOM/messages) instead of a WebSocket; -name is then required without -token")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pgchat send [-url ws://localhost:8080] [-room general] [-name NAME] MESSAGE...
       pgchat send [-edit SEQ | -delete SEQ | -react SEQ | -unreact SEQ] [TEXT | EMOJI]

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
	if err := act.check(body); err != nil {
		return err
	}
	if strings.TrimSpace(body) == "" && act.kind() != "delete" {
		return errors.New("send: no message: pgchat send -room general \"hello\"")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *useHTTP {
		seq, err := publishHTTP(ctx, f, body)
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		fmt.Fprintf(stdout, "%s #%d\n", f.room, seq)
		return nil
	}
	var last lastError
	connected := make(chan struct{})
	markConnected := sync.OnceFunc(func() { close(connected) })
	c := client.New(client.Options{URL: f.url, Name: f.name, Token: f.token, Rooms: []string{f.room}, Log: f.logger(stderr, &last),
		OnConnect: func(string) { markConnected() }})
	go warnIfNoAnswer(ctx, stderr, "send", f.url, connected, &last)
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	seq, err := act.do(ctx, c, f.room, body)
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
