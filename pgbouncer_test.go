package main

// End-to-end test through a real PgBouncer in transaction mode, the pooler
// most providers hand out (Supabase's port 6543, Fly's pooled URL).

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startPgBouncer runs PgBouncer in transaction mode in front of the server
// of direct (a database URL) and returns direct's URL through it. As root it
// runs as the postgres user: PgBouncer refuses to run as root.
func startPgBouncer(t *testing.T, direct string) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
			if isFile(p) {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("pgbouncer not found; CI must install it (Debian package pgbouncer)")
		}
		t.Skip("pgbouncer not found; install it (apt-get install pgbouncer) to run this test")
	}
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgchat-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and there is no postgres user to run pgbouncer as: %v", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	port := freePort(t)
	target := fmt.Sprintf("host=%s port=%s user=%s", u.Hostname(), u.Port(), u.User.Username())
	if pw, ok := u.User.Password(); ok {
		target += " password=" + pw
	} else if pw := os.Getenv("PGPASSWORD"); pw != "" {
		target += " password=" + pw
	}
	cfg := fmt.Sprintf(`[databases]
* = %s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 10
pidfile = %s
`, target, port, filepath.Join(dir, "pgbouncer.pid"))
	path := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	startDaemon(t, "pgbouncer", cmd, syscall.SIGINT, 10*time.Second, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	pooled := *u
	pooled.Host = addr
	return pooled.String()
}

// TestE2EPgBouncerTransactionMode: DATABASE_URL through PgBouncer in
// transaction mode, LISTEN_DATABASE_URL direct, exactly as the README says
// and with no URL tweak. Every join works (named prepared statements would
// collide on the pooler's shared server connections), every send is
// committed at its first try, every client holds everything, and the
// history API answers.
func TestE2EPgBouncerTransactionMode(t *testing.T) {
	t.Parallel()
	needHAProxy(t)
	db := newDB(t)
	pooled := startPgBouncer(t, db)
	env := []string{"DATABASE_URL=" + pooled, "LISTEN_DATABASE_URL=" + db}
	tp := startTopologyOver(t, db, 2, map[int][]string{0: env, 1: env})

	// Joins through the pooler, on both instances, several at once.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			c := dial(t, tp.procs[i%2].URL, name(fmt.Sprintf("j%d", i)))
			if _, j := c.join(fmt.Sprintf("room-%d", i%5)); j.Type != "joined" {
				t.Errorf("join: %+v", j)
			}
		})
	}
	wg.Wait()

	clients := startClients(t, tp, 8, "r")
	var sent acks
	var senders sync.WaitGroup
	for _, c := range clients[:4] {
		senders.Go(func() { sendSteadily(t, c, "r", 50, time.Millisecond, &sent, nil) })
	}
	senders.Wait()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, tp.db, "r", clients, &sent)
	if n := len(sent.seqs); n != 200 {
		t.Fatalf("%d sends acked, want 200", n)
	}
	for _, p := range tp.procs {
		m := scrape(t, p.URL)
		if f := m["pgchat_commit_failures_total"]; f != 0 {
			t.Errorf("%s: %v commits failed through PgBouncer", p.URL, f)
		}
	}
	resp, err := http.Get(tp.lb + "/api/rooms/r/messages?limit=200")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Head     int64             `json:"head"`
		Messages []json.RawMessage `json:"messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("history through PgBouncer: %s, %v", resp.Status, err)
	}
	if page.Head != 200 || len(page.Messages) != 200 {
		t.Fatalf("history: head %d, %d messages; want 200 and 200", page.Head, len(page.Messages))
	}
}
