package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startTempPostgres runs a throwaway PostgreSQL cluster under pg_ctl for
// t, one the test may restart (never the shared server the other tests
// use). It is stopped and deleted when t ends.
func startTempPostgres(t *testing.T) *tempPostgres {
	t.Helper()
	bin, ok := postgresBin()
	if !ok {
		if os.Getenv("CI") != "" {
			t.Fatal("the PostgreSQL server programs (initdb, pg_ctl) are not installed")
		}
		t.Skip("the PostgreSQL server programs (initdb, pg_ctl) are not installed")
	}
	pg, err := initTempPostgres(t.Context(), bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pg.Dir) })
	pg.ctl(t, "-o", strings.Join(pg.serverOptions(), " "), "start")
	t.Cleanup(func() { pg.ctl(t, "-m", "immediate", "stop") })
	return pg
}

// ctl runs pg_ctl on the cluster with args, waiting for it to finish (-w).
// The server logs to server.log (else it would hold pg_ctl's output open).
func (p *tempPostgres) ctl(t *testing.T, args ...string) {
	t.Helper()
	cmd := p.command(context.Background(), "pg_ctl", append([]string{"-D", p.Data, "-w", "-t", "30", "-l", filepath.Join(p.Dir, "server.log")}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.Dir, "server.log"))
		t.Fatalf("pg_ctl %s: %v\n%s\nserver log:\n%s", strings.Join(args, " "), err, out, log)
	}
}

// TestE2ERealPostgresRestart: a real restart (pg_ctl restart -m fast) of
// the database under load, with 2 instances behind HAProxy. Every send is
// acked in the end (the clients resend with their ref), nothing is lost,
// duplicated or reordered, and every instance is ready again within 5 s of
// the server accepting connections.
func TestE2ERealPostgresRestart(t *testing.T) {
	t.Parallel()
	needHAProxy(t)
	pg := startTempPostgres(t)
	tp := startTopologyOver(t, pg.URL(), 2, nil)
	clients := startClients(t, tp, 4, "r")
	var sent acks
	stop := load(t, clients[:2], "r", 3000, &sent)
	defer stop()
	waitAcks(t, &sent, 30)

	pg.ctl(t, "-m", "fast", "restart") // returns once the server accepts connections
	back := time.Now()
	for _, p := range tp.procs {
		// Its LISTEN connection was cut: once it has reconnected, and
		// /readyz says 200, the instance is whole again.
		waitMetric(t, p.URL, "pgchat_listener_reconnects_total", func(v float64) bool { return v >= 1 })
		if d := time.Since(back); d > 5*time.Second {
			t.Errorf("%s: LISTEN back only %v after the restart", p.URL, d)
		}
		for {
			resp, err := http.Get(p.URL + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Since(back) > 5*time.Second {
				t.Fatalf("%s not ready 5 s after the restart: %v %v", p.URL, resp, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("every instance ready %v after the server accepted connections again", time.Since(back).Round(time.Millisecond))
	waitAcks(t, &sent, sent.count.Load()+30)
	stop()
	if t.Failed() {
		return
	}
	checkEveryoneHasEverything(t, pg.URL(), "r", clients, &sent)
}
