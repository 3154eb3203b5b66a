package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgchat/pgchat/bench"
)

// TestBenchRun is a short `pgchat bench` run against 3 server processes,
// through HAProxy when it is installed: it checks correctness (nothing
// lost, duplicated or reordered), not speed.
func TestBenchRun(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var urls []string
	for i := range 3 {
		p := startProcess(t, testEnv(db, fmt.Sprintf("bench-%d", i+1), "LOG_LEVEL=warn"))
		urls = append(urls, p.URL)
	}
	if front, ok := benchHAProxy(t, urls); ok {
		urls = []string{front}
	} else {
		t.Log("haproxy not on PATH: the clients connect to the instances directly")
	}
	var stdout, stderr bytes.Buffer
	args := []string{"bench", "-url", strings.Join(urls, ","), "-clients", "60", "-senders", "6", "-rate", "50",
		"-rooms", "2", "-duration", "3s", "-warmup", "500ms", "-json", "-quiet"}
	err := run(t.Context(), args, nil, &stdout, &stderr)
	if stderr.Len() > 0 {
		t.Logf("stderr: %s", stderr.String())
	}
	var res bench.Result
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("pgchat bench: %v; output %q: %v", err, stdout.String(), jerr)
	}
	t.Logf("%.0f acked/s, %.0f deliveries/s, p99 %v, %d owed", res.AckedPerSec, res.DeliveriesPerSec, res.Latency.P99, res.Owed)
	if err != nil {
		t.Fatalf("pgchat bench: %v", err)
	}
	if res.Owed == 0 || res.Acked == 0 {
		t.Fatalf("no traffic: %d acked, %d deliveries owed", res.Acked, res.Owed)
	}
	if res.Lost != 0 || res.Duplicated != 0 || res.OutOfOrder != 0 || res.Unanswered != 0 {
		t.Errorf("lost %d, duplicated %d, out of order %d, unanswered %d; want all 0", res.Lost, res.Duplicated, res.OutOfOrder, res.Unanswered)
	}
	if len(res.Errors) > 0 || len(res.Closes) > 0 {
		t.Errorf("errors %v, closes %v; want none", res.Errors, res.Closes)
	}
}

// benchHAProxy runs haproxy in front of servers until the test ends and
// returns its URL, or false when haproxy is not installed.
func benchHAProxy(t *testing.T, servers []string) (string, bool) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		return "", false
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `global
    maxconn 1000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend bench
    bind %s
    default_backend app
backend app
    balance roundrobin
`, addr)
	for i, s := range servers {
		fmt.Fprintf(&cfg, "    server app%d %s\n", i+1, strings.TrimPrefix(s, "http://"))
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	front := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(front + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return front, true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy at %s never answered: %v", front, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
