package gateway

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/proxynow/proxynow/transport"
)

// series returns the samples of the metric family name in g, keyed by their
// labels written "k=v,k=v" in label name order: counter and gauge values,
// and a histogram's sample count.
func series(t *testing.T, g prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var kv []string
			for _, l := range m.GetLabel() {
				kv = append(kv, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(kv)
			out[strings.Join(kv, ",")] = sampleValue(m)
		}
	}
	return out
}

func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func TestRouteMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	rm := m.route("api.example.com/v1", "api")
	rm.observe(transport.ProtoHTTP3, 200, time.Millisecond)
	rm.observe(transport.ProtoHTTP3, 204, time.Millisecond)
	rm.observe(transport.ProtoHTTP1, 502, 2*time.Second)
	rm.observe(transport.ProtoHTTP2, StatusClientClosedRequest, time.Second)
	rm.observe(0, 200, time.Second)                    // unknown protocol: not counted
	rm.observe(transport.ProtoHTTP2, 101, time.Second) // not a final status class: duration only
	m.none.observe(transport.ProtoHTTP2, 404, time.Microsecond)

	req := series(t, reg, "proxynow_requests_total")
	for k, want := range map[string]float64{
		"cluster=api,protocol=h3,route=api.example.com/v1,status_class=2xx": 2,
		"cluster=api,protocol=h1,route=api.example.com/v1,status_class=5xx": 1,
		"cluster=api,protocol=h2,route=api.example.com/v1,status_class=4xx": 1,
		"cluster=api,protocol=h2,route=api.example.com/v1,status_class=2xx": 0, // resolved up front
		"cluster=none,protocol=h2,route=none,status_class=4xx":              1,
	} {
		if got, ok := req[k]; !ok || got != want {
			t.Errorf("requests_total{%s} = %v (present %v), want %v", k, got, ok, want)
		}
	}
	// 3 protocols x 5 classes (1xx to 5xx), for the route and for "none".
	if len(req) != 30 {
		t.Errorf("%d request series, want 30", len(req))
	}
	dur := series(t, reg, "proxynow_request_duration_seconds")
	if got := dur["cluster=api,protocol=h3,route=api.example.com/v1"]; got != 2 {
		t.Errorf("h3 duration count %v, want 2", got)
	}
	if got := dur["cluster=api,protocol=h2,route=api.example.com/v1"]; got != 2 {
		t.Errorf("h2 duration count %v, want 2", got)
	}

	m.forgetRoute("api.example.com/v1", "api")
	if req := series(t, reg, "proxynow_requests_total"); len(req) != 15 {
		t.Errorf("after forgetRoute: %d series, want the 15 of none", len(req))
	}

	if n := testing.AllocsPerRun(1000, func() { rm.observe(transport.ProtoHTTP2, 200, time.Millisecond) }); n != 0 && !raceEnabled {
		t.Errorf("observe allocates %v", n)
	}
}

func TestClusterMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cm := m.cluster("api")
	cm.upstreamDuration.Observe(0.01)
	cm.upstreamError(transport.CodeConnectRefused)
	cm.upstreamError(transport.CodeConnectRefused)
	cm.upstreamError(transport.CodeResponseTimeout)
	cm.upstreamError(transport.CodeClientCancelled) // not an upstream error
	cm.upstreamError(transport.Code(200))           // out of range
	errs := series(t, reg, "proxynow_upstream_errors_total")
	if errs["cluster=api,code=connect_refused"] != 2 || errs["cluster=api,code=response_timeout"] != 1 {
		t.Errorf("upstream errors %v", errs)
	}
	if _, ok := errs["cluster=api,code=client_cancelled"]; ok || len(errs) != len(upstreamCodes) {
		t.Errorf("%d error series: %v", len(errs), errs)
	}
	if got := series(t, reg, "proxynow_upstream_request_duration_seconds")["cluster=api"]; got != 1 {
		t.Errorf("upstream duration count %v", got)
	}
	m.forgetCluster("api")
	if errs := series(t, reg, "proxynow_upstream_errors_total"); len(errs) != 0 {
		t.Errorf("after forgetCluster: %v", errs)
	}
}

// TestMetricsTwoRegistries: the instruments are not global: two gateways in
// one process register with registries of their own.
func TestMetricsTwoRegistries(t *testing.T) {
	for range 2 {
		if _, err := newMetrics(prometheus.NewRegistry()); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	newMetrics(reg)
	if _, err := newMetrics(reg); err == nil {
		t.Error("registering twice with one registry succeeded")
	}
}

func TestGatewayCollector(t *testing.T) {
	g := newTestGateway(t, oneCluster, okResponse)
	for range 3 {
		s := &fakeStream{ctx: context.Background(), req: newReq("GET", false, "")}
		g.ServeStream(s)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(newGatewayCollector(g)); err != nil {
		t.Fatal(err)
	}
	if got := series(t, reg, "proxynow_pool_gets_total")["cluster=app"]; got != 3 {
		t.Errorf("pool gets %v, want 3", got)
	}
	if got := series(t, reg, "proxynow_pool_dials_total")["cluster=app"]; got != 1 {
		t.Errorf("pool dials %v, want 1", got)
	}
	if got := series(t, reg, "proxynow_config_info")["hash="+g.Config().Hash()]; got != 1 {
		t.Errorf("config_info %v", series(t, reg, "proxynow_config_info"))
	}
}

// TestMetricsHandler: the text format carries the classic buckets; the
// gathered histogram carries the native one too (sent to scrapers that
// negotiate protobuf).
func TestMetricsHandler(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.route("/", "app").observe(transport.ProtoHTTP1, 200, 3*time.Millisecond)
	srv := httptest.NewServer(metricsHandler(reg, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`proxynow_requests_total{cluster="app",protocol="h1",route="/",status_class="2xx"} 1`,
		`proxynow_request_duration_seconds_bucket{cluster="app",protocol="h1",route="/",le="0.005"} 1`,
		`proxynow_request_duration_seconds_bucket{cluster="app",protocol="h1",route="/",le="0.0025"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %s", want)
		}
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "proxynow_request_duration_seconds" {
			continue
		}
		for _, mm := range mf.GetMetric() {
			h := mm.GetHistogram()
			if h.GetSampleCount() == 1 && (h.Schema == nil || len(h.GetPositiveSpan()) == 0) {
				t.Errorf("no native histogram: %v", h)
			}
		}
	}
}
