package main

// End-to-end tests of the scale-out topology: pgchat server processes (the
// test binary re-executed, see TestMain) over one database, a real HAProxy
// in front of them running haproxy.cfg as `pgchat cluster` generates it, and
// clients that connect only through HAProxy.

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// topology is n pgchat processes behind HAProxy.
type topology struct {
	t     *testing.T
	db    string
	ports []int
	procs []*process // the current process of each instance
	lb    string     // HAProxy's frontend, http://127.0.0.1:port
	stats string     // HAProxy's stats page
	extra map[int][]string
}

// startTopology starts n instances app-1..app-n over a new database, then
// HAProxy in front of them.
func startTopology(t *testing.T, n int) *topology {
	t.Helper()
	needHAProxy(t)
	return startTopologyOver(t, newDB(t), n, nil)
}

// startTopologyOver is startTopology over db, with extra environment for
// some instances (by index).
func startTopologyOver(t *testing.T, db string, n int, extra map[int][]string) *topology {
	t.Helper()
	bin := needHAProxy(t)
	tp := &topology{t: t, db: db, extra: extra}
	var servers []string
	for i := range n {
		tp.ports = append(tp.ports, freePort(t))
		tp.procs = append(tp.procs, startProcess(t, tp.env(i)))
		servers = append(servers, fmt.Sprintf("127.0.0.1:%d", tp.ports[i]))
	}
	front, stats := freePort(t), freePort(t)
	cfg, err := haproxyConfig(fmt.Sprintf("127.0.0.1:%d", front), fmt.Sprintf("127.0.0.1:%d", stats), servers, haproxyMaxconn())
	if err != nil {
		t.Fatal(err)
	}
	// Test-only: check every 100 ms instead of 2 s, so that a test sees
	// HAProxy react within a fraction of a second.
	const checks = "default-server inter 2s fall 2 rise 2"
	if !strings.Contains(cfg, checks) {
		t.Fatalf("haproxy.cfg has no %q line to speed up", checks)
	}
	cfg = strings.Replace(cfg, checks, "default-server inter 100ms fall 2 rise 2", 1)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tp.lb = fmt.Sprintf("http://127.0.0.1:%d", front)
	tp.stats = fmt.Sprintf("http://127.0.0.1:%d/;csv", stats)
	startDaemon(t, "haproxy", exec.Command(bin, "-db", "-f", path), syscall.SIGTERM, 20*time.Second, func() error {
		resp, err := http.Get(tp.lb + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	})
	return tp
}

func (tp *topology) env(i int) []string {
	return testEnv(tp.db, fmt.Sprintf("app-%d", i+1), append([]string{fmt.Sprintf("PORT=%d", tp.ports[i])}, tp.extra[i]...)...)
}

// kill ends instance i with SIGKILL.
func (tp *topology) kill(i int) {
	p := tp.procs[i].cmd
	p.Process.Kill()
	p.Wait()
}

// stop sends instance i SIGTERM; wait waits for it to exit, cleanly.
func (tp *topology) stop(i int) (wait func()) {
	p := tp.procs[i].cmd
	p.Process.Signal(syscall.SIGTERM)
	return func() {
		if err := p.Wait(); err != nil {
			tp.t.Errorf("app-%d after SIGTERM: %v", i+1, err)
		}
	}
}

// restart starts instance i again, on its port.
func (tp *topology) restart(i int) {
	tp.procs[i] = startProcess(tp.t, tp.env(i))
}

// server is one backend server's row of HAProxy's stats.
type server struct {
	status      string // UP, DOWN, "UP 1/2" (going down), ...
	checkStatus string // L7OK, L7STS (bad HTTP status), L4CON (refused), ...
	lbtot       int    // times HAProxy picked it for a new connection
}

// servers reads HAProxy's stats CSV.
func (tp *topology) servers() map[string]server {
	tp.t.Helper()
	resp, err := http.Get(tp.stats)
	if err != nil {
		tp.t.Fatalf("haproxy stats: %v", err)
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil || len(rows) < 2 {
		tp.t.Fatalf("haproxy stats: %v (%d rows)", err, len(rows))
	}
	col := make(map[string]int)
	for i, name := range rows[0] {
		col[strings.TrimPrefix(name, "# ")] = i
	}
	out := make(map[string]server)
	for _, r := range rows[1:] {
		if r[col["pxname"]] != "app" || r[col["svname"]] == "BACKEND" {
			continue
		}
		lbtot, _ := strconv.Atoi(r[col["lbtot"]])
		// "* L7STS": the same, with a check under way.
		check := strings.TrimPrefix(r[col["check_status"]], "* ")
		out[r[col["svname"]]] = server{r[col["status"]], check, lbtot}
	}
	return out
}

// waitStatus polls HAProxy until server name's status is want.
func (tp *topology) waitStatus(name, want string) server {
	tp.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := tp.servers()[name]
		if s.status == want {
			return s
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("haproxy: %s is %q (check %s), want %q", name, s.status, s.checkStatus, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestE2ESpreadAndDeliver: clients that come through HAProxy land on every
// instance, and every message reaches every client.
func TestE2ESpreadAndDeliver(t *testing.T) {
	t.Parallel()
	tp := startTopology(t, 3)
	var clients []*rclient
	seen := make(map[string]int)
	for i := range 6 {
		c := startClient(t, tp.lb, fmt.Sprintf("u%d", i), "r")
		seen[c.instance()]++
		clients = append(clients, c)
	}
	if len(seen) != 3 {
		t.Fatalf("6 clients landed on %v, want all 3 instances (leastconn)", seen)
	}
	var sent acks
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { sendSteadily(t, c, "r", 10, time.Millisecond, &sent, nil) })
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, tp.db, "r", clients, &sent)
	if n := len(sent.seqs); n != 60 {
		t.Fatalf("%d sends acked, want 60", n)
	}
	// Every message was stored by the instance its sender was on.
	for _, m := range clients[0].received() {
		if m.Instance == "" {
			t.Fatalf("message %+v has no instance", m)
		}
	}
}

// startClients starts n clients of room through HAProxy.
func startClients(t *testing.T, tp *topology, n int, room string) []*rclient {
	t.Helper()
	var clients []*rclient
	for i := range n {
		clients = append(clients, startClient(t, tp.lb, fmt.Sprintf("u%d", i), room))
	}
	return clients
}

// load sends steadily from senders, each at most n messages, until stop is
// called; stop waits for the senders' last acks.
func load(t *testing.T, senders []*rclient, room string, n int, a *acks) (stop func()) {
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, c := range senders {
		wg.Go(func() { sendSteadily(t, c, room, n, 15*time.Millisecond, a, done) })
	}
	return sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
}

// waitAcks waits until a has at least n acks.
func waitAcks(t *testing.T, a *acks, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for a.count.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks, waiting for %d", a.count.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestE2EKill9: kill -9 of an instance while messages flow. Its clients
// reconnect through HAProxy to the survivors and resume; in the end every
// client holds the identical, gap-free sequence with every acked message.
func TestE2EKill9(t *testing.T) {
	t.Parallel()
	tp := startTopology(t, 3)
	clients := startClients(t, tp, 6, "r")
	victim := clients[0].instance() // a sender's instance: its sends in flight must be resent
	var onVictim []*rclient
	for _, c := range clients {
		if c.instance() == victim {
			onVictim = append(onVictim, c)
		}
	}
	var sent acks
	stop := load(t, clients[:3], "r", 1000, &sent)
	defer stop()
	waitAcks(t, &sent, 60)
	i, _ := strconv.Atoi(strings.TrimPrefix(victim, "app-"))
	tp.kill(i - 1)
	t.Logf("killed %s with %d acks; its clients: %d", victim, sent.count.Load(), len(onVictim))
	waitAcks(t, &sent, sent.count.Load()+100) // the flow goes on without it
	stop()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, tp.db, "r", clients, &sent)
	for _, c := range onVictim {
		if now := c.instance(); now == victim || now == "" {
			t.Errorf("client %s is on %q after %s died (welcomes %v)", c.name, now, victim, c.instances)
		}
	}
}

// TestE2ERollingRestart: SIGTERM each instance in turn, wait for it to exit,
// start it again on its port, all under load. No acked message is lost or
// stored twice, HAProxy takes the instance out while it is away and picks
// it for no new connection, and new connections keep succeeding.
func TestE2ERollingRestart(t *testing.T) {
	t.Parallel()
	tp := startTopology(t, 3)
	clients := startClients(t, tp, 6, "r")
	var sent acks
	stop := load(t, clients[:3], "r", 3000, &sent)
	defer stop()

	// Probe: new connections all along, each noting where it landed.
	type landing struct {
		start, end time.Time
		instance   string
	}
	var (
		probeMu  sync.Mutex
		landings []landing
		failures []error
	)
	ctx, stopProbe := context.WithCancel(t.Context())
	var probe sync.WaitGroup
	probe.Go(func() {
		for ctx.Err() == nil {
			start := time.Now()
			c, err := tryDial(ctx, tp.lb, name("probe"))
			probeMu.Lock()
			if err != nil {
				if ctx.Err() == nil {
					failures = append(failures, err)
				}
			} else {
				landings = append(landings, landing{start, time.Now(), c.welcome.Instance})
				c.conn.CloseNow()
			}
			probeMu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	})

	type away struct {
		instance   string
		term, back time.Time
	}
	var aways []away
	for i := range tp.procs {
		id := fmt.Sprintf("app-%d", i+1)
		waitAcks(t, &sent, sent.count.Load()+20)
		term := time.Now()
		exited := tp.stop(i)
		down := tp.waitStatus(id, "DOWN")
		downAfter := time.Since(term)
		exited() // ~1 s after SIGTERM under -race: the race runtime sleeps at exit
		t.Logf("%s: HAProxy marked it DOWN (%s) %v after SIGTERM; it exited after %v",
			id, down.checkStatus, downAfter.Round(time.Millisecond), time.Since(term).Round(time.Millisecond))
		waitAcks(t, &sent, sent.count.Load()+10) // load goes on without it
		back := time.Now()
		if now := tp.servers()[id]; now.lbtot != down.lbtot {
			t.Errorf("haproxy picked %s %d times while it was down", id, now.lbtot-down.lbtot)
		}
		tp.restart(i)
		tp.waitStatus(id, "UP")
		aways = append(aways, away{id, term, back})
	}
	waitAcks(t, &sent, sent.count.Load()+30)
	stop()
	stopProbe()
	probe.Wait()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, tp.db, "r", clients, &sent)
	for _, a := range aways {
		for _, l := range landings {
			if l.instance == a.instance && l.start.After(a.term) && l.end.Before(a.back) {
				t.Errorf("a connection opened %v after %s got SIGTERM landed on it", l.start.Sub(a.term), a.instance)
			}
		}
	}
	t.Logf("probe: %d connections, %d failed", len(landings), len(failures))
	if len(failures) > 0 {
		t.Errorf("new connections failed during the rolling restart (HAProxy should retry them elsewhere): %v", failures)
	}
}

// TestE2EPostgresRestart: every backend of the database is terminated,
// three times, under load. A real restart of the shared server would
// disturb the other tests running in parallel, so pg_terminate_backend on
// this test's database stands in for it: the instances lose their pools and
// their LISTEN connections at once. They recover by themselves (/readyz
// 200 again) and no acked message is lost.
func TestE2EPostgresRestart(t *testing.T) {
	t.Parallel()
	tp := startTopology(t, 3)
	clients := startClients(t, tp, 6, "r")
	var sent acks
	stop := load(t, clients[:3], "r", 3000, &sent)
	defer stop()
	admin, err := pgx.Connect(t.Context(), tp.db)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	for round := range 3 {
		waitAcks(t, &sent, sent.count.Load()+30)
		var n int
		err := admin.QueryRow(t.Context(), `
			select count(pg_terminate_backend(pid)) from pg_stat_activity
			where datname = current_database() and pid <> pg_backend_pid()`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for _, p := range tp.procs {
			// Its LISTEN connection was cut: it has reconnected.
			waitMetric(t, p.URL, "pgchat_listener_reconnects_total", func(v float64) bool { return v >= float64(round+1) })
			waitReady(t, p.URL)
		}
		t.Logf("round %d: terminated %d backends; every /readyz 200 again within %v", round+1, n, time.Since(start).Round(time.Millisecond))
	}
	waitAcks(t, &sent, sent.count.Load()+30)
	stop()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, tp.db, "r", clients, &sent)
}

// tcpGate forwards TCP connections to target until closed: then it cuts
// the open ones and refuses new ones, until opened again.
type tcpGate struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

func startGate(t *testing.T, target string) *tcpGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &tcpGate{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		g.setClosed(true)
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { g.forward(c) })
		}
	})
	return g
}

func (g *tcpGate) forward(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", g.target)
	if err != nil {
		return
	}
	defer up.Close()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.conns[c], g.conns[up] = struct{}{}, struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.conns, c)
		delete(g.conns, up)
		g.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// setClosed closes the gate (cutting what passes through) or opens it.
func (g *tcpGate) setClosed(closed bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = closed
	if closed {
		for c := range g.conns {
			c.Close()
		}
	}
}

// TestE2EUnreadyInstanceGetsNoConnections: an instance whose /readyz says
// 503 (here: its LISTEN connection cannot reach the database, while the
// process runs and would accept WebSockets) is taken out by HAProxy, which
// opens no new connection to it until it is ready again.
func TestE2EUnreadyInstanceGetsNoConnections(t *testing.T) {
	t.Parallel()
	needHAProxy(t)
	db := newDB(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	gate := startGate(t, u.Host)
	gated := *u
	gated.Host = gate.ln.Addr().String()
	tp := startTopologyOver(t, db, 3, map[int][]string{2: {"LISTEN_DATABASE_URL=" + gated.String()}})

	gate.setClosed(true)
	down := tp.waitStatus("app-3", "DOWN")
	if down.checkStatus != "L7STS" {
		t.Errorf("app-3 went down with check status %s, want L7STS (its /readyz answered 503)", down.checkStatus)
	}
	if resp, err := http.Get(tp.procs[2].URL + "/readyz"); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("app-3 /readyz: %v %v, want 503", resp, err)
	}
	for i := range 20 {
		c, err := tryDial(t.Context(), tp.lb, name(fmt.Sprintf("p%d", i)))
		if err != nil {
			t.Fatalf("dial through haproxy: %v", err)
		}
		if c.welcome.Instance == "app-3" {
			t.Fatalf("connection %d landed on app-3, which is not ready", i)
		}
		defer c.conn.CloseNow()
	}
	if now := tp.servers()["app-3"]; now.lbtot != down.lbtot {
		t.Errorf("haproxy picked app-3 %d times while it was down", now.lbtot-down.lbtot)
	}
	// Direct connections still work: the instance itself is fine.
	dial(t, tp.procs[2].URL, name("direct"))

	gate.setClosed(false)
	tp.waitStatus("app-3", "UP")
	c := dial(t, tp.lb, name("after")) // leastconn: the empty app-3 is the least loaded
	if c.welcome.Instance != "app-3" {
		t.Errorf("a new connection after app-3 came back landed on %s, want app-3 (fewest connections)", c.welcome.Instance)
	}
}

// startDaemon starts cmd in the foreground with its output captured and
// waits until ready answers nil (failing the test if the process exits
// first, or after timeout). At the test's end it stops the process with sig
// and waits for it; the output is logged if the test failed.
func startDaemon(t *testing.T, name string, cmd *exec.Cmd, sig os.Signal, timeout time.Duration, ready func() error) {
	t.Helper()
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(sig)
		<-exited
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, out.String())
		}
	})
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s exited: %v", name, waitErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s: %v", name, timeout, err)
		}
	}
}
