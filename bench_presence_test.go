package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgchat/pgchat/bench"
)

// benchJSON runs pgchat bench with args (plus -json -quiet) and decodes its
// result.
func benchJSON(t *testing.T, args ...string) bench.Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), append(append([]string{"bench"}, args...), "-json", "-quiet"), nil, &stdout, &stderr)
	if stderr.Len() > 0 {
		t.Logf("stderr: %s", stderr.String())
	}
	var res bench.Result
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("pgchat bench: %v; output %q: %v", err, stdout.String(), jerr)
	}
	if err != nil {
		t.Fatalf("pgchat bench: %v", err)
	}
	return res
}

// The bench's presence churn and typing scenarios, small: they check that
// the scenarios work and what they check holds, not speed.
func TestBenchPresenceAndTyping(t *testing.T) {
	t.Parallel()
	_, in := startThree(t)
	urls := strings.Join([]string{in[0].URL, in[1].URL, in[2].URL}, ",")

	res := benchJSON(t, "-url", urls, "-mode", "presence", "-clients", "30", "-churn", "10", "-duration", "2s", "-drain", "10s")
	p := res.Presence
	if p == nil || p.Joins == 0 || p.Leaves == 0 || p.Diffs == 0 {
		t.Fatalf("presence run: %+v", p)
	}
	if p.Wrong != 0 {
		t.Errorf("%d members ended with a wrong count", p.Wrong)
	}
	t.Logf("presence: %d joins, %d leaves, %d diffs (per-event: %d), shortest gap %v", p.Joins, p.Leaves, p.Diffs, p.PerEventMsg, p.MinDiffGap)

	res = benchJSON(t, "-url", urls, "-clients", "12", "-senders", "3", "-rate", "20", "-typists", "6", "-duration", "2s", "-warmup", "200ms")
	if ty := res.Typing; ty == nil || ty.Sent == 0 || ty.Received == 0 {
		t.Fatalf("typing: %+v", res.Typing)
	}
	if res.Lost != 0 || res.Duplicated != 0 || res.OutOfOrder != 0 || res.Acked == 0 {
		t.Errorf("with typists: acked %d, lost %d, duplicated %d, out of order %d", res.Acked, res.Lost, res.Duplicated, res.OutOfOrder)
	}
}
