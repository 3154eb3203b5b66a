package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgchat/pgchat/webhook"
)

const testWebhookSecret = "webhook-secret-0123456789abcdef0123456789"

// flakyReceiver is a webhook receiver that fails the first failFirst
// attempts of every delivery and answers 503 while down. It checks each
// signature and each room's order, and counts what it took.
type flakyReceiver struct {
	t         *testing.T
	failFirst int
	want      int // distinct messages expected; all is closed once they are in
	all       chan struct{}
	down      atomic.Bool

	mu       sync.Mutex
	attempts map[string]int   // by Pgchat-Delivery
	last     map[string]int64 // per room, the highest seq taken
	distinct int
	dups     int      // messages taken again (an attempt whose answer was lost)
	problems []string // bad signatures, gaps, reorders
}

func newFlakyReceiver(t *testing.T, failFirst, want int) (*flakyReceiver, string) {
	r := &flakyReceiver{t: t, failFirst: failFirst, want: want, all: make(chan struct{}),
		attempts: make(map[string]int), last: make(map[string]int64)}
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return r, srv.URL
}

func (r *flakyReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := webhook.Verify([]byte(testWebhookSecret), req.Header.Get(webhook.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		r.problems = append(r.problems, "signature: "+err.Error())
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if r.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	id := req.Header.Get(webhook.DeliveryHeader)
	if r.attempts[id]++; r.attempts[id] <= r.failFirst {
		http.Error(w, "flaky", http.StatusInternalServerError)
		return
	}
	var p webhook.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		r.problems = append(r.problems, "body: "+err.Error())
		return
	}
	for _, e := range p.Events {
		switch last := r.last[e.Room]; {
		case e.Room != p.Room || e.Type != "message":
			r.problems = append(r.problems, fmt.Sprintf("event %+v in a delivery of room %s", e, p.Room))
		case e.Seq <= last:
			r.dups++
		case e.Seq != last+1:
			r.problems = append(r.problems, fmt.Sprintf("%s: seq %d after %d", e.Room, e.Seq, last))
		default:
			r.last[e.Room] = e.Seq
			if r.distinct++; r.distinct == r.want {
				close(r.all)
			}
		}
	}
}

// postBatch posts msgs (JSON objects) through POST /api/messages.
func postBatch(t *testing.T, base string, msgs []string) {
	t.Helper()
	r := postJSON(t, base, "/api/messages", "application/json", "", `{"messages":[`+strings.Join(msgs, ",")+`]}`)
	if r.status != http.StatusCreated {
		t.Fatalf("POST /api/messages to %s: %d %s", base, r.status, r.Msg)
	}
}

// The webhook scenario, scaled to seconds: a receiver that fails
// the first 3 attempts of every delivery and is down for a while, 3
// instances of which one is killed with SIGKILL, 1,000 messages over 10
// rooms. The receiver ends with every message, in seq order per room, each
// signature valid.
func TestWebhooksFlakyReceiverAndKill9(t *testing.T) {
	t.Parallel()
	// PGCHAT_WEBHOOK_FULL=1 runs the full scale instead: 5,000
	// messages, the receiver down for 20 s.
	const rooms = 10
	perRoom, downFor := 100, time.Second
	if os.Getenv("PGCHAT_WEBHOOK_FULL") == "1" {
		perRoom, downFor = 500, 20*time.Second
	}
	requests := perRoom / 10 // of 100 messages, 10 per room
	recv, url := newFlakyReceiver(t, 3, rooms*perRoom)
	db := newDB(t)
	var procs []*process
	for i := range 3 {
		procs = append(procs, startProcess(t, testEnv(db, fmt.Sprintf("app-%d", i+1), "LOG_LEVEL=warn",
			"WEBHOOK_URL="+url, "WEBHOOK_SECRET="+testWebhookSecret,
			"WEBHOOK_MIN_BACKOFF=5ms", "WEBHOOK_MAX_BACKOFF=100ms", "WEBHOOK_BATCH=20")))
	}
	alive := procs
	for n := range requests {
		var msgs []string
		for i := range 100 {
			msgs = append(msgs, fmt.Sprintf(`{"room":"hook-%d","body":"message %d","author":"bot"}`, i%rooms, n*10+i/rooms))
		}
		postBatch(t, alive[n%len(alive)].URL, msgs)
		switch n {
		case requests * 3 / 10:
			recv.down.Store(true)
			time.AfterFunc(downFor, func() { recv.down.Store(false) })
		case requests * 6 / 10:
			procs[0].cmd.Process.Kill() // SIGKILL, whatever it was delivering
			procs[0].cmd.Wait()
			alive = procs[1:]
		}
	}
	select {
	case <-recv.all:
	case <-time.After(downFor + 60*time.Second):
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	t.Logf("receiver: %d distinct messages, %d duplicates (attempts whose answer was lost), %d deliveries", recv.distinct, recv.dups, len(recv.attempts))
	for _, p := range recv.problems {
		t.Error(p)
	}
	if recv.distinct != rooms*perRoom {
		t.Fatalf("receiver has %d messages, want %d; per room: %v", recv.distinct, rooms*perRoom, recv.last)
	}
	var cursors, dead int
	if err := queryRow(t, db, fmt.Sprintf(`select count(*) filter (where delivered_seq = %d), count(*) filter (where dead) from webhook_cursors`, perRoom), &cursors, &dead); err != nil {
		t.Fatal(err)
	}
	if cursors != rooms || dead != 0 {
		t.Errorf("%d cursors at seq %d, %d dead; want %d and 0", cursors, perRoom, dead, rooms)
	}
}

// A room whose deliveries keep failing is dead-lettered after
// WEBHOOK_DEAD_AFTER, visible in webhook_cursors and /metrics, and the
// other rooms go on.
func TestWebhookDeadLetter(t *testing.T) {
	t.Parallel()
	var good atomic.Int64
	goodDone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var p webhook.Payload
		json.NewDecoder(req.Body).Decode(&p)
		if p.Room == "poison" {
			http.Error(w, "cannot take this room", http.StatusBadRequest)
			return
		}
		if good.Add(int64(len(p.Events))) == 20 {
			close(goodDone)
		}
	}))
	t.Cleanup(srv.Close)
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1", "WEBHOOK_URL="+srv.URL, "WEBHOOK_SECRET="+testWebhookSecret,
		"WEBHOOK_MIN_BACKOFF=10ms", "WEBHOOK_MAX_BACKOFF=50ms", "WEBHOOK_DEAD_AFTER=300ms", "WEBHOOK_BATCH=5"))
	var msgs []string
	for i := range 10 {
		msgs = append(msgs, fmt.Sprintf(`{"room":"poison","body":"p%d","author":"bot"}`, i))
	}
	postBatch(t, in.URL, msgs)
	for i := range 20 {
		postBatch(t, in.URL, []string{fmt.Sprintf(`{"room":"fine","body":"f%d","author":"bot"}`, i)})
	}
	select {
	case <-goodDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("the good room got %d of 20 messages", good.Load())
	}
	conn := dbConn(t, db)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var dead bool
		var delivered int64
		var lastErr string
		if err := conn.QueryRow(t.Context(), `select dead, delivered_seq, coalesce(last_error, '') from webhook_cursors where room = 'poison'`).Scan(&dead, &delivered, &lastErr); err != nil {
			t.Fatal(err)
		}
		if dead {
			if delivered != 0 || !strings.Contains(lastErr, "400") {
				t.Errorf("dead room: delivered_seq %d, last_error %q", delivered, lastErr)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failing room was never dead-lettered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		metrics := get(t, in.URL+"/metrics")
		if strings.Contains(metrics, "pgchat_webhook_dead_rooms 1") && strings.Contains(metrics, "pgchat_webhook_delivered_total 20") {
			if !strings.Contains(metrics, "pgchat_webhook_lag_messages 10") {
				t.Errorf("lag is not the dead room's 10 messages:\n%s", grepLines(metrics, "pgchat_webhook"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics:\n%s", grepLines(metrics, "pgchat_webhook"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}
