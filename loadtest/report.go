package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// figure is one row of a report: a number computed from a Result.
type figure struct {
	key    string // JSON key
	name   string // table label
	higher bool   // higher is better
	// neutral: neither higher nor lower is better (the report does not
	// color its ratio).
	neutral bool
	value   func(*Result) float64
	format  func(float64) string
	// show reports whether the row is worth a line for these results.
	show func(rs []*Result) bool
}

func always([]*Result) bool { return true }

func anyRes(f func(*Result) bool) func([]*Result) bool {
	return func(rs []*Result) bool { return slices.ContainsFunc(rs, f) }
}

func quantileFigure(key, name string, h func(*Result) *Histogram, q float64) figure {
	return figure{key: key, name: name, value: func(r *Result) float64 { return float64(h(r).Quantile(q)) }, format: fmtNanos, show: always}
}

func latency(r *Result) *Histogram { return &r.Latency }
func ttfb(r *Result) *Histogram    { return &r.TTFB }
func setup(r *Result) *Histogram   { return &r.Setup }

var figures = []figure{
	{key: "requests_per_s", name: "requests/s", higher: true, value: (*Result).RequestsPerSecond, format: fmtRate, show: always},
	{key: "bytes_per_s", name: "body bytes/s", higher: true, value: (*Result).BytesPerSecond, format: fmtBytes, show: always},
	quantileFigure("latency_p50_ns", "latency p50", latency, 0.5),
	quantileFigure("latency_p90_ns", "latency p90", latency, 0.9),
	quantileFigure("latency_p99_ns", "latency p99", latency, 0.99),
	quantileFigure("latency_p999_ns", "latency p99.9", latency, 0.999),
	{key: "latency_max_ns", name: "latency max", value: func(r *Result) float64 { return float64(r.Latency.Max()) }, format: fmtNanos, show: always},
	quantileFigure("ttfb_p50_ns", "TTFB p50", ttfb, 0.5),
	quantileFigure("ttfb_p99_ns", "TTFB p99", ttfb, 0.99),
	func() figure {
		f := quantileFigure("setup_p50_ns", "conn setup p50", setup, 0.5)
		f.show = anyRes(func(r *Result) bool { return r.Dials > 0 })
		return f
	}(),
	func() figure {
		f := quantileFigure("setup_p99_ns", "conn setup p99", setup, 0.99)
		f.show = anyRes(func(r *Result) bool { return r.Dials > 0 })
		return f
	}(),
	{key: "connections", name: "connections", neutral: true, value: func(r *Result) float64 { return float64(r.Dials) }, format: fmtCount, show: always},
	{key: "resumed", name: "resumed", higher: true, value: func(r *Result) float64 { return float64(r.Resumed) }, format: fmtCount,
		show: anyRes(func(r *Result) bool { return r.Resumed > 0 })},
	{key: "zero_rtt", name: "0-RTT", higher: true, value: func(r *Result) float64 { return float64(r.ZeroRTT) }, format: fmtCount,
		show: anyRes(func(r *Result) bool { return r.ZeroRTT > 0 })},
	{key: "errors", name: "errors", value: func(r *Result) float64 { return float64(r.TotalErrors()) }, format: fmtCount, show: always},
	{key: "unsent", name: "unsent (behind)", value: func(r *Result) float64 { return float64(r.Unsent) }, format: fmtCount,
		show: anyRes(func(r *Result) bool { return r.Rate > 0 })},
	{key: "client_cpu", name: "client CPU", value: (*Result).CPUUtilization, format: fmtPercent, show: always},
	{key: "client_cpu_per_request_ns", name: "client CPU/request", value: func(r *Result) float64 { return float64(r.CPUPerRequest()) }, format: fmtNanos, show: always},
}

func fmtNanos(v float64) string {
	d := time.Duration(v)
	switch {
	case v == 0:
		return "0"
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.2fµs", v/1e3)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", v/1e3)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", v/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", v/1e6)
	}
	return fmt.Sprintf("%.2fs", v/1e9)
}

func fmtCount(v float64) string { return groupDigits(int64(math.Round(v))) }

func fmtRate(v float64) string {
	if v >= 100 {
		return groupDigits(int64(math.Round(v)))
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func fmtBytes(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2f GB", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2f MB", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f kB", v/1e3)
	}
	return fmt.Sprintf("%.0f B", v)
}

func fmtPercent(v float64) string { return fmt.Sprintf("%.0f%%", v*100) }

// groupDigits writes n with thousands separators: 1234567 is "1,234,567".
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtRatio(v, base float64) string {
	if base == 0 || math.IsNaN(v/base) || math.IsInf(v/base, 0) {
		return ""
	}
	return fmt.Sprintf("×%.2f", v/base)
}

// shape describes a workload in words: "16 conns × 1 stream, closed loop".
func shape(r *Result) string {
	var b strings.Builder
	if r.NewConn {
		fmt.Fprintf(&b, "%d concurrent, a new connection per request", r.Conns*r.Streams)
	} else {
		fmt.Fprintf(&b, "%d conns × %d stream", r.Conns, r.Streams)
		if r.Streams != 1 {
			b.WriteByte('s')
		}
	}
	if r.Rate > 0 {
		fmt.Fprintf(&b, ", open loop at %s req/s", fmtRate(r.Rate))
	} else {
		b.WriteString(", closed loop")
	}
	return b.String()
}

func fmtWarmup(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return fmt.Sprintf(" after a %v warm-up", d)
}

// WriteText writes r as a terminal table.
func (r *Result) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "%s %s %s: %s, %v%s", r.Proto, r.Method, r.URL, shape(r), r.Duration.Round(time.Millisecond), fmtWarmup(r.Warmup))
	if r.Interrupted {
		ew.WriteString(" (interrupted)")
	}
	ew.WriteString("\n\n")
	rs := []*Result{r}
	tw := newTable(2)
	for _, f := range figures {
		if f.show(rs) {
			tw.row(f.name, f.format(f.value(r)))
		}
	}
	tw.row("requests", fmtCount(float64(r.Requests)))
	tw.write(ew)
	writeCounts(ew, rs)
	return ew.err
}

// writeCounts writes the status codes and the errors by kind of each result.
func writeCounts(ew *errWriter, rs []*Result) {
	for _, r := range rs {
		prefix := ""
		if len(rs) > 1 {
			prefix = r.Proto.String() + " "
		}
		var parts []string
		for _, code := range slices.Sorted(maps.Keys(r.Status)) {
			parts = append(parts, fmt.Sprintf("%d: %s", code, fmtCount(float64(r.Status[code]))))
		}
		if len(parts) > 0 {
			fmt.Fprintf(ew, "\n%sstatus  %s", prefix, strings.Join(parts, ", "))
		}
		parts = parts[:0]
		for _, k := range ErrorKinds() {
			if n := r.Errors[k]; n > 0 {
				parts = append(parts, fmt.Sprintf("%v %s", k, fmtCount(float64(n))))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(ew, "\n%serrors  %s", prefix, strings.Join(parts, ", "))
		}
	}
	ew.WriteString("\n")
}

// WriteText writes c as a terminal table: one column per protocol, each
// figure the median over the rounds, and its ratio to the baseline.
func (c *Comparison) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	first := c.first()
	if first == nil {
		ew.WriteString("no complete run\n")
		return ew.err
	}
	n := len(c.Runs[c.index(first.Proto)])
	fmt.Fprintf(ew, "compare %s %s: %s, %d round", first.Method, first.URL, c.shape(first), n)
	if n != 1 {
		ew.WriteByte('s')
	}
	fmt.Fprintf(ew, " of %v each%s", first.Duration.Round(time.Millisecond), fmtWarmup(first.Warmup))
	if c.Interrupted {
		fmt.Fprintf(ew, " (interrupted; %d asked)", c.Rounds)
	}
	fmt.Fprintf(ew, "\nmedians over the rounds; ×ratio to %v\n\n", c.Baseline)

	tw := newTable(1 + len(c.Protos))
	head := []string{""}
	for _, p := range c.Protos {
		h := p.String()
		if p == c.Baseline {
			h += " (base)"
		}
		head = append(head, h)
	}
	tw.row(head...)
	all := c.all()
	for _, f := range figures {
		if !f.show(all) {
			continue
		}
		base := c.Median(c.Baseline, f.value)
		cells := []string{f.name}
		for _, p := range c.Protos {
			if len(c.Runs[c.index(p)]) == 0 {
				cells = append(cells, "–")
				continue
			}
			v := c.Median(p, f.value)
			cell := f.format(v)
			if p != c.Baseline {
				if r := fmtRatio(v, base); r != "" {
					cell += " " + r
				}
			}
			cells = append(cells, cell)
		}
		tw.row(cells...)
	}
	tw.write(ew)
	var merged []*Result
	for _, p := range c.Protos {
		if m := c.Merged(p); m != nil {
			merged = append(merged, m)
		}
	}
	writeCounts(ew, merged)
	return ew.err
}

// first returns the first run of the comparison, or nil.
func (c *Comparison) first() *Result {
	for _, rs := range c.Runs {
		if len(rs) > 0 {
			return rs[0]
		}
	}
	return nil
}

func (c *Comparison) all() []*Result {
	var all []*Result
	for _, rs := range c.Runs {
		all = append(all, rs...)
	}
	return all
}

// table aligns columns: the first left, the others right.
type table struct {
	cols int
	rows [][]string
}

func newTable(cols int) *table { return &table{cols: cols} }

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w *errWriter) {
	width := make([]int, t.cols)
	for _, r := range t.rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("   " + pad + c)
			}
		}
		w.WriteString(strings.TrimRight(b.String(), " ") + "\n")
	}
}

// errWriter keeps the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) WriteString(s string) { e.Write([]byte(s)) }
func (e *errWriter) WriteByte(b byte) error {
	_, err := e.Write([]byte{b})
	return err
}

// JSON forms. Durations are in nanoseconds (integers), rates per second.

type histogramJSON struct {
	Count  uint64  `json:"count"`
	Min    int64   `json:"min_ns"`
	Mean   int64   `json:"mean_ns"`
	P50    int64   `json:"p50_ns"`
	P90    int64   `json:"p90_ns"`
	P99    int64   `json:"p99_ns"`
	P999   int64   `json:"p999_ns"`
	Max    int64   `json:"max_ns"`
	Points []point `json:"curve,omitempty"`
}

type point struct {
	Q float64 `json:"q"`
	V int64   `json:"ns"`
}

func histJSON(h *Histogram, curve bool) histogramJSON {
	j := histogramJSON{
		Count: h.Count(), Min: int64(h.Min()), Mean: int64(h.Mean()), P50: int64(h.Quantile(0.5)),
		P90: int64(h.Quantile(0.9)), P99: int64(h.Quantile(0.99)), P999: int64(h.Quantile(0.999)), Max: int64(h.Max()),
	}
	if curve {
		for _, p := range h.Curve() {
			j.Points = append(j.Points, point{p.Quantile, int64(p.Value)})
		}
	}
	return j
}

type resultJSON struct {
	Proto          Proto            `json:"proto"`
	URL            string           `json:"url"`
	Method         string           `json:"method"`
	Conns          int              `json:"conns"`
	Streams        int              `json:"streams_per_conn"`
	NewConn        bool             `json:"new_conn"`
	Rate           float64          `json:"rate,omitempty"`
	Start          time.Time        `json:"start"`
	Warmup         int64            `json:"warmup_ns"`
	Duration       int64            `json:"duration_ns"`
	Interrupted    bool             `json:"interrupted,omitempty"`
	Requests       int64            `json:"requests"`
	RequestsPerSec float64          `json:"requests_per_s"`
	BytesIn        int64            `json:"bytes_in"`
	BytesPerSec    float64          `json:"bytes_in_per_s"`
	BytesOut       int64            `json:"bytes_out"`
	Status         map[string]int64 `json:"status"`
	Errors         map[string]int64 `json:"errors"`
	Unsent         int64            `json:"unsent,omitempty"`
	Latency        histogramJSON    `json:"latency"`
	TTFB           histogramJSON    `json:"ttfb"`
	Setup          histogramJSON    `json:"conn_setup"`
	Dials          int64            `json:"connections"`
	Resumed        int64            `json:"resumed"`
	ZeroRTT        int64            `json:"zero_rtt"`
	CPU            int64            `json:"client_cpu_ns"`
	CPUUtil        float64          `json:"client_cpu_utilization"`
	Step           int64            `json:"timeline_step_ns"`
	Timeline       []int64          `json:"timeline"`
}

func (r *Result) json(curve bool) resultJSON {
	j := resultJSON{
		Proto: r.Proto, URL: r.URL, Method: r.Method, Conns: r.Conns, Streams: r.Streams, NewConn: r.NewConn,
		Rate: r.Rate, Start: r.Start, Warmup: int64(r.Warmup), Duration: int64(r.Duration), Interrupted: r.Interrupted,
		Requests: r.Requests, RequestsPerSec: r.RequestsPerSecond(), BytesIn: r.BytesIn, BytesPerSec: r.BytesPerSecond(),
		BytesOut: r.BytesOut, Status: map[string]int64{}, Errors: map[string]int64{}, Unsent: r.Unsent,
		Latency: histJSON(&r.Latency, curve), TTFB: histJSON(&r.TTFB, false), Setup: histJSON(&r.Setup, false),
		Dials: r.Dials, Resumed: r.Resumed, ZeroRTT: r.ZeroRTT, CPU: int64(r.CPU), CPUUtil: r.CPUUtilization(),
		Step: int64(r.Step), Timeline: r.Timeline,
	}
	for code, n := range r.Status {
		j.Status[strconv.Itoa(code)] = n
	}
	for _, k := range ErrorKinds() {
		j.Errors[k.String()] = r.Errors[k]
	}
	return j
}

// WriteJSON writes r as one JSON object, with the latency curve.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.json(true))
}

type comparisonJSON struct {
	Protos      []Proto                       `json:"protos"`
	Baseline    Proto                         `json:"baseline"`
	Rounds      int                           `json:"rounds"`
	Interrupted bool                          `json:"interrupted,omitempty"`
	Median      map[string]map[string]float64 `json:"median"`
	Ratio       map[string]map[string]float64 `json:"ratio_to_baseline"`
	Runs        map[string][]resultJSON       `json:"runs"`
}

// WriteJSON writes c as one JSON object: the medians of every figure per
// protocol, their ratios to the baseline, and every run.
func (c *Comparison) WriteJSON(w io.Writer) error {
	j := comparisonJSON{
		Protos: c.Protos, Baseline: c.Baseline, Rounds: c.Rounds, Interrupted: c.Interrupted,
		Median: map[string]map[string]float64{}, Ratio: map[string]map[string]float64{}, Runs: map[string][]resultJSON{},
	}
	for i, p := range c.Protos {
		if len(c.Runs[i]) == 0 {
			continue
		}
		med, ratio := map[string]float64{}, map[string]float64{}
		for _, f := range figures {
			v := c.Median(p, f.value)
			med[f.key] = v
			if b := c.Median(c.Baseline, f.value); b != 0 {
				ratio[f.key] = v / b
			}
		}
		j.Median[p.String()], j.Ratio[p.String()] = med, ratio
		for _, r := range c.Runs[i] {
			j.Runs[p.String()] = append(j.Runs[p.String()], r.json(false))
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(j)
}
