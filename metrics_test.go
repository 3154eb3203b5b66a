package main

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads base's /metrics into a map from series (name plus labels, as
// written) to value.
func scrape(t testing.TB, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	series := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		series[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return series
}

// waitMetric polls base's /metrics until series satisfies ok.
func waitMetric(t testing.TB, base, series string, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, found := scrape(t, base)[series]
		if found && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s /metrics: %s = %v (present %v), never as wanted", base, series, v, found)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, testEnv(db, "app-1"))
	b := startInstance(t, testEnv(db, "app-2"))

	// Every documented metric is exposed from the start.
	m := scrape(t, a.URL)
	for _, name := range []string{
		"pgchat_connections",
		"pgchat_room_memberships",
		"pgchat_messages_accepted_total",
		"pgchat_messages_delivered_total",
		"pgchat_notify_batch_messages_count",
		"pgchat_commit_failures_total",
		"pgchat_commit_duration_seconds_count",
		"pgchat_delivery_latency_seconds_count",
		"pgchat_listener_reconnects_total",
		"pgchat_gap_fetches_total",
		"pgchat_slow_consumer_disconnects_total",
		"go_goroutines",
	} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}

	alice, bob := dial(t, a.URL, name("alice")), dial(t, b.URL, name("bob"))
	alice.join("r")
	bob.join("r")
	const n = 5
	for i := range n {
		alice.send("r", "m"+strconv.Itoa(i), "c"+strconv.Itoa(i))
		alice.nextOf("ack")
	}
	checkSeqs(t, "bob", bob.messages(n), 1)

	m = scrape(t, a.URL)
	for series, want := range map[string]float64{
		"pgchat_connections":             1,
		"pgchat_room_memberships":        1,
		"pgchat_messages_accepted_total": n,
	} {
		if m[series] != want {
			t.Errorf("app-1 %s = %v, want %v", series, m[series], want)
		}
	}
	for _, series := range []string{
		"pgchat_notify_batch_messages_count",
		"pgchat_commit_duration_seconds_count",
	} {
		if m[series] < 1 || m[series] > n {
			t.Errorf("app-1 %s = %v, want 1 to %d (one per batch)", series, m[series], n)
		}
	}
	if got := m["pgchat_notify_batch_messages_sum"]; got != n {
		t.Errorf("app-1 pgchat_notify_batch_messages_sum = %v, want %d", got, n)
	}
	// Bob's copies are queued by app-2, which accepted nothing; alice's
	// own copies may still be on their way to app-1's clients.
	waitMetric(t, a.URL, "pgchat_messages_delivered_total", func(v float64) bool { return v == n })
	waitMetric(t, a.URL, "pgchat_delivery_latency_seconds_count", func(v float64) bool { return v == n })
	m = scrape(t, b.URL)
	if m["pgchat_messages_accepted_total"] != 0 || m["pgchat_messages_delivered_total"] != n || m["pgchat_delivery_latency_seconds_count"] != n {
		t.Errorf("app-2 accepted %v delivered %v fanned out %v, want 0, %d, %d",
			m["pgchat_messages_accepted_total"], m["pgchat_messages_delivered_total"], m["pgchat_delivery_latency_seconds_count"], n, n)
	}

	// The stage histograms: app-1 batched and committed alice's sends;
	// both instances got their notifications, fanned them out and wrote
	// them to a socket (app-1 also wrote the acks).
	for stage, want := range map[string]float64{"batch_wait": n, "commit": 1} {
		series := `pgchat_stage_seconds_count{stage="` + stage + `"}`
		if got := scrape(t, a.URL)[series]; got < want || got > n {
			t.Errorf("app-1 %s = %v, want %v to %d", series, got, want, n)
		}
	}
	for _, inst := range []*instance{a, b} {
		for _, stage := range []string{"notify", "fanout", "write"} {
			series := `pgchat_stage_seconds_count{stage="` + stage + `"}`
			waitMetric(t, inst.URL, series, func(v float64) bool { return v >= 1 })
		}
		sums := scrape(t, inst.URL)
		if got := sums[`pgchat_stage_seconds_sum{stage="notify"}`]; got <= 0 {
			t.Errorf("%s notify stage sum = %v, want > 0", inst.URL, got)
		}
	}
	if got := scrape(t, b.URL)[`pgchat_stage_seconds_count{stage="batch_wait"}`]; got != 0 {
		t.Errorf("app-2 batch_wait count = %v, want 0: it sent nothing", got)
	}

	// Cut app-2's LISTEN connection: it reconnects and catches its room up
	// from the table.
	conn := dbConn(t, db)
	if _, err := conn.Exec(t.Context(), `select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'pgchat app-2 listener'`); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, b.URL, "pgchat_listener_reconnects_total", func(v float64) bool { return v == 1 })
	waitMetric(t, b.URL, "pgchat_gap_fetches_total", func(v float64) bool { return v >= 1 })

	bob.conn.CloseNow()
	waitMetric(t, b.URL, "pgchat_connections", func(v float64) bool { return v == 0 })
	waitMetric(t, b.URL, "pgchat_room_memberships", func(v float64) bool { return v == 0 })
}
