package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgchat/pgchat/chat"
)

// presenceMetrics are the presence, typing and read-state metrics
// (chat.PresenceMetrics); metrics embeds them.
type presenceMetrics struct {
	presenceMembers prometheus.Gauge
	presenceDiffs   prometheus.Counter
	typingRelayed   prometheus.Counter
	typingDropped   prometheus.Counter
	readsWritten    prometheus.Counter
}

var _ chat.PresenceMetrics = (*metrics)(nil)

func newPresenceMetrics(reg *prometheus.Registry) presenceMetrics {
	m := presenceMetrics{
		presenceMembers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgchat_presence_members",
			Help: "(room, author) pairs present through this instance's connections, as published to the presence table.",
		}),
		presenceDiffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_presence_diffs_total",
			Help: "presence_diff frames queued to this instance's clients.",
		}),
		typingRelayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_typing_relayed_total",
			Help: "typing frames queued to this instance's clients.",
		}),
		typingDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_typing_dropped_total",
			Help: "typing events dropped by the once-per-2s throttle (per author and room).",
		}),
		readsWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgchat_read_cursors_written_total",
			Help: "Read cursors moved forward in the reads table by this instance.",
		}),
	}
	reg.MustRegister(m.presenceMembers, m.presenceDiffs, m.typingRelayed, m.typingDropped, m.readsWritten)
	return m
}

func (m *presenceMetrics) PresenceMembers(delta int) { m.presenceMembers.Add(float64(delta)) }
func (m *presenceMetrics) PresenceDiffs(n int)       { m.presenceDiffs.Add(float64(n)) }
func (m *presenceMetrics) TypingRelayed(n int)       { m.typingRelayed.Add(float64(n)) }
func (m *presenceMetrics) TypingDropped()            { m.typingDropped.Inc() }
func (m *presenceMetrics) ReadCursorsWritten(n int)  { m.readsWritten.Add(float64(n)) }
