package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needNode returns node's path once clients/js's devDependencies are
// installed (npm ci in clients/js; .ci/run does it). Without them the test
// is skipped, or fails under CI.
func needNode(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join("clients", "js", "node_modules", "ws"))
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node or clients/js/node_modules missing (%v); CI must install nodejs and run npm ci in clients/js", err)
		}
		t.Skipf("node or clients/js/node_modules missing (%v): install nodejs, then (cd clients/js && npm ci)", err)
	}
	return bin
}

// TestJSClient runs the JavaScript client's tests (node --test
// clients/js/test/) against 3 instances behind HAProxy. They may kill an
// instance with SIGKILL through a control endpoint, POST /kill/app-N.
func TestJSClient(t *testing.T) {
	t.Parallel()
	node := needNode(t)
	tp := startTopology(t, 3)

	mux := http.NewServeMux()
	mux.HandleFunc("POST /kill/{instance}", func(w http.ResponseWriter, r *http.Request) {
		i, err := strconv.Atoi(strings.TrimPrefix(r.PathValue("instance"), "app-"))
		if err != nil || i < 1 || i > len(tp.procs) {
			http.Error(w, "no such instance", http.StatusNotFound)
			return
		}
		tp.kill(i - 1)
		t.Logf("killed app-%d with SIGKILL", i)
		w.WriteHeader(http.StatusNoContent)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctl := &http.Server{Handler: mux}
	go ctl.Serve(ln)
	t.Cleanup(func() { ctl.Close() })

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "test/")
	cmd.Dir = filepath.Join("clients", "js")
	cmd.Env = append(os.Environ(), "PGCHAT_URL="+tp.lb, "PGCHAT_CONTROL=http://"+ln.Addr().String())
	out, err := cmd.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	if err != nil {
		t.Fatalf("node --test: %v", err)
	}
	if o := string(out); !strings.Contains(o, "fail 0\n") || strings.Contains(o, "pass 0\n") || !strings.Contains(o, "skipped 0\n") {
		t.Fatalf("node --test ran no test, or skipped some")
	}
}
