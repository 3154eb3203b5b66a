package main

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/pgchat/pgchat/store"
)

// haproxyCfg is the compose rig's HAProxy configuration; pgchat cluster and
// the end-to-end tests run it with only server discovery changed.
//
//go:embed haproxy.cfg
var haproxyCfg string

// haproxyConfig returns haproxy.cfg with static servers: the server-template
// line (Docker DNS discovery) gives way to one `server app-N ADDR check` line
// per address, the resolvers section goes, and the two binds move to
// frontend (the chat) and stats. Everything else, timeouts, checks and
// balancing, stays as it is, except that a positive maxconn replaces the
// global one: HAProxy needs about two file descriptors per connection and
// refuses to start when the limit (ulimit -n) is lower.
func haproxyConfig(frontend, stats string, servers []string, maxconn int) (string, error) {
	var out []string
	var templates, binds, maxconns int
	skipping := false // inside the resolvers section
	for line := range strings.Lines(haproxyCfg) {
		line = strings.TrimSuffix(line, "\n")
		trimmed := strings.TrimSpace(line)
		indented := line != "" && (line[0] == ' ' || line[0] == '\t')
		if skipping {
			if trimmed == "" || indented {
				continue
			}
			skipping = false
		}
		switch {
		case strings.HasPrefix(line, "resolvers "):
			// Drop the section and the comments just above it.
			for len(out) > 0 && strings.HasPrefix(out[len(out)-1], "#") {
				out = out[:len(out)-1]
			}
			skipping = true
			continue
		case strings.HasPrefix(trimmed, "server-template "):
			indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
			for len(out) > 0 && strings.HasPrefix(strings.TrimSpace(out[len(out)-1]), "#") {
				out = out[:len(out)-1]
			}
			out = append(out, indent+"# Static servers, written by pgchat cluster (haproxy.cfg finds them in DNS).")
			for i, addr := range servers {
				out = append(out, fmt.Sprintf("%sserver app-%d %s check", indent, i+1, addr))
			}
			templates++
			continue
		case trimmed == "bind *:8080":
			line = strings.Replace(line, "*:8080", frontend, 1)
			binds++
		case trimmed == "bind *:8404":
			line = strings.Replace(line, "*:8404", stats, 1)
			binds++
		case strings.HasPrefix(trimmed, "maxconn "):
			maxconns++
			if maxconn > 0 {
				indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
				out = append(out, indent+"# Lowered by pgchat cluster to fit this machine's file descriptor limit.")
				line = fmt.Sprintf("%smaxconn %d", indent, maxconn)
			}
		}
		out = append(out, line)
	}
	if templates != 1 || binds != 2 || maxconns != 1 {
		return "", fmt.Errorf("haproxy.cfg changed shape: %d server-template lines, %d of the binds *:8080 and *:8404, %d maxconn lines; want 1, 2 and 1", templates, binds, maxconns)
	}
	return strings.Join(out, "\n") + "\n", nil
}

func runCluster(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 3, "number of pgchat instances")
	port := fs.Int("port", 8080, "HAProxy's port, the one to open; instance i listens on port+i")
	statsPort := fs.Int("stats-port", 8404, "port of HAProxy's stats page")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pgchat cluster [-n 3] [-port 8080] [-stats-port 8404]

Runs the scale-out demo without Docker: n pgchat instances as processes and
HAProxy (haproxy.cfg with static servers) in front of them. Ctrl-C stops
everything. The database is DATABASE_URL if set, else the local server at
the default URL if it answers, else a private throwaway cluster (needs the
PostgreSQL server programs: initdb and postgres). The instances inherit the
environment; with PPROF_ADDR=host:port, instance i profiles on port+i-1.
Unless GOMAXPROCS is set, each gets GOMAXPROCS = cores / n (at least 1).

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("cluster: unexpected argument %q", fs.Arg(0))
	}
	if *n < 1 || *n > 50 {
		return errors.New("cluster: -n must be 1 to 50")
	}
	if *port < 1 || *port+*n > 65535 || *statsPort < 1 || *statsPort > 65535 || (*statsPort >= *port && *statsPort <= *port+*n) {
		return errors.New("cluster: -port and -stats-port must be ports, with -stats-port outside port..port+n")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		return errors.New("cluster: haproxy not found in PATH; install it (Debian/Ubuntu: sudo apt-get install haproxy; macOS: brew install haproxy)")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cluster: find the pgchat binary: %w", err)
	}
	ports := []int{*port, *statsPort}
	for i := 1; i <= *n; i++ {
		ports = append(ports, *port+i)
	}
	for _, p := range ports {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return fmt.Errorf("cluster: port %d is taken (%v): pick others with -port and -stats-port", p, err)
		}
		ln.Close()
	}
	vars := env.ToMap(environ)
	shutdownTimeout, _ := time.ParseDuration(cmp.Or(vars["SHUTDOWN_TIMEOUT"], "10s"))
	drainDelay, _ := time.ParseDuration(cmp.Or(vars["DRAIN_DELAY"], "2s"))

	logs := &lockedWriter{w: stderr}
	cl := &cluster{logs: logs, stopTimeout: drainDelay + shutdownTimeout + 5*time.Second}
	defer cl.stop()

	dbURL, err := cl.database(ctx, vars)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	base := append(slices.Clip(environ), "DATABASE_URL="+dbURL)
	var servers []string
	for i := 1; i <= *n; i++ {
		name, p := fmt.Sprintf("app-%d", i), *port+i
		cmd := exec.Command(exe, "serve")
		cmd.Env = append(slices.Clip(base), "PORT="+strconv.Itoa(p), "INSTANCE_ID="+name)
		if vars["DRAIN_DELAY"] == "" {
			// HAProxy retries a refused upgrade elsewhere (retry-on 503)
			// and stops first on Ctrl-C: a short delay is enough here.
			cmd.Env = append(cmd.Env, "DRAIN_DELAY=2s")
		}
		if vars["GOMAXPROCS"] == "" {
			// The instances share this machine's cores: each one
			// scheduling goroutines on all of them only adds contention.
			cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU() / *n)))
		}
		if addr, ok := pprofAddr(vars["PPROF_ADDR"], i); ok {
			cmd.Env = append(cmd.Env, "PPROF_ADDR="+addr)
		}
		app, err := cl.start(name, cmd, nil)
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		cl.apps = append(cl.apps, app)
		servers = append(servers, "127.0.0.1:"+strconv.Itoa(p))
	}
	for i, app := range cl.apps {
		if err := waitHTTP(ctx, app, "http://"+servers[i]+"/readyz", time.Minute); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}

	cfg, err := haproxyConfig("*:"+strconv.Itoa(*port), "*:"+strconv.Itoa(*statsPort), servers, haproxyMaxconn())
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	dir, err := os.MkdirTemp("", "pgchat-cluster-")
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	cl.dirs = append(cl.dirs, dir)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if out, err := exec.CommandContext(ctx, haproxy, "-c", "-q", "-f", cfgPath).CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: haproxy -c -f %s: %v: %s", cfgPath, err, bytes.TrimSpace(out))
	}
	cl.haproxy, err = cl.start("haproxy", exec.Command(haproxy, "-db", "-f", cfgPath), nil)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := waitHTTP(ctx, cl.haproxy, fmt.Sprintf("http://127.0.0.1:%d/healthz", *port), 30*time.Second); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\npgchat cluster: %d instances behind HAProxy.\n\n", *n)
	fmt.Fprintf(&b, "  open      http://localhost:%d   (in several windows: each shows its instance)\n", *port)
	fmt.Fprintf(&b, "  stats     http://localhost:%d\n", *statsPort)
	for i, app := range cl.apps {
		fmt.Fprintf(&b, "  %-9s http://localhost:%d   pid %d\n", app.name, *port+i+1, app.cmd.Process.Pid)
	}
	fmt.Fprintf(&b, "  database  %s\n\n", redact(dbURL))
	fmt.Fprintf(&b, "Try: pgchat tail -url ws://localhost:%d -room general, or kill -9 a pid and watch its clients move.\n", *port)
	fmt.Fprint(&b, "Ctrl-C stops everything.\n\n")
	io.WriteString(stdout, b.String())

	exited := make(chan *child, len(cl.apps))
	for _, app := range cl.apps {
		go func() { <-app.done; exited <- app }()
	}
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(logs, "pgchat cluster: stopping")
			return nil
		case <-cl.haproxy.done:
			return fmt.Errorf("cluster: haproxy exited: %v", cl.haproxy.err)
		case <-cl.postgresDone():
			return fmt.Errorf("cluster: the private PostgreSQL exited: %v", cl.postgres.err)
		case app := <-exited:
			fmt.Fprintf(logs, "pgchat cluster: %s exited (%v); HAProxy sends its clients to the others\n", app.name, app.err)
		}
	}
}

// cluster is what pgchat cluster started, for stop.
type cluster struct {
	logs        *lockedWriter
	stopTimeout time.Duration
	apps        []*child
	haproxy     *child
	postgres    *child
	dirs        []string
}

// child is a process started by pgchat cluster.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // why it exited; read after done
}

// start runs cmd as a child named name, its output prefixed with the name.
// cred, if set, is the user to run it as. Children get a process group of
// their own, so that Ctrl-C in a terminal reaches only pgchat cluster, which
// stops them in order.
func (cl *cluster) start(name string, cmd *exec.Cmd, cred *user.User) (*child, error) {
	attr, err := childAttr(cred)
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = attr
	out := &prefixWriter{prefix: fmt.Sprintf("%-8s| ", name), w: cl.logs}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		out.flush()
		close(c.done)
	}()
	return c, nil
}

// stop sends sig, waits up to timeout for the exit, then kills.
func (c *child) stop(sig os.Signal, timeout time.Duration) {
	if c == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (cl *cluster) postgresDone() <-chan struct{} {
	if cl.postgres == nil {
		return nil
	}
	return cl.postgres.done
}

// stop ends everything, front to back: HAProxy, then the instances (each
// drains), then the private database, and removes the temporary files.
func (cl *cluster) stop() {
	cl.haproxy.stop(syscall.SIGTERM, 5*time.Second)
	var wg sync.WaitGroup
	for _, app := range cl.apps {
		wg.Go(func() { app.stop(syscall.SIGTERM, cl.stopTimeout) })
	}
	wg.Wait()
	cl.postgres.stop(os.Interrupt, 30*time.Second) // SIGINT: PostgreSQL's fast shutdown
	for _, dir := range cl.dirs {
		os.RemoveAll(dir)
	}
}

// waitHTTP polls u until it answers 200, c exits, ctx ends or timeout
// passes.
func waitHTTP(ctx context.Context, c *child, u string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		select {
		case <-c.done:
			return fmt.Errorf("%s exited: %v", c.name, c.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %v", c.name, u, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// database picks the cluster's database: DATABASE_URL if set; else the
// default URL if a server answers there; else a private cluster it starts.
func (cl *cluster) database(ctx context.Context, vars map[string]string) (string, error) {
	if u := vars["DATABASE_URL"]; u != "" {
		fmt.Fprintf(cl.logs, "pgchat cluster: database from DATABASE_URL: %s\n", redact(u))
		return u, nil
	}
	def, _ := env.ParseAsWithOptions[Config](env.Options{Environment: map[string]string{}})
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	conn, err := store.Connect(pctx, def.DatabaseURL, "cluster probe")
	cancel()
	if err == nil {
		conn.Close(ctx)
		fmt.Fprintf(cl.logs, "pgchat cluster: using the local PostgreSQL at %s\n", redact(def.DatabaseURL))
		return def.DatabaseURL, nil
	}
	probeErr := strings.Join(strings.Fields(err.Error()), " ")
	bin, ok := postgresBin()
	if !ok {
		return "", fmt.Errorf("no database: DATABASE_URL is not set, nothing usable answers at %s (%s), and the PostgreSQL server programs (initdb, postgres) are not installed. Install them (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql) or set DATABASE_URL", redact(def.DatabaseURL), probeErr)
	}
	fmt.Fprintf(cl.logs, "pgchat cluster: no usable PostgreSQL at %s (%s): starting a private one\n", redact(def.DatabaseURL), probeErr)
	return cl.startPostgres(ctx, bin)
}

// postgresBin finds the directory holding initdb and postgres: PATH, then
// Debian's /usr/lib/postgresql/VERSION/bin (newest first) and Homebrew's.
func postgresBin() (string, bool) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/opt/homebrew/opt/postgresql*/bin", "/usr/local/opt/postgresql*/bin"} {
		found, _ := filepath.Glob(pattern)
		slices.SortFunc(found, func(a, b string) int { return -compareVersionPaths(a, b) })
		dirs = append(dirs, found...)
	}
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, true
		}
	}
	return "", false
}

// compareVersionPaths orders .../15/bin before .../9/bin numerically.
func compareVersionPaths(a, b string) int {
	num := func(s string) int {
		digits := strings.TrimLeftFunc(filepath.Base(filepath.Dir(s)), func(r rune) bool { return r < '0' || r > '9' })
		n, _ := strconv.Atoi(strings.SplitN(digits, ".", 2)[0])
		return n
	}
	return cmp.Compare(num(a), num(b))
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// startPostgres initializes a throwaway cluster (tempPostgres) and runs it
// on a free local port until cl.stop, which deletes it.
func (cl *cluster) startPostgres(ctx context.Context, bin string) (string, error) {
	pg, err := initTempPostgres(ctx, bin)
	if err != nil {
		return "", err
	}
	cl.dirs = append(cl.dirs, pg.Dir)
	cmd := exec.Command(filepath.Join(bin, "postgres"), append([]string{"-D", pg.Data}, pg.serverOptions()...)...)
	cmd.Dir = pg.Dir
	cl.postgres, err = cl.start("postgres", cmd, pg.RunAs)
	if err != nil {
		return "", err
	}
	if err := pg.waitAccepting(ctx, cl.postgres.done, 30*time.Second); err != nil {
		return "", fmt.Errorf("the private PostgreSQL: %w", err)
	}
	fmt.Fprintf(cl.logs, "pgchat cluster: private PostgreSQL in %s on port %d (deleted on exit)\n", pg.Dir, pg.Port)
	return pg.URL(), nil
}

// redact hides a URL's password.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// lockedWriter serializes writes from several children.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// prefixWriter writes whole lines to w, each after prefix.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mu     sync.Mutex
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		p.w.Write(append([]byte(p.prefix), p.buf[:i+1]...))
		p.buf = p.buf[i+1:]
	}
}

// flush writes a last, unterminated line.
func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		p.w.Write(append(append([]byte(p.prefix), p.buf...), '\n'))
		p.buf = nil
	}
}

// pprofAddr gives instance i (from 1) its own profiling address when
// PPROF_ADDR is host:port: the port plus i-1.
func pprofAddr(addr string, i int) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", false
	}
	return net.JoinHostPort(host, strconv.Itoa(p+i-1)), true
}
