package gateway

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxynow/proxynow/transport"
)

// benchObs selects the observability of a benchmarked gateway. Logging is at
// info in every case, through an AsyncHandler to a JSON handler writing to
// io.Discard, as in production minus the file.
type benchObs struct {
	metrics    bool    // a Prometheus registry
	accessLog  bool    // access_log on, every request
	handoff    bool    // the access log's writer drops the records unformatted: the request path's share alone
	traceRatio float64 // tracing.sample_ratio; <0: tracing off
}

// BenchmarkProxyObservability measures the proxied request path of
// BenchmarkProxyFake (fake stream, fake upstream conn, no sockets) with each
// instrument on and off, in one run:
//
//	go test -run '^$' -bench ProxyObservability -benchmem -count 5 ./gateway/
//
// The allocations include those of the log writer and the span exporter
// goroutines (the runtime counts them globally), amortized per request; so
// does the time with -cpu 1, where those goroutines share the benchmark's P.
// The access log variants wait for the writer every 512 requests, so every
// line is formatted and written (to io.Discard) and its cost counted: the
// dropped/op metric shows that none was dropped. accesslog-handoff isolates
// the request path's share: its writer takes the records and drops them
// unformatted.
func BenchmarkProxyObservability(b *testing.B) {
	for _, tc := range []struct {
		name string
		obs  benchObs
	}{
		{"off", benchObs{traceRatio: -1}},
		{"metrics", benchObs{metrics: true, traceRatio: -1}},
		{"accesslog", benchObs{accessLog: true, traceRatio: -1}},
		{"accesslog-handoff", benchObs{accessLog: true, handoff: true, traceRatio: -1}},
		{"trace=0", benchObs{traceRatio: 0}},
		{"trace=0.01", benchObs{traceRatio: 0.01}},
		{"all", benchObs{metrics: true, accessLog: true, traceRatio: 0.01}},
	} {
		b.Run(tc.name, func(b *testing.B) { benchProxy(b, tc.obs) })
	}
}

func benchProxy(b *testing.B, o benchObs) {
	yaml := "access_log: {enabled: " + strconv.FormatBool(o.accessLog) + "}\n"
	if o.traceRatio >= 0 {
		collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
		}))
		defer collector.Close()
		yaml += "tracing: {endpoint: \"" + collector.URL + "\", sample_ratio: " + strconv.FormatFloat(o.traceRatio, 'g', -1, 64) + "}\n"
	}
	cfg, err := ParseConfig("bench.yaml", []byte(yaml+oneCluster))
	if err != nil {
		b.Fatal(err)
	}
	resp := &transport.Response{Status: 200, ContentLength: 2}
	body := &rewindReader{s: "ok"}
	conn := &fakeConn{fn: func(*transport.Request) (*transport.Response, error) {
		body.i = 0
		resp.Header = http.Header{"Content-Type": {"text/plain"}}
		resp.Body = body
		return resp, nil
	}}
	sink := slog.NewJSONHandler(io.Discard, nil) // level info
	app := NewAsyncHandler(sink, AsyncHandlerOptions{})
	var accessSink slog.Handler = sink
	if o.handoff {
		accessSink = &countingHandler{}
	}
	access := NewAsyncHandler(accessSink, AsyncHandlerOptions{})
	opts := Options{Config: cfg, Logger: slog.New(app), AccessLog: access,
		Dialers: func(DialerSpec) (transport.Dialer, error) {
			return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return conn, nil }), nil
		}}
	if o.metrics {
		opts.Registerer = prometheus.NewRegistry()
	}
	g, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	req := newReq("GET", false, "")
	s := &fakeStream{ctx: context.Background(), req: req}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		req.Header = http.Header{"User-Agent": {"bench"}}
		s.body.Reset()
		g.ServeStream(s)
		// Let the writer catch up, inside the timed loop, so that every
		// line is written and paid for rather than dropped: the queue
		// holds 2048.
		if n++; o.accessLog && n%512 == 0 {
			access.Flush(ctx)
		}
	}
	b.StopTimer()
	g.Shutdown(ctx)
	g.Close()
	access.Close(ctx)
	app.Close(ctx)
	if o.accessLog {
		b.ReportMetric(float64(access.Dropped())/float64(b.N), "dropped/op")
	}
	if o.traceRatio > 0 {
		b.ReportMetric(float64(g.spans.exported.Load()+g.spans.dropped.Load()+g.spans.failed.Load())/float64(b.N), "spans/op")
	}
}
