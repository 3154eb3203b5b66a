package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestEveryCommandHelp: COMMAND -h prints a usage and returns nil at once,
// doing nothing else (no migration, no server, no database needed).
func TestEveryCommandHelp(t *testing.T) {
	t.Parallel()
	environ := []string{"DATABASE_URL=postgres://nobody@127.0.0.1:1/none", "DB_CONNECT_TIMEOUT=30s"}
	for name := range commands {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			start := time.Now()
			if err := run(ctx, []string{name, "-h"}, environ, &out, &errOut); err != nil {
				t.Fatalf("pgchat %s -h: %v", name, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("pgchat %s -h took %v: it did more than print help", name, d)
			}
			if !strings.Contains(out.String()+errOut.String(), "Usage: pgchat "+name) {
				t.Errorf("pgchat %s -h printed %q", name, out.String()+errOut.String())
			}
		})
	}
}

// TestHelpFitsTerminal: pgchat help fits 100 columns.
func TestHelpFitsTerminal(t *testing.T) {
	var out bytes.Buffer
	printHelp(&out)
	for line := range strings.Lines(out.String()) {
		if n := len(strings.TrimSuffix(line, "\n")); n > helpWidth {
			t.Errorf("%d columns: %q", n, line)
		}
	}
}

// TestPermanentStartupErrors: errors that retrying cannot fix stop
// start-up at once, naming the variable; an unreachable server is retried.
func TestPermanentStartupErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, want string }{
		{"postgres://postgres@127.0.0.1:5432/x?sslmode=bogus", "DATABASE_URL: not a valid PostgreSQL URL"},
		{"postgres://postgres@127.0.0.1:5432/pgchat_no_such_db", "DATABASE_URL: no such database"},
		{"postgres://pgchat_no_such_role@127.0.0.1:5432/postgres", "DATABASE_URL: authentication failed"},
	} {
		start := time.Now()
		err := run(t.Context(), []string{"migrate"}, []string{"DATABASE_URL=" + tc.url, "DB_CONNECT_TIMEOUT=30s"}, &bytes.Buffer{}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.url, err, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: failed after %v, want at once", tc.url, d)
		}
	}
	err := run(t.Context(), []string{"migrate"}, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/postgres", "DB_CONNECT_TIMEOUT=1s"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "not reachable after 1s") {
		t.Errorf("unreachable: %v, want it retried until DB_CONNECT_TIMEOUT", err)
	}
}
