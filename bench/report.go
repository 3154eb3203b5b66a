package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Failures describes the deliveries that broke a guarantee, or is empty.
func (res *Result) Failures() string {
	var parts []string
	if res.Lost > 0 {
		parts = append(parts, fmt.Sprintf("%d lost", res.Lost))
	}
	if res.Duplicated > 0 {
		parts = append(parts, fmt.Sprintf("%d duplicated", res.Duplicated))
	}
	if res.OutOfOrder > 0 {
		parts = append(parts, fmt.Sprintf("%d out of order", res.OutOfOrder))
	}
	if p := res.Presence; p != nil && p.Wrong > 0 {
		parts = append(parts, fmt.Sprintf("%d members with a wrong presence count", p.Wrong))
	}
	if js := res.JoinStorm; js != nil && js.Failed > 0 {
		parts = append(parts, fmt.Sprintf("%d incomplete replays", js.Failed))
	}
	return strings.Join(parts, ", ")
}

// WriteText prints res as a table.
func (res *Result) WriteText(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, v ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, v...)...) }
	row("mode", "%s", res.Mode)
	row("servers", "%s", strings.Join(res.URLs, " "))
	rate := "as fast as acks allow"
	if res.Rate > 0 {
		rate = fmt.Sprintf("%g msg/s each", res.Rate)
	}
	switch res.Mode {
	case ModeLoad:
		row("clients", "%d in %d room(s), %d senders at %s (window %d), %d-byte bodies", res.Clients, res.Rooms, res.Senders, rate, res.Window, res.BodySize)
	case ModeIdle:
		row("clients", "%d idle in %d room(s)", res.Clients, res.Rooms)
	case ModeJoinStorm:
		row("clients", "%d joining one room with since=0", res.Clients)
	case ModePresence:
		row("clients", "%d in one room, churning", res.Clients)
	}
	row("connect", "%s", round(res.Connect))
	row("measured", "%s", round(res.Duration))
	if res.Mode == ModeLoad {
		row("sent", "%d (%.0f/s)", res.Sent, res.SentPerSec)
		row("acked", "%d (%.0f/s)", res.Acked, res.AckedPerSec)
		row("deliveries", "%d (%.0f/s)", res.Deliveries, res.DeliveriesPerSec)
		row("latency", "%s", res.Latency)
		row("ack latency", "%s", res.AckLatency)
		row("owed deliveries", "%d", res.Owed)
		row("lost", "%d", res.Lost)
		row("duplicated", "%d", res.Duplicated)
		row("out of order", "%d", res.OutOfOrder)
		row("unanswered sends", "%d", res.Unanswered)
	}
	if js := res.JoinStorm; js != nil {
		row("history", "%d messages", js.History)
		row("join to joined", "%s", js.Joins)
		row("all replays done", "%s", round(js.Total))
		row("replayed", "%d (%.0f messages/s)", js.Replayed, res.DeliveriesPerSec)
		row("incomplete replays", "%d", js.Failed)
	}
	if p := res.Presence; p != nil {
		row("churn", "%d joins and %d leaves (%d/s each)", p.Joins, p.Leaves, p.Churn)
		row("presence_diff frames", "%d (%.0f/s), shortest gap to one connection %s, %d under 900 ms", p.Diffs, float64(p.Diffs)/res.Duration.Seconds(), round(p.MinDiffGap), p.FastDiffs)
		row("most diffs to one connection", "%d in %.0f s", p.MaxDiffs, p.RunSeconds)
		row("per-event presence would send", "%d messages", p.PerEventMsg)
		row("settled after churn", "%s, %d members with a wrong count", round(p.Settle), p.Wrong)
		if p.Survivors > 0 {
			row("after the kill", "%d members left; every one counted right after %s", p.Survivors, round(p.KillSettle))
		}
	}
	if ty := res.Typing; ty != nil {
		row("typing", "%d typists sent %d, received %d", ty.Typists, ty.Sent, ty.Received)
	}
	if id := res.Idle; id != nil {
		row("alive at the end", "%d", id.Alive)
		row("server RSS increase", "%s (%s per connection)", size(id.RSSIncrease), size(id.RSSPerConn))
	}
	row("errors", "%s", counts(res.Errors))
	row("closes", "%s", counts(res.Closes))
	row("reconnects", "%d", res.Reconnects)
	row("bench cpu", "%.2f cores", res.BenchCPU)
	for _, s := range res.Servers {
		row(fmt.Sprintf("server pid %d", s.PID), "cpu %.2f cores, rss %s -> %s", s.CPU, size(s.RSSStart), size(s.RSSEnd))
	}
	tw.Flush()
}

func (l Latency) String() string {
	if l.Count == 0 {
		return "-"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%d)",
		round(l.P50), round(l.P90), round(l.P99), round(l.P999), round(l.Max), l.Count)
}

func counts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

func size(b int64) string {
	switch {
	case b >= 10<<20 || b <= -10<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
}
