// Package storetest gives each test its own migrated PostgreSQL database, so
// tests that talk to a real server can run in parallel.
package storetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgchat/pgchat/migrations"
	"github.com/pgchat/pgchat/store"
)

// DefaultURL is used when TEST_DATABASE_URL is not set.
const DefaultURL = "postgres://postgres@localhost:5432/postgres?sslmode=disable"

// AdminURL is the server tests create their databases on:
// TEST_DATABASE_URL, else DefaultURL.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
	counter      atomic.Int64
)

// NewDB creates a database migrated to the current schema for t and returns
// its URL. The database is dropped when t passes and kept, with its name
// logged, when it fails. Without a reachable server NewDB skips t, unless the
// CI environment variable is set, in which case t fails: CI never passes on
// skips.
func NewDB(t testing.TB) string {
	t.Helper()
	return newDB(t, true)
}

// NewEmptyDB is like NewDB but the database is empty: no migrations have run
// on it. It is for testing migrations themselves.
func NewEmptyDB(t testing.TB) string {
	t.Helper()
	return newDB(t, false)
}

// newDB creates a database for t, a clone of the migrated template if
// migrated is set, else an empty one (a clone of template0).
func newDB(t testing.TB, migrated bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("storetest: no PostgreSQL at TEST_DATABASE_URL: %v", err)
		}
		t.Skipf("storetest: no PostgreSQL at TEST_DATABASE_URL: %v", err)
	}
	defer admin.Close(ctx)

	template := "template0"
	if migrated {
		templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx, admin) })
		if templateErr != nil {
			t.Fatalf("storetest: %v", templateErr)
		}
		template = templateName
	}
	name := fmt.Sprintf("pgchat_test_%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, counter.Add(1))
	if _, err := admin.Exec(ctx, "create database "+pgx.Identifier{name}.Sanitize()+" template "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("storetest: create database: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("storetest: kept database %s of the failed test", name)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("storetest: drop %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "drop database if exists "+pgx.Identifier{name}.Sanitize()+" with (force)"); err != nil {
			t.Logf("storetest: drop %s: %v", name, err)
		}
	})
	return WithDatabase(AdminURL(), name)
}

// WithDatabase returns rawURL with its database replaced by name.
func WithDatabase(rawURL, name string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		panic(fmt.Sprintf("storetest: TEST_DATABASE_URL must be a postgres:// URL: %v", err))
	}
	u.Path = "/" + name
	return u.String()
}

// ensureTemplate creates, once per migration set and across test processes,
// a migrated database to clone test databases from.
func ensureTemplate(ctx context.Context, admin *pgx.Conn) (string, error) {
	sum, err := migrationsHash()
	if err != nil {
		return "", err
	}
	name := "pgchat_template_" + sum
	// Test binaries of several packages run at once: one creates, the
	// others wait on the lock and find it done.
	if _, err := admin.Exec(ctx, "select pg_advisory_lock(hashtext($1))", name); err != nil {
		return "", fmt.Errorf("lock template: %w", err)
	}
	defer admin.Exec(context.WithoutCancel(ctx), "select pg_advisory_unlock(hashtext($1))", name)
	var exists bool
	if err := admin.QueryRow(ctx, "select exists (select 1 from pg_database where datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("find template: %w", err)
	}
	if exists {
		return name, nil
	}
	building := name + "_building"
	if _, err := admin.Exec(ctx, "drop database if exists "+pgx.Identifier{building}.Sanitize()+" with (force)"); err != nil {
		return "", fmt.Errorf("drop stale template: %w", err)
	}
	if _, err := admin.Exec(ctx, "create database "+pgx.Identifier{building}.Sanitize()); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	if _, err := store.Migrate(ctx, WithDatabase(AdminURL(), building), migrations.FS); err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	// Renaming last means a template that exists is complete.
	if _, err := admin.Exec(ctx, "alter database "+pgx.Identifier{building}.Sanitize()+" rename to "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("rename template: %w", err)
	}
	return name, nil
}

func migrationsHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".sql") {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, path)
		h.Write([]byte(path))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}
