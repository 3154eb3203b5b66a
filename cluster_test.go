package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// needHAProxy returns haproxy's path. Without it the test is skipped, or
// fails when CI is set: CI never passes on skips.
func needHAProxy(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("haproxy not found (%v); CI must install it (Debian package haproxy)", err)
		}
		t.Skipf("haproxy not found (%v); install it (apt-get install haproxy) to run the end-to-end tests", err)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freePorts returns a base port such that base..base+n are all free.
func freePorts(t *testing.T, n int) int {
	t.Helper()
search:
	for range 50 {
		base := freePort(t)
		if base+n > 65535 {
			continue
		}
		for p := base + 1; p <= base+n; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
			if err != nil {
				continue search
			}
			ln.Close()
		}
		return base
	}
	t.Fatalf("no %d free ports in a row", n+1)
	return 0
}

// TestHAProxyClusterConfig: the config of pgchat cluster (and of the
// end-to-end tests) is haproxy.cfg with static servers, and HAProxy takes
// it.
func TestHAProxyClusterConfig(t *testing.T) {
	t.Parallel()
	cfg, err := haproxyConfig("*:8080", "*:8404", []string{"127.0.0.1:8081", "127.0.0.1:8082"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\n    server app-1 127.0.0.1:8081 check\n    server app-2 127.0.0.1:8082 check\n",
		"\n    bind *:8080\n",
		"\n    bind *:8404\n",
		"\n    balance leastconn\n",
		"\n    option httpchk GET /readyz\n",
		"\n    timeout tunnel 1h\n",
		"\n    maxconn 20000\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("generated config lacks %q", want)
		}
	}
	for _, gone := range []string{"server-template", "resolvers", "127.0.0.11"} {
		if strings.Contains(cfg, gone) {
			t.Errorf("generated config still has %q", gone)
		}
	}
	// Apart from servers, binds and the comments about DNS, it is
	// haproxy.cfg: compare the directives.
	directives := func(s string) []string {
		var out []string
		for line := range strings.Lines(s) {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "server") {
				continue
			}
			out = append(out, line)
		}
		return out
	}
	orig := directives(haproxyCfg)
	var kept []string
	inResolvers := false
	for line := range strings.Lines(haproxyCfg) {
		if !strings.HasPrefix(line, " ") && strings.TrimSpace(line) != "" && !strings.HasPrefix(line, "#") {
			inResolvers = strings.HasPrefix(line, "resolvers")
		}
		if inResolvers {
			continue
		}
		if d := directives(line); len(d) > 0 {
			kept = append(kept, d...)
		}
	}
	if got := directives(cfg); strings.Join(got, "\n") != strings.Join(kept, "\n") {
		t.Errorf("generated directives differ from haproxy.cfg's (without resolvers):\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(kept, "\n"))
	}
	if len(orig) <= len(kept) {
		t.Errorf("haproxy.cfg has %d directives, %d kept: the resolvers section was not dropped", len(orig), len(kept))
	}

	low, err := haproxyConfig("127.0.0.1:1", "127.0.0.1:2", []string{"127.0.0.1:3"}, 500)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(low, "\n    maxconn 500\n") || strings.Contains(low, "maxconn 20000") {
		t.Errorf("maxconn 500 not applied:\n%s", low)
	}

	bin := needHAProxy(t)
	for name, c := range map[string]string{"default": cfg, "low maxconn": low} {
		path := filepath.Join(t.TempDir(), "haproxy.cfg")
		if err := os.WriteFile(path, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(t.Context(), bin, "-c", "-f", path).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: haproxy -c: %v\n%s\nconfig:\n%s", name, err, out, c)
		}
		if bytes.Contains(out, []byte("WARNING")) {
			t.Errorf("%s: haproxy -c warns:\n%s", name, out)
		}
	}
}

// TestClusterCommand runs `pgchat cluster` (its instances are this test
// binary, see TestMain) and talks to it through its HAProxy.
func TestClusterCommand(t *testing.T) {
	t.Parallel()
	needHAProxy(t)
	db := newDB(t)
	base := freePorts(t, 3)
	stats := freePort(t)
	environ := append(os.Environ(), "DATABASE_URL="+db, "PGCHAT_TEST_MAIN=1", "PGCHAT_TEST_ARGS=", "RATE_LIMIT=-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"cluster", "-n", "3", "-port", fmt.Sprint(base), "-stats-port", fmt.Sprint(stats)}, environ, &stdout, t.Output())
	}()
	want := fmt.Sprintf("open      http://localhost:%d", base)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("cluster returned early: %v\n%s", err, stdout.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster did not print %q within a minute:\n%s", want, stdout.String())
		}
	}
	t.Logf("pgchat cluster printed:\n%s", stdout.String())

	lb := fmt.Sprintf("http://127.0.0.1:%d", base)
	a, b := startClient(t, lb, "alice", "r"), startClient(t, lb, "bob", "r")
	if a.instance() == b.instance() {
		t.Errorf("alice and bob both on %s, want different instances", a.instance())
	}
	var sent acks
	sendSteadily(t, a, "r", 3, time.Millisecond, &sent, nil)
	sendSteadily(t, b, "r", 3, time.Millisecond, &sent, nil)
	checkEveryoneHasEverything(t, db, "r", []*rclient{a, b}, &sent)

	cancel() // Ctrl-C
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("cluster after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cluster still running 30s after Ctrl-C")
	}
	// Everything it started is gone: no port answers.
	for p := base; p <= base+3; p++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			c.Close()
			t.Errorf("port %d still answers after the cluster stopped", p)
		}
	}
}

// TestClusterPrivatePostgres: with no database, pgchat cluster runs a
// throwaway PostgreSQL (as the postgres user when run as root), and removes
// it on exit.
func TestClusterPrivatePostgres(t *testing.T) {
	t.Parallel()
	bin, ok := postgresBin()
	if !ok {
		t.Skip("the PostgreSQL server programs (initdb, postgres) are not installed")
	}
	cl := &cluster{logs: &lockedWriter{w: t.Output()}, stopTimeout: 10 * time.Second}
	defer cl.stop()
	u, err := cl.startPostgres(t.Context(), bin)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), u)
	if err != nil {
		t.Fatal(err)
	}
	var version string
	if err := conn.QueryRow(t.Context(), "show server_version").Scan(&version); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	t.Logf("private PostgreSQL %s at %s in %v", version, u, cl.dirs)

	pg, dirs := cl.postgres, cl.dirs
	cl.stop()
	select {
	case <-pg.done:
	default:
		t.Fatal("postgres still running after stop")
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still exists after stop (%v)", d, err)
		}
	}
}

func TestPostgresBinOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ a, b string }{
		{"/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/9/bin"},
		{"/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"},
		{"/opt/homebrew/opt/postgresql@17/bin", "/opt/homebrew/opt/postgresql@14/bin"},
	} {
		if got := compareVersionPaths(tc.a, tc.b); got <= 0 {
			t.Errorf("compareVersionPaths(%q, %q) = %d, want > 0 (newer first)", tc.a, tc.b, got)
		}
	}
}
