package gateway

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// The example of W3C Trace Context §3.2.2.
const exampleTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestParseTraceParent(t *testing.T) {
	tp, ok := parseTraceParent(exampleTP)
	if !ok {
		t.Fatal("the specification's example does not parse")
	}
	if tp.trace.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || tp.parent.String() != "00f067aa0ba902b7" || tp.flags != 1 {
		t.Errorf("parsed %s %s %02x", tp.trace, tp.parent, tp.flags)
	}
	if s := tp.String(); s != exampleTP {
		t.Errorf("formatted %q", s)
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", true}, // unknown flags are kept
		// Higher versions: the version 00 layout, then the end or "-".
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds", true},
		{"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", false}, // version 00 is exactly 55
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},  // version ff is invalid
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false}, // upper case
		{"0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g", false},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", false}, // short trace-id
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", false},
		{"", false},
		{"00", false},
	} {
		if _, ok := parseTraceParent(tc.in); ok != tc.ok {
			t.Errorf("parseTraceParent(%q) ok = %v, want %v", tc.in, ok, tc.ok)
		}
	}
}

func FuzzTraceParent(f *testing.F) {
	f.Add(exampleTP)
	f.Add("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
	f.Add("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
	f.Fuzz(func(t *testing.T, s string) {
		tp, ok := parseTraceParent(s)
		if !ok {
			return
		}
		out := tp.String()
		if len(out) != traceParentLen {
			t.Fatalf("%q formats as %q", s, out)
		}
		if s[:2] == "00" && out != s {
			t.Fatalf("version 00 %q formats as %q", s, out)
		}
		if tp2, ok := parseTraceParent(out); !ok || tp2 != tp {
			t.Fatalf("%q: %q does not parse back", s, out)
		}
	})
}

func TestIDs(t *testing.T) {
	seen := make(map[spanID]bool)
	for range 1000 {
		s := newSpanID()
		if !s.isValid() || seen[s] {
			t.Fatalf("span id %s: zero or repeated", s)
		}
		seen[s] = true
	}
	if id := newTraceID(); !id.isValid() || len(id.String()) != 32 {
		t.Errorf("trace id %q", id)
	}
	if n := testing.AllocsPerRun(100, func() { newSpanID(); newTraceID() }); n != 0 && !raceEnabled {
		t.Errorf("ids allocate: %v", n)
	}
}

func TestSampler(t *testing.T) {
	parent, _ := parseTraceParent(exampleTP) // sampled
	unsampled := parent
	unsampled.flags = 0
	count := func(s sampler, p *traceParent) int {
		n := 0
		for range 100000 {
			if s.sample(p) {
				n++
			}
		}
		return n
	}
	if n := count(newSampler(0, false), nil); n != 0 {
		t.Errorf("ratio 0 sampled %d", n)
	}
	if n := count(newSampler(1, false), nil); n != 100000 {
		t.Errorf("ratio 1 sampled %d of 100000", n)
	}
	// 25% of 100000: the standard deviation is 137; 1000 is 7 of them.
	if n := count(newSampler(0.25, false), nil); n < 24000 || n > 26000 {
		t.Errorf("ratio 0.25 sampled %d of 100000", n)
	}
	// The ratio applies to a client's sampled flag unless parent-based.
	if n := count(newSampler(0, false), &parent); n != 0 {
		t.Errorf("ratio 0 with a sampled parent: %d", n)
	}
	if n := count(newSampler(0, true), &parent); n != 100000 {
		t.Errorf("parent-based, sampled parent: %d", n)
	}
	if n := count(newSampler(1, true), &unsampled); n != 0 {
		t.Errorf("parent-based, unsampled parent: %d", n)
	}
	if n := count(newSampler(1, true), nil); n != 100000 {
		t.Errorf("parent-based without parent, ratio 1: %d", n)
	}
}

func TestReqTraceBegin(t *testing.T) {
	never := &tracer{sampler: newSampler(0, false)}
	always := &tracer{sampler: newSampler(1, false)}

	// Unsampled: the client's context travels on untouched, at no cost.
	h := http.Header{"Traceparent": {exampleTP}, "Tracestate": {"a=1"}}
	var rt reqTrace
	if n := testing.AllocsPerRun(100, func() { rt.begin(never, h) }); n != 0 && !raceEnabled {
		t.Errorf("an unsampled request allocates %v", n)
	}
	if rt.sampled || h.Get("Traceparent") != exampleTP || h.Get("Tracestate") != "a=1" {
		t.Errorf("unsampled: sampled %v, header %v", rt.sampled, h)
	}

	// Sampled with a parent: same trace, the client span as the parent.
	rt.begin(always, h)
	tp, ok := parseTraceParent(h.Get("Traceparent"))
	if !rt.sampled || !ok || tp.trace.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || tp.parent != rt.client || tp.flags != flagSampled {
		t.Errorf("sampled with parent: %+v, header %q", rt, h.Get("Traceparent"))
	}
	if rt.state != "a=1" || h.Get("Tracestate") != "a=1" || rt.parent.parent.String() != "00f067aa0ba902b7" {
		t.Errorf("tracestate %q (header %q), parent %s", rt.state, h.Get("Tracestate"), rt.parent.parent)
	}
	if rt.server == rt.client || !rt.server.isValid() {
		t.Errorf("span ids %s %s", rt.server, rt.client)
	}

	// Sampled, invalid parent: a new trace; the orphan tracestate is dropped.
	h = http.Header{"Traceparent": {"00-bogus"}, "Tracestate": {"a=1"}}
	rt.begin(always, h)
	tp, ok = parseTraceParent(h.Get("Traceparent"))
	if !ok || tp.trace != rt.trace || rt.hasParent || h["Tracestate"] != nil {
		t.Errorf("invalid parent: %+v, header %v", rt, h)
	}
	// Two traceparent fields are invalid too.
	h = http.Header{"Traceparent": {exampleTP, exampleTP}}
	rt.begin(always, h)
	if rt.hasParent {
		t.Error("two traceparent fields were accepted")
	}
}

// collector is an OTLP/HTTP collector that decodes what it receives.
type collector struct {
	srv *httptest.Server

	mu       sync.Mutex
	raw      [][]byte // the request bodies
	requests []map[string]any
	spans    []map[string]any
	status   int           // answer; 0 for 200
	hold     chan struct{} // when set, requests wait for it
	entered  chan struct{} // receives once per request, before hold
	arrived  chan struct{} // receives once per request, after decoding
	bad      []string
}

func newCollector(t *testing.T) *collector {
	c := &collector{arrived: make(chan struct{}, 100), entered: make(chan struct{}, 100)}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		hold, status := c.hold, c.status
		c.mu.Unlock()
		select {
		case c.entered <- struct{}{}:
		default:
		}
		if hold != nil {
			<-hold
		}
		c.record(r)
		select {
		case c.arrived <- struct{}{}:
		default:
		}
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) record(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/json" {
		c.bad = append(c.bad, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		c.bad = append(c.bad, "read: "+err.Error())
		return
	}
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		c.bad = append(c.bad, "decode: "+err.Error())
		return
	}
	c.raw = append(c.raw, body)
	c.requests = append(c.requests, req)
	for _, rs := range req["resourceSpans"].([]any) {
		for _, ss := range rs.(map[string]any)["scopeSpans"].([]any) {
			for _, sp := range ss.(map[string]any)["spans"].([]any) {
				c.spans = append(c.spans, sp.(map[string]any))
			}
		}
	}
}

func (c *collector) snapshot() (reqs []map[string]any, spans []map[string]any, bad []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests, c.spans, c.bad
}

func attrsOf(v any) map[string]any {
	m := make(map[string]any)
	for _, a := range v.([]any) {
		kv := a.(map[string]any)
		val := kv["value"].(map[string]any)
		if s, ok := val["stringValue"]; ok {
			m[kv["key"].(string)] = s
		} else {
			m[kv["key"].(string)] = val["intValue"]
		}
	}
	return m
}

func testRecord() *spanRecord {
	parent, _ := parseTraceParent(exampleTP)
	return &spanRecord{
		trace: parent.trace, server: spanID{1, 2, 3, 4, 5, 6, 7, 8}, parent: parent.parent, client: spanID{9, 9, 9, 9, 9, 9, 9, 9},
		traceState: "vendor=x",
		start:      1_700_000_000_000_000_000, end: 1_700_000_000_002_000_000,
		upStart: 1_700_000_000_000_100_000, upEnd: 1_700_000_000_001_900_000,
		method: "GET", scheme: "https", authority: "example.com:8443", path: "/api/x?token=secret",
		proto: transport.ProtoHTTP3, status: 502, code: transport.CodeUpstreamReset,
		route: "example.com/api", cluster: "api", upstream: "10.0.0.1:8080", upstreamProtocol: "h2c",
		clientAddr: netip.MustParseAddrPort("192.0.2.1:5000"), bytesOut: 42, upStatus: 200,
	}
}

func closeExporter(t *testing.T, e *otlpExporter) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
}

// TestOTLPExport: the JSON a collector receives follows the OTLP mapping.
func TestOTLPExport(t *testing.T) {
	c := newCollector(t)
	var counters traceCounters
	e := newOTLPExporter(exporterConfig{endpoint: c.srv.URL + "/", serviceName: "edge", batchSize: 2, interval: time.Hour, counters: &counters})
	e.export(testRecord())
	e.export(testRecord()) // a full batch: sent without waiting for the interval
	select {
	case <-c.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("no export request")
	}
	e.export(testRecord())
	closeExporter(t, e) // sends the partial batch
	reqs, spans, bad := c.snapshot()
	if len(bad) > 0 {
		t.Fatalf("bad requests: %q", bad)
	}
	if len(reqs) != 2 || len(spans) != 6 || counters.exported.Load() != 3 {
		t.Fatalf("%d requests, %d spans, %d exported", len(reqs), len(spans), counters.exported.Load())
	}
	rs := reqs[0]["resourceSpans"].([]any)[0].(map[string]any)
	if got := attrsOf(rs["resource"].(map[string]any)["attributes"])["service.name"]; got != "edge" {
		t.Errorf("service.name %v", got)
	}
	if got := rs["scopeSpans"].([]any)[0].(map[string]any)["scope"].(map[string]any)["name"]; got != otlpScopeName {
		t.Errorf("scope %v", got)
	}
	server, client := spans[0], spans[1]
	want := map[string]any{
		"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "0102030405060708", "parentSpanId": "00f067aa0ba902b7",
		"traceState": "vendor=x", "name": "GET example.com/api", "kind": 2.0,
		"startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000002000000",
	}
	for k, v := range want {
		if server[k] != v {
			t.Errorf("server span %s = %v, want %v", k, server[k], v)
		}
	}
	sa := attrsOf(server["attributes"])
	for k, v := range map[string]any{
		"http.request.method": "GET", "url.path": "/api/x", "url.scheme": "https", "server.address": "example.com",
		"server.port": "8443", "http.response.status_code": "502", "network.protocol.version": "3",
		"client.address": "192.0.2.1", "error.type": "upstream_reset", "proxynow.cluster": "api", "http.response.body.size": "42",
	} {
		if sa[k] != v {
			t.Errorf("server attribute %s = %v, want %v", k, sa[k], v)
		}
	}
	if st := server["status"].(map[string]any); st["code"] != 2.0 {
		t.Errorf("server status %v", st)
	}
	for k, v := range map[string]any{
		"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "0909090909090909", "parentSpanId": "0102030405060708",
		"kind": 3.0, "startTimeUnixNano": "1700000000000100000", "endTimeUnixNano": "1700000000001900000",
	} {
		if client[k] != v {
			t.Errorf("client span %s = %v, want %v", k, client[k], v)
		}
	}
	ca := attrsOf(client["attributes"])
	if ca["server.address"] != "10.0.0.1" || ca["server.port"] != "8080" || ca["proxynow.upstream_protocol"] != "h2c" {
		t.Errorf("client attributes %v", ca)
	}
	if strings.Contains(string(mustJSON(t, reqs)), "secret") {
		t.Error("the query string was exported")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOTLPExportStalledCollector: a collector that does not answer holds no
// request up: export never blocks, what does not fit is dropped and counted.
func TestOTLPExportStalledCollector(t *testing.T) {
	c := newCollector(t)
	c.hold = make(chan struct{})
	var counters traceCounters
	e := newOTLPExporter(exporterConfig{endpoint: c.srv.URL, batchSize: 1, queueSize: 4, interval: time.Hour, counters: &counters})
	e.export(testRecord())
	// The first batch is stuck in the collector; the queue takes 4 more.
	select {
	case <-c.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the exporter did not send the first record")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			e.export(testRecord())
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("export blocked on a stalled collector")
	}
	if got := counters.dropped.Load(); got != 96 {
		t.Errorf("dropped %d, want 96", got)
	}
	close(c.hold)
	closeExporter(t, e)
	if got := counters.exported.Load(); got != 5 {
		t.Errorf("exported %d, want 5", got)
	}
	e.export(testRecord())
	if got := counters.dropped.Load(); got != 97 {
		t.Errorf("after Close: dropped %d, want 97", got)
	}
}

func TestOTLPExportFailure(t *testing.T) {
	c := newCollector(t)
	c.status = http.StatusServiceUnavailable
	var counters traceCounters
	var logs lockedBuffer
	e := newOTLPExporter(exporterConfig{endpoint: c.srv.URL, interval: time.Hour, counters: &counters, log: slogTo(&logs)})
	for range 3 {
		e.export(testRecord())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := e.flush(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	closeExporter(t, e)
	if counters.failed.Load() != 3 || counters.exported.Load() != 0 {
		t.Errorf("failed %d exported %d", counters.failed.Load(), counters.exported.Load())
	}
	if n := strings.Count(strings.Join(logs.lines(), "\n"), "trace export failing"); n != 1 {
		t.Errorf("logged the failure %d times, want once:\n%s", n, strings.Join(logs.lines(), "\n"))
	}
}

// TestOTLPCloseDeadline: Close gives up on a collector that never answers.
func TestOTLPCloseDeadline(t *testing.T) {
	c := newCollector(t)
	c.hold = make(chan struct{})
	defer close(c.hold)
	var counters traceCounters
	e := newOTLPExporter(exporterConfig{endpoint: c.srv.URL, interval: time.Hour, counters: &counters})
	e.export(testRecord())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); err != context.DeadlineExceeded {
		t.Errorf("Close: %v", err)
	}
	if counters.exported.Load()+counters.failed.Load()+counters.dropped.Load() != 1 {
		t.Errorf("the record is not accounted for: %+v", &counters)
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func TestSplitAuthority(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"example.com", "example.com", 0},
		{"example.com:8443", "example.com", 8443},
		{"[::1]:443", "::1", 443},
		{"[::1]", "::1", 0},
		{"host:bad", "host:bad", 0},
	} {
		if h, p := splitAuthority(tc.in); h != tc.host || p != tc.port {
			t.Errorf("splitAuthority(%q) = %q, %d", tc.in, h, p)
		}
	}
}
