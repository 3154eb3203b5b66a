package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/client"
)

// rclient is a test's resilient client (package client) with everything it
// received.
type rclient struct {
	name string
	*client.Client

	mu        sync.Mutex
	msgs      []client.Message
	instances []string // of every welcome, in order
}

// startClient runs a resilient client of room from seq 0 until the test
// ends.
func startClient(t *testing.T, base, who, room string) *rclient {
	t.Helper()
	c := &rclient{name: who}
	c.Client = client.New(client.Options{
		URL:      base,
		Name:     who,
		Rooms:    []string{room},
		Since:    map[string]int64{room: 0},
		MinDelay: 20 * time.Millisecond,
		MaxDelay: time.Second,
		Log:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("client", who),
		OnConnect: func(instance string) {
			c.mu.Lock()
			c.instances = append(c.instances, instance)
			c.mu.Unlock()
		},
		OnMessage: func(m client.Message) {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client %s: %v", who, err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for c.instance() == "" {
		if time.Now().After(deadline) {
			t.Fatalf("client %s never connected to %s", who, base)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

// instance is the instance of the client's latest welcome.
func (c *rclient) instance() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.instances) == 0 {
		return ""
	}
	return c.instances[len(c.instances)-1]
}

func (c *rclient) received() []client.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// acks records the seq of every acked send, by body.
type acks struct {
	mu    sync.Mutex
	seqs  map[string]int64
	count atomic.Int64
}

func (a *acks) add(body string, seq int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seqs == nil {
		a.seqs = make(map[string]int64)
	}
	a.seqs[body] = seq
	a.count.Add(1)
}

// sendSteadily sends n messages from c to room, one every interval, each
// waiting for its ack (for at most 30 s), or fewer if stop is closed first.
// Failures are test errors.
func sendSteadily(t *testing.T, c *rclient, room string, n int, interval time.Duration, a *acks, stop <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range n {
		select {
		case <-stop:
			return
		default:
		}
		body := fmt.Sprintf("%s %d", c.name, i)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		seq, err := c.Send(ctx, room, body)
		cancel()
		if err != nil {
			t.Errorf("%s: send %q: %v", c.name, body, err)
			return
		}
		a.add(body, seq)
		<-tick.C
	}
}

// roomHead reads room's last seq from the database.
func roomHead(t *testing.T, db, room string) int64 {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var head, rows int64
	err = conn.QueryRow(t.Context(), `select (select last_seq from rooms where name = $1), (select count(*) from messages where room = $1)`, room).Scan(&head, &rows)
	if err != nil {
		t.Fatal(err)
	}
	if rows != head {
		t.Fatalf("room %s: head %d but %d rows", room, head, rows)
	}
	return head
}

// checkEveryoneHasEverything waits until every client holds room's whole
// history, then checks that they hold the identical sequence 1..head, with
// no body twice (a resend stored twice), and every acked message at its
// acked seq.
func checkEveryoneHasEverything(t *testing.T, db, room string, clients []*rclient, a *acks) {
	t.Helper()
	head := roomHead(t, db, room)
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range clients {
		for {
			if last, _ := c.Last(room); last >= head {
				break
			}
			if time.Now().After(deadline) {
				last, _ := c.Last(room)
				t.Fatalf("client %s holds up to seq %d, head is %d", c.name, last, head)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ref := clients[0].received()
	for _, c := range clients {
		got := c.received()
		if int64(len(got)) != head {
			t.Fatalf("client %s holds %d messages, want %d", c.name, len(got), head)
		}
		for i, m := range got {
			if m.Seq != int64(i+1) {
				t.Fatalf("client %s: message %d has seq %d, want %d (gap, duplicate or reorder)", c.name, i, m.Seq, i+1)
			}
			if m != ref[i] {
				t.Fatalf("client %s message %d = %+v, client %s has %+v", c.name, i, m, clients[0].name, ref[i])
			}
		}
	}
	bodies := make(map[string]int64, len(ref))
	for _, m := range ref {
		if prev, ok := bodies[m.Body]; ok {
			t.Fatalf("body %q stored twice: seqs %d and %d", m.Body, prev, m.Seq)
		}
		bodies[m.Body] = m.Seq
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for body, seq := range a.seqs {
		if bodies[body] != seq {
			t.Fatalf("acked %q as seq %d, clients hold it at %d (0: missing)", body, seq, bodies[body])
		}
	}
	t.Logf("%d clients hold the same %d messages; %d acked", len(clients), head, len(a.seqs))
}

// TestClientResumesAcrossInstanceStop: a resilient client behind a proxy
// whose instance stops moves to another one, resends what was not acked
// and misses nothing.
func TestClientResumesAcrossInstanceStop(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	// A proxy that sends new connections to one instance, switchable.
	var target atomic.Pointer[url.URL]
	ua, _ := url.Parse(a.URL)
	ub, _ := url.Parse(b.URL)
	target.Store(ua)
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target.Load()) },
	})
	defer proxy.Close()

	reader := startClient(t, proxy.URL, "reader", "r")
	sender := startClient(t, proxy.URL, "sender", "r")
	if reader.instance() != "app-1" || sender.instance() != "app-1" {
		t.Fatalf("clients on %s and %s, want app-1", reader.instance(), sender.instance())
	}
	var sent acks
	done := make(chan struct{})
	go func() {
		defer close(done)
		sendSteadily(t, sender, "r", 60, 5*time.Millisecond, &sent, nil)
	}()
	for sent.count.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	target.Store(ub)
	if err := a.stop(); err != nil {
		t.Fatalf("stop app-1: %v", err)
	}
	<-done
	checkEveryoneHasEverything(t, db, "r", []*rclient{reader, sender}, &sent)
	for _, c := range []*rclient{reader, sender} {
		if c.instance() != "app-2" {
			t.Errorf("client %s ended on %q (welcomes %v), want app-2", c.name, c.instance(), c.instances)
		}
	}
}

func TestTailAndSendCommands(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	ws := "ws" + strings.TrimPrefix(a.URL, "http")

	ctx, cancel := context.WithCancel(t.Context())
	var tailOut, tailErr lockedBuffer
	tailDone := make(chan error, 1)
	go func() {
		tailDone <- run(ctx, []string{"tail", "-url", ws, "-room", "r", "-since", "0"}, nil, &tailOut, &tailErr)
	}()

	for i, body := range []string{"hi there", "two\nlines"} {
		var out, errOut strings.Builder
		if err := run(t.Context(), []string{"send", "-url", ws, "-room", "r", "-name", "carol", body}, nil, &out, &errOut); err != nil {
			t.Fatalf("send: %v (stderr %q)", err, errOut.String())
		}
		if want := fmt.Sprintf("r #%d\n", i+1); out.String() != want {
			t.Errorf("send printed %q, want %q", out.String(), want)
		}
	}
	want := []*regexp.Regexp{
		regexp.MustCompile(`^r #1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z carol@app-1: hi there$`),
		regexp.MustCompile(`^r #2 \S+ carol@app-1: "two\\nlines"$`),
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(tailOut.String(), "\n") < len(want) {
		if time.Now().After(deadline) {
			t.Fatalf("tail printed %q", tailOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSuffix(tailOut.String(), "\n"), "\n")
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("tail line %d = %q, want it to match %s", i+1, lines[i], re)
		}
	}
	if got := tailErr.String(); !strings.Contains(got, "connected to app-1") {
		t.Errorf("tail stderr = %q, want it to say where it connected", got)
	}
	cancel()
	if err := <-tailDone; err != nil {
		t.Errorf("tail after Ctrl-C: %v", err)
	}

	t.Run("Errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"NoMessage", []string{"send", "-url", ws, "-room", "r"}, "no message"},
			{"BadRoom", []string{"send", "-url", ws, "-room", "no room", "x"}, "not a valid room"},
			{"TooLarge", []string{"send", "-url", ws, "-room", "r", strings.Repeat("x", 5000)}, "too_large"},
			{"NoServer", []string{"send", "-url", "ws://127.0.0.1:1", "-room", "r", "-timeout", "300ms", "x"}, "no ack within 300ms"},
		} {
			var out strings.Builder
			err := run(t.Context(), tc.args, nil, &out, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: pgchat %s = %v, want an error with %q", tc.name, strings.Join(tc.args, " ")[:min(60, len(strings.Join(tc.args, " ")))], err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("%s: printed %q on failure", tc.name, out.String())
			}
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
