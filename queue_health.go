package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgchat/pgchat/store"
)

// notifyQueueCheck is how often the notification queue's usage is read.
const notifyQueueCheck = 10 * time.Second

// notifyQueueWarn is the usage above which the queue is reported.
const notifyQueueWarn = 0.5

// queueHealth watches PostgreSQL's notification queue. The queue is shared
// by the whole cluster and only shrinks when every listening session has
// read past its tail: one session listening inside a long transaction, or
// a wedged listener, stops it; when it is full every notifying COMMIT fails
// (SQLSTATE 54000) and no instance can store a message. Taking this
// instance out of rotation would not help (every instance suffers the
// same), so /readyz stays 200 and says it in its body; the log says it once
// per crossing.
type queueHealth struct {
	usage prometheus.Gauge
	log   *slog.Logger

	mu   sync.Mutex
	high bool    // above notifyQueueWarn at the last read
	last float64 // usage at the last read
}

func newQueueHealth(m *metrics, log *slog.Logger) *queueHealth {
	return &queueHealth{usage: m.notifyQueueUsage, log: log}
}

// run reads the usage every notifyQueueCheck until ctx is cancelled.
func (q *queueHealth) run(ctx context.Context, db *store.DB) {
	tick := time.NewTicker(notifyQueueCheck)
	defer tick.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		usage, err := db.NotifyQueueUsage(qctx)
		cancel()
		if err == nil {
			q.observe(usage)
		} else if ctx.Err() == nil {
			q.log.Debug("reading the notification queue usage", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// observe records one reading.
func (q *queueHealth) observe(usage float64) {
	q.usage.Set(usage)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.last = usage
	switch high := usage > notifyQueueWarn; {
	case high && !q.high:
		q.log.Error("PostgreSQL's notification queue is filling: a listening session is not consuming (docs/deploy.md, 'A full NOTIFY queue'); when full, no message can be stored",
			"usage", fmt.Sprintf("%.0f%%", 100*usage))
	case !high && q.high:
		q.log.Info("PostgreSQL's notification queue is draining again", "usage", fmt.Sprintf("%.0f%%", 100*usage))
	}
	q.high = usage > notifyQueueWarn
}

// note is what /readyz adds to its body, "" when all is well.
func (q *queueHealth) note() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.high {
		return ""
	}
	return fmt.Sprintf("PostgreSQL's notification queue is %.0f%% full (see docs/deploy.md)", 100*q.last)
}
