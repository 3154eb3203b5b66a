package client

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, 2 * time.Second
	for attempt, ceil := range []time.Duration{lo, 2 * lo, 4 * lo, 8 * lo, 16 * lo, hi, hi} {
		var biggest time.Duration
		for range 2000 {
			d := backoff(lo, hi, attempt)
			if d < 0 || d > ceil {
				t.Fatalf("backoff(%v, %v, %d) = %v, want 0 to %v", lo, hi, attempt, d, ceil)
			}
			biggest = max(biggest, d)
		}
		// Full jitter: the whole range is used, not just the top.
		if biggest < ceil*3/4 {
			t.Errorf("backoff(%v, %v, %d): largest of 2000 draws %v, want near %v", lo, hi, attempt, biggest, ceil)
		}
	}
	if d := backoff(lo, hi, 1000); d < 0 || d > hi {
		t.Errorf("backoff(%v, %v, 1000) = %v, want 0 to %v", lo, hi, d, hi)
	}
}
