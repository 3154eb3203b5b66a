package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/pgchat/pgchat/chat"
)

// Config is pgchat's whole configuration, read from the environment once at
// start-up. `pgchat help` prints it from these tags, so the tags are the
// documentation: keep help short and the default in envDefault.
type Config struct {
	DatabaseURL       string `env:"DATABASE_URL" envDefault:"postgres://postgres@localhost:5432/postgres?sslmode=disable" help:"PostgreSQL URL for queries and writes, direct or through a pooler (then set LISTEN_DATABASE_URL); PG* variables fill what it leaves out (PGPASSWORD)"`
	ListenDatabaseURL string `env:"LISTEN_DATABASE_URL" help:"direct (session) URL for LISTEN and migrations; set it when DATABASE_URL goes through a transaction-mode pooler: reads then use no named prepared statements (default_query_exec_mode=exec unless DATABASE_URL sets one) and appends use this URL; default: DATABASE_URL"`
	Port              int    `env:"PORT" envDefault:"8080" help:"HTTP port for /, /ws, /healthz, /readyz, /metrics"`
	Host              string `env:"HOST" help:"address to bind (127.0.0.1: this machine only); default: every interface"`
	DBPoolSize        int    `env:"DB_POOL_SIZE" envDefault:"10" help:"connections for reads (joins, catch-ups, history); appends get 2 more of their own"`
	InstanceID        string `env:"INSTANCE_ID" help:"this instance's name in welcome frames, messages and logs; default: FLY_MACHINE_ID, else APP_ID, else the hostname"`
	FlyMachineID      string `env:"FLY_MACHINE_ID" help:"set by Fly.io; a default for INSTANCE_ID"`
	AppID             string `env:"APP_ID" help:"a default for INSTANCE_ID (docker compose convention)"`

	HistoryLimit    int     `env:"HISTORY_LIMIT" envDefault:"50" help:"messages replayed on a join without since"`
	ReplayLimit     int     `env:"REPLAY_LIMIT" envDefault:"1000" help:"most messages replayed on a join with since; past it joined.recovered is false"`
	MaxMessageBytes int     `env:"MAX_MESSAGE_BYTES" envDefault:"4096" help:"largest message body in bytes; larger sends get too_large"`
	RateLimit       float64 `env:"RATE_LIMIT" envDefault:"20" help:"sends per second per connection (token bucket); excess sends get rate_limited; joins too, past a burst of MAX_ROOMS_PER_CONN; -1: unlimited"`
	RateBurst       int     `env:"RATE_BURST" envDefault:"40" help:"sends allowed in a burst above RATE_LIMIT"`
	MaxRooms        int     `env:"MAX_ROOMS_PER_CONN" envDefault:"100" help:"rooms one connection may join"`
	MaxInflight     int     `env:"MAX_INFLIGHT" envDefault:"64" help:"unacknowledged sends per connection before the server stops reading from it"`
	SendBuffer      int     `env:"SEND_BUFFER_BYTES" envDefault:"1048576" help:"bytes queued for one client before it is disconnected as a slow consumer (close 1008)"`
	BatchSize       int     `env:"BATCH_SIZE" envDefault:"500" help:"most messages committed (and notified) in one transaction"`

	PingInterval    time.Duration `env:"PING_INTERVAL" envDefault:"25s" help:"WebSocket keepalive ping period; a peer that does not answer is dropped"`
	WriteTimeout    time.Duration `env:"WRITE_TIMEOUT" envDefault:"10s" help:"limit for each write to a client and each database call"`
	SyncInterval    time.Duration `env:"SYNC_INTERVAL" envDefault:"30s" help:"how often rooms with local members are checked against the table (a safety net for lost notifications)"`
	DrainDelay      time.Duration `env:"DRAIN_DELAY" envDefault:"5s" help:"on SIGTERM/SIGINT, how long /readyz answers 503 (and new sockets get 503) before the port closes, so load balancers see it"`
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s" help:"graceful shutdown limit after DRAIN_DELAY; keep both below the platform's kill timeout"`
	ConnectTimeout  time.Duration `env:"DB_CONNECT_TIMEOUT" envDefault:"30s" help:"how long start-up retries an unreachable database before exiting"`

	PresenceInterval  time.Duration `env:"PRESENCE_INTERVAL" envDefault:"1s" help:"presence diffs, read receipts and presence writes happen at most this often (per room, per connection)"`
	PresenceTimeout   time.Duration `env:"PRESENCE_TIMEOUT" envDefault:"5s" help:"an instance whose heartbeat is this late is dead: the others remove its members; it heartbeats every fifth of it"`
	PresenceListLimit int           `env:"PRESENCE_LIST_LIMIT" envDefault:"1000" help:"rooms with more members get presence counts only (complete:false), no member lists"`

	AuthSecret       string        `env:"AUTH_SECRET" help:"set it (32+ random characters) to require signed tokens (pgchat token) on /ws and the history API; unset: anonymous mode, for demos and trusted networks"`
	MaxConns         int           `env:"MAX_CONNECTIONS" envDefault:"10000" help:"WebSocket connections per instance; more get 503 with Retry-After; 0: no limit"`
	MaxConnsPerIP    int           `env:"MAX_CONNECTIONS_PER_IP" envDefault:"100" help:"WebSocket connections per client address (per /64 for IPv6); more get 503 with Retry-After; 0: no limit"`
	TrustedProxies   []string      `env:"TRUSTED_PROXIES" envSeparator:"," envDefault:"private" help:"peers (IPs, CIDRs; private: loopback and private networks; none) whose X-Forwarded-For (on Fly: Fly-Client-IP) names the client"`
	MaxFrameBytes    int           `env:"MAX_FRAME_BYTES" envDefault:"0" help:"largest WebSocket frame read; larger ones close the connection (1009); 0: 6 × MAX_MESSAGE_BYTES + 1024"`
	HandshakeTimeout time.Duration `env:"HANDSHAKE_TIMEOUT" envDefault:"10s" help:"limit for reading a request's headers, the WebSocket upgrade included"`

	SearchConfig         string        `env:"SEARCH_CONFIG" envDefault:"simple" help:"PostgreSQL text search configuration for /api/search (simple: language-neutral; english, french, ...: stemming); not simple needs its own index (README)"`
	RetentionMaxAge      time.Duration `env:"RETENTION_MAX_AGE" envDefault:"0s" help:"delete messages older than this (720h: 30 days); 0: keep them; rooms.retention_max_age overrides it per room"`
	RetentionMaxMessages int64         `env:"RETENTION_MAX_MESSAGES" envDefault:"0" help:"keep at most this many of the newest seqs per room; 0: no limit; rooms.retention_max_messages overrides it per room"`
	RetentionInterval    time.Duration `env:"RETENTION_INTERVAL" envDefault:"1m" help:"how often one instance (advisory lock) applies retention"`
	WebhookURL           string        `env:"WEBHOOK_URL" help:"POST every stored message here, at least once, in seq order per room, signed (docs/webhooks.md); unset: no webhooks"`
	WebhookSecret        string        `env:"WEBHOOK_SECRET" help:"HMAC-SHA256 key of the Pgchat-Signature header (32+ characters); required with WEBHOOK_URL"`
	WebhookTimeout       time.Duration `env:"WEBHOOK_TIMEOUT" envDefault:"10s" help:"limit for one webhook request"`
	WebhookMinBackoff    time.Duration `env:"WEBHOOK_MIN_BACKOFF" envDefault:"1s" help:"first retry delay of a failed webhook request; each retry doubles it, with jitter"`
	WebhookMaxBackoff    time.Duration `env:"WEBHOOK_MAX_BACKOFF" envDefault:"1m" help:"cap of the webhook retry delay"`
	WebhookDeadAfter     time.Duration `env:"WEBHOOK_DEAD_AFTER" envDefault:"1h" help:"a room whose deliveries keep failing this long is dead-lettered (webhook_cursors.dead) and no longer tried"`
	WebhookConcurrency   int           `env:"WEBHOOK_CONCURRENCY" envDefault:"4" help:"rooms one instance delivers at once (each holds a database connection of its own pool)"`
	WebhookBatch         int           `env:"WEBHOOK_BATCH" envDefault:"100" help:"most messages of one room per webhook request"`

	AllowedOrigins []string   `env:"ALLOWED_ORIGINS" envSeparator:"," help:"extra browser origins (host patterns like chat.example.com or *.example.com) allowed to open /ws; the page's own host is always allowed"`
	LogLevel       slog.Level `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat      string     `env:"LOG_FORMAT" envDefault:"text" help:"text or json"`
	PprofAddr      string     `env:"PPROF_ADDR" help:"serve Go's profiles (/debug/pprof/) on this address, such as 127.0.0.1:6060, and record blocking and lock contention; unset: off (never expose it publicly)"`

	// pooled is set when LISTEN_DATABASE_URL differs from DATABASE_URL,
	// which says DATABASE_URL goes through a transaction-mode pooler.
	pooled bool
}

// loadConfig reads Config from environ (os.Environ() form) and validates it.
// Its errors are one line naming the variable.
func loadConfig(environ []string) (Config, error) {
	vars := env.ToMap(environ)
	cfg, err := env.ParseAsWithOptions[Config](env.Options{Environment: vars})
	if err != nil {
		return Config{}, configError(err, vars)
	}
	cfg.pooled = cfg.ListenDatabaseURL != "" && cfg.ListenDatabaseURL != cfg.DatabaseURL
	if cfg.ListenDatabaseURL == "" {
		cfg.ListenDatabaseURL = cfg.DatabaseURL
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = cmp.Or(cfg.FlyMachineID, cfg.AppID)
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID, _ = os.Hostname()
	}
	return cfg, cfg.validate()
}

func (cfg Config) validate() error {
	_, proxiesErr := chat.ParseTrustedProxies(cfg.TrustedProxies)
	checks := []struct {
		ok   bool
		name string
		want string
	}{
		{cfg.Port >= 0 && cfg.Port <= 65535, "PORT", "a port number (0-65535)"},
		{cfg.InstanceID != "" && len(cfg.InstanceID) <= 64, "INSTANCE_ID", "1 to 64 characters"},
		{cfg.HistoryLimit >= 0 && cfg.HistoryLimit <= cfg.ReplayLimit, "HISTORY_LIMIT", "between 0 and REPLAY_LIMIT"},
		{cfg.ReplayLimit > 0, "REPLAY_LIMIT", "positive"},
		{cfg.MaxMessageBytes > 0 && cfg.MaxMessageBytes <= 1<<20, "MAX_MESSAGE_BYTES", "between 1 and 1048576"},
		{cfg.RateLimit > 0 || cfg.RateLimit == -1, "RATE_LIMIT", "positive, or -1 for unlimited"},
		{cfg.RateBurst > 0, "RATE_BURST", "positive"},
		{cfg.MaxRooms > 0, "MAX_ROOMS_PER_CONN", "positive"},
		{cfg.MaxInflight > 0, "MAX_INFLIGHT", "positive"},
		{cfg.SendBuffer >= 2*cfg.MaxMessageBytes+1024, "SEND_BUFFER_BYTES", "at least 2 × MAX_MESSAGE_BYTES + 1024"},
		{cfg.BatchSize > 0, "BATCH_SIZE", "positive"},
		{cfg.PingInterval > 0, "PING_INTERVAL", "a positive duration like 25s"},
		{cfg.WriteTimeout > 0, "WRITE_TIMEOUT", "a positive duration like 10s"},
		{cfg.SyncInterval > 0, "SYNC_INTERVAL", "a positive duration like 30s"},
		{cfg.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT", "a positive duration like 10s"},
		{cfg.DrainDelay >= 0, "DRAIN_DELAY", "a duration like 5s, or 0"},
		{cfg.DBPoolSize > 0 && cfg.DBPoolSize <= 1000, "DB_POOL_SIZE", "between 1 and 1000"},
		{cfg.PresenceInterval >= 10*time.Millisecond, "PRESENCE_INTERVAL", "a duration of at least 10ms like 1s"},
		{cfg.PresenceTimeout >= 2*cfg.PresenceInterval, "PRESENCE_TIMEOUT", "a duration of at least 2 × PRESENCE_INTERVAL, like 5s"},
		{cfg.PresenceListLimit > 0, "PRESENCE_LIST_LIMIT", "positive"},
		{cfg.ConnectTimeout >= 0, "DB_CONNECT_TIMEOUT", "a duration like 30s"},
		{cfg.LogFormat == "text" || cfg.LogFormat == "json", "LOG_FORMAT", `"text" or "json"`},
		{cfg.AuthSecret == "" || len(cfg.AuthSecret) >= 32, "AUTH_SECRET", "at least 32 characters (openssl rand -base64 32), or unset"},
		{cfg.MaxConns >= 0, "MAX_CONNECTIONS", "0 (no limit) or more"},
		{cfg.MaxConnsPerIP >= 0, "MAX_CONNECTIONS_PER_IP", "0 (no limit) or more"},
		{proxiesErr == nil, "TRUSTED_PROXIES", "IP addresses, CIDR prefixes or private, separated by commas; or none"},
		{cfg.MaxFrameBytes == 0 || cfg.MaxFrameBytes >= cfg.MaxMessageBytes+1024, "MAX_FRAME_BYTES", "0 or at least MAX_MESSAGE_BYTES + 1024"},
		{cfg.HandshakeTimeout > 0, "HANDSHAKE_TIMEOUT", "a positive duration like 10s"},
		{cfg.SearchConfig != "", "SEARCH_CONFIG", "a text search configuration such as simple or english"},
		{cfg.RetentionMaxAge >= 0, "RETENTION_MAX_AGE", "0 (keep) or a duration like 720h"},
		{cfg.RetentionMaxMessages >= 0, "RETENTION_MAX_MESSAGES", "0 (no limit) or more"},
		{cfg.RetentionInterval > 0, "RETENTION_INTERVAL", "a positive duration like 1m"},
		{cfg.WebhookURL == "" || strings.HasPrefix(cfg.WebhookURL, "http://") || strings.HasPrefix(cfg.WebhookURL, "https://"), "WEBHOOK_URL", "an http:// or https:// URL, or unset"},
		{cfg.WebhookURL == "" || len(cfg.WebhookSecret) >= 32, "WEBHOOK_SECRET", "at least 32 characters (openssl rand -base64 32) when WEBHOOK_URL is set"},
		{cfg.WebhookTimeout > 0 && cfg.WebhookMinBackoff > 0 && cfg.WebhookMaxBackoff >= cfg.WebhookMinBackoff && cfg.WebhookDeadAfter > 0, "WEBHOOK_TIMEOUT, WEBHOOK_MIN_BACKOFF, WEBHOOK_MAX_BACKOFF and WEBHOOK_DEAD_AFTER", "positive durations, WEBHOOK_MAX_BACKOFF at least WEBHOOK_MIN_BACKOFF"},
		{cfg.WebhookConcurrency > 0 && cfg.WebhookBatch > 0, "WEBHOOK_CONCURRENCY and WEBHOOK_BATCH", "positive"},
	}
	for _, c := range checks {
		if !c.ok {
			return fmt.Errorf("%s must be %s", c.name, c.want)
		}
	}
	return nil
}

// configError rewrites env's errors, which name struct fields, into one line
// naming the variable.
func configError(err error, vars map[string]string) error {
	var agg env.AggregateError
	if errors.As(err, &agg) && len(agg.Errors) > 0 {
		err = agg.Errors[0]
	}
	var perr env.ParseError
	if errors.As(err, &perr) {
		key := perr.Name
		if f, ok := reflect.TypeFor[Config]().FieldByName(perr.Name); ok {
			key = f.Tag.Get("env")
		}
		want := map[reflect.Type]string{
			reflect.TypeFor[int]():           "whole number",
			reflect.TypeFor[float64]():       "number",
			reflect.TypeFor[time.Duration](): "duration such as 10s or 500ms",
			reflect.TypeFor[slog.Level]():    "log level: debug, info, warn or error",
		}[perr.Type]
		return fmt.Errorf("%s=%q is not a valid %s", key, vars[key], cmp.Or(want, perr.Type.String()))
	}
	return err
}

// helpWidth is the width `pgchat help` fits in.
const helpWidth = 100

// printHelp lists every variable with its default, from Config's tags,
// within helpWidth columns.
func printHelp(w io.Writer) {
	fmt.Fprint(w, "pgchat: a scale-out WebSocket chat server on PostgreSQL.\n\nUsage:\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	names := slices.Sorted(maps.Keys(commands))
	for _, name := range names {
		fmt.Fprintf(tw, "  pgchat %s\t%s\n", name, commands[name].summary)
	}
	fmt.Fprintf(tw, "  pgchat help\tshow this help; pgchat COMMAND -h shows a command's flags\n")
	tw.Flush()
	fmt.Fprint(w, "\nEnvironment (serve and migrate), with defaults:\n")
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		line := "  " + f.Tag.Get("env")
		if def := f.Tag.Get("envDefault"); def != "" {
			line += "=" + def
		}
		fmt.Fprintln(w, line)
		for _, l := range wrap(f.Tag.Get("help"), helpWidth-6) {
			fmt.Fprintln(w, "      "+l)
		}
	}
}

// wrap breaks s into lines of at most width columns, at spaces.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		if line != "" && len(line)+1+len(word) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
