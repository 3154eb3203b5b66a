package main

import (
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
)

// Browser tests of presence, typing and read state: two pages on two
// instances over one database.

// memberList is a JavaScript expression: the names #member-list shows.
const memberList = `[...document.querySelectorAll('#member-list li[data-member]')].map((li) => li.textContent).join(',')`

// unreadBadge is a JavaScript expression: room's sidebar badge, or "" if
// it is hidden.
func unreadBadge(room string) string {
	return fmt.Sprintf(`(() => { const b = document.querySelector('#rooms li[data-room=%s] .unread'); return b.hidden ? '' : b.textContent; })()`, js(room))
}

func TestBrowserPresenceTypingAndReads(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, fastPresence(db, "app-1"))
	b := startInstance(t, fastPresence(db, "app-2"))
	browser := newBrowser(t)
	alice := openTab(t, browser, "alice's page", pageURL(a.URL, "alice", "general", "random"))
	bob := openTab(t, browser, "bob's page", pageURL(b.URL, "bob", "general"))
	alice.waitJoined("general")
	alice.waitJoined("random")
	bob.waitJoined("general")

	// The member list, across instances.
	for _, p := range []*tab{alice, bob} {
		p.waitFor("alice and bob online", memberList+` === 'alice,bob'`)
		p.waitFor("the count", `document.querySelector('#members-title').textContent === 'Online — 2'`)
	}

	// bob types (without sending): alice sees it, bob does not see himself.
	bob.do(chromedp.SendKeys(chromedp.ID("composer"), "hel"))
	alice.waitFor("bob is typing", `document.querySelector('#typing').textContent === 'bob is typing…'`)
	alice.screenshot("browser-presence.png")
	if got := eval[string](bob, `document.querySelector('#typing').textContent`); got != "" {
		t.Errorf("bob's page shows %q about his own typing", got)
	}

	// Unread badges: carol writes in random, which alice is not looking at.
	carol := dial(t, b.URL, name("carol"))
	carol.join("random")
	post(carol, "random", "r1", "r2", "r3")
	alice.waitFor("3 unread in random", unreadBadge("random")+` === '3'`)
	if got := eval[string](alice, unreadBadge("general")); got != "" {
		t.Errorf("general's badge shows %q, want none", got)
	}
	// Reading it clears the badge, and the server knows: a new page for
	// alice on the other instance shows no unread for random.
	alice.do(chromedp.Click(`#rooms li[data-room="random"] button`))
	alice.waitFor("badge cleared", unreadBadge("random")+` === ''`)
	alice.waitFor("read sent", `window.pgchat.presence('random').readSent === 3`)

	// "Seen by": alice writes in general; bob's page shows it, so bob has
	// read it, and alice's message says so.
	alice.do(chromedp.Click(`#rooms li[data-room="general"] button`))
	type_(alice, "anyone?")
	bob.waitFor("alice's message", hasMessage("general", "alice", "anyone?", "app-1"))
	alice.waitFor("seen by bob", `(() => {
		const s = document.querySelector('#messages li.msg.mine[data-seq] .seen');
		return s && s.textContent === 'Seen by 1';
	})()`)

	alice2 := openTab(t, browser, "alice's second page", pageURL(b.URL, "alice", "random", "general"))
	alice2.waitJoined("random")
	alice2.waitJoined("general")
	if got := eval[string](alice2, unreadBadge("random")); got != "" {
		t.Errorf("alice's new page shows %q unread in random, which she read", got)
	}
	// carol writes again: alice's new page, looking at random, reads it,
	// and the receipt clears the badge on her first page.
	alice.waitFor("random has the 3 first", `window.pgchat.presence('random').readSent === 3`)
	post(carol, "random", "r4")
	alice.waitFor("1 unread in random on alice's first page", unreadBadge("random")+` === '1'`)
	alice2.waitFor("alice's new page read r4", `window.pgchat.presence('random').readSent === 4`)
	alice.waitFor("the receipt cleared the badge", unreadBadge("random")+` === ''`)

	// bob closes his tab: alice's list loses him.
	if err := chromedp.Cancel(bob.ctx); err != nil {
		t.Fatalf("close bob's tab: %v", err)
	}
	alice.waitFor("bob gone", memberList+` === 'alice'`)
}
