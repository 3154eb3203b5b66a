package main

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSendEventsAndTail: pgchat send edits, reacts to and deletes messages,
// pgchat tail prints each event, and a tail started afterwards prints the
// current state.
func TestSendEventsAndTail(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	ws := "ws" + strings.TrimPrefix(a.URL, "http")

	ctx, cancel := context.WithCancel(t.Context())
	var tailOut lockedBuffer
	tailDone := make(chan error, 1)
	go func() {
		tailDone <- run(ctx, []string{"tail", "-url", ws, "-room", "r", "-since", "0"}, nil, &tailOut, io.Discard)
	}()
	send := func(want string, args ...string) {
		t.Helper()
		var out, errOut strings.Builder
		args = append([]string{"send", "-url", ws, "-room", "r", "-name", "carol"}, args...)
		if err := run(t.Context(), args, nil, &out, &errOut); err != nil {
			t.Fatalf("pgchat %s: %v (stderr %q)", strings.Join(args, " "), err, errOut.String())
		}
		if out.String() != want {
			t.Errorf("pgchat %s printed %q, want %q", strings.Join(args, " "), out.String(), want)
		}
	}
	send("r #1\n", "helo")
	send("r #2\n", "-edit", "1", "hello")
	send("r #3\n", "-react", "1", "👍")
	send("r #3\n", "-react", "1", "👍") // stored once
	send("r #4\n", "hi")
	send("r #5\n", "-delete", "4")

	want := []string{
		`^r #1 \S+ carol@app-1: (helo|hello \(edited\))$`, // live, or replayed as it is now
		`^r #2 \S+ carol@app-1: \(edit of #1\) hello$`,
		`^r #3 \S+ carol@app-1: \(reacted 👍 to #1\)$`,
		`^r #4 \S+ carol@app-1: (hi|\(deleted\))$`,
		`^r #5 \S+ carol@app-1: \(deleted #4\)$`,
	}
	waitLines(t, &tailOut, len(want))
	matchLines(t, "tail", tailOut.String(), want)
	cancel()
	<-tailDone

	// A tail without -since: the messages as they are now.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	var now lockedBuffer
	go func() { run(ctx, []string{"tail", "-url", ws, "-room", "r"}, nil, &now, io.Discard) }()
	waitLines(t, &now, 2)
	matchLines(t, "tail without since", now.String(), []string{
		`^r #1 \S+ carol@app-1: hello \(edited\) \{"👍":1\}$`,
		`^r #4 \S+ carol@app-1: \(deleted\)$`,
	})

	var errOut strings.Builder
	err := run(t.Context(), []string{"send", "-url", ws, "-room", "r", "-name", "dave", "-edit", "1", "mine"}, nil, io.Discard, &errOut)
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("dave edits carol's message: %v, want forbidden", err)
	}
}

func waitLines(t *testing.T, b *lockedBuffer, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(b.String(), "\n") < n {
		if time.Now().After(deadline) {
			t.Fatalf("printed %q, want %d lines", b.String(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func matchLines(t *testing.T, who, out string, want []string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) < len(want) {
		t.Fatalf("%s printed %q", who, out)
	}
	for i, w := range want {
		if !regexp.MustCompile(w).MatchString(lines[i]) {
			t.Errorf("%s line %d = %q, want it to match %s", who, i+1, lines[i], w)
		}
	}
}
