package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// Helpers for the browser tests (browser_test.go): a headless Chromium per
// test driven with chromedp, a tab per page, the page's test hooks
// (window.pgchat in chat/web/app.js), screenshots, and a failover proxy.

// browserTimeout bounds a whole browser test: the browser is killed when it
// passes, so no step can hang longer.
const browserTimeout = 3 * time.Minute

// waitTimeout bounds one wait for a page condition.
const waitTimeout = 45 * time.Second

// chromiumPath finds Debian's chromium. Without it the test is skipped, or
// fails when CI is set (.ci/run installs it), so CI never passes on skips.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found (.ci/run installs it)")
	}
	t.Skip("chromium not found: apt-get install chromium to run the browser tests")
	return ""
}

// newBrowser starts a headless Chromium for t and returns its context; the
// browser exits when the test ends or after browserTimeout, whichever is
// first. chromedp gives each browser a fresh temporary user-data-dir and
// removes it afterwards, so parallel tests share no profile.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// Small /dev/shm in containers; tabs that must keep their timers
		// running although another tab is in front.
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.WindowSize(1280, 800),
	}
	logf := safeLogf(t)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	cctx, cancelCtx := chromedp.NewContext(allocCtx, chromedp.WithErrorf(logf))
	// The first Do binds the browser's life to ctx (chromedp docs/API.md,
	// example 21): the deadline kills it.
	ctx, cancel := context.WithTimeout(cctx, browserTimeout)
	t.Cleanup(func() {
		chromedp.Cancel(cctx) // closes the browser and waits for it
		cancelCtx()
		cancel()
		cancelAlloc() // waits for the user-data-dir to be removed
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// safeLogf returns a t.Logf that drops lines once the test's cleanups have
// run, for goroutines (chromedp's, the console reader) that may outlive it.
func safeLogf(t *testing.T) func(string, ...any) {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() {
		mu.Lock()
		done = true
		mu.Unlock()
	})
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Logf(format, args...)
		}
	}
}

// tab is one page in a browser.
type tab struct {
	t    *testing.T
	name string // for messages: "alice's page"
	ctx  context.Context

	mu         sync.Mutex
	dialogs    []string // alert/confirm/prompt messages, each dismissed
	exceptions []string // uncaught exceptions
}

// openTab opens rawURL in a new tab of browser. It logs the page's console,
// dismisses (and records) any JavaScript dialog, and fails the test at the
// end if the page threw an uncaught exception.
func openTab(t *testing.T, browser context.Context, name, rawURL string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	p := &tab{t: t, name: name, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		cancel()
		t.Fatalf("%s: open tab: %v", name, err)
	}
	logf := safeLogf(t)
	console := chromedp.Console(ctx)
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	var wg sync.WaitGroup
	wg.Go(func() {
		for m, err := range console {
			if err != nil {
				return
			}
			logf("%s console %s: %s", name, m.Type, m)
			if m.IsException() {
				p.mu.Lock()
				p.exceptions = append(p.exceptions, m.String())
				p.mu.Unlock()
			}
		}
	})
	wg.Go(func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.dialogs = append(p.dialogs, fmt.Sprintf("%s(%q)", ev.Type, ev.Message))
			p.mu.Unlock()
			// A dialog blocks the page and every Evaluate: dismiss it.
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.exceptions {
			t.Errorf("%s threw: %s", name, e)
		}
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(rawURL)); err != nil {
		t.Fatalf("%s: navigate to %s: %v", name, rawURL, err)
	}
	return p
}

// pageURL is base's chat page for name in rooms (the page then skips its
// form and connects).
func pageURL(base, name string, rooms ...string) string {
	q := url.Values{"name": {name}, "room": rooms}
	return base + "/?" + q.Encode()
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// eval evaluates expr in p and decodes its value into T.
func eval[T any](p *tab, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("%s: evaluate %s: %v", p.name, expr, err)
	}
	return v
}

// do runs actions in p.
func (p *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// waitFor polls the JavaScript expression cond in p until it is truthy, and
// fails the test with the page's state after waitTimeout.
func (p *tab) waitFor(what, cond string) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout)))
	if err != nil {
		state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`JSON.stringify(window.pgchat && window.pgchat.state())`))
		p.t.Fatalf("%s: waiting for %s (%s): %v\nstate: %s", p.name, what, cond, err, state)
	}
}

// waitJoined waits until p is connected and has joined room.
func (p *tab) waitJoined(room string) {
	p.t.Helper()
	p.waitFor("joined "+room, fmt.Sprintf(`(() => {
		const s = window.pgchat && window.pgchat.state(), r = s && s.rooms[%s];
		return s && s.connected && r && r.joined;
	})()`, js(room)))
}

// pageState is window.pgchat.state().
type pageState struct {
	Connected bool                 `json:"connected"`
	Status    string               `json:"status"`
	Instance  string               `json:"instance"`
	Author    string               `json:"author"`
	Current   string               `json:"current"`
	Rooms     map[string]roomState `json:"rooms"`
	Pending   int                  `json:"pending"`
	Failed    int                  `json:"failed"`
}

type roomState struct {
	Seqs   []int64 `json:"seqs"`
	Unread int     `json:"unread"`
	Joined bool    `json:"joined"`
	Head   int64   `json:"head"`
}

// pageMessage is an element of window.pgchat.messages(room).
type pageMessage struct {
	Seq      int64  `json:"seq"`
	Author   string `json:"author"`
	Body     string `json:"body"`
	Instance string `json:"instance"`
}

func (p *tab) state() pageState {
	p.t.Helper()
	return eval[pageState](p, `window.pgchat.state()`)
}

func (p *tab) messages(room string) []pageMessage {
	p.t.Helper()
	return eval[[]pageMessage](p, fmt.Sprintf(`window.pgchat.messages(%s)`, js(room)))
}

// domMessage is one li.msg with a data-seq (a message the server numbered).
type domMessage struct {
	Seq      int64  `json:"seq"`
	Author   string `json:"author"`
	Body     string `json:"body"`
	Instance string `json:"instance"`
}

// domMessages returns room's li.msg[data-seq] elements in document order,
// read from the DOM (textContent), not from the page's state.
func (p *tab) domMessages(room string) []domMessage {
	p.t.Helper()
	return eval[[]domMessage](p, fmt.Sprintf(`[...document.querySelectorAll('#messages li.msg[data-room=%s][data-seq]')].map((li) => ({
		seq: Number(li.dataset.seq),
		author: li.querySelector('.author').textContent,
		body: li.querySelector('.body').textContent,
		instance: li.querySelector('.instance') ? li.querySelector('.instance').textContent : '',
	}))`, js(room)))
}

// dialogsSeen returns the JavaScript dialogs p has opened so far.
func (p *tab) dialogsSeen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dialogs...)
}

// screenshot saves p's viewport as name (a .png) in the artifact directory
// and logs where.
func (p *tab) screenshot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("%s: screenshot: %v", p.name, err)
	}
	dir := artifactDir(p.t)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
}

// artifactDir is where tests leave files for people: $PGCHAT_ARTIFACTS, or
// artifacts/ in the repository (git-ignored).
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PGCHAT_ARTIFACTS")
	if dir == "" {
		dir = "artifacts" // go test runs in the package directory: the repo root
	}
	dir, err := filepath.Abs(dir)
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("artifact directory: %v", err)
	}
	return dir
}

var refCounter atomic.Int64

// post sends bodies to room from c, which has joined it, a few at a time,
// and waits for their acks; it returns their seqs. Frames other than acks
// and errors are skipped.
func post(c *wsClient, room string, bodies ...string) []int64 {
	c.t.Helper()
	var seqs []int64
	for len(bodies) > 0 {
		batch := bodies[:min(len(bodies), 20)]
		bodies = bodies[len(batch):]
		refs := map[string]int{}
		for i, b := range batch {
			ref := fmt.Sprintf("t-%d", refCounter.Add(1))
			refs[ref] = i
			c.send(room, b, ref)
		}
		got := make([]int64, len(batch))
		for len(refs) > 0 {
			f := c.next()
			switch f.Type {
			case "ack":
				if i, ok := refs[f.Ref]; ok {
					got[i] = f.Seq
					delete(refs, f.Ref)
				}
			case "error":
				c.t.Fatalf("post to %s: %+v", room, f)
			}
		}
		seqs = append(seqs, got...)
	}
	return seqs
}

// failover is a reverse proxy in front of several instances, so that a
// page's origin survives an instance: each request goes to the first
// backend that accepts a TCP connection, as a load balancer does once its
// health check has marked a dead server down. WebSocket upgrades pass
// through (httputil.ReverseProxy). Hold makes it answer 503, like a load
// balancer with no server up, so a test can control when a page gets back.
type failover struct {
	URL  string
	held atomic.Bool
}

func startFailover(t *testing.T, backends ...string) *failover {
	t.Helper()
	var addrs []string
	for _, b := range backends {
		u, err := url.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, u.Host)
	}
	first, _ := url.Parse(backends[0])
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(first) // the transport's dialer picks the live backend
			r.Out.Host = r.In.Host
		},
		Transport: &http.Transport{
			DisableKeepAlives: true, // each request dials, so it sees who is up
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var err error
				for _, a := range addrs {
					var c net.Conn
					if c, err = dialer.DialContext(ctx, network, a); err == nil {
						return c, nil
					}
				}
				return nil, err
			},
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "no backend: "+err.Error(), http.StatusBadGateway)
		},
	}
	f := &failover{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.held.Load() {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "held by the test", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// hold makes the proxy refuse (true) or pass (false) new requests.
func (f *failover) hold(on bool) { f.held.Store(on) }

// seqRange returns from, from+1, ..., to.
func seqRange(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// bodies returns n message bodies "prefix 1" ... "prefix n".
func bodies(prefix string, n int) []string {
	var b []string
	for i := 1; i <= n; i++ {
		b = append(b, fmt.Sprintf("%s %d", prefix, i))
	}
	return b
}

// checkDOMSeqs fails unless the DOM holds exactly want, in order.
func checkDOMSeqs(t *testing.T, who string, got []domMessage, want []int64) {
	t.Helper()
	seqs := make([]int64, len(got))
	for i, m := range got {
		seqs[i] = m.Seq
	}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Fatalf("%s: li.msg data-seq = %v, want %v (each once, in order)", who, seqs, want)
	}
}
