package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/proxynow/proxynow/gateway"
)

// scrape reads the admin endpoint's /metrics in the text format.
func scrape(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// metric returns the value of the series of family name whose labels include
// labels (a counter's or gauge's value, a histogram's sample count), and
// whether there is one.
func metric(mfs map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsEndToEnd runs a known workload over HTTP/1.1, HTTP/2 and HTTP/3
// and checks the values /metrics then reports.
func TestMetricsEndToEnd(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, `
routes:
  - {path_prefix: /api, cluster: app}
  - {path_prefix: /dead, cluster: dead}
clusters:
  - {name: app, servers: ["@UP@"]}
  - {name: dead, servers: ["`+closedPortAddr(t)+`"], retries: {max: -1}, outlier_detection: {consecutive_failures: -1}}
`, up)
	admin := f.inst.AdminAddr()
	n := map[string]int{"h1": 2, "h2": 3, "h3": 4}
	// Clients of this test, not of subtests: their connections stay open
	// until the end, to be counted.
	for _, proto := range modes {
		c := clientFor(t, proto)
		for range n[proto] {
			if resp, _ := get(t, c, f.url("/api/x")); resp.StatusCode != 200 {
				t.Fatalf("GET /api/x: %s", resp.Status)
			}
		}
		if resp, _ := get(t, c, f.url("/nowhere")); resp.StatusCode != 404 {
			t.Fatalf("GET /nowhere: %s", resp.Status)
		}
		if resp, _ := get(t, c, f.url("/dead")); resp.StatusCode != 502 {
			t.Fatalf("GET /dead: %s", resp.Status)
		}
	}
	// A request is counted once its response has been sent, and its
	// stream leaves active_streams after it was counted: the client may have
	// read the response a moment before either. Both are read from the same
	// scrape, which the checks below use.
	var mfs map[string]*dto.MetricFamily
	waitFor(t, 10*time.Second, "the workload to be counted and its streams to end", func() bool {
		mfs = scrape(t, admin)
		total, active := 0.0, 0.0
		for _, m := range mfs["proxynow_requests_total"].GetMetric() {
			total += m.GetCounter().GetValue()
		}
		for _, m := range mfs["proxynow_active_streams"].GetMetric() {
			active += m.GetGauge().GetValue()
		}
		return total == 9+3+3 && active == 0
	})
	for proto, k := range n {
		check := func(want float64, name string, labels ...string) {
			t.Helper()
			if got, ok := metric(mfs, name, labels...); !ok || got != want {
				t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
			}
		}
		check(float64(k), "proxynow_requests_total", "protocol", proto, "route", "/api", "cluster", "app", "status_class", "2xx")
		check(1, "proxynow_requests_total", "protocol", proto, "route", "none", "cluster", "none", "status_class", "4xx")
		check(1, "proxynow_requests_total", "protocol", proto, "route", "/dead", "cluster", "dead", "status_class", "5xx")
		check(0, "proxynow_requests_total", "protocol", proto, "route", "/api", "cluster", "app", "status_class", "5xx")
		check(float64(k), "proxynow_request_duration_seconds", "protocol", proto, "route", "/api", "cluster", "app")
		check(0, "proxynow_active_streams", "protocol", proto)
	}
	for _, c := range []struct {
		want   float64
		name   string
		labels []string
	}{
		{9, "proxynow_upstream_request_duration_seconds", []string{"cluster", "app"}},
		{0, "proxynow_upstream_request_duration_seconds", []string{"cluster", "dead"}},
		{3, "proxynow_upstream_errors_total", []string{"cluster", "dead", "code", "connect_refused"}},
		{0, "proxynow_upstream_errors_total", []string{"cluster", "app", "code", "connect_refused"}},
		{9, "proxynow_pool_gets_total", []string{"cluster", "app"}},
		{1, "proxynow_upstream_state", []string{"cluster", "app", "upstream", up.addr, "state", "healthy"}},
		{1, "proxynow_quic_handshakes_total", nil}, // one HTTP/3 client, one connection
		{1, "proxynow_active_connections", []string{"protocol", "h3"}},
		{1, "proxynow_active_connections", []string{"protocol", "h1"}},
		{1, "proxynow_active_connections", []string{"protocol", "h2"}},
		{0, "proxynow_active_connections", []string{"protocol", "tls_handshake"}},
		{0, "proxynow_quic_retries_sent_total", nil},
		{0, "proxynow_quic_zero_rtt_connections_total", []string{"result", "accepted"}},
		{0, "proxynow_quic_zero_rtt_connections_total", []string{"result", "rejected"}},
		{1, "proxynow_drain_phase", []string{"phase", "serving"}},
		{0, "proxynow_drain_phase", []string{"phase", "draining"}},
		{0, "proxynow_drain_streams_cut_total", nil},
		{0, "proxynow_panics_recovered_total", nil},
		{1, "proxynow_config_info", []string{"hash", f.inst.gw.Config().Hash()}},
		{0, "proxynow_config_reloads_total", []string{"result", "success"}},
	} {
		if got, ok := metric(mfs, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	// Each of the 3 requests to the dead cluster either dialed and failed
	// or failed at once inside the dial back-off that the first opened.
	failed, _ := metric(mfs, "proxynow_pool_dial_failures_total", "cluster", "dead")
	fast, _ := metric(mfs, "proxynow_pool_dial_backoff_failures_total", "cluster", "dead")
	if failed < 1 || failed+fast != 3 {
		t.Errorf("dead cluster: %v failed dials + %v failed in back-off, want at least 1 and 3 in all", failed, fast)
	}
	if got, _ := metric(mfs, "proxynow_pool_dials_total", "cluster", "app"); got < 1 || got > 3 {
		t.Errorf("pool dials %v, want 1 to 3 (one per shard at most)", got)
	}
	for _, name := range []string{"proxynow_udp_receive_drops_total", "proxynow_udp_host_send_buffer_errors_total", "go_goroutines", "go_memstats_alloc_bytes", "process_resident_memory_bytes", "proxynow_build_info"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	// No label takes a request's path, host or client address.
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v := l.GetValue(); strings.Contains(v, "/nowhere") || strings.Contains(v, "/api/x") || strings.HasPrefix(v, "127.0.0.1") && l.GetName() != "upstream" {
					t.Errorf("%s has label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}
}

// startWithLogs runs a gateway on the config file path, with the real log
// writers on w and the level at lv.
func startWithLogs(t *testing.T, path string, w io.Writer, lv *slog.LevelVar) (*instance, *logs) {
	t.Helper()
	cfg, err := gateway.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	lv.Set(parseLevel(cfg.Log.Level))
	l := newLogs(w, "json", lv, cfg.Log.Buffer)
	cert, _ := testCert(t)
	inst, err := start(cfg, l.log, startOptions{path: path, certs: []tls.Certificate{cert}, level: lv, logs: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		inst.Drain(ctx)
		l.close()
	})
	return inst, l
}

func adminDo(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAccessLogLevelReload: access lines for every protocol, the log level
// changed at run time and by a reload, and the reload counters.
func TestAccessLogLevelReload(t *testing.T) {
	up := startUpstream(t, "h1")
	base := "listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nclusters: [{name: app, servers: [\"" + up.addr + "\"]}]\n"
	path := filepath.Join(t.TempDir(), "proxynow.yaml")
	writeFile(t, path, base+"log: {level: info}\n")
	var out lockedBuffer
	inst, l := startWithLogs(t, path, &out, new(slog.LevelVar))
	_, port, _ := net.SplitHostPort(inst.Addr())
	admin := "http://" + inst.AdminAddr()

	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		get(t, c, "https://127.0.0.1:"+port+"/hello?x=1")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var access []map[string]any
	waitFor(t, 10*time.Second, "three access lines", func() bool {
		if err := l.access.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		access = access[:0]
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "access" {
				access = append(access, m)
			}
		}
		return len(access) == 3
	})
	byProto := make(map[any]map[string]any)
	for _, a := range access {
		byProto[a["proto"]] = a
	}
	for _, proto := range modes {
		a := byProto[proto]
		if a == nil || a["method"] != "GET" || a["path"] != "/hello?x=1" || a["status"] != 200.0 ||
			a["upstream"] != up.addr || a["code"] != "none" || a["authority"] != "127.0.0.1:"+port {
			t.Errorf("access line of %s: %v", proto, a)
		}
	}

	if code, body := adminDo(t, "GET", admin+"/loglevel", ""); code != 200 || body != "INFO\n" {
		t.Errorf("GET /loglevel: %d %q", code, body)
	}
	if code, body := adminDo(t, "PUT", admin+"/loglevel", "debug"); code != 200 || body != "DEBUG\n" || !inst.log.Enabled(ctx, slog.LevelDebug) {
		t.Errorf("PUT /loglevel debug: %d %q", code, body)
	}

	// A reload sets the level from the file; a bad file is counted.
	writeFile(t, path, base+"log: {level: warn}\n")
	if code, body := adminDo(t, "POST", admin+"/reload", ""); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if _, body := adminDo(t, "GET", admin+"/loglevel", ""); body != "WARN\n" {
		t.Errorf("after reload: level %q", body)
	}
	writeFile(t, path, base+"log: {level: loud}\n")
	if code, _ := adminDo(t, "POST", admin+"/reload", ""); code != 400 {
		t.Errorf("bad reload: %d", code)
	}
	if code, body := adminDo(t, "GET", admin+"/debug/pprof/goroutine?debug=1", ""); code != 200 || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("GET /debug/pprof/goroutine: %d %.60q", code, body)
	}
	mfs := scrape(t, inst.AdminAddr())
	if v, _ := metric(mfs, "proxynow_config_reloads_total", "result", "success"); v != 1 {
		t.Errorf("successful reloads %v", v)
	}
	if v, _ := metric(mfs, "proxynow_config_reloads_total", "result", "failure"); v != 1 {
		t.Errorf("failed reloads %v", v)
	}
	if v, ok := metric(mfs, "proxynow_config_info", "hash", inst.gw.Config().Hash()); !ok || v != 1 {
		t.Errorf("config_info after reload: %v", mfs["proxynow_config_info"])
	}
	if v, ok := metric(mfs, "proxynow_log_records_dropped_total", "log", "access"); !ok || v != 0 {
		t.Errorf("access records dropped: %v (present %v)", v, ok)
	}
}

// stalledWriter blocks every Write until release is closed: a log output
// that has stopped draining (a full pipe, a stopped terminal).
type stalledWriter struct {
	release chan struct{}
	once    sync.Once
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

func (w *stalledWriter) unblock() { w.once.Do(func() { close(w.release) }) }

// TestLogStalledOutput: with the log output stuck, requests keep flowing,
// and the records that do not fit are dropped and counted.
func TestLogStalledOutput(t *testing.T) {
	up := startUpstream(t, "h1")
	path := filepath.Join(t.TempDir(), "proxynow.yaml")
	writeFile(t, path, "listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nlog: {buffer: 16}\n"+
		"clusters: [{name: app, servers: [\""+up.addr+"\"]}]\n")
	w := &stalledWriter{release: make(chan struct{})}
	inst, _ := startWithLogs(t, path, w, new(slog.LevelVar))
	defer w.unblock() // before the cleanup's drain, which logs
	_, port, _ := net.SplitHostPort(inst.Addr())

	const perMode = 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
			for range perMode {
				if resp, _ := get(t, c, "https://127.0.0.1:"+port+"/"); resp.StatusCode != 200 {
					t.Errorf("%s: %s", proto, resp.Status)
					return
				}
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		w.unblock()
		t.Fatal("requests blocked behind a stalled log output")
	}
	var dropped float64
	waitFor(t, 10*time.Second, "the dropped lines to be counted", func() bool {
		dropped, _ = metric(scrape(t, inst.AdminAddr()), "proxynow_log_records_dropped_total", "log", "access")
		// 150 lines: at most 16 queued and 1 in the stuck write.
		return dropped >= 3*perMode-17
	})
	if dropped > 3*perMode {
		t.Errorf("%v access lines dropped of %d", dropped, 3*perMode)
	}
}
