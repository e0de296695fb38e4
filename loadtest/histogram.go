package loadtest

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, like HdrHistogram: values below 2^(subBits+1)
// have a bucket each; above, every power-of-two range [2^k, 2^(k+1)) is split
// into 2^subBits equal buckets. A bucket's width is at most 1/2^subBits of its
// lower bound, so reporting its midpoint is off by at most 1/2^(subBits+1) of
// the true value: 0.39% with subBits = 7.
const (
	subBits    = 7
	subBuckets = 1 << subBits // buckets per power-of-two range
	// firstRange is the number of unit-wide buckets of range 0: [0, 2*subBuckets).
	firstRange = 2 * subBuckets
	// maxValue bounds what is tracked: 2^45 ns is 9.8 hours. Larger values are
	// recorded as maxValue (and counted in the max).
	maxValue  = 1<<45 - 1
	numRanges = 45 - subBits // range r >= 1 covers [subBuckets<<r, 2*subBuckets<<r)
)

// Histogram records durations with a bounded relative error (at most 0.4% on
// any reported percentile) in constant memory: at most 38 ranges of 128
// counters, each allocated the first time a value falls into it. It is
// mergeable, so each load-generating goroutine keeps its own and they are
// added together at the end, with no lock on the request path. Min, max,
// count and mean are exact.
//
// The zero value is an empty histogram ready to use. A Histogram is not safe
// for concurrent use.
type Histogram struct {
	ranges [numRanges + 1][]uint64 // ranges[0] has firstRange counters, the others subBuckets
	count  uint64
	sum    float64 // nanoseconds
	min    int64
	max    int64
}

// bucketOf returns the range and bucket index of v, which is in [0, maxValue].
func bucketOf(v int64) (r, i int) {
	if v < firstRange {
		return 0, int(v)
	}
	r = bits.Len64(uint64(v)) - (subBits + 1)
	return r, int(v>>r) - subBuckets
}

// bucketBounds returns the lowest value of bucket i of range r and its width.
func bucketBounds(r, i int) (low, width int64) {
	if r == 0 {
		return int64(i), 1
	}
	return int64(i+subBuckets) << r, 1 << r
}

// Record adds one duration. Negative durations are recorded as zero.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	if h.count == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.count++
	h.sum += float64(v)
	if v > maxValue {
		v = maxValue
	}
	r, i := bucketOf(v)
	c := h.ranges[r]
	if c == nil {
		n := subBuckets
		if r == 0 {
			n = firstRange
		}
		c = make([]uint64, n)
		h.ranges[r] = c
	}
	c[i]++
}

// Merge adds the values recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.count == 0 {
		return
	}
	if h.count == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.count += o.count
	h.sum += o.sum
	for r, oc := range o.ranges {
		if oc == nil {
			continue
		}
		if h.ranges[r] == nil {
			h.ranges[r] = make([]uint64, len(oc))
		}
		c := h.ranges[r]
		for i, n := range oc {
			c[i] += n
		}
	}
}

// Reset empties h, keeping its allocated ranges.
func (h *Histogram) Reset() {
	for _, c := range h.ranges {
		clear(c)
	}
	h.count, h.sum, h.min, h.max = 0, 0, 0, 0
}

// Count returns the number of recorded values.
func (h *Histogram) Count() uint64 { return h.count }

// Min returns the smallest recorded value, exactly; 0 if h is empty.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max returns the largest recorded value, exactly; 0 if h is empty.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean of the recorded values; 0 if h is empty.
func (h *Histogram) Mean() time.Duration {
	if h.count == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.count))
}

// Quantile returns the value at quantile q in [0, 1]: the smallest recorded
// value v such that at least a fraction q of the values are <= v, within
// 0.4% (the midpoint of its bucket, kept within [Min, Max]). Quantile(0) is
// Min and Quantile(1) is Max, exactly. It returns 0 if h is empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.count == 0 {
		return 0
	}
	if q <= 0 || math.IsNaN(q) {
		return time.Duration(h.min)
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.count)))
	if rank < 1 {
		rank = 1
	}
	var cum uint64
	for r, c := range h.ranges {
		for i, n := range c {
			if n == 0 {
				continue
			}
			cum += n
			if cum >= rank {
				low, w := bucketBounds(r, i)
				v := low + w/2
				return time.Duration(min(max(v, h.min), h.max))
			}
		}
	}
	return time.Duration(h.max)
}

// CurvePoint is one point of a latency-by-percentile curve.
type CurvePoint struct {
	Quantile float64       // in [0, 1]
	Value    time.Duration // Quantile(Quantile)
}

// curveQuantiles are spaced evenly in "nines" (log10 of 1/(1-q)), the usual
// x-axis of a latency percentile plot, up to 99.999%.
var curveQuantiles = func() []float64 {
	var qs []float64
	for x := 0.0; x <= 5.0001; x += 0.125 {
		qs = append(qs, 1-math.Pow(10, -x))
	}
	return qs
}()

// Curve returns the latency-by-percentile curve of h: points spaced evenly in
// nines from 0% to 99.999%, then the maximum. It returns nil if h is empty.
func (h *Histogram) Curve() []CurvePoint {
	if h.count == 0 {
		return nil
	}
	pts := make([]CurvePoint, 0, len(curveQuantiles)+1)
	for _, q := range curveQuantiles {
		// Past the resolution of the sample count the curve is flat at Max.
		if q > 0 && 1/(1-q) > float64(h.count)*10 {
			break
		}
		pts = append(pts, CurvePoint{q, h.Quantile(q)})
	}
	return append(pts, CurvePoint{1, h.Max()})
}
