package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/store/storetest"
)

// instance is one pgchat server running in the test process.
type instance struct {
	URL  string // http://127.0.0.1:port
	ID   string
	stop func() error // graceful shutdown; returns serve's error
}

// testEnv is a config for a test's own database, with test-friendly values.
func testEnv(dbURL, id string, extra ...string) []string {
	return append([]string{
		"DATABASE_URL=" + dbURL,
		"INSTANCE_ID=" + id,
		"RATE_LIMIT=-1",
		"SHUTDOWN_TIMEOUT=10s",
		"DRAIN_DELAY=0",    // the drain tests set their own
		"SYNC_INTERVAL=1h", // tests must not pass thanks to the safety net
	}, extra...)
}

// startInstance runs serve with environ on a free port until the test ends.
func startInstance(t *testing.T, environ []string) *instance {
	t.Helper()
	cfg, err := loadConfig(environ)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	go func() { done <- serve(ctx, cfg, log.With("instance", cfg.InstanceID), ln) }()
	in := &instance{URL: "http://" + ln.Addr().String(), ID: cfg.InstanceID}
	in.stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		if err := in.stop(); err != nil {
			t.Errorf("instance %s: %v", in.ID, err)
		}
	})
	waitReady(t, in.URL)
	return in
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never became ready: %v", base, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// frame is any server frame.
type frame struct {
	Type      string `json:"type"`
	Room      string `json:"room"`
	Seq       int64  `json:"seq"`
	Author    string `json:"author"`
	Body      string `json:"body"`
	Ts        string `json:"ts"`
	Instance  string `json:"instance"`
	Recovered *bool  `json:"recovered"`
	Ref       string `json:"ref"`
	Code      string `json:"code"`
	Message   string `json:"message"`
}

// wsClient is a test's WebSocket connection.
type wsClient struct {
	t       testing.TB
	conn    *websocket.Conn
	welcome frame
}

// dial connects to base's /ws with the query and reads the welcome frame.
func dial(t testing.TB, base string, query url.Values) *wsClient {
	t.Helper()
	c, err := tryDial(t.Context(), base, query)
	if err != nil {
		t.Fatalf("dial %s: %v", base, err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.CloseNow() })
	return c
}

func tryDial(ctx context.Context, base string, query url.Values) (*wsClient, error) {
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws?" + query.Encode()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(1 << 20)
	c := &wsClient{conn: conn}
	var f frame
	if err := readFrame(ctx, conn, &f); err != nil {
		conn.CloseNow()
		return nil, err
	}
	if f.Type != "welcome" {
		conn.CloseNow()
		return nil, fmt.Errorf("first frame %+v, want welcome", f)
	}
	c.welcome = f
	return c, nil
}

// readFrame reads the next frame into f (zeroed first), skipping what
// readFrameInto skips.
func readFrame(ctx context.Context, conn *websocket.Conn, f *frame) error {
	*f = frame{}
	return readFrameInto(ctx, conn, f)
}

// readFrameInto decodes the next server frame into v, skipping presence,
// typing and read frames, which arrive at any time after a join
// (presence_test.go tests them).
func readFrameInto(ctx context.Context, conn *websocket.Conn, v any) error {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			return fmt.Errorf("got a binary frame")
		}
		var head struct{ Type string }
		if err := json.Unmarshal(data, &head); err != nil {
			return err
		}
		switch head.Type {
		case "presence", "presence_diff", "typing", "read":
			continue
		}
		return json.Unmarshal(data, v)
	}
}

func name(n string) url.Values { return url.Values{"name": {n}} }

// write sends one JSON frame.
func (c *wsClient) write(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.writeRaw(string(b))
}

func (c *wsClient) writeRaw(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write %s: %v", s, err)
	}
}

// trySend is send for goroutines other than the test's: it reports errors
// instead of failing the test, and has no deadline of its own.
func (c *wsClient) trySend(room, body, ref string) error {
	b, _ := json.Marshal(map[string]any{"type": "send", "room": room, "body": body, "ref": ref})
	return c.conn.Write(c.t.Context(), websocket.MessageText, b)
}

// tryNext is next for goroutines other than the test's.
func (c *wsClient) tryNext(timeout time.Duration) (frame, error) {
	ctx, cancel := context.WithTimeout(c.t.Context(), timeout)
	defer cancel()
	var f frame
	err := readFrame(ctx, c.conn, &f)
	return f, err
}

// next reads the next frame, failing the test after 10 s.
func (c *wsClient) next() frame {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 10*time.Second)
	defer cancel()
	var f frame
	if err := readFrame(ctx, c.conn, &f); err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

// nextOf skips frames until one of type typ.
func (c *wsClient) nextOf(typ string) frame {
	c.t.Helper()
	for {
		if f := c.next(); f.Type == typ {
			return f
		}
	}
}

// join joins room and returns the replayed messages and the joined frame.
func (c *wsClient) join(room string, since ...int64) ([]frame, frame) {
	c.t.Helper()
	j := map[string]any{"type": "join", "room": room}
	if len(since) > 0 {
		j["since"] = since[0]
	}
	c.write(j)
	var msgs []frame
	for {
		f := c.next()
		switch f.Type {
		case "message":
			msgs = append(msgs, f)
		case "joined":
			return msgs, f
		default:
			c.t.Fatalf("join %s: unexpected frame %+v", room, f)
		}
	}
}

func (c *wsClient) send(room, body, ref string) {
	c.t.Helper()
	c.write(map[string]any{"type": "send", "room": room, "body": body, "ref": ref})
}

// messages reads frames until it has n message frames, which it returns;
// other frames are skipped.
func (c *wsClient) messages(n int) []frame {
	c.t.Helper()
	var got []frame
	for len(got) < n {
		if f := c.next(); f.Type == "message" {
			got = append(got, f)
		}
	}
	return got
}

// checkSeqs fails unless msgs have seqs from, from+1, ... in order.
func checkSeqs(t testing.TB, who string, msgs []frame, from int64) {
	t.Helper()
	for i, m := range msgs {
		if want := from + int64(i); m.Seq != want {
			t.Fatalf("%s: message %d has seq %d, want %d (gap, duplicate or reorder)", who, i, m.Seq, want)
		}
	}
}

// dbConn connects to the database at url for t's queries; it is closed
// when t ends.
func dbConn(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// newDB returns a fresh migrated database for t.
func newDB(t *testing.T) string { return storetest.NewDB(t) }

// TestMain lets the test binary double as the pgchat binary: with
// PGCHAT_TEST_MAIN=1 it runs main, so tests can start real server processes
// (to kill -9 them) without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("PGCHAT_TEST_MAIN") == "1" {
		os.Args = append([]string{"pgchat"}, strings.Fields(os.Getenv("PGCHAT_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// process is a pgchat server running as a child process.
type process struct {
	URL string
	cmd *exec.Cmd
}

// startProcess runs pgchat serve in a child process with environ, on the
// PORT environ sets, else on a free port.
func startProcess(t *testing.T, environ []string) *process {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	for _, kv := range environ { // a PORT in environ wins: restarts keep their port
		if v, ok := strings.CutPrefix(kv, "PORT="); ok {
			fmt.Sscan(v, &port)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), environ...)
	cmd.Env = append(cmd.Env, "PGCHAT_TEST_MAIN=1", fmt.Sprintf("PORT=%d", port))
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{URL: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitReady(t, p.URL)
	return p
}
