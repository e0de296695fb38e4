package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxynow/proxynow/transport"
)

// obsGateway is a gateway over a fake upstream with metrics on a registry of
// its own and the access log in buf.
func obsGateway(t *testing.T, yaml string, fn func(*transport.Request) (*transport.Response, error)) (*Gateway, *prometheus.Registry, *lockedBuffer, *AsyncHandler) {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	conn := &fakeConn{fn: fn}
	reg := prometheus.NewPedanticRegistry()
	buf := new(lockedBuffer)
	access := NewAsyncHandler(slog.NewJSONHandler(buf, nil), AsyncHandlerOptions{})
	g, err := New(Options{Config: cfg, HTTP3Port: 8443, Registerer: reg, AccessLog: access,
		Dialers: func(DialerSpec) (transport.Dialer, error) {
			return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return conn, nil }), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.Shutdown(ctx)
		g.Close()
		access.Close(ctx)
	})
	return g, reg, buf, access
}

func serve(g *Gateway, proto transport.Proto, method, path string, h http.Header) *fakeStream {
	req := newReq(method, false, "")
	req.Proto, req.Path = proto, path
	if h != nil {
		req.Header = h
	}
	s := &fakeStream{ctx: context.Background(), req: req}
	g.ServeStream(s)
	return s
}

func accessLines(t *testing.T, h *AsyncHandler, buf *lockedBuffer) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range buf.lines() {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

const twoRoutes = `
routes:
  - {path_prefix: /api, cluster: app}
clusters:
  - {name: app, servers: ["127.0.0.1:1"], retries: {max: -1}, outlier_detection: {consecutive_failures: -1}}
`

// TestProxyMetrics: a known workload through the proxy, and the values the
// registry then holds.
func TestProxyMetrics(t *testing.T) {
	var fail error
	g, reg, buf, access := obsGateway(t, twoRoutes, func(r *transport.Request) (*transport.Response, error) {
		if fail != nil {
			return nil, fail
		}
		return okResponse(r)
	})
	for range 3 {
		serve(g, transport.ProtoHTTP1, "GET", "/api/x", nil)
	}
	serve(g, transport.ProtoHTTP2, "GET", "/api/y", nil)
	serve(g, transport.ProtoHTTP3, "GET", "/elsewhere", nil) // no route: 404
	fail = transport.CodeConnectRefused.Err()
	if s := serve(g, transport.ProtoHTTP3, "GET", "/api/z", nil); s.status != 502 {
		t.Fatalf("refused: status %d", s.status)
	}

	req := series(t, reg, "proxynow_requests_total")
	for k, want := range map[string]float64{
		"cluster=app,protocol=h1,route=/api,status_class=2xx":  3,
		"cluster=app,protocol=h2,route=/api,status_class=2xx":  1,
		"cluster=app,protocol=h3,route=/api,status_class=5xx":  1,
		"cluster=none,protocol=h3,route=none,status_class=4xx": 1,
		"cluster=app,protocol=h3,route=/api,status_class=2xx":  0,
	} {
		if req[k] != want {
			t.Errorf("requests_total{%s} = %v, want %v", k, req[k], want)
		}
	}
	dur := series(t, reg, "proxynow_request_duration_seconds")
	if dur["cluster=app,protocol=h1,route=/api"] != 3 || dur["cluster=none,protocol=h3,route=none"] != 1 {
		t.Errorf("request_duration_seconds counts %v", dur)
	}
	if got := series(t, reg, "proxynow_upstream_request_duration_seconds")["cluster=app"]; got != 4 {
		t.Errorf("upstream duration count %v, want 4", got)
	}
	if got := series(t, reg, "proxynow_upstream_errors_total")["cluster=app,code=connect_refused"]; got != 1 {
		t.Errorf("upstream errors %v", series(t, reg, "proxynow_upstream_errors_total"))
	}
	if got := series(t, reg, "proxynow_active_streams"); got["protocol=h1"] != 0 || len(got) != 3 {
		t.Errorf("active streams %v", got)
	}

	lines := accessLines(t, access, buf)
	if len(lines) != 6 {
		t.Fatalf("%d access lines, want 6", len(lines))
	}
	if l := lines[0]; l["msg"] != "access" || l["proto"] != "h1" || l["path"] != "/api/x" || l["status"] != 200.0 ||
		l["bytes"] != 2.0 || l["upstream"] != "127.0.0.1:1" || l["code"] != "none" || l["client"] != "192.0.2.1:5000" {
		t.Errorf("line 1: %v", l)
	}
	if l := lines[4]; l["status"] != 404.0 || l["code"] != "no_route" || l["upstream"] != "" {
		t.Errorf("no-route line: %v", l)
	}
	if l := lines[5]; l["status"] != 502.0 || l["code"] != "connect_refused" {
		t.Errorf("refused line: %v", l)
	}
}

// TestProxyMetricsReload: a reload that drops a route ends its series;
// metrics.enabled false stops counting.
func TestProxyMetricsReload(t *testing.T) {
	g, reg, _, _ := obsGateway(t, twoRoutes, okResponse)
	serve(g, transport.ProtoHTTP1, "GET", "/api", nil)
	cfg, err := ParseConfig("new.yaml", []byte(oneCluster))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(cfg, 8443); err != nil {
		t.Fatal(err)
	}
	serve(g, transport.ProtoHTTP1, "GET", "/api", nil)
	req := series(t, reg, "proxynow_requests_total")
	if _, ok := req["cluster=app,protocol=h1,route=/api,status_class=2xx"]; ok {
		t.Errorf("the dropped route's series remain: %v", req)
	}
	if req["cluster=app,protocol=h1,route=/,status_class=2xx"] != 1 {
		t.Errorf("new route: %v", req)
	}
	if got := series(t, reg, "proxynow_config_info")["hash="+cfg.Hash()]; got != 1 {
		t.Errorf("config_info %v", series(t, reg, "proxynow_config_info"))
	}

	cfg, err = ParseConfig("off.yaml", []byte("metrics: {enabled: false}\n"+oneCluster))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(cfg, 8443); err != nil {
		t.Fatal(err)
	}
	serve(g, transport.ProtoHTTP1, "GET", "/api", nil)
	if got := series(t, reg, "proxynow_requests_total")["cluster=app,protocol=h1,route=/,status_class=2xx"]; got != 1 {
		t.Errorf("metrics off: counted anyway (%v)", got)
	}
}

// TestProxyTracing: a sampled request continues the client's trace: the
// upstream sees the gateway's client span as parent, the access log line
// names the trace, and the collector gets both spans.
func TestProxyTracing(t *testing.T) {
	c := newCollector(t)
	var upstreamTP, upstreamTS string
	g, reg, buf, access := obsGateway(t, "tracing: {endpoint: \""+c.srv.URL+"\", sample_ratio: 1}\n"+oneCluster,
		func(r *transport.Request) (*transport.Response, error) {
			upstreamTP, upstreamTS = r.Header.Get("Traceparent"), r.Header.Get("Tracestate")
			return okResponse(r)
		})
	serve(g, transport.ProtoHTTP2, "GET", "/x", http.Header{"Traceparent": {exampleTP}, "Tracestate": {"v=1"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil { // flushes the exporter
		t.Fatal(err)
	}
	tp, ok := parseTraceParent(upstreamTP)
	if !ok || tp.trace.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || tp.flags != flagSampled || upstreamTS != "v=1" {
		t.Fatalf("upstream saw traceparent %q, tracestate %q", upstreamTP, upstreamTS)
	}
	_, spans, bad := c.snapshot()
	if len(bad) > 0 || len(spans) != 2 {
		t.Fatalf("collector: %d spans, bad %q", len(spans), bad)
	}
	server, client := spans[0], spans[1]
	if server["parentSpanId"] != "00f067aa0ba902b7" || client["parentSpanId"] != server["spanId"] ||
		client["spanId"] != tp.parent.String() || server["traceState"] != "v=1" {
		t.Errorf("server span %v\nclient span %v", server, client)
	}
	lines := accessLines(t, access, buf)
	if len(lines) != 1 || lines[0]["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || lines[0]["span_id"] != server["spanId"] {
		t.Errorf("access log %v", lines)
	}
	if got := series(t, reg, "proxynow_trace_spans_total")["result=exported"]; got != 1 {
		t.Errorf("trace_spans_total %v", series(t, reg, "proxynow_trace_spans_total"))
	}
}

// TestProxyTracingUnsampled: with ratio 0 a request is not traced, its
// traceparent reaches the upstream untouched, and errors are tail-sampled
// when sample_errors is on.
func TestProxyTracingUnsampled(t *testing.T) {
	c := newCollector(t)
	var upstreamTP string
	refuse := false
	g, _, buf, access := obsGateway(t, "tracing: {endpoint: \""+c.srv.URL+"\", sample_ratio: 0, sample_errors: true}\n"+oneCluster,
		func(r *transport.Request) (*transport.Response, error) {
			upstreamTP = r.Header.Get("Traceparent")
			if refuse {
				return nil, transport.CodeConnectRefused.Err()
			}
			return okResponse(r)
		})
	serve(g, transport.ProtoHTTP1, "GET", "/x", http.Header{"Traceparent": {exampleTP}})
	if upstreamTP != exampleTP {
		t.Errorf("unsampled: upstream saw %q", upstreamTP)
	}
	serve(g, transport.ProtoHTTP1, "GET", "/y", nil)
	if upstreamTP != "" {
		t.Errorf("unsampled without traceparent: upstream saw %q", upstreamTP)
	}
	refuse = true
	serve(g, transport.ProtoHTTP1, "GET", "/z", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Log(err) // the refused pool may report; spans are what matter here
	}
	_, spans, _ := c.snapshot()
	if len(spans) != 2 || !strings.HasPrefix(spans[0]["name"].(string), "GET") {
		t.Fatalf("tail-sampled error: %d spans %v", len(spans), spans)
	}
	if attrsOf(spans[0]["attributes"])["error.type"] != "connect_refused" {
		t.Errorf("error span %v", spans[0])
	}
	lines := accessLines(t, access, buf)
	if len(lines) != 3 || lines[0]["trace_id"] != nil || lines[2]["trace_id"] != spans[0]["traceId"] {
		t.Errorf("access log %v", lines)
	}
}

// TestProxyObservabilityAllocs: with metrics, access log and tracing off,
// the proxy allocates what it did before; with metrics on, nothing more.
func TestProxyObservabilityAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts: not with -short or -race")
	}
	for _, tc := range []struct {
		name    string
		metrics bool
	}{{"off", false}, {"metrics", true}} {
		cfg, err := ParseConfig("bench.yaml", []byte(oneCluster))
		if err != nil {
			t.Fatal(err)
		}
		resp := &transport.Response{Status: 200, ContentLength: 2}
		body := &rewindReader{s: "ok"}
		hdr := http.Header{"Content-Type": {"text/plain"}}
		conn := &fakeConn{fn: func(*transport.Request) (*transport.Response, error) {
			body.i = 0
			clear(hdr)
			hdr["Content-Type"] = []string{"text/plain"}
			resp.Header, resp.Body = hdr, body
			return resp, nil
		}}
		opts := Options{Config: cfg, Dialers: func(DialerSpec) (transport.Dialer, error) {
			return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return conn, nil }), nil
		}}
		if tc.metrics {
			opts.Registerer = prometheus.NewRegistry()
		}
		g, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		req := newReq("GET", false, "")
		rh := http.Header{}
		s := &fakeStream{ctx: context.Background(), req: req}
		run := func() {
			clear(rh)
			req.Header = rh
			s.body.Reset()
			g.ServeStream(s)
		}
		base := testing.AllocsPerRun(200, run)
		t.Logf("%s: %v allocs per request", tc.name, base)
		if tc.metrics {
			if off := allocsOff; base > off {
				t.Errorf("metrics on: %v allocs per request, off: %v", base, off)
			}
		} else {
			allocsOff = base
		}
		g.Close()
	}
}

var allocsOff float64
