package loadtest

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactQuantile is the reference: the value of rank ceil(q*n) in sorted vs.
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[rank-1]
}

// maxRelErr is the documented bound: half a bucket, 1/256 of the value.
const maxRelErr = 1.0 / 256

func checkQuantiles(t *testing.T, h *Histogram, vs []int64) {
	t.Helper()
	sorted := slices.Clone(vs)
	slices.Sort(sorted)
	for _, q := range []float64{0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999} {
		want := exactQuantile(sorted, q)
		got := int64(h.Quantile(q))
		if diff := math.Abs(float64(got - want)); diff > float64(want)*maxRelErr {
			t.Errorf("q=%v: got %d, exact %d: relative error %.5f > %.5f", q, got, want, diff/float64(want), maxRelErr)
		}
	}
	if h.Quantile(0) != time.Duration(sorted[0]) || h.Quantile(1) != time.Duration(sorted[len(sorted)-1]) {
		t.Errorf("q=0, q=1: %v, %v; want exact %d, %d", h.Quantile(0), h.Quantile(1), sorted[0], sorted[len(sorted)-1])
	}
	if h.Min() != time.Duration(sorted[0]) || h.Max() != time.Duration(sorted[len(sorted)-1]) || h.Count() != uint64(len(vs)) {
		t.Errorf("min %v max %v count %d", h.Min(), h.Max(), h.Count())
	}
	var sum float64
	for _, v := range vs {
		sum += float64(v)
	}
	if mean := sum / float64(len(vs)); math.Abs(float64(h.Mean())-mean) > 1 {
		t.Errorf("mean %v, want %v", h.Mean(), mean)
	}
}

func TestHistogramErrorBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for name, gen := range map[string]func() int64{
		// Log-uniform from 1ns to 100s: every range of the histogram.
		"loguniform": func() int64 { return int64(math.Exp(rng.Float64() * math.Log(100e9))) },
		// Latencies around 1ms with a tail.
		"lognormal": func() int64 { return int64(math.Exp(rng.NormFloat64()*0.8 + math.Log(1e6))) },
		// Small exact values (range 0 is exact).
		"small": func() int64 { return rng.Int64N(256) },
	} {
		t.Run(name, func(t *testing.T) {
			var h Histogram
			vs := make([]int64, 200000)
			for i := range vs {
				vs[i] = gen()
				h.Record(time.Duration(vs[i]))
			}
			checkQuantiles(t, &h, vs)
		})
	}
}

// TestHistogramBucketEdges checks every bucket boundary over the whole
// range: the reported value of a single sample is within the bound.
func TestHistogramBucketEdges(t *testing.T) {
	for k := 0; k < 45; k++ {
		for _, v := range []int64{1<<k - 1, 1 << k, 1<<k + 1, 3 << k >> 1} {
			if v < 0 || v > maxValue {
				continue
			}
			// Two values so the quantile is not clamped to min/max.
			var h Histogram
			h.Record(0)
			h.Record(time.Duration(v))
			h.Record(time.Duration(maxValue))
			got := int64(h.Quantile(0.5))
			if d := math.Abs(float64(got - v)); d > float64(v)*maxRelErr {
				t.Errorf("v=%d: got %d (error %.5f)", v, got, d/float64(v))
			}
		}
	}
}

func TestHistogramMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var all, a, b Histogram
	var vs []int64
	for i := range 50000 {
		v := rng.Int64N(int64(time.Second))
		vs = append(vs, v)
		all.Record(time.Duration(v))
		if i%3 == 0 {
			a.Record(time.Duration(v))
		} else {
			b.Record(time.Duration(v))
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(&Histogram{}) // empty: no effect
	m.Merge(nil)
	if !equalRanges(&m, &all) {
		t.Fatal("merged buckets differ from recording everything in one")
	}
	if m.Count() != all.Count() || m.Min() != all.Min() || m.Max() != all.Max() {
		t.Fatal("merged summary differs")
	}
	checkQuantiles(t, &m, vs)
	m.Reset()
	if m.Count() != 0 || m.Quantile(0.5) != 0 || m.Max() != 0 || m.Mean() != 0 {
		t.Fatal("Reset left values")
	}
}

func equalRanges(a, b *Histogram) bool {
	for r := range a.ranges {
		if !slices.Equal(a.ranges[r], b.ranges[r]) {
			return false
		}
	}
	return true
}

func TestHistogramEdgeCases(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Curve() != nil {
		t.Fatal("empty histogram")
	}
	h.Record(-5) // negative: recorded as 0
	if h.Min() != 0 || h.Count() != 1 {
		t.Fatal("negative value")
	}
	h.Record(100 * time.Hour) // beyond the tracked range: the max stays exact
	if h.Max() != 100*time.Hour || h.Quantile(0.99) > 100*time.Hour {
		t.Fatalf("huge value: max %v, p99 %v", h.Max(), h.Quantile(0.99))
	}
}

// TestHistogramMemory: constant memory, whatever the number of samples; a
// typical latency distribution touches a handful of ranges.
func TestHistogramMemory(t *testing.T) {
	var h Histogram
	for i := range 1_000_000 {
		h.Record(time.Duration(500_000 + i%1_000_000)) // 0.5ms to 1.5ms
	}
	n := 0
	for _, c := range h.ranges {
		n += len(c)
	}
	if n > 3*subBuckets {
		t.Fatalf("%d counters for one decade of values", n)
	}
	if allocs := testing.AllocsPerRun(1000, func() { h.Record(time.Millisecond) }); allocs != 0 {
		t.Fatalf("Record allocates %v times", allocs)
	}
}

func TestHistogramCurve(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	c := h.Curve()
	if c[0].Quantile != 0 || c[len(c)-1].Quantile != 1 || c[len(c)-1].Value != h.Max() {
		t.Fatalf("curve ends: %v, %v", c[0], c[len(c)-1])
	}
	for i := 1; i < len(c); i++ {
		if c[i].Quantile <= c[i-1].Quantile || c[i].Value < c[i-1].Value {
			t.Fatalf("curve not increasing at %d: %v, %v", i, c[i-1], c[i])
		}
	}
	// 10,000 samples resolve to about 99.999% (10× the count), not beyond.
	if last := c[len(c)-2].Quantile; last < 0.999 || last > 0.99999+1e-9 {
		t.Fatalf("curve resolution ends at %v", last)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	v := time.Duration(0)
	b.ReportAllocs()
	for b.Loop() {
		v += 7919
		h.Record(v % time.Second)
	}
}
