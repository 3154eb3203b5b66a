package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgchat/pgchat/store"
)

// newRetention returns the retention loop for cfg, its rounds counted in
// m's registry: pgchat_retention_deleted_total and
// pgchat_oldest_message_age_seconds.
func newRetention(db *store.DB, cfg Config, m *metrics) *store.Retention {
	deleted := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgchat_retention_deleted_total",
		Help: "Rows deleted by retention (RETENTION_MAX_AGE, RETENTION_MAX_MESSAGES, per-room overrides) while this instance held the lock.",
	})
	oldest := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgchat_oldest_message_age_seconds",
		Help: "Age of the oldest message stored, after the last retention round.",
	})
	m.reg.MustRegister(deleted, oldest)
	return &store.Retention{
		DB:          db,
		MaxAge:      cfg.RetentionMaxAge,
		MaxMessages: cfg.RetentionMaxMessages,
		Interval:    cfg.RetentionInterval,
		OnRound: func(n int64, age time.Duration) {
			deleted.Add(float64(n))
			oldest.Set(age.Seconds())
		},
	}
}
