// Package webhook delivers every stored message to an application's HTTP
// endpoint, at least once and in seq order per room, signed with
// HMAC-SHA256 (docs/webhooks.md).
//
// The messages table is the outbox and progress is a per-room cursor in
// PostgreSQL (table webhook_cursors): nothing is re-sent after a success
// and nothing is skipped after a crash. Every instance runs a Deliverer; an
// attempt holds its room's cursor row with FOR UPDATE SKIP LOCKED, so one
// instance delivers a given room at a time, and a killed instance's rooms
// are picked up by the others as soon as PostgreSQL notices its connection
// gone.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SignatureHeader carries "t=UNIX,v1=HEX": HEX is the HMAC-SHA256, keyed
// with the secret, of the decimal UNIX time, a dot, and the body.
const SignatureHeader = "Pgchat-Signature"

// DeliveryHeader names one delivery, "ROOM:FIRST-LAST"; a retry of the same
// messages has the same one.
const DeliveryHeader = "Pgchat-Delivery"

// Options configures a Deliverer. Zero values pick the defaults in
// parentheses.
type Options struct {
	URL         string        // where to POST (required)
	Secret      []byte        // HMAC key (required)
	Batch       int           // most messages of one room per request (100)
	Concurrency int           // rooms delivered at once by this instance (4)
	Timeout     time.Duration // per request (10s)
	MinBackoff  time.Duration // first retry delay; later ones double, with full jitter (1s)
	MaxBackoff  time.Duration // cap of the retry delay (1m)
	DeadAfter   time.Duration // a room failing this long is dead-lettered (1h)
	Poll        time.Duration // how often rooms are checked for owed messages (250ms)
	Client      *http.Client  // nil: a client with Timeout
	Log         *slog.Logger  // nil: discard
	Metrics     Metrics       // nil: none
}

// Metrics receives the deliverer's counts; methods must be cheap and safe
// for concurrent use.
type Metrics interface {
	Delivered(n int)              // messages acknowledged by the receiver (2xx)
	Failed()                      // one failed attempt
	Lag(messages int64, dead int) // messages owed over all rooms, rooms dead-lettered
}

type nopMetrics struct{}

func (nopMetrics) Delivered(int)  {}
func (nopMetrics) Failed()        {}
func (nopMetrics) Lag(int64, int) {}

// Deliverer posts owed messages to Options.URL. Create it with New and run
// it with Run.
type Deliverer struct {
	pool *pgxpool.Pool
	opts Options
	log  *slog.Logger
}

// New returns a Deliverer reading from pool. The pool is used only for
// cursors and reads, one connection per room in flight: give it
// Concurrency + 1 connections of its own so that slow receivers never
// starve the chat's writes.
func New(pool *pgxpool.Pool, opts Options) (*Deliverer, error) {
	if opts.URL == "" || len(opts.Secret) == 0 {
		return nil, errors.New("webhook: URL and secret are required")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.Batch, 100)
	def(&opts.Concurrency, 4)
	defd(&opts.Timeout, 10*time.Second)
	defd(&opts.MinBackoff, time.Second)
	defd(&opts.MaxBackoff, time.Minute)
	defd(&opts.DeadAfter, time.Hour)
	defd(&opts.Poll, 250*time.Millisecond)
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: opts.Timeout}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = nopMetrics{}
	}
	return &Deliverer{pool: pool, opts: opts, log: opts.Log}, nil
}

// Run delivers until ctx is cancelled and its workers have stopped. An
// attempt cut short by the cancellation is rolled back and made again
// later, by this or another instance.
func (d *Deliverer) Run(ctx context.Context) {
	rooms := make(chan string)
	var wg sync.WaitGroup
	defer wg.Wait()
	for range d.opts.Concurrency {
		wg.Go(func() {
			for room := range rooms {
				d.deliverRoom(ctx, room)
			}
		})
	}
	defer close(rooms)
	for {
		owed, err := d.scan(ctx)
		if err != nil && ctx.Err() == nil {
			d.log.Warn("webhook: scan", "err", err)
		}
		for _, room := range owed {
			select {
			case rooms <- room:
			case <-ctx.Done():
				return
			}
		}
		if len(owed) == 0 || err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d.opts.Poll):
			}
		}
	}
}

// scan creates missing cursors, reports the lag and returns the rooms with
// owed messages whose next attempt is due, in a random order so that
// instances spread over them.
func (d *Deliverer) scan(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	b := &pgx.Batch{}
	b.Queue(`insert into webhook_cursors (room) select name from rooms r
		where not exists (select from webhook_cursors c where c.room = r.name) on conflict do nothing`)
	b.Queue(`select coalesce(sum(r.last_seq - c.delivered_seq), 0)::int8, count(*) filter (where c.dead)::int4
		from webhook_cursors c join rooms r on r.name = c.room`)
	b.Queue(`select c.room from webhook_cursors c join rooms r on r.name = c.room
		where r.last_seq > c.delivered_seq and not c.dead and c.next_attempt_at <= now()
		order by random() limit 1000`)
	br := d.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("create cursors: %w", err)
	}
	var lag int64
	var dead int32
	if err := br.QueryRow().Scan(&lag, &dead); err != nil {
		return nil, fmt.Errorf("lag: %w", err)
	}
	d.opts.Metrics.Lag(lag, int(dead))
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("owed rooms: %w", err)
	}
	rooms, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("owed rooms: %w", err)
	}
	return rooms, nil
}

// Event is one item of a delivery's body. Type is "message" (later event
// kinds get their own types).
type Event struct {
	Type     string    `json:"type"`
	Room     string    `json:"room"`
	Seq      int64     `json:"seq"`
	Author   string    `json:"author"`
	Body     string    `json:"body"`
	Time     time.Time `json:"ts"`
	Instance string    `json:"instance"`
}

// Payload is a delivery's JSON body: events of one room, in seq order.
type Payload struct {
	Room   string  `json:"room"`
	Events []Event `json:"events"`
}

// deliverRoom makes one attempt at room's next batch, unless another
// instance holds it or its next attempt is not due.
func (d *Deliverer) deliverRoom(ctx context.Context, room string) {
	err := pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var (
			delivered    int64
			attempts     int
			failingSince *time.Time
		)
		err := tx.QueryRow(ctx, `select delivered_seq, attempts, failing_since from webhook_cursors
			where room = $1 and not dead and next_attempt_at <= now() for update skip locked`, room).
			Scan(&delivered, &attempts, &failingSince)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // another instance has it, or it is not due
		}
		if err != nil {
			return fmt.Errorf("lock cursor: %w", err)
		}
		rows, err := tx.Query(ctx, `select seq, author, body, created_at, instance from messages
			where room = $1 and seq > $2 order by seq limit $3`, room, delivered, d.opts.Batch)
		if err != nil {
			return fmt.Errorf("read messages: %w", err)
		}
		events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
			e := Event{Type: "message", Room: room}
			return e, row.Scan(&e.Seq, &e.Author, &e.Body, &e.Time, &e.Instance)
		})
		if err != nil {
			return fmt.Errorf("read messages: %w", err)
		}
		if len(events) == 0 {
			return nil
		}
		postErr := d.post(ctx, room, events)
		if ctx.Err() != nil {
			return ctx.Err() // shutting down: roll back, retried later
		}
		if postErr == nil {
			last := events[len(events)-1].Seq
			_, err = tx.Exec(ctx, `update webhook_cursors set delivered_seq = $2, attempts = 0,
				failing_since = null, last_error = null, next_attempt_at = now(), updated_at = now()
				where room = $1`, room, last)
			if err == nil {
				d.opts.Metrics.Delivered(len(events))
			}
			return err
		}
		d.opts.Metrics.Failed()
		attempts++
		delay := backoff(d.opts.MinBackoff, d.opts.MaxBackoff, attempts)
		now := time.Now()
		dead := failingSince != nil && now.Sub(*failingSince) >= d.opts.DeadAfter
		if dead {
			d.log.Error("webhook: room dead-lettered: delivery stopped until webhook_cursors.dead is set back to false",
				"room", room, "seq", delivered+1, "failing_since", *failingSince, "attempts", attempts, "err", postErr)
		} else {
			d.log.Debug("webhook: attempt failed", "room", room, "seq", delivered+1, "attempts", attempts, "retry_in", delay, "err", postErr)
		}
		_, err = tx.Exec(ctx, `update webhook_cursors set attempts = $2, failing_since = coalesce(failing_since, now()),
			last_error = $3, dead = $4, next_attempt_at = now() + $5::float8 * interval '1 second', updated_at = now()
			where room = $1`, room, attempts, truncate(postErr.Error(), 500), dead, delay.Seconds())
		return err
	})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("webhook: delivery", "room", room, "err", err)
	}
}

// post sends one delivery and reports whether the receiver took it (2xx).
func (d *Deliverer) post(ctx context.Context, room string, events []Event) error {
	body, err := json.Marshal(Payload{Room: room, Events: events})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.opts.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pgchat-webhook")
	req.Header.Set(DeliveryHeader, fmt.Sprintf("%s:%d-%d", room, events[0].Seq, events[len(events)-1].Seq))
	req.Header.Set(SignatureHeader, Sign(d.opts.Secret, time.Now(), body))
	resp, err := d.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte("."))
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a SignatureHeader value for body: the HMAC must match and
// its time be within tolerance of now (replays of old deliveries fail).
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range bytes.Split([]byte(header), []byte(",")) {
		k, v, _ := bytes.Cut(part, []byte("="))
		switch string(k) {
		case "t":
			ts = string(v)
		case "v1":
			sig = string(v)
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("malformed signature header")
	}
	got, err := hex.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(secret, ts, body)) {
		return errors.New("signature does not match")
	}
	if age := now.Sub(time.Unix(unix, 0)); age > tolerance || age < -tolerance {
		return fmt.Errorf("signature time is %v away from now", age.Round(time.Second))
	}
	return nil
}

// backoff is the full-jitter delay before retry number attempt (1, 2, ...):
// a random time between minDelay/2 and min(maxDelay, minDelay × 2^(attempt-1)).
func backoff(minDelay, maxDelay time.Duration, attempt int) time.Duration {
	ceil := min(maxDelay, minDelay<<min(attempt-1, 30))
	if ceil <= 0 {
		ceil = maxDelay
	}
	lo := min(minDelay/2, ceil)
	return lo + time.Duration(rand.Int64N(int64(ceil-lo)+1))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
