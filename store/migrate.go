package store

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/jackc/tern/v2/migrate"
)

// VersionTable records which migrations have run.
const VersionTable = "schema_version"

// Migrate applies the migrations in fsys (files NNN_name.sql, in number
// order, each in its own transaction) that the database at url has not run
// yet, and returns the schema version it ends at. Instances starting at the
// same moment are safe: tern holds an advisory lock while it migrates.
func Migrate(ctx context.Context, url string, fsys fs.FS) (version int32, err error) {
	conn, err := Connect(ctx, url, "migrate")
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if err := m.LoadMigrations(fsys); err != nil {
		return 0, fmt.Errorf("migrate: load: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	version, err = m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: current version: %w", err)
	}
	return version, nil
}
