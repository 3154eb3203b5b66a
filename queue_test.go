package main

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestNotifyQueueFullCommit: a commit PostgreSQL refuses with SQLSTATE
// 54000, the error of a full notification queue, is counted under its own
// metric and answered unavailable with a message that says what is wrong;
// the same send with the same ref goes through once the queue drains.
// Filling the real queue (8 GB) is not feasible in a test: a trigger raises
// the same error from PostgreSQL in the append transaction instead.
func TestNotifyQueueFullCommit(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	admin := dbConn(t, db)
	if _, err := admin.Exec(t.Context(), `
		create function pgchat_test_queue_full() returns trigger language plpgsql as $$
		begin
			raise exception 'too many notifications in the NOTIFY queue' using errcode = '54000';
		end $$;
		create trigger queue_full before insert on messages
			for each statement execute function pgchat_test_queue_full()`); err != nil {
		t.Fatal(err)
	}
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	alice.send("r", "hello", "q1")
	f := alice.nextOf("error")
	if f.Code != "unavailable" || f.Ref != "q1" || !strings.Contains(f.Message, "notification queue is full") {
		t.Fatalf("send while the queue is full: %+v, want unavailable saying the queue is full", f)
	}
	m := scrape(t, a.URL)
	if m["pgchat_commit_failures_notify_queue_full_total"] != 1 || m["pgchat_commit_failures_total"] != 1 {
		t.Errorf("metrics: queue full %v, all failures %v; want 1 and 1",
			m["pgchat_commit_failures_notify_queue_full_total"], m["pgchat_commit_failures_total"])
	}
	if _, err := admin.Exec(t.Context(), `drop trigger queue_full on messages`); err != nil {
		t.Fatal(err)
	}
	alice.send("r", "hello", "q1")
	if ack := alice.nextOf("ack"); ack.Seq != 1 {
		t.Fatalf("resend after the queue drained: %+v", ack)
	}
}

// TestQueueHealthReportsOnce: above half full the log says it once per
// crossing, and /readyz's note says it while it lasts.
func TestQueueHealthReportsOnce(t *testing.T) {
	var buf bytes.Buffer
	q := newQueueHealth(newMetrics(), slog.New(slog.NewTextHandler(&buf, nil)))
	q.observe(0.2)
	if q.note() != "" || buf.Len() != 0 {
		t.Fatalf("at 20%%: note %q, log %q", q.note(), buf.String())
	}
	q.observe(0.6)
	q.observe(0.7)
	if n := strings.Count(buf.String(), "filling"); n != 1 {
		t.Errorf("log said it %d times, want once:\n%s", n, buf.String())
	}
	if note := q.note(); !strings.Contains(note, "70% full") {
		t.Errorf("note at 70%%: %q", note)
	}
	q.observe(0.1)
	if q.note() != "" || !strings.Contains(buf.String(), "draining again") {
		t.Errorf("at 10%%: note %q, log %q", q.note(), buf.String())
	}
}

// freezeProxy forwards TCP to target; freeze stops, without closing them,
// the server-to-client bytes of the listener connections (application_name
// "pgchat ... listener" in their startup message, sent in the clear with
// sslmode=disable) open at that moment.
type freezeProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []*frozenFlag
	thawed chan struct{}
}

type frozenFlag struct {
	mu       sync.Mutex
	frozen   bool
	listener bool
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target, thawed: make(chan struct{})}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		p.thaw()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			open.Store(c, true)
			open.Store(up, true)
			flag := &frozenFlag{}
			p.mu.Lock()
			p.conns = append(p.conns, flag)
			p.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				defer up.Close()
				buf := make([]byte, 32<<10)
				n, err := c.Read(buf)
				flag.mu.Lock()
				flag.listener = bytes.Contains(buf[:n], []byte(" listener"))
				flag.mu.Unlock()
				if _, werr := up.Write(buf[:n]); err != nil || werr != nil {
					return
				}
				io.Copy(up, c)
			})
			wg.Go(func() {
				defer c.Close()
				defer up.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := up.Read(buf)
					flag.mu.Lock()
					frozen := flag.frozen
					flag.mu.Unlock()
					if frozen {
						p.mu.Lock()
						thawed := p.thawed
						p.mu.Unlock()
						<-thawed
						return // a frozen connection is dropped when thawed
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

func (p *freezeProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.conns {
		f.mu.Lock()
		f.frozen = f.listener
		f.mu.Unlock()
	}
}

func (p *freezeProxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

// TestListenerStallResync: a LISTEN connection that stays open but stops
// delivering (here: a proxy that stops forwarding) while this instance's
// own commits go on is noticed within the stall timeout (10 s) and
// reconnected; the resync delivers what it missed. Without it the member
// would wait for SYNC_INTERVAL (1 h in the tests).
func TestListenerStallResync(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startFreezeProxy(t, u.Host)
	via := *u
	via.Host = proxy.ln.Addr().String()
	a := startInstance(t, testEnv(db, "app-1", "LISTEN_DATABASE_URL="+via.String()))
	alice := dial(t, a.URL, name("alice"))
	alice.join("r")
	proxy.freeze()
	alice.send("r", "through a stalled listener", "s1")
	for {
		f, err := alice.tryNext(25 * time.Second)
		if err != nil {
			t.Fatalf("the message never came: %v", err)
		}
		if f.Type == "message" {
			if f.Body != "through a stalled listener" {
				t.Fatalf("got %+v", f)
			}
			break
		}
	}
	if v := scrape(t, a.URL)["pgchat_listener_reconnects_total"]; v < 1 {
		t.Errorf("listener reconnects: %v, want at least 1", v)
	}
}
