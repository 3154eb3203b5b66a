package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Browser tests: the chat page (chat/web) in headless Chromium against real
// instances over a real database. Helpers are in browser_harness_test.go.

// hasMessage is a JavaScript condition: room's log shows a numbered message
// by author with body and instance badge, read from the DOM as text.
func hasMessage(room, author, body, instance string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#messages li.msg[data-room=%s][data-seq]')].some((li) =>
		li.querySelector('.author').textContent === %s &&
		li.querySelector('.body').textContent === %s &&
		(li.querySelector('.instance') || {}).textContent === %s)`,
		js(room), js(author), js(body), js(instance))
}

// roomHas is a JavaScript condition: the page holds n messages of room and
// nothing waits for an ack.
func roomHas(room string, n int) string {
	return fmt.Sprintf(`(() => {
		const s = window.pgchat.state(), r = s.rooms[%s];
		return r && r.seqs.length >= %d && s.pending === 0;
	})()`, js(room), n)
}

// headerInstance is the instance name the header shows, or "" if hidden.
const headerInstance = `(() => { const i = document.querySelector('#instance'); return i.hidden ? '' : i.textContent; })()`

// pressEnter presses Enter in the focused element as a keyboard does: one
// keyDown that carries the text "\r", so that a keydown handler's
// preventDefault also cancels the new line. (chromedp's kb.Enter sends the
// text in a separate char event, which a cancelled keydown doesn't stop;
// see chromedp docs/API.md, example 20.)
func pressEnter(mods ...chromedp.Modifier) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var m int64
		for _, mod := range mods {
			m |= int64(mod)
		}
		down := input.DispatchKeyEventParams{
			Type: input.DispatchKeyEventTypeKeyDown, Modifiers: m, Key: "Enter", Code: "Enter",
			Text: "\r", UnmodifiedText: "\r", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13,
		}
		up := down
		up.Type, up.Text, up.UnmodifiedText = input.DispatchKeyEventTypeKeyUp, "", ""
		for _, e := range []input.DispatchKeyEventParams{down, up} {
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// type_ types text into the composer and presses Enter, as a person does,
// and checks that the composer is empty again.
func type_(p *tab, text string) {
	p.t.Helper()
	p.do(chromedp.SendKeys(chromedp.ID("composer"), text), pressEnter())
	if v := eval[string](p, `document.querySelector('#composer').value`); v != "" {
		p.t.Fatalf("%s: composer holds %q after Enter, want it empty", p.name, v)
	}
}

// Two pages on two instances over one database chat with each other.
func TestBrowserChat(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	browser := newBrowser(t)
	alice := openTab(t, browser, "alice's page", pageURL(a.URL, "alice", "general"))
	bob := openTab(t, browser, "bob's page", pageURL(b.URL, "bob", "general"))

	for _, c := range []struct {
		p        *tab
		instance string
	}{{alice, "app-1"}, {bob, "app-2"}} {
		c.p.waitJoined("general")
		if s := c.p.state(); s.Instance != c.instance || s.Status != "connected" {
			t.Errorf("%s: state instance %q status %q, want %q connected", c.p.name, s.Instance, s.Status, c.instance)
		}
		if got := eval[string](c.p, headerInstance); got != c.instance {
			t.Errorf("%s: header #instance = %q, want %q", c.p.name, got, c.instance)
		}
		if got := eval[string](c.p, `document.querySelector('#status').dataset.state`); got != "connected" {
			t.Errorf("%s: #status data-state = %q, want connected", c.p.name, got)
		}
	}

	type_(alice, "hi bob, alice here")
	bob.waitFor("alice's message", hasMessage("general", "alice", "hi bob, alice here", "app-1"))
	type_(bob, "hello alice, from app-2")
	alice.waitFor("bob's message", hasMessage("general", "bob", "hello alice, from app-2", "app-2"))

	want := []domMessage{
		{Seq: 1, Author: "alice", Body: "hi bob, alice here", Instance: "app-1"},
		{Seq: 2, Author: "bob", Body: "hello alice, from app-2", Instance: "app-2"},
	}
	for _, p := range []*tab{alice, bob} {
		p.waitFor("both messages", roomHas("general", 2))
		if got := p.domMessages("general"); !slices.Equal(got, want) {
			t.Errorf("%s shows %+v, want %+v", p.name, got, want)
		}
		var state []domMessage
		for _, m := range p.messages("general") {
			state = append(state, domMessage(m))
		}
		if !slices.Equal(state, want) {
			t.Errorf("%s: pgchat.messages = %+v, want %+v", p.name, state, want)
		}
	}
}

// A page whose instance goes away reconnects, through the same origin, to
// another instance and ends with every message exactly once: those sent
// before, while it was away (by others, and by itself, which it resends),
// and after.
func TestBrowserFailover(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		shot string // screenshot taken while away, if set
		// start runs instance app-1 and returns its URL and a func that
		// takes it away.
		start func(t *testing.T, db string) (string, func())
	}{
		{"graceful stop", "browser-reconnecting.png", func(t *testing.T, db string) (string, func()) {
			in := startInstance(t, testEnv(db, "app-1"))
			return in.URL, func() {
				if err := in.stop(); err != nil { // clients get 1001
					t.Errorf("stop app-1: %v", err)
				}
			}
		}},
		{"SIGKILL", "", func(t *testing.T, db string) (string, func()) {
			p := startProcess(t, testEnv(db, "app-1"))
			return p.URL, func() {
				if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				p.cmd.Wait() // "signal: killed"
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := newDB(t)
			aURL, away := tc.start(t, db)
			b := startInstance(t, testEnv(db, "app-2"))
			lb := startFailover(t, aURL, b.URL)

			browser := newBrowser(t)
			p := openTab(t, browser, "alice's page", pageURL(lb.URL, "alice", "general"))
			p.waitJoined("general")
			if s := p.state(); s.Instance != "app-1" {
				t.Fatalf("page landed on %q, want app-1 (the proxy's first choice)", s.Instance)
			}
			// bob connects once the page is up: his connection is only read
			// in post, so it answers no keepalive ping meanwhile, and a
			// browser slow to start (a loaded machine) would outlast
			// PING_INTERVAL + WRITE_TIMEOUT and get him dropped.
			bob := dial(t, b.URL, name("bob"))
			bob.join("general")
			var want []string
			say := func(body string) {
				eval[string](p, fmt.Sprintf(`window.pgchat.send(%s)`, js(body)))
				want = append(want, body)
			}
			want = append(want, bodies("before", 3)...)
			post(bob, "general", bodies("before", 3)...)
			say("alice before")
			p.waitFor("messages before", roomHas("general", len(want)))

			lb.hold(true) // no instance reachable until the test says so
			away()
			p.waitFor("disconnected", `!window.pgchat.state().connected`)
			want = append(want, bodies("while away", 5)...)
			post(bob, "general", bodies("while away", 5)...)
			say("alice while away")
			if s := p.state(); s.Pending != 1 {
				t.Errorf("while away: pending = %d, want 1", s.Pending)
			}
			if tc.shot != "" {
				p.screenshot(tc.shot)
			}
			lb.hold(false)

			p.waitFor("back on app-2", `(() => {
				const s = window.pgchat.state();
				return s.connected && s.instance === 'app-2' && s.rooms.general.joined && s.pending === 0;
			})()`)
			want = append(want, bodies("after", 2)...)
			post(bob, "general", bodies("after", 2)...)
			p.waitFor("every message", roomHas("general", len(want)))

			n := int64(len(want))
			s := p.state()
			if got := s.Rooms["general"].Seqs; !slices.Equal(got, seqRange(1, n)) {
				t.Errorf("state seqs = %v, want 1..%d", got, n)
			}
			if s.Failed != 0 || s.Pending != 0 {
				t.Errorf("pending %d, failed %d, want 0 and 0", s.Pending, s.Failed)
			}
			dom := p.domMessages("general")
			checkDOMSeqs(t, p.name, dom, seqRange(1, n))
			var got []string
			for _, m := range dom {
				got = append(got, m.Body)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("bodies shown = %q, want %q", got, want)
			}
			if got := eval[string](p, headerInstance); got != "app-2" {
				t.Errorf("header #instance = %q, want app-2", got)
			}
		})
	}
}

// Bodies and names are text, never HTML: on replay, live, and when sent
// from the page itself.
func TestBrowserEscapesHTML(t *testing.T) {
	t.Parallel()
	const evil = `<img src=x onerror=alert(1)>`
	const evilName = `<img src=y onerror=alert(2)>`
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1"))
	mallory := dial(t, in.URL, name(evilName))
	mallory.join("general")
	post(mallory, "general", evil) // replayed on join

	browser := newBrowser(t)
	p := openTab(t, browser, "alice's page", pageURL(in.URL, "alice", "general"))
	p.waitJoined("general")
	post(mallory, "general", evil) // live
	type_(p, evil)                 // own send: pending, then acked
	p.waitFor("three messages", roomHas("general", 3))

	got := p.domMessages("general")
	want := []domMessage{
		{Seq: 1, Author: evilName, Body: evil, Instance: "app-1"},
		{Seq: 2, Author: evilName, Body: evil, Instance: "app-1"},
		{Seq: 3, Author: "alice", Body: evil, Instance: "app-1"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("messages shown = %+v, want %+v", got, want)
	}
	if n := eval[int](p, `document.querySelectorAll('img').length`); n != 0 {
		t.Errorf("page has %d img elements, want 0", n)
	}
	if d := p.dialogsSeen(); len(d) != 0 {
		t.Errorf("page opened dialogs %q", d)
	}
}

// wheel turns the mouse wheel at x, y by dy pixels (negative: up).
func wheel(x, y, dy float64) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		// Not input.DispatchMouseEventParams: its omitzero drops deltaX: 0,
		// which mouseWheel requires.
		return t.Call(ctx, input.CommandDispatchMouseEvent, map[string]any{
			"type": input.DispatchMouseEventTypeMouseWheel, "x": x, "y": y, "deltaX": 0, "deltaY": dy,
		}, nil)
	})
}

// Scrolling up loads older history, page by page, down to seq 1.
func TestBrowserHistoryOnScroll(t *testing.T) {
	t.Parallel()
	const n = 120
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1")) // HISTORY_LIMIT 50
	bob := dial(t, in.URL, name("bob"))
	bob.join("general")
	post(bob, "general", bodies("message", n)...)

	browser := newBrowser(t)
	p := openTab(t, browser, "alice's page", pageURL(in.URL, "alice", "general"))
	p.waitJoined("general")
	if got := p.state().Rooms["general"].Seqs; !slices.Equal(got, seqRange(n-49, n)) {
		t.Fatalf("before scrolling: seqs %v, want the last 50", got)
	}

	// Turn the mouse wheel up over the messages until seq 1 is there.
	type point struct{ X, Y float64 }
	c := eval[point](p, `(() => {
		const r = document.querySelector('#messages').getBoundingClientRect();
		return {X: r.x + r.width / 2, Y: r.y + r.height / 2};
	})()`)
	low := int64(n - 49)
	for i := 0; low > 1; i++ {
		if i == 10 {
			t.Fatalf("lowest seq still %d after %d scrolls", low, i)
		}
		p.do(wheel(c.X, c.Y, -20000))
		p.waitFor("older messages", fmt.Sprintf(`window.pgchat.state().rooms.general.seqs[0] < %d`, low))
		low = p.state().Rooms["general"].Seqs[0]
	}

	if got := p.state().Rooms["general"].Seqs; !slices.Equal(got, seqRange(1, n)) {
		t.Errorf("after scrolling: seqs %v, want 1..%d", got, n)
	}
	dom := p.domMessages("general")
	checkDOMSeqs(t, p.name, dom, seqRange(1, n))
	for _, m := range dom {
		if want := fmt.Sprintf("message %d", m.Seq); m.Body != want {
			t.Fatalf("seq %d shows %q, want %q", m.Seq, m.Body, want)
		}
	}
	p.waitFor("beginning of the room", `document.querySelector('.log[data-log="general"] .log-top').textContent.includes('beginning')`)
}

// A reader at the bottom of the log stays there when the log's box shrinks:
// a growing composer, a shorter window (a phone keyboard), a phone width.
func TestBrowserStaysAtBottom(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1"))
	bob := dial(t, in.URL, name("bob"))
	bob.join("general")
	post(bob, "general", bodies("a message long enough to wrap on a phone, number", 30)...)

	browser := newBrowser(t)
	p := openTab(t, browser, "alice's page", pageURL(in.URL, "alice", "general"))
	p.waitJoined("general")
	atBottom := `(() => { const b = document.querySelector('#messages'); return b.scrollHeight - b.scrollTop - b.clientHeight < 2; })()`
	p.waitFor("the newest message in view", atBottom)

	p.do(chromedp.SendKeys(chromedp.ID("composer"), "one"), pressEnter(chromedp.ModifierShift),
		chromedp.KeyEvent("two"), pressEnter(chromedp.ModifierShift), chromedp.KeyEvent("three"))
	p.waitFor("still at the bottom with a three-line composer", atBottom)
	p.do(chromedp.EmulateViewport(1280, 400))
	p.waitFor("a short window", `window.innerHeight === 400`)
	p.waitFor("still at the bottom in a short window", atBottom)
	p.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	p.waitFor("a phone", `window.innerWidth === 390`)
	p.waitFor("still at the bottom on a phone", atBottom)
}

// Everything works from the keyboard, and every control has a name.
func TestBrowserKeyboard(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	in := startInstance(t, testEnv(db, "app-1"))
	browser := newBrowser(t)
	p := openTab(t, browser, "dora's page", in.URL+"/")

	checkLabels := func(when string) {
		t.Helper()
		unnamed := eval[[]string](p, `[...document.querySelectorAll('input, textarea, button, select, [role=log]')]
			.filter((el) => el.getClientRects().length > 0)
			.filter((el) => !(
				[...(el.labels || [])].map((l) => l.textContent).join('').trim() ||
				el.getAttribute('aria-label') || el.title ||
				(el.tagName === 'BUTTON' && el.textContent.trim())))
			.map((el) => el.outerHTML.slice(0, 100))`)
		if len(unnamed) > 0 {
			t.Errorf("%s: controls without an accessible name: %q", when, unnamed)
		}
	}
	focused := func() string {
		t.Helper()
		// "#id", else "tag.class": the room tabs are button.room.
		return eval[string](p, `(() => {
			const e = document.activeElement;
			return !e ? '' : e.id ? '#' + e.id : e.tagName.toLowerCase() + (e.className ? '.' + e.className : '');
		})()`)
	}

	checkLabels("welcome form")
	p.waitFor("focus on the name field", `document.activeElement && document.activeElement.id === 'name'`)
	p.do(chromedp.KeyEvent("dora"), chromedp.KeyEvent(kb.Tab))
	if f := focused(); f != "#room" {
		t.Fatalf("Tab from the name field focused %q, want room", f)
	}
	p.do(pressEnter()) // the room field holds "general"
	p.waitJoined("general")
	if f := focused(); f != "#composer" {
		t.Errorf("after starting, focus is on %q, want composer", f)
	}
	checkLabels("chat")

	// Enter sends; Shift+Enter is a new line.
	p.do(chromedp.KeyEvent("line 1"), pressEnter(chromedp.ModifierShift), chromedp.KeyEvent("line 2"), pressEnter())
	p.waitFor("dora's message", hasMessage("general", "dora", "line 1\nline 2", "app-1"))

	// Tab reaches the room field; Enter there joins a room and returns to the composer.
	var order []string
	for f := focused(); f != "#room"; f = focused() {
		if len(order) == 15 {
			t.Fatalf("Tab never reached the room field; order %q", order)
		}
		p.do(chromedp.KeyEvent(kb.Tab))
		order = append(order, focused())
	}
	t.Logf("Tab order from the composer: %q", order)
	p.do(chromedp.KeyEvent("random"), pressEnter())
	p.waitJoined("random")
	if s := p.state(); s.Current != "random" {
		t.Errorf("after joining random by keyboard, current room is %q", s.Current)
	}
	if f := focused(); f != "#composer" {
		t.Errorf("after joining a room, focus is on %q, want composer", f)
	}
	// Alt+Up and Alt+Down switch rooms.
	p.do(chromedp.KeyEvent(kb.ArrowUp, chromedp.KeyModifiers(chromedp.ModifierAlt)))
	if s := p.state(); s.Current != "general" {
		t.Errorf("Alt+Up: current room %q, want general", s.Current)
	}
	p.do(chromedp.KeyEvent(kb.ArrowDown, chromedp.KeyModifiers(chromedp.ModifierAlt)))
	if s := p.state(); s.Current != "random" {
		t.Errorf("Alt+Down: current room %q, want random", s.Current)
	}
}

// Screenshots for people to look at: a conversation across two instances
// and two rooms (one with unread messages), at desktop and phone width, in
// light and dark mode, and the welcome form on a phone. They are written
// to $PGCHAT_ARTIFACTS, else artifacts/ (see README.md).
func TestBrowserScreenshots(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))
	bob := dial(t, b.URL, name("bob"))
	carol := dial(t, a.URL, name("carol"))
	for _, c := range []*wsClient{bob, carol} {
		c.join("general")
		c.join("random")
	}
	post(carol, "general", "Morning! Did the deploy go out?")
	post(bob, "general", "Yes: app-2 has been on the new build since 9:40, app-1 followed ten minutes later.")
	post(carol, "general", "Checklist:\n- migrations applied\n- /readyz green on both\n- old machines drained")
	post(bob, "general", "I restarted app-1 on purpose to watch the clients move over. Nobody lost a message: they all came back with since=N and the seqs had no gap.")

	browser := newBrowser(t)
	p := openTab(t, browser, "alice's page", pageURL(a.URL, "alice", "general", "random"))
	p.waitJoined("general")
	p.waitJoined("random")
	type_(p, "Nice. I'll write it up in the ops channel.")
	post(bob, "random", "Lunch at 12:30?", "The usual place")
	p.waitFor("unread in random", `window.pgchat.state().rooms.random.unread === 2`)
	p.waitFor("every message", roomHas("general", 5))

	p.screenshot("browser-desktop.png")
	dark := []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}
	if _, err := chromedp.Call(p.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: dark}); err != nil {
		t.Fatal(err)
	}
	p.screenshot("browser-desktop-dark.png")
	if _, err := chromedp.Call(p.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{}); err != nil {
		t.Fatal(err)
	}
	p.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	p.waitFor("phone layout", `window.innerWidth === 390`)
	p.screenshot("browser-phone.png")

	start := openTab(t, browser, "the welcome page", a.URL+"/")
	start.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	start.waitFor("the form", `document.activeElement && document.activeElement.id === 'name'`)
	start.screenshot("browser-start-phone.png")
}
