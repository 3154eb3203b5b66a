package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// sqlstateQueueFull is program_limit_exceeded, which PostgreSQL raises at
// the COMMIT of a notifying transaction when its notification queue (8 GB by
// default) is full.
const sqlstateQueueFull = "54000"

// IsNotifyQueueFull reports whether err, from Append, is PostgreSQL
// refusing the commit because its notification queue is full ("too many
// notifications in the NOTIFY queue"; only the code is checked, messages
// are translated). The queue is cluster-wide; it
// fills when some listening session stops consuming (an open transaction
// in a listening session, a wedged listener): see docs/deploy.md.
func IsNotifyQueueFull(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == sqlstateQueueFull
}

// NotifyQueueUsage returns pg_notification_queue_usage(): the fraction
// (0 to 1) of the cluster's notification queue holding notifications that
// some listener has not consumed yet.
func (db *DB) NotifyQueueUsage(ctx context.Context) (float64, error) {
	var usage float64
	if err := db.writes().QueryRow(ctx, `select pg_notification_queue_usage()`).Scan(&usage); err != nil {
		return 0, fmt.Errorf("notification queue usage: %w", err)
	}
	return usage, nil
}
