package main

// Checks of the deploy files: docker-compose.yml, fly.toml, haproxy.cfg and
// the Dockerfile. They parse the files and hold them to what docs/deploy.md
// promises; nothing here needs Docker or a Fly account. The one external tool
// is haproxy (Debian's package), for `haproxy -c`.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"gopkg.in/yaml.v3"
)

// defaultShutdownTimeout is pgchat's SHUTDOWN_TIMEOUT when unset.
const defaultShutdownTimeout = 10 * time.Second

// defaultDrainDelay is pgchat's DRAIN_DELAY when unset.
const defaultDrainDelay = 5 * time.Second

// composeFile is the part of docker-compose.yml the tests look at.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image         string            `yaml:"image"`
	Build         any               `yaml:"build"`
	Command       []string          `yaml:"command"`
	ContainerName string            `yaml:"container_name"`
	Hostname      string            `yaml:"hostname"`
	Ports         []any             `yaml:"ports"`
	Volumes       []string          `yaml:"volumes"`
	Environment   map[string]string `yaml:"environment"`
	Healthcheck   *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Deploy struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
	Restart         string `yaml:"restart"`
	StopGracePeriod string `yaml:"stop_grace_period"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("parse docker-compose.yml: %v", err)
	}
	return c
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	c := readCompose(t)
	for _, name := range []string{"db", "migrate", "app", "haproxy"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("docker-compose.yml: service %q missing", name)
		}
	}

	t.Run("db", func(t *testing.T) {
		t.Parallel()
		db := c.Services["db"]
		if !strings.HasPrefix(db.Image, "postgres:16") {
			t.Errorf("db image = %q, want postgres:16", db.Image)
		}
		if got := db.Environment["POSTGRES_PASSWORD"]; !strings.HasPrefix(got, "${POSTGRES_PASSWORD") {
			t.Errorf("db POSTGRES_PASSWORD = %q, want it from the environment (${POSTGRES_PASSWORD:-...})", got)
		}
		if db.Healthcheck == nil || !strings.Contains(strings.Join(db.Healthcheck.Test, " "), "pg_isready") {
			t.Errorf("db healthcheck = %+v, want a pg_isready test", db.Healthcheck)
		}
		named := false
		for _, v := range db.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if _, ok := c.Volumes[src]; ok {
				named = true
			}
		}
		if !named {
			t.Errorf("db volumes = %v, want a named volume declared under top-level volumes (%v)", db.Volumes, c.Volumes)
		}
	})

	t.Run("migrate", func(t *testing.T) {
		t.Parallel()
		m := c.Services["migrate"]
		if !slices.Equal(m.Command, []string{"migrate"}) {
			t.Errorf("migrate command = %q, want [migrate]", m.Command)
		}
		if m.Build == nil {
			t.Errorf("migrate build = nil, want the repo's Dockerfile")
		}
		if got := m.DependsOn["db"].Condition; got != "service_healthy" {
			t.Errorf("migrate depends_on db condition = %q, want service_healthy", got)
		}
		if m.Restart != "no" {
			t.Errorf("migrate restart = %q, want \"no\" (a one-shot job)", m.Restart)
		}
		checkDatabaseURL(t, "migrate", m)
	})

	t.Run("app", func(t *testing.T) {
		t.Parallel()
		app := c.Services["app"]
		if app.Deploy.Replicas < 3 {
			t.Errorf("app deploy.replicas = %d, want >= 3", app.Deploy.Replicas)
		}
		// --scale app=N needs these unset: replicas would clash on them.
		if app.ContainerName != "" {
			t.Errorf("app container_name = %q, want none (breaks --scale)", app.ContainerName)
		}
		if app.Hostname != "" {
			t.Errorf("app hostname = %q, want none (every replica needs its own for INSTANCE_ID)", app.Hostname)
		}
		if len(app.Ports) != 0 {
			t.Errorf("app ports = %v, want none (breaks --scale; clients come through haproxy)", app.Ports)
		}
		for _, k := range []string{"INSTANCE_ID", "APP_ID"} {
			if v, ok := app.Environment[k]; ok {
				t.Errorf("app environment %s = %q, want unset (pgchat falls back to the container hostname)", k, v)
			}
		}
		if got := app.DependsOn["db"].Condition; got != "service_healthy" {
			t.Errorf("app depends_on db condition = %q, want service_healthy", got)
		}
		if got := app.DependsOn["migrate"].Condition; got != "service_completed_successfully" {
			t.Errorf("app depends_on migrate condition = %q, want service_completed_successfully", got)
		}
		if app.Image == "" || app.Image != c.Services["migrate"].Image {
			t.Errorf("app image = %q, migrate image = %q, want the same pgchat image", app.Image, c.Services["migrate"].Image)
		}
		if len(app.Command) > 0 && !slices.Equal(app.Command, []string{"serve"}) {
			t.Errorf("app command = %q, want [serve] or the image default", app.Command)
		}
		checkDatabaseURL(t, "app", app)
		// Docker's stop timeout must leave room for the drain.
		grace, err := time.ParseDuration(app.StopGracePeriod)
		if err != nil {
			t.Fatalf("app stop_grace_period = %q: %v (Docker's default, 10s, is not more than SHUTDOWN_TIMEOUT)", app.StopGracePeriod, err)
		}
		shutdown := defaultShutdownTimeout
		if s, ok := app.Environment["SHUTDOWN_TIMEOUT"]; ok {
			if shutdown, err = time.ParseDuration(s); err != nil {
				t.Fatalf("app SHUTDOWN_TIMEOUT = %q: %v", s, err)
			}
		}
		drain := defaultDrainDelay
		if s, ok := app.Environment["DRAIN_DELAY"]; ok {
			if drain, err = time.ParseDuration(s); err != nil {
				t.Fatalf("app DRAIN_DELAY = %q: %v", s, err)
			}
		}
		if grace <= drain+shutdown {
			t.Errorf("app stop_grace_period = %v, want > DRAIN_DELAY + SHUTDOWN_TIMEOUT (%v + %v)", grace, drain, shutdown)
		}
	})

	t.Run("haproxy", func(t *testing.T) {
		t.Parallel()
		h := c.Services["haproxy"]
		if !strings.HasPrefix(h.Image, "haproxy:") {
			t.Errorf("haproxy image = %q, want haproxy:<version>", h.Image)
		}
		const mount = "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg"
		if !slices.ContainsFunc(h.Volumes, func(v string) bool { return strings.HasPrefix(v, mount) }) {
			t.Errorf("haproxy volumes = %q, want %q", h.Volumes, mount+":ro")
		}
		var ports []string
		for _, p := range h.Ports {
			s, ok := p.(string)
			if !ok {
				t.Fatalf("haproxy port %v: want the short \"host:container\" form", p)
			}
			ports = append(ports, s)
		}
		for _, want := range []string{"8080:8080", "8404:8404"} {
			if !slices.Contains(ports, want) {
				t.Errorf("haproxy ports = %q, want %q among them", ports, want)
			}
		}
		if _, ok := h.DependsOn["app"]; !ok {
			t.Errorf("haproxy depends_on = %v, want app", h.DependsOn)
		}
	})
}

// checkDatabaseURL checks that a pgchat service reaches the db service with
// the same password the db service was given.
func checkDatabaseURL(t *testing.T, service string, s composeService) {
	t.Helper()
	u := s.Environment["DATABASE_URL"]
	if !strings.Contains(u, "@db:5432/") {
		t.Errorf("%s DATABASE_URL = %q, want host db:5432", service, u)
	}
	if !strings.Contains(u, ":${POSTGRES_PASSWORD") {
		t.Errorf("%s DATABASE_URL = %q, want the password from ${POSTGRES_PASSWORD...}", service, u)
	}
}

// flyConfig mirrors every key fly.toml uses, so that toml's undecoded-keys
// check flags a misspelt key (Fly would ignore it silently).
type flyConfig struct {
	App           string `toml:"app"`
	PrimaryRegion string `toml:"primary_region"`
	KillSignal    string `toml:"kill_signal"`
	KillTimeout   any    `toml:"kill_timeout"` // "15s" or a number of seconds
	Build         struct {
		Dockerfile string `toml:"dockerfile"`
	} `toml:"build"`
	Deploy struct {
		ReleaseCommand string `toml:"release_command"`
		Strategy       string `toml:"strategy"`
	} `toml:"deploy"`
	Env         map[string]string `toml:"env"`
	HTTPService struct {
		InternalPort       int      `toml:"internal_port"`
		ForceHTTPS         bool     `toml:"force_https"`
		AutoStopMachines   any      `toml:"auto_stop_machines"` // "off", "stop", "suspend" (bool in old files)
		AutoStartMachines  bool     `toml:"auto_start_machines"`
		MinMachinesRunning int      `toml:"min_machines_running"`
		Processes          []string `toml:"processes"`
		Concurrency        struct {
			Type      string `toml:"type"`
			SoftLimit int    `toml:"soft_limit"`
			HardLimit int    `toml:"hard_limit"`
		} `toml:"concurrency"`
		Checks []struct {
			GracePeriod string `toml:"grace_period"`
			Interval    string `toml:"interval"`
			Timeout     string `toml:"timeout"`
			Method      string `toml:"method"`
			Path        string `toml:"path"`
		} `toml:"checks"`
	} `toml:"http_service"`
	VM []struct {
		Size   string `toml:"size"`
		Memory string `toml:"memory"`
	} `toml:"vm"`
}

func TestFlyToml(t *testing.T) {
	t.Parallel()
	var fly flyConfig
	md, err := toml.DecodeFile("fly.toml", &fly)
	if err != nil {
		t.Fatalf("parse fly.toml: %v", err)
	}
	if keys := md.Undecoded(); len(keys) > 0 {
		t.Errorf("fly.toml keys %v are unknown to this test: misspelt, or add them to flyConfig", keys)
	}

	if fly.App == "" || fly.PrimaryRegion == "" {
		t.Errorf("fly.toml app = %q, primary_region = %q, want both set", fly.App, fly.PrimaryRegion)
	}
	if fly.KillSignal != "SIGTERM" {
		t.Errorf("kill_signal = %q, want SIGTERM", fly.KillSignal)
	}
	killTimeout, err := flyDuration(fly.KillTimeout)
	if err != nil {
		t.Errorf("kill_timeout = %v: %v", fly.KillTimeout, err)
	}
	shutdown := defaultShutdownTimeout
	if s, ok := fly.Env["SHUTDOWN_TIMEOUT"]; ok {
		if shutdown, err = time.ParseDuration(s); err != nil {
			t.Errorf("[env] SHUTDOWN_TIMEOUT = %q: %v", s, err)
		}
	}
	drain := defaultDrainDelay
	if s, ok := fly.Env["DRAIN_DELAY"]; ok {
		if drain, err = time.ParseDuration(s); err != nil {
			t.Errorf("[env] DRAIN_DELAY = %q: %v", s, err)
		}
	}
	if killTimeout <= drain+shutdown {
		t.Errorf("kill_timeout = %v, want > DRAIN_DELAY + SHUTDOWN_TIMEOUT (%v + %v)", killTimeout, drain, shutdown)
	}
	if killTimeout > 300*time.Second {
		t.Errorf("kill_timeout = %v, want <= 300s (Fly's maximum)", killTimeout)
	}
	// ENTRYPOINT is /pgchat and release_command replaces CMD.
	if f := strings.Fields(fly.Deploy.ReleaseCommand); len(f) == 0 || f[0] != "migrate" {
		t.Errorf("[deploy] release_command = %q, want \"migrate\" (the image's ENTRYPOINT is /pgchat)", fly.Deploy.ReleaseCommand)
	}
	if fly.Build.Dockerfile != "Dockerfile" {
		t.Errorf("[build] dockerfile = %q, want Dockerfile", fly.Build.Dockerfile)
	}

	hs := fly.HTTPService
	if got, want := fly.Env["PORT"], "8080"; got != want {
		t.Errorf("[env] PORT = %q, want %q", got, want)
	}
	if hs.InternalPort != 8080 {
		t.Errorf("internal_port = %d, want 8080 (PORT)", hs.InternalPort)
	}
	if !hs.ForceHTTPS {
		t.Errorf("force_https = false, want true")
	}
	if hs.AutoStopMachines != "stop" && hs.AutoStopMachines != "suspend" {
		t.Errorf("auto_stop_machines = %v, want \"stop\" or \"suspend\"", hs.AutoStopMachines)
	}
	if !hs.AutoStartMachines {
		t.Errorf("auto_start_machines = false, want true")
	}
	if hs.MinMachinesRunning < 1 {
		t.Errorf("min_machines_running = %d, want >= 1", hs.MinMachinesRunning)
	}
	cc := hs.Concurrency
	if cc.Type != "connections" {
		t.Errorf("concurrency type = %q, want connections (one WebSocket = one connection)", cc.Type)
	}
	if cc.SoftLimit <= 0 || cc.HardLimit < cc.SoftLimit {
		t.Errorf("concurrency soft_limit = %d, hard_limit = %d, want 0 < soft <= hard", cc.SoftLimit, cc.HardLimit)
	}
	readyz := false
	for _, c := range hs.Checks {
		if c.Path == "/readyz" && strings.EqualFold(c.Method, "GET") {
			readyz = true
			for _, d := range []string{c.Interval, c.Timeout, c.GracePeriod} {
				if _, err := time.ParseDuration(d); err != nil {
					t.Errorf("/readyz check duration %q: %v", d, err)
				}
			}
		}
	}
	if !readyz {
		t.Errorf("[[http_service.checks]] = %+v, want a GET /readyz", hs.Checks)
	}
	if len(fly.VM) == 0 || fly.VM[0].Memory == "" {
		t.Errorf("[[vm]] = %+v, want a size and memory", fly.VM)
	}
}

// flyDuration reads a fly.toml duration: a string like "15s", or a number of
// seconds.
func flyDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		return time.ParseDuration(v)
	case int64:
		return time.Duration(v) * time.Second, nil
	case nil:
		return 5 * time.Second, nil // Fly's default
	default:
		return 0, errors.New("want a duration string or seconds")
	}
}

// haproxyDirectives returns haproxy.cfg's lines without comments and
// surrounding space, empty lines dropped.
func haproxyDirectives(t *testing.T) (lines []string, raw []byte) {
	t.Helper()
	raw, err := os.ReadFile("haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.Join(strings.Fields(line), " "); line != "" {
			lines = append(lines, line)
		}
	}
	return lines, raw
}

func TestHAProxyConfigContents(t *testing.T) {
	t.Parallel()
	lines, raw := haproxyDirectives(t)
	if !bytes.HasSuffix(raw, []byte("\n")) {
		t.Errorf("haproxy.cfg does not end in a newline; HAProxy 2.6 rejects it (\"Missing LF on last line\")")
	}
	has := func(re string) bool {
		r := regexp.MustCompile(re)
		return slices.ContainsFunc(lines, r.MatchString)
	}
	for _, tc := range []struct{ name, re string }{
		{"mode http", `^mode http$`},
		{"balance leastconn", `^balance leastconn$`},
		{"timeout tunnel", `^timeout tunnel \S+$`},
		{"timeout client-fin", `^timeout client-fin \S+$`},
		{"timeout server-fin", `^timeout server-fin \S+$`},
		{"httpchk /readyz", `^option httpchk (GET )?/readyz\b`},
		{"expect 200", `^http-check expect status 200$`},
		{"forwardfor", `^option forwardfor\b`},
		{"redispatch", `^option redispatch\b`},
		{"server-template", `^server-template \S+ \S+ app:8080 .*\bcheck\b.*\bresolvers docker\b`},
		{"resolvers docker", `^resolvers docker$`},
		{"docker dns", `^nameserver \S+ 127\.0\.0\.11:53$`},
		{"frontend on 8080", `^bind \*:8080$`},
		{"stats on 8404", `^bind \*:8404$`},
		{"stats enable", `^stats enable$`},
	} {
		if !has(tc.re) {
			t.Errorf("haproxy.cfg: no line matching %q (%s)", tc.re, tc.name)
		}
	}
	// The app drains its own sockets with 1001; HAProxy must not cut them.
	for _, bad := range []string{"shutdown-sessions", "http-server-close"} {
		if has(regexp.QuoteMeta(bad)) {
			t.Errorf("haproxy.cfg uses %q, want it absent", bad)
		}
	}
}

func TestHAProxyConfigCheck(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("haproxy not found (%v); CI must install it (Debian package haproxy)", err)
		}
		t.Skipf("haproxy not found (%v); install Debian's haproxy to run this check", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-c", "-f", "haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c -f haproxy.cfg: %v\n%s", err, out)
	}
	// -c passes with warnings too; a warning here is a mistake in the file.
	if bytes.Contains(out, []byte("[WARNING]")) {
		t.Errorf("haproxy -c -f haproxy.cfg warns:\n%s", out)
	}
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, drop comments.
	var lines []string
	var cur strings.Builder
	for _, l := range strings.Split(string(raw), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(l, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		if s := strings.TrimSpace(cur.String()); s != "" {
			lines = append(lines, s)
		}
		cur.Reset()
	}

	// The last stage is the image that runs.
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(strings.ToUpper(l), "FROM ") {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("Dockerfile: no FROM")
	}
	final := lines[last:]
	if strings.Count(strings.ToUpper(string(raw)), "\nFROM ") < 2 {
		t.Errorf("Dockerfile has one stage, want a build stage and a runtime stage")
	}
	if !strings.Contains(string(raw), "CGO_ENABLED=0") {
		t.Errorf("Dockerfile: no CGO_ENABLED=0, want a static binary")
	}
	if !strings.Contains(string(raw), "-trimpath") {
		t.Errorf("Dockerfile: go build without -trimpath")
	}

	base := strings.Fields(final[0])[1]
	nonroot := strings.Contains(base, "distroless") && strings.HasSuffix(base, ":nonroot")
	instr := func(name string) (string, bool) {
		val, found := "", false
		for _, l := range final {
			if k, v, ok := strings.Cut(l, " "); ok && strings.EqualFold(k, name) {
				val, found = strings.TrimSpace(v), true
			}
		}
		return val, found
	}
	user, hasUser := instr("USER")
	if hasUser {
		nonroot = user != "root" && user != "0" && !strings.HasPrefix(user, "0:") && !strings.HasPrefix(user, "root:")
	}
	if !nonroot {
		t.Errorf("runtime stage FROM %s, USER %q, want distroless :nonroot or a non-root USER", base, user)
	}
	for _, tc := range []struct{ name, want string }{
		{"ENTRYPOINT", "/pgchat"},
		{"CMD", "serve"},
	} {
		v, ok := instr(tc.name)
		var got []string
		if err := json.Unmarshal([]byte(v), &got); !ok || err != nil || !slices.Equal(got, []string{tc.want}) {
			t.Errorf("runtime %s = %s, want [%q] (exec form)", tc.name, v, tc.want)
		}
	}
	if v, _ := instr("EXPOSE"); !slices.Contains(strings.Fields(v), "8080") {
		t.Errorf("runtime EXPOSE = %q, want 8080", v)
	}
}
