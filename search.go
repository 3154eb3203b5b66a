package main

import (
	"context"
	"log/slog"

	"github.com/pgchat/pgchat/store"
)

// checkSearchConfig refuses to start with a SEARCH_CONFIG the database does
// not know.
func checkSearchConfig(ctx context.Context, db *store.DB, cfg Config, _ *slog.Logger) error {
	return db.UseSearchConfig(ctx, cfg.SearchConfig)
}
