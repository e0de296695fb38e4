package gateway

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/proxynow/proxynow/transport"
)

// Metric names follow the Prometheus conventions: the proxynow_ prefix, base
// units (seconds, bytes), _total for counters. Label values come from the
// config (route and cluster names, upstream addresses) or from closed sets
// (protocols, status classes, transport codes): never from a request's path,
// host or client address, so the number of series is bounded by the config.
const metricPrefix = "proxynow_"

// Label values for requests that matched no route.
const noRoute = "none"

// durationBuckets are the classic buckets of the duration histograms, in
// seconds: a proxy's own latency is sub-millisecond, an upstream's anywhere up
// to its timeouts. Scrapers that negotiate native histograms get those as
// well, with about 10% resolution.
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func histogramOpts(name, help string) prometheus.HistogramOpts {
	return prometheus.HistogramOpts{
		Name: metricPrefix + name, Help: help, Buckets: durationBuckets,
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	}
}

// statusClasses are the status_class label values, indexed by status/100.
// Final responses are 2xx to 5xx; the gateway's own 499 (client gone) is 4xx.
var statusClasses = [...]string{1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

// protoLabels are the protocol label values, indexed by transport.Proto.
var protoLabels = [...]string{transport.ProtoHTTP1: "h1", transport.ProtoHTTP2: "h2", transport.ProtoHTTP3: "h3"}

const numProtos = len(protoLabels)

// upstreamCodes are the codes counted as upstream errors: those of getting a
// conn and of the upstream exchange. The gateway's refusals of a request
// (no route, limits, early data) and the client going away are not.
var upstreamCodes = []transport.Code{
	transport.CodeNoHealthyUpstream, transport.CodeConnectRefused, transport.CodeConnectTimeout,
	transport.CodeUpstreamTLS, transport.CodeUpstreamUnreachable, transport.CodeUpstreamReset,
	transport.CodeUpstreamProtocol, transport.CodeResponseTimeout, transport.CodeOverloaded,
	transport.CodeDraining, transport.CodeInternal,
}

// metrics are the gateway's instruments updated per request. The label
// children of each route and cluster are resolved when a config is compiled
// (routeMetrics, clusterMetrics), so that a request costs a few atomic adds
// and no lookup, lock or allocation.
type metrics struct {
	requests         *prometheus.CounterVec   // protocol, route, cluster, status_class
	duration         *prometheus.HistogramVec // protocol, route, cluster
	upstreamDuration *prometheus.HistogramVec // cluster
	upstreamErrors   *prometheus.CounterVec   // cluster, code
	none             *routeMetrics            // requests that matched no route
}

// newMetrics makes the instruments and registers them with reg.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "requests_total",
			Help: "Requests served, by downstream protocol, route, cluster and status class of the response. Route and cluster are \"none\" for requests that matched no route.",
		}, []string{"protocol", "route", "cluster", "status_class"}),
		duration: prometheus.NewHistogramVec(histogramOpts("request_duration_seconds",
			"Time from the request head to the end of the response, by downstream protocol, route and cluster."),
			[]string{"protocol", "route", "cluster"}),
		upstreamDuration: prometheus.NewHistogramVec(histogramOpts("upstream_request_duration_seconds",
			"Time from asking the pool for an upstream conn to the upstream's response head, by cluster."),
			[]string{"cluster"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricPrefix + "upstream_errors_total",
			Help: "Upstream exchanges that failed, by cluster and transport code.",
		}, []string{"cluster", "code"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstreamDuration, m.upstreamErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.none = m.route(noRoute, noRoute)
	return m, nil
}

// routeMetrics are the children of one route.
type routeMetrics struct {
	requests [numProtos][len(statusClasses)]prometheus.Counter
	duration [numProtos]prometheus.Observer
}

// route resolves the children of a route.
func (m *metrics) route(route, cluster string) *routeMetrics {
	rm := new(routeMetrics)
	for p := 1; p < numProtos; p++ {
		for c := 1; c < len(statusClasses); c++ {
			rm.requests[p][c] = m.requests.WithLabelValues(protoLabels[p], route, cluster, statusClasses[c])
		}
		rm.duration[p] = m.duration.WithLabelValues(protoLabels[p], route, cluster)
	}
	return rm
}

// forgetRoute deletes the children of a route the config no longer has, so
// that its series end rather than report their last value forever.
func (m *metrics) forgetRoute(route, cluster string) {
	l := prometheus.Labels{"route": route, "cluster": cluster}
	m.requests.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
}

// observe counts a request that ended with status after d.
func (rm *routeMetrics) observe(p transport.Proto, status int, d time.Duration) {
	if int(p) >= numProtos || p == 0 {
		return
	}
	if c := status / 100; c >= 1 && c < len(statusClasses) {
		rm.requests[p][c].Inc()
	}
	rm.duration[p].Observe(d.Seconds())
}

// clusterMetrics are the children of one cluster.
type clusterMetrics struct {
	upstreamDuration prometheus.Observer
	errors           [transport.NumCodes]prometheus.Counter // nil for codes that are not upstream errors
}

// cluster resolves the children of a cluster.
func (m *metrics) cluster(name string) *clusterMetrics {
	cm := &clusterMetrics{upstreamDuration: m.upstreamDuration.WithLabelValues(name)}
	for _, c := range upstreamCodes {
		cm.errors[c] = m.upstreamErrors.WithLabelValues(name, c.String())
	}
	return cm
}

// forgetCluster deletes the children of a cluster the config no longer has.
func (m *metrics) forgetCluster(name string) {
	l := prometheus.Labels{"cluster": name}
	m.upstreamDuration.DeletePartialMatch(l)
	m.upstreamErrors.DeletePartialMatch(l)
}

// forget deletes the children of the routes and clusters that old had and st
// has not.
func (m *metrics) forget(old, st *state) {
	type key struct{ route, cluster string }
	keep := make(map[key]bool, len(st.routes))
	clusters := make(map[string]bool, len(st.clusters))
	for _, rt := range st.routes {
		keep[key{rt.name, rt.cluster.name}] = true
	}
	for _, c := range st.clusters {
		clusters[c.name] = true
	}
	for _, rt := range old.routes {
		if !keep[key{rt.name, rt.cluster.name}] {
			m.forgetRoute(rt.name, rt.cluster.name)
		}
	}
	for _, c := range old.clusters {
		if !clusters[c.name] {
			m.forgetCluster(c.name)
		}
	}
}

// upstreamError counts a failed upstream exchange; codes that are not
// upstream errors are ignored.
func (cm *clusterMetrics) upstreamError(c transport.Code) {
	if int(c) < len(cm.errors) && cm.errors[c] != nil {
		cm.errors[c].Inc()
	}
}

// upstreamStates are the values of upstreamServer.state.
var upstreamStates = [...]string{"healthy", "unhealthy", "ejected"}

// gatewayCollector reports what the gateway keeps as plain counters and
// state, read at scrape time: the upstream pools of the clusters in force,
// panics, the config loaded, and tracing. Nothing here costs the request path.
type gatewayCollector struct {
	g *Gateway

	poolDials, poolDialFailures, poolGets, poolReused, poolSteals, poolWaits, poolReaped *prometheus.Desc
	poolFastFails, poolOpen, poolIdle, poolActive                                        *prometheus.Desc
	upstreamState                                                                        *prometheus.Desc

	panics, configInfo, configLoaded, reloads *prometheus.Desc
	streams, spans                            *prometheus.Desc
}

func newGatewayCollector(g *Gateway) *gatewayCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(metricPrefix+name, help, labels, nil)
	}
	return &gatewayCollector{
		g:                g,
		poolDials:        d("pool_dials_total", "Upstream dials started, by cluster.", "cluster"),
		poolDialFailures: d("pool_dial_failures_total", "Upstream dials that failed, by cluster.", "cluster"),
		poolGets:         d("pool_gets_total", "Upstream conns handed out by the pool, by cluster.", "cluster"),
		poolReused:       d("pool_reused_total", "Pool gets served by a conn that was already open, by cluster.", "cluster"),
		poolSteals:       d("pool_steals_total", "Pool gets served by an idle conn of another shard, by cluster.", "cluster"),
		poolWaits:        d("pool_waits_total", "Pool gets that had to wait for a conn, by cluster.", "cluster"),
		poolReaped:       d("pool_reaped_total", "Upstream conns closed for idleness or the idle cap, by cluster.", "cluster"),
		poolFastFails: d("pool_dial_backoff_failures_total", "Pool gets failed at once with the last connect error "+
			"during a dial back-off (pool.dial_backoff), by cluster.", "cluster"),
		poolOpen:   d("pool_open_connections", "Upstream conns open, by cluster.", "cluster"),
		poolIdle:   d("pool_idle_connections", "Open upstream conns with no stream handed out, by cluster.", "cluster"),
		poolActive: d("pool_active_connections", "Open upstream conns with at least one stream handed out, by cluster.", "cluster"),
		upstreamState: d("upstream_state", "The health of each upstream server: 1 for its current state, 0 for the others. "+
			"unhealthy: failed active health checks; ejected: by outlier detection.", "cluster", "upstream", "state"),
		panics:       d("panics_recovered_total", "Panics recovered while serving a stream; each reset that stream only."),
		configInfo:   d("config_info", "The config in force: its hash, as the label, and the value 1.", "hash"),
		configLoaded: d("config_loaded_timestamp_seconds", "When the config in force was loaded, in Unix seconds."),
		reloads:      d("config_reloads_applied_total", "Configs that replaced the one in force, since start."),
		streams:      d("active_streams", "Requests being served, by downstream protocol.", "protocol"),
		spans: d("trace_spans_total", "Sampled requests by what became of their spans: exported, dropped "+
			"(the export queue was full) or failed (the collector did not accept them).", "result"),
	}
}

// Describe implements prometheus.Collector.
func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.poolDials, c.poolDialFailures, c.poolGets, c.poolReused, c.poolSteals,
		c.poolWaits, c.poolReaped, c.poolFastFails, c.poolOpen, c.poolIdle, c.poolActive, c.upstreamState,
		c.panics, c.configInfo, c.configLoaded, c.reloads, c.streams, c.spans} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g
	st := g.state.Load()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, cl := range st.clusters {
		s := cl.pool.Stats()
		counter(c.poolDials, s.Dials, cl.name)
		counter(c.poolDialFailures, s.DialFailures, cl.name)
		counter(c.poolGets, s.Gets, cl.name)
		counter(c.poolReused, s.Reused, cl.name)
		counter(c.poolSteals, s.Steals, cl.name)
		counter(c.poolWaits, s.Waits, cl.name)
		counter(c.poolReaped, s.Reaped, cl.name)
		counter(c.poolFastFails, s.FastFails, cl.name)
		gauge(c.poolOpen, float64(s.Open), cl.name)
		gauge(c.poolIdle, float64(s.Idle), cl.name)
		gauge(c.poolActive, float64(s.Active), cl.name)
		for i, u := range cl.servers {
			if slices.ContainsFunc(cl.servers[:i], func(v *upstreamServer) bool { return v.addr == u.addr }) {
				continue // listed twice (a weight): one series
			}
			cur := u.state()
			for _, state := range upstreamStates {
				v := 0.0
				if state == cur {
					v = 1
				}
				gauge(c.upstreamState, v, cl.name, u.addr, state)
			}
		}
	}
	counter(c.panics, g.panics.Load())
	gauge(c.configInfo, 1, st.cfg.Hash())
	gauge(c.configLoaded, float64(st.loadedAt.UnixNano())/1e9)
	counter(c.reloads, g.reloads.Load())
	for p := 1; p < numProtos; p++ {
		gauge(c.streams, float64(g.streams[p].Load()), protoLabels[p])
	}
	counter(c.spans, g.spans.exported.Load(), "exported")
	counter(c.spans, g.spans.dropped.Load(), "dropped")
	counter(c.spans, g.spans.failed.Load(), "failed")
}

// metricsHandler serves the metrics of g in the format the scraper asks for:
// Prometheus protobuf (which carries native histograms) or text. Scrapes are
// bounded: four at a time, ten seconds each; a collector error is logged and
// the rest is served.
func metricsHandler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            promLogger{log},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

// promLogger adapts a *slog.Logger to promhttp.Logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("metrics: " + fmt.Sprint(v...)) }
