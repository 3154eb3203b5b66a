// Package migrations holds pgchat's schema as numbered SQL files, embedded in
// the binary and applied in name order by store.Migrate.
package migrations

import "embed"

// FS holds the migration files, named NNN_description.sql.
//
//go:embed *.sql
var FS embed.FS
