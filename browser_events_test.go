package main

import (
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// msgLine is a JavaScript expression for the li of message seq in room.
func msgLine(room string, seq int64) string {
	return fmt.Sprintf(`document.querySelector('#messages li.msg[data-room=%s][data-seq="%d"]')`, js(room), seq)
}

// TestBrowserEditDeleteReactSearch: on two pages on two instances, alice
// edits and deletes her message with the keyboard, bob reacts, both see
// every change; bob's search finds a message far back in the history and
// a click on the result loads the history back to it.
func TestBrowserEditDeleteReactSearch(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1", "HISTORY_LIMIT=5"))
	b := startInstance(t, testEnv(db, "app-2", "HISTORY_LIMIT=5"))

	// An old message to find later, buried under 30 newer ones.
	poster := dial(t, a.URL, name("carol"))
	poster.join("general")
	post(poster, "general", "the needle <in> the haystack")
	post(poster, "general", bodies("hay", 30)...)
	waitIndexed(t, a.URL, "general", "needle", 1)

	browser := newBrowser(t)
	alice := openTab(t, browser, "alice's page", pageURL(a.URL, "alice", "general"))
	bob := openTab(t, browser, "bob's page", pageURL(b.URL, "bob", "general"))
	alice.waitJoined("general")
	bob.waitJoined("general")

	type_(alice, "helo wrld")
	const seq = 32
	bob.waitFor("alice's message", hasMessage("general", "alice", "helo wrld", "app-1"))
	if n := eval[int](bob, msgLine("general", seq)+`.querySelectorAll('.act.edit, .act.delete').length`); n != 0 {
		t.Errorf("bob's page offers %d edit/delete buttons on alice's message, want none", n)
	}

	// Edit with the keyboard: focus the Edit button, Enter, type, Enter.
	alice.waitFor("her message numbered", "!!"+msgLine("general", seq)+`?.querySelector('.act.edit')`)
	alice.do(chromedp.Evaluate[chromedp.Void](msgLine("general", seq)+`.querySelector('.act.edit').focus()`), pressEnter())
	alice.waitFor("the edit field", `document.activeElement && document.activeElement.classList.contains('edit-field')`)
	alice.do(chromedp.Evaluate[chromedp.Void](`document.activeElement.select()`), chromedp.KeyEvent("hello world"), pressEnter())
	for _, p := range []*tab{alice, bob} {
		p.waitFor("the edit", msgLine("general", seq)+`?.querySelector('.body').textContent === 'hello world' && !!`+msgLine("general", seq)+`.querySelector('.edited')`)
	}

	// Bob reacts with a click; both see the count.
	bob.do(chromedp.Click(chromedp.CSS(`#messages li.msg[data-seq="32"] .act.react`)))
	for _, p := range []*tab{alice, bob} {
		p.waitFor("the reaction", msgLine("general", seq)+`?.querySelector('.reaction')?.textContent === '👍 1'`)
	}
	// Clicking his reaction again takes it back.
	bob.do(chromedp.Click(chromedp.CSS(`#messages li.msg[data-seq="32"] .reaction`)))
	alice.waitFor("the reaction gone", msgLine("general", seq)+` && !`+msgLine("general", seq)+`.querySelector('.reaction')`)

	// Delete with the keyboard: Enter twice (the second confirms).
	alice.waitFor("the delete button", "!!"+msgLine("general", seq)+`?.querySelector('.act.delete')`)
	alice.do(chromedp.Evaluate[chromedp.Void](msgLine("general", seq)+`.querySelector('.act.delete').focus()`), pressEnter(), pressEnter())
	for _, p := range []*tab{alice, bob} {
		p.waitFor("the placeholder", msgLine("general", seq)+`?.classList.contains('deleted') && `+msgLine("general", seq)+`.querySelector('.body').textContent === 'This message was deleted.'`)
	}

	// A page loaded now shows the current state: deleted, no old text.
	dora := openTab(t, browser, "dora's page", pageURL(b.URL, "dora", "general"))
	dora.waitJoined("general")
	dora.waitFor("the placeholder", msgLine("general", seq)+`?.classList.contains('deleted')`)
	if got := eval[bool](dora, `document.body.textContent.includes('helo') || document.body.textContent.includes('hello world')`); got {
		t.Error("dora's page shows the deleted text")
	}

	// Search from the box; the result jumps back to seq 1.
	bob.do(chromedp.Click(chromedp.ID("search")), chromedp.KeyEvent("needle"), chromedp.KeyEvent(kb.Enter))
	bob.waitFor("a result", `document.querySelector('#search-results .hit mark')?.textContent === 'needle'`)
	if got := eval[string](bob, `document.querySelector('#search-results .hit .snippet').textContent`); got != "the needle <in> the haystack" {
		t.Errorf("snippet text %q", got)
	}
	bob.do(chromedp.Click(chromedp.CSS("#search-results .hit")))
	bob.waitFor("message 1 found", msgLine("general", 1)+`?.classList.contains('found') && document.activeElement === `+msgLine("general", 1))
	if got := bob.domMessages("general")[0]; got.Seq != 1 || got.Body != "the needle <in> the haystack" {
		t.Errorf("first message shown: %+v", got)
	}
}
