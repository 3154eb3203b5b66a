package bench

import (
	"math/bits"
	"time"
)

// hist is a log-linear histogram of durations: 32 buckets per power of two,
// so a quantile is off by at most about 3%. It is not safe for concurrent
// use: each connection records into its own and they are merged at the end.
type hist struct {
	counts []uint32 // allocated on the first record
	n      int64
	sum    int64
	max    int64
}

const (
	subBits    = 5
	subBuckets = 1 << subBits
	maxBucket  = (41-subBits)<<subBits + subBuckets - 1 // ~2^41 ns, 36 min
)

func bucketOf(v int64) int {
	if v < subBuckets {
		return int(max(v, 0))
	}
	msb := bits.Len64(uint64(v)) - 1
	shift := msb - subBits
	i := (shift+1)<<subBits + int((v>>shift)&(subBuckets-1))
	return min(i, maxBucket)
}

// bucketMid is a value in the middle of bucket i.
func bucketMid(i int) int64 {
	if i < subBuckets {
		return int64(i)
	}
	shift := i>>subBits - 1
	low := int64(subBuckets|i&(subBuckets-1)) << shift
	return low + (int64(1)<<shift)/2
}

func (h *hist) record(d int64) {
	if h.counts == nil {
		h.counts = make([]uint32, maxBucket+1)
	}
	h.counts[bucketOf(d)]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint32, maxBucket+1)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0 < q <= 1), never more than the max.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += int64(c)
		if seen >= rank {
			return time.Duration(min(bucketMid(i), h.max))
		}
	}
	return time.Duration(h.max)
}

// Latency summarizes a histogram for the report.
type Latency struct {
	Count int64         `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p999_ns"`
	Max   time.Duration `json:"max_ns"`
}

func (h *hist) summary() Latency {
	l := Latency{Count: h.n, Max: time.Duration(h.max)}
	if h.n > 0 {
		l.Mean = time.Duration(h.sum / h.n)
		l.P50, l.P90, l.P99, l.P999 = h.quantile(0.5), h.quantile(0.9), h.quantile(0.99), h.quantile(0.999)
	}
	return l
}
