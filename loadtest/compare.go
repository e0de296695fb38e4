package loadtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// CompareConfig is one workload to run over several protocols. The zero
// values of its own fields are defaults.
type CompareConfig struct {
	// Config is the workload; its Proto is ignored.
	Config
	// Protos to compare, default H1, H2, H3, in this order in every round.
	Protos []Proto
	// Rounds is the number of runs per protocol, default 3.
	Rounds int
	// Baseline is the protocol the others are divided by in ratios; default
	// H2 when compared, else the first of Protos.
	Baseline Proto
	// OnRun, if set, is called before each run with the round (from 0) and
	// the protocol.
	OnRun func(round int, p Proto)
}

// Comparison is the outcome of Compare.
type Comparison struct {
	Protos   []Proto
	Baseline Proto
	Rounds   int // rounds asked for
	// Conns and Streams are the workload's shape as asked (HTTP/1.1 runs
	// open Conns×Streams connections of one stream).
	Conns, Streams int
	// Runs[i] are the complete runs of Protos[i], one per round, in order.
	// A run cut off by the caller's context is left out.
	Runs        [][]*Result
	Interrupted bool
}

// Compare runs cfg over each protocol, interleaved in rounds (h1 h2 h3 h1 h2
// h3 …) so that drift of the machine (thermal, other load, a cache warming
// up) hits every protocol alike; a figure's value is then its median over
// the rounds. It stops early, keeping the complete runs, when ctx is done.
//
// It returns an error, before any run, if the workload is invalid for one of
// the protocols (see Run), if a protocol is listed twice, or if Baseline is
// not compared.
func Compare(ctx context.Context, cfg CompareConfig) (*Comparison, error) {
	protos := cfg.Protos
	if len(protos) == 0 {
		protos = Protos()
	}
	for i, p := range protos {
		if slices.Contains(protos[:i], p) {
			return nil, fmt.Errorf("loadtest: protocol %v listed twice", p)
		}
		c := cfg.Config
		c.Proto = p
		if _, err := c.defaults(); err != nil {
			return nil, err
		}
	}
	rounds := cfg.Rounds
	if rounds <= 0 {
		rounds = 3
	}
	base := cfg.Baseline
	if base == 0 {
		base = protos[0]
		if slices.Contains(protos, H2) {
			base = H2
		}
	}
	if !slices.Contains(protos, base) {
		return nil, fmt.Errorf("loadtest: baseline %v is not compared", base)
	}
	cmp := &Comparison{Protos: slices.Clone(protos), Baseline: base, Rounds: rounds, Runs: make([][]*Result, len(protos)),
		Conns: max(cfg.Conns, 1), Streams: max(cfg.Streams, 1)}
	for round := range rounds {
		for i, p := range protos {
			if ctx.Err() != nil {
				cmp.Interrupted = true
				return cmp, nil
			}
			if cfg.OnRun != nil {
				cfg.OnRun(round, p)
			}
			c := cfg.Config
			c.Proto = p
			res, err := Run(ctx, c)
			if err != nil {
				return nil, err
			}
			if res.Interrupted {
				cmp.Interrupted = true
				return cmp, nil
			}
			cmp.Runs[i] = append(cmp.Runs[i], res)
		}
	}
	return cmp, nil
}

// shape describes the workload: "4 conns × 2 streams (h1: 8 conns × 1
// stream), closed loop".
func (c *Comparison) shape(first *Result) string {
	if first.NewConn {
		return shape(first)
	}
	r := *first
	r.Conns, r.Streams = c.Conns, c.Streams
	s := shape(&r)
	if c.Streams > 1 && slices.Contains(c.Protos, H1) {
		head, tail, _ := strings.Cut(s, ", ")
		s = fmt.Sprintf("%s (h1: %d conns × 1 stream), %s", head, c.Conns*c.Streams, tail)
	}
	return s
}

// index returns the position of p in c.Protos, or -1.
func (c *Comparison) index(p Proto) int { return slices.Index(c.Protos, p) }

// Median returns the median over the rounds of f of p's runs; 0 without
// runs. With an even number of rounds it is the mean of the middle two.
func (c *Comparison) Median(p Proto, f func(*Result) float64) float64 {
	i := c.index(p)
	if i < 0 || len(c.Runs[i]) == 0 {
		return 0
	}
	vs := make([]float64, len(c.Runs[i]))
	for j, r := range c.Runs[i] {
		vs[j] = f(r)
	}
	return median(vs)
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Merged returns p's runs merged into one: counts, histograms, durations
// and timelines added. Its latency histogram is what the report's curves
// show; the table shows medians. It returns nil without runs.
func (c *Comparison) Merged(p Proto) *Result {
	i := c.index(p)
	if i < 0 || len(c.Runs[i]) == 0 {
		return nil
	}
	return mergeResults(c.Runs[i])
}

func mergeResults(rs []*Result) *Result {
	m := *rs[0]
	m.Status = make(map[int]int64)
	m.Latency, m.TTFB, m.Setup = Histogram{}, Histogram{}, Histogram{}
	m.Timeline = nil
	m.Requests, m.Errors, m.BytesIn, m.BytesOut, m.Unsent = 0, [numErrorKinds]int64{}, 0, 0, 0
	m.Dials, m.Resumed, m.ZeroRTT, m.CPU, m.Duration = 0, 0, 0, 0, 0
	for _, r := range rs {
		m.Duration += r.Duration
		m.Requests += r.Requests
		for k, n := range r.Errors {
			m.Errors[k] += n
		}
		for code, n := range r.Status {
			m.Status[code] += n
		}
		m.BytesIn += r.BytesIn
		m.BytesOut += r.BytesOut
		m.Unsent += r.Unsent
		m.Latency.Merge(&r.Latency)
		m.TTFB.Merge(&r.TTFB)
		m.Setup.Merge(&r.Setup)
		m.Dials += r.Dials
		m.Resumed += r.Resumed
		m.ZeroRTT += r.ZeroRTT
		m.CPU += r.CPU
		for i, n := range r.Timeline {
			if i >= len(m.Timeline) {
				m.Timeline = append(m.Timeline, make([]int64, i+1-len(m.Timeline))...)
			}
			m.Timeline[i] += n
		}
	}
	return &m
}

// meanThroughput returns the requests per second of each timeline step,
// averaged over the runs that reached that step.
func meanThroughput(rs []*Result) []float64 {
	var sum []float64
	var n []int
	for _, r := range rs {
		for i, v := range r.Throughput() {
			if i >= len(sum) {
				sum = append(sum, 0)
				n = append(n, 0)
			}
			sum[i] += v
			n[i]++
		}
	}
	for i := range sum {
		sum[i] /= float64(n[i])
	}
	return sum
}
