package main

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// countUpgrades is a proxy to base that counts WebSocket upgrade attempts.
func countUpgrades(t *testing.T, base string) (string, *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			n.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// In token mode, a page with no token or an expired one says why after its
// first attempt and stops trying; a good token is read, then removed from the
// address bar.
func TestBrowserTokenRefused(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1", "AUTH_SECRET="+testAuthSecret))
	base, upgrades := countUpgrades(t, in.URL)
	browser := newBrowser(t)

	cases := []struct{ name, query, reason string }{
		{"expired token", "?token=" + mint(t, testAuthSecret, "alice", -time.Minute, "general") + "&room=general", "token expired"},
		{"no token", "?name=alice&room=general", "missing token"},
		{"forged token", "?token=" + mint(t, "another-secret-0123456789abcdef0123456789", "alice", time.Hour, "general"), "invalid token signature"},
	}
	for _, c := range cases {
		before := upgrades.Load()
		start := time.Now()
		p := openTab(t, browser, c.name, base+"/"+c.query)
		p.waitFor("the refusal", `window.pgchat.state().status === 'refused'`)
		// No wall-clock assertion (the machine may be loaded): the refusal
		// follows the first attempt, with no backoff wait in between, which
		// is what keeps it well under the 2 s.
		t.Logf("%s: refused %v after opening the tab, %.0f ms after the page's start", c.name, time.Since(start).Round(time.Millisecond), eval[float64](p, `performance.now()`))
		notice := eval[string](p, `document.querySelector('#notice').hidden ? '' : document.querySelector('#notice .text').textContent`)
		if !strings.Contains(notice, c.reason) {
			t.Errorf("%s: notice %q does not say %q", c.name, notice, c.reason)
		}
		if got := eval[string](p, `location.search`); strings.Contains(got, "token=") {
			t.Errorf("%s: address bar still has the token: %q", c.name, got)
		}
		tried := upgrades.Load() - before
		time.Sleep(1500 * time.Millisecond) // long enough for a retry loop to show (the backoff starts at 0.5 s)
		if again := upgrades.Load() - before; again != tried || tried > 1 {
			t.Errorf("%s: %d upgrade attempts before the refusal, %d after 1.5 s more, want 1 and no more", c.name, tried, again)
		}
	}

	good := mint(t, testAuthSecret, "carol", time.Hour, "general")
	p := openTab(t, browser, "good token", base+"/?room=general&token="+good)
	p.waitJoined("general")
	if s := p.state(); s.Author != "carol" {
		t.Errorf("author %q, want carol (the token's sub)", s.Author)
	}
	if got := eval[string](p, `location.search`); got != "?room=general" {
		t.Errorf("address bar query %q, want ?room=general (token removed)", got)
	}
	// A reload of the tab keeps the session (sessionStorage), not the URL.
	p.do(chromedp.Reload())
	p.waitJoined("general")
}
