package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgchat/pgchat/bench"
)

// runBench is `pgchat bench`: the load generator of docs/performance.md.
func runBench(ctx context.Context, args, _ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: pgchat bench [flags]

Load generator: N clients spread round-robin over the -url servers, S of them
sending; every client checks that each acked message reaches it once and in
seq order. The servers need RATE_LIMIT=-1 (or a RATE_LIMIT above -rate, with
a RATE_BURST to match) for saturation runs, else sends get rate_limited.
Load only servers you run yourself. See docs/performance.md.

Flags:
`)
		fs.PrintDefaults()
	}
	var (
		urls    = fs.String("url", "http://127.0.0.1:8080", "server base URL(s), comma-separated; clients are spread round-robin")
		mode    = fs.String("mode", bench.ModeLoad, "load, idle (connect, join, stay idle), joinstorm (clients join a room with history at once) or presence (clients in one room, -churn joins and leaves per second)")
		clients = fs.Int("clients", 100, "connections")
		senders = fs.Int("senders", 10, "load: clients that send")
		rate    = fs.Float64("rate", 20, "load: messages per second per sender; 0: as fast as acks allow within -window")
		window  = fs.Int("window", 32, "load: unacknowledged sends per sender")
		body    = fs.Int("body", 128, "message body size in bytes")
		rooms   = fs.Int("rooms", 1, "rooms; client i joins room i mod rooms")
		dur     = fs.Duration("duration", 10*time.Second, "measured period (idle: how long connections stay open)")
		warmup  = fs.Duration("warmup", 2*time.Second, "load: sending before the measured period (-1s: none)")
		drain   = fs.Duration("drain", 10*time.Second, "longest wait for acks and deliveries after sending stops")
		history = fs.Int("history", 1000, "joinstorm: messages stored before the storm (the servers' REPLAY_LIMIT must be at least this)")
		churn   = fs.Int("churn", 30, "presence: joins and leaves per second, each")
		typists = fs.Int("typists", 0, "load: extra clients in a room of their own, each typing once per second")
		killPID = fs.Int("kill-pid", 0, "presence: after the churn, kill -9 this server process (one of yours) and time its members' leaving")
		dial    = fs.Int("dial", 64, "connections opened at once")
		prefix  = fs.String("room-prefix", "", "room and client name prefix (default: bench- and a random run id)")
		token   = fs.String("token", "", "bearer token sent with every upgrade request")
		pids    = fs.String("pids", "", "comma-separated PIDs of server processes whose CPU and RSS to report (Linux)")
		asJSON  = fs.Bool("json", false, "print one JSON object instead of the table")
		quiet   = fs.Bool("quiet", false, "no progress line")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	cfg := bench.Config{
		URLs: strings.Split(*urls, ","), Mode: *mode, Clients: *clients, Senders: *senders,
		Rate: *rate, Window: *window, BodySize: *body, Rooms: *rooms,
		Duration: *dur, Warmup: *warmup, Drain: *drain, History: *history,
		DialConcurrency: *dial, RoomPrefix: *prefix,
		Churn: *churn, Typists: *typists, KillPID: *killPID,
	}
	if *mode != bench.ModeLoad {
		cfg.Senders = 0
	}
	if *token != "" {
		cfg.Header = http.Header{"Authorization": {"Bearer " + *token}}
	}
	for _, s := range strings.Split(*pids, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		pid, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("bench: -pids: %q is not a process id", s)
		}
		cfg.PIDs = append(cfg.PIDs, pid)
	}
	if !*quiet {
		cfg.Progress = stderr
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		res.WriteText(stdout)
	}
	if f := res.Failures(); f != "" {
		return fmt.Errorf("bench: guarantees broken: %s", f)
	}
	return nil
}
