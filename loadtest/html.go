package loadtest

import (
	"fmt"
	"html"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// The HTML report is one self-contained page: inline CSS and SVG, no script,
// no external asset, readable offline and attachable to a ticket.

var protoColor = map[Proto]string{H1: "#1f77b4", H2: "#2ca02c", H3: "#d62728"}

// htmlSeries is one protocol's curves.
type htmlSeries struct {
	proto      Proto
	latency    *Histogram
	throughput []float64 // requests/s per step
	step       time.Duration
}

// WriteHTML writes r as a self-contained HTML report: the figures, the
// latency percentile curve and the throughput over time.
func (r *Result) WriteHTML(w io.Writer) error {
	var tb strings.Builder
	tb.WriteString("<table>\n<tr><th></th><th>" + r.Proto.String() + "</th></tr>\n")
	for _, f := range figures {
		if f.show([]*Result{r}) {
			fmt.Fprintf(&tb, "<tr><td>%s</td><td>%s</td></tr>\n", html.EscapeString(f.name), html.EscapeString(f.format(f.value(r))))
		}
	}
	fmt.Fprintf(&tb, "<tr><td>requests</td><td>%s</td></tr>\n</table>\n", fmtCount(float64(r.Requests)))
	desc := fmt.Sprintf("%s %s %s: %s, %v%s", r.Proto, r.Method, r.URL, shape(r), r.Duration.Round(time.Millisecond), fmtWarmup(r.Warmup))
	if r.Interrupted {
		desc += " (interrupted)"
	}
	series := []htmlSeries{{r.Proto, &r.Latency, r.Throughput(), r.Step}}
	return writeHTML(w, "loadtest run: "+r.Proto.String()+" "+r.URL, desc, tb.String(), countsHTML([]*Result{r}), series, r.Start)
}

// WriteHTML writes c as a self-contained HTML report: the table of medians
// and ratios, the latency percentile curves of all rounds merged, and the
// mean throughput over time, one line per protocol on each chart.
func (c *Comparison) WriteHTML(w io.Writer) error {
	first := c.first()
	if first == nil {
		return writeHTML(w, "loadtest compare", "no complete run", "", "", nil, time.Now())
	}
	var tb strings.Builder
	tb.WriteString("<table>\n<tr><th></th>")
	for _, p := range c.Protos {
		h := p.String()
		if p == c.Baseline {
			h += " (base)"
		}
		fmt.Fprintf(&tb, `<th style="color:%s">%s</th>`, protoColor[p], h)
	}
	tb.WriteString("</tr>\n")
	all := c.all()
	for _, f := range figures {
		if !f.show(all) {
			continue
		}
		base := c.Median(c.Baseline, f.value)
		fmt.Fprintf(&tb, "<tr><td>%s</td>", html.EscapeString(f.name))
		for i, p := range c.Protos {
			if len(c.Runs[i]) == 0 {
				tb.WriteString("<td>–</td>")
				continue
			}
			v := c.Median(p, f.value)
			cell := html.EscapeString(f.format(v))
			if p != c.Baseline {
				if r := fmtRatio(v, base); r != "" {
					cls := "worse"
					switch {
					case f.neutral:
						cls = "neutral"
					case (v/base >= 1) == f.higher || v == base:
						cls = "better"
					}
					cell += fmt.Sprintf(` <span class="%s">%s</span>`, cls, r)
				}
			}
			fmt.Fprintf(&tb, "<td>%s</td>", cell)
		}
		tb.WriteString("</tr>\n")
	}
	tb.WriteString("</table>\n")

	n := len(c.Runs[c.index(first.Proto)])
	rounds := "rounds"
	if n == 1 {
		rounds = "round"
	}
	desc := fmt.Sprintf("%s %s: %s, %d %s of %v each%s, interleaved (%s); medians over the rounds, ×ratio to %v",
		first.Method, first.URL, c.shape(first), n, rounds, first.Duration.Round(time.Millisecond), fmtWarmup(first.Warmup),
		protoList(c.Protos), c.Baseline)
	if c.Interrupted {
		desc += " (interrupted)"
	}
	var series []htmlSeries
	var merged []*Result
	for i, p := range c.Protos {
		if len(c.Runs[i]) == 0 {
			continue
		}
		m := c.Merged(p)
		merged = append(merged, m)
		series = append(series, htmlSeries{p, &m.Latency, meanThroughput(c.Runs[i]), c.Runs[i][0].Step})
	}
	return writeHTML(w, "loadtest compare: "+first.URL, desc, tb.String(), countsHTML(merged), series, first.Start)
}

func protoList(ps []Proto) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}

func countsHTML(rs []*Result) string {
	var b strings.Builder
	var sink errWriter
	sink.w = &b
	writeCounts(&sink, rs)
	if strings.TrimSpace(b.String()) == "" {
		return ""
	}
	return "<pre>" + html.EscapeString(strings.TrimSpace(b.String())) + "</pre>\n"
}

const pageCSS = `body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right;border-bottom:1px solid #eee}
td:first-child{text-align:left;color:#555}.better{color:#2a7d2a}.worse{color:#b22}
svg{max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#444}
.grid{stroke:#e5e5e5}.axis{stroke:#888}footer{margin-top:2em;color:#888;font-size:.9em}`

func writeHTML(w io.Writer, title, desc, tableHTML, counts string, series []htmlSeries, when time.Time) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>%s</title>\n<style>%s</style></head>\n<body>\n",
		html.EscapeString(title), pageCSS)
	fmt.Fprintf(ew, "<h1>%s</h1>\n<p>%s</p>\n%s%s", html.EscapeString(title), html.EscapeString(desc), tableHTML, counts)
	if len(series) > 0 {
		ew.WriteString("<h2>Latency by percentile</h2>\n")
		latencyChart(ew, series)
		ew.WriteString("<h2>Throughput over time</h2>\n")
		throughputChart(ew, series)
	}
	fmt.Fprintf(ew, "<footer>loadtest, %s. Latency from request start (open loop: intended send time) to the last body byte; HDR-style histogram, ≤0.4%% relative error.</footer>\n</body></html>\n",
		when.UTC().Format(time.RFC3339))
	return ew.err
}

// chart geometry, in SVG user units.
const (
	chartW, chartH = 720, 360
	padL, padR     = 70, 45
	padT, padB     = 20, 50
	plotW, plotH   = chartW - padL - padR, chartH - padT - padB
)

type xy struct{ x, y float64 }

type chartSeries struct {
	proto Proto
	pts   []xy
}

type tick struct {
	v     float64
	label string
}

// niceTicks returns about five round ticks from 0 to at least top.
func niceTicks(top float64, format func(float64) string) ([]tick, float64) {
	if top <= 0 || math.IsNaN(top) {
		top = 1
	}
	raw := top / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var ts []tick
	end := math.Ceil(top/step-1e-9) * step
	for v := 0.0; v <= end+step/2; v += step {
		ts = append(ts, tick{v, format(v)})
	}
	return ts, end
}

func drawChart(ew *errWriter, id, xLabel, yLabel string, ss []chartSeries, xTicks []tick, xMax float64, yTicks []tick, yMax float64) {
	fmt.Fprintf(ew, `<svg id="%s" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img">`+"\n",
		id, chartW, chartH, chartW, chartH)
	sx := func(x float64) float64 { return padL + x/xMax*plotW }
	sy := func(y float64) float64 { return padT + plotH - y/yMax*plotH }
	for _, t := range yTicks {
		y := sy(t.v)
		fmt.Fprintf(ew, `<line class="grid" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			padL, y, padL+plotW, y, padL-6, y+4, html.EscapeString(t.label))
	}
	for _, t := range xTicks {
		x := sx(t.v)
		fmt.Fprintf(ew, `<line class="grid" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
			x, padT, x, padT+plotH, x, padT+plotH+16, html.EscapeString(t.label))
	}
	fmt.Fprintf(ew, `<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/><line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n",
		padL, padT+plotH, padL+plotW, padT+plotH, padL, padT, padL, padT+plotH)
	fmt.Fprintf(ew, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", padL+plotW/2, chartH-8, html.EscapeString(xLabel))
	fmt.Fprintf(ew, `<text transform="translate(14 %d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", padT+plotH/2, html.EscapeString(yLabel))
	for i, s := range ss {
		var pts strings.Builder
		for _, p := range s.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", sx(p.x), sy(math.Min(p.y, yMax)))
		}
		color := protoColor[s.proto]
		fmt.Fprintf(ew, `<polyline class="series" data-proto="%s" fill="none" stroke="%s" stroke-width="2" points="%s"><title>%s</title></polyline>`+"\n",
			s.proto, color, strings.TrimSpace(pts.String()), s.proto)
		// Legend.
		lx, ly := padL+12+i*70, padT+12
		fmt.Fprintf(ew, `<rect x="%d" y="%d" width="14" height="4" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", lx, ly-4, color, lx+18, ly+1, s.proto)
	}
	ew.WriteString("</svg>\n")
}

// nines maps a quantile to the usual log x-axis of latency plots: 0 for
// 0%, 1 for 90%, 2 for 99%, 3 for 99.9%.
func nines(q float64) float64 { return math.Log10(1 / (1 - q)) }

func latencyChart(ew *errWriter, series []htmlSeries) {
	var ss []chartSeries
	var yTop, xTop float64 = 0, 2
	for _, s := range series {
		cs := chartSeries{proto: s.proto}
		for _, p := range s.latency.Curve() {
			if p.Quantile >= 1 {
				continue
			}
			x := nines(p.Quantile)
			cs.pts = append(cs.pts, xy{x, float64(p.Value) / 1e6})
			xTop = math.Max(xTop, x)
			yTop = math.Max(yTop, float64(p.Value)/1e6)
		}
		ss = append(ss, cs)
	}
	xMax := math.Ceil(xTop - 1e-9)
	var xTicks []tick
	for x := 0.0; x <= xMax; x++ {
		label := "0%"
		if x > 0 {
			label = strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.4f", 100*(1-math.Pow(10, -x))), "0"), ".") + "%"
		}
		xTicks = append(xTicks, tick{x, label})
	}
	yTicks, yMax := niceTicks(yTop*1.05, func(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) + "ms" })
	drawChart(ew, "latency", "percentile (log scale in nines)", "latency", ss, xTicks, xMax, yTicks, yMax)
}

func throughputChart(ew *errWriter, series []htmlSeries) {
	var ss []chartSeries
	var yTop, xTop float64
	for _, s := range series {
		cs := chartSeries{proto: s.proto}
		for i, v := range s.throughput {
			x := (float64(i) + 0.5) * s.step.Seconds()
			cs.pts = append(cs.pts, xy{x, v})
			xTop = math.Max(xTop, x+s.step.Seconds()/2)
			yTop = math.Max(yTop, v)
		}
		ss = append(ss, cs)
	}
	xTicks, xMax := niceTicks(xTop, func(v float64) string { return strings.TrimSuffix(fmt.Sprintf("%.3g", v), ".0") + "s" })
	yTicks, yMax := niceTicks(yTop*1.05, func(v float64) string {
		if v >= 1000 {
			return groupDigits(int64(v))
		}
		return strconv.FormatFloat(v, 'g', 4, 64)
	})
	drawChart(ew, "throughput", "time since the measurement started", "requests/s", ss, xTicks, xMax, yTicks, yMax)
}
