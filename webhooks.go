package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgchat/pgchat/webhook"
)

// webhooks is an instance's webhook deliverer and its own small pool, so
// that a slow receiver never holds the chat's connections. The zero value
// (WEBHOOK_URL unset) does nothing.
type webhooks struct {
	d    *webhook.Deliverer
	pool *pgxpool.Pool
}

func newWebhooks(ctx context.Context, cfg Config, log *slog.Logger, m *metrics) (*webhooks, error) {
	if cfg.WebhookURL == "" {
		return &webhooks{}, nil
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("webhooks: parse database url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.WebhookConcurrency + 1) // the workers and the scan
	if pcfg.ConnConfig.RuntimeParams["application_name"] == "" {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "pgchat " + cfg.InstanceID + " webhook"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("webhooks: create pool: %w", err)
	}
	wm := newWebhookMetrics(m.reg)
	d, err := webhook.New(pool, webhook.Options{
		URL:         cfg.WebhookURL,
		Secret:      []byte(cfg.WebhookSecret),
		Batch:       cfg.WebhookBatch,
		Concurrency: cfg.WebhookConcurrency,
		Timeout:     cfg.WebhookTimeout,
		MinBackoff:  cfg.WebhookMinBackoff,
		MaxBackoff:  cfg.WebhookMaxBackoff,
		DeadAfter:   cfg.WebhookDeadAfter,
		Log:         log,
		Metrics:     wm,
	})
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &webhooks{d: d, pool: pool}, nil
}

// run delivers until ctx is cancelled.
func (w *webhooks) run(ctx context.Context) {
	if w.d != nil {
		w.d.Run(ctx)
	}
}

func (w *webhooks) close() {
	if w.pool != nil {
		w.pool.Close()
	}
}

// webhookMetrics are the deliverer's Prometheus metrics (README, Metrics).
type webhookMetrics struct {
	delivered, failed prometheus.Counter
	lag, dead         prometheus.Gauge
}

func newWebhookMetrics(reg *prometheus.Registry) *webhookMetrics {
	wm := &webhookMetrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_webhook_delivered_total",
			Help: "Messages this instance delivered to WEBHOOK_URL (2xx answers).",
		}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_webhook_failures_total",
			Help: "Webhook requests of this instance that failed (error or non-2xx); each is retried.",
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_webhook_lag_messages",
			Help: "Stored messages not yet delivered to WEBHOOK_URL, over all rooms (dead-lettered ones included).",
		}),
		dead: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_webhook_dead_rooms",
			Help: "Rooms whose webhook delivery is dead-lettered (webhook_cursors.dead).",
		}),
	}
	reg.MustRegister(wm.delivered, wm.failed, wm.lag, wm.dead)
	return wm
}

func (wm *webhookMetrics) Delivered(n int) { wm.delivered.Add(float64(n)) }
func (wm *webhookMetrics) Failed()         { wm.failed.Inc() }
func (wm *webhookMetrics) Lag(messages int64, dead int) {
	wm.lag.Set(float64(messages))
	wm.dead.Set(float64(dead))
}
