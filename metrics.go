package main

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgchat/pgchat/chat"
	"github.com/pgchat/pgchat/store"
)

// metrics is one instance's Prometheus metrics, served at /metrics from a
// registry of its own (not the global one, so that several instances can run
// in one test process). The README lists them.
type metrics struct {
	reg *prometheus.Registry

	connections        prometheus.Gauge
	memberships        prometheus.Gauge
	accepted           prometheus.Counter
	delivered          prometheus.Counter
	batchSize          prometheus.Histogram
	commitFailures     prometheus.Counter
	queueFullFailures  prometheus.Counter
	notifyQueueUsage   prometheus.Gauge
	commitSeconds      prometheus.Histogram
	deliverySeconds    prometheus.Histogram
	listenerReconnects prometheus.Counter
	gapFetches         prometheus.Counter
	slowConsumers      prometheus.Counter
	disconnects        *prometheus.CounterVec
	stages             stageMetrics

	listens atomic.Int64 // successful LISTENs so far

	presenceMetrics // metrics_presence.go
}

var _ chat.Metrics = (*metrics)(nil)

// latencyBuckets go from 0.5 ms to about 16 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// stageBuckets go from 50 µs to about 13 s: some stages take microseconds.
var stageBuckets = prometheus.ExponentialBuckets(0.00005, 2, 19)

// stageMetrics time the stages of one message's path, in
// pgchat_stage_seconds{stage}: batch_wait (a send handed to the batcher
// until its transaction starts), commit (that transaction), notify (the
// room row's lock in the sending transaction until this instance's
// listener has the notification), fanout (the hub queueing it for the
// local members) and write (queued until written to a member's socket).
// docs/performance.md reads them.
type stageMetrics struct {
	batchWait, commit, notify, fanout, write prometheus.Observer
}

func newStageMetrics(reg prometheus.Registerer) stageMetrics {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgchat_stage_seconds",
		Help:    "Time per stage of a message's path: batch_wait (per message), commit (per transaction), notify and fanout (per notification received), write (per socket write, its oldest frame).",
		Buckets: stageBuckets,
	}, []string{"stage"})
	reg.MustRegister(vec)
	return stageMetrics{
		batchWait: vec.WithLabelValues("batch_wait"),
		commit:    vec.WithLabelValues("commit"),
		notify:    vec.WithLabelValues("notify"),
		fanout:    vec.WithLabelValues("fanout"),
		write:     vec.WithLabelValues("write"),
	}
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_connections",
			Help: "Open WebSocket connections.",
		}),
		memberships: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_room_memberships",
			Help: "Rooms joined, summed over the open connections.",
		}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_messages_accepted_total",
			Help: "Sends committed by this instance and acked (resent refs included).",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_messages_delivered_total",
			Help: "Message frames queued to this instance's clients, live and replayed.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgchat_notify_batch_messages",
			Help:    "New messages per committed transaction that sent NOTIFY (count: NOTIFY batches).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		commitFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_commit_failures_total",
			Help: "Transactions that failed; their senders got unavailable.",
		}),
		queueFullFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_commit_failures_notify_queue_full_total",
			Help: "Of pgchat_commit_failures_total, those refused because PostgreSQL's notification queue was full (SQLSTATE 54000).",
		}),
		notifyQueueUsage: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_notify_queue_usage_ratio",
			Help: "pg_notification_queue_usage(): fraction of PostgreSQL's notification queue in use (cluster-wide), read every 10s.",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgchat_commit_duration_seconds",
			Help:    "Time to append one batch: insert, notify and commit.",
			Buckets: latencyBuckets,
		}),
		deliverySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pgchat_delivery_latency_seconds",
			Help:    "From a message's database timestamp to its fan-out to local clients.",
			Buckets: latencyBuckets,
		}),
		listenerReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_listener_reconnects_total",
			Help: "Times the LISTEN connection was re-established after a loss.",
		}),
		gapFetches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_gap_fetches_total",
			Help: "Reads of missed messages from the table (gaps, stubs, resyncs).",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_slow_consumer_disconnects_total",
			Help: "Clients disconnected (1008) because their queue was full.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgchat_disconnects_total",
			Help: "WebSocket connections ended, by cause (README lists them).",
		}, []string{"cause"}),
	}
	m.reg.MustRegister(m.disconnects)
	m.reg.MustRegister(
		m.connections, m.memberships, m.accepted, m.delivered, m.batchSize,
		m.commitFailures, m.queueFullFailures, m.notifyQueueUsage, m.commitSeconds, m.deliverySeconds,
		m.listenerReconnects, m.gapFetches, m.slowConsumers,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.presenceMetrics = newPresenceMetrics(m.reg)
	m.stages = newStageMetrics(m.reg)
	return m
}

// handler serves /metrics and passes every other request to next.
func (m *metrics) handler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", next)
	return mux
}

func (m *metrics) Connections(delta int)        { m.connections.Add(float64(delta)) }
func (m *metrics) Memberships(delta int)        { m.memberships.Add(float64(delta)) }
func (m *metrics) Delivered(n int)              { m.delivered.Add(float64(n)) }
func (m *metrics) Fanout(lag time.Duration)     { m.deliverySeconds.Observe(lag.Seconds()) }
func (m *metrics) Notified(lag time.Duration)   { m.stages.notify.Observe(lag.Seconds()) }
func (m *metrics) FannedOut(took time.Duration) { m.stages.fanout.Observe(took.Seconds()) }
func (m *metrics) Written(waited time.Duration) { m.stages.write.Observe(waited.Seconds()) }

// batchStarted is the batcher's OnStart.
func (m *metrics) batchStarted(waited time.Duration) { m.stages.batchWait.Observe(waited.Seconds()) }
func (m *metrics) GapFetch()                         { m.gapFetches.Inc() }
func (m *metrics) SlowConsumer()                     { m.slowConsumers.Inc() }
func (m *metrics) Disconnect(cause string)           { m.disconnects.WithLabelValues(cause).Inc() }

// commit is the batcher's OnCommit.
func (m *metrics) commit(size, fresh int, took time.Duration, err error) {
	m.commitSeconds.Observe(took.Seconds())
	m.stages.commit.Observe(took.Seconds())
	if err != nil {
		m.commitFailures.Inc()
		if store.IsNotifyQueueFull(err) {
			m.queueFullFailures.Inc()
		}
		return
	}
	m.accepted.Add(float64(size))
	if fresh > 0 {
		m.batchSize.Observe(float64(fresh))
	}
}

// listening wraps the listener's OnListen: every LISTEN after the first is
// a reconnect.
func (m *metrics) listening(onListen func(context.Context)) func(context.Context) {
	return func(ctx context.Context) {
		if m.listens.Add(1) > 1 {
			m.listenerReconnects.Inc()
		}
		onListen(ctx)
	}
}
