package gateway

import (
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// TestOTLPExportCollectorDecodes decodes what the exporter sends with the
// OpenTelemetry Collector's own OTLP/JSON decoder (pdata, which its otlp
// receiver uses): an independent check of the field names, the hex IDs, the
// enums and the 64-bit integers encoded as strings.
func TestOTLPExportCollectorDecodes(t *testing.T) {
	c := newCollector(t)
	var counters traceCounters
	e := newOTLPExporter(exporterConfig{endpoint: c.srv.URL, serviceName: "edge", batchSize: 1, interval: time.Hour, counters: &counters})
	e.export(testRecord())
	closeExporter(t, e)
	c.mu.Lock()
	raw, bad := c.raw, c.bad
	c.mu.Unlock()
	if len(bad) > 0 || len(raw) != 1 {
		t.Fatalf("%d requests, bad: %q", len(raw), bad)
	}
	td, err := (&ptrace.JSONUnmarshaler{}).UnmarshalTraces(raw[0])
	if err != nil {
		t.Fatalf("the collector's decoder refused the export: %v\n%s", err, raw[0])
	}
	if td.SpanCount() != 2 || td.ResourceSpans().Len() != 1 {
		t.Fatalf("%d spans in %d resources, want 2 in 1", td.SpanCount(), td.ResourceSpans().Len())
	}
	rs := td.ResourceSpans().At(0)
	if v, _ := rs.Resource().Attributes().Get("service.name"); v.Str() != "edge" {
		t.Errorf("service.name %q", v.AsString())
	}
	ss := rs.ScopeSpans().At(0)
	if ss.Scope().Name() != otlpScopeName {
		t.Errorf("scope %q", ss.Scope().Name())
	}
	trace := pcommon.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	server, client := ss.Spans().At(0), ss.Spans().At(1)
	for _, sp := range []ptrace.Span{server, client} {
		if sp.TraceID() != trace {
			t.Errorf("span %q: trace ID %v", sp.Name(), sp.TraceID())
		}
	}
	if server.SpanID() != (pcommon.SpanID{1, 2, 3, 4, 5, 6, 7, 8}) || server.ParentSpanID() != (pcommon.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}) {
		t.Errorf("server span IDs %v parent %v", server.SpanID(), server.ParentSpanID())
	}
	if client.SpanID() != (pcommon.SpanID{9, 9, 9, 9, 9, 9, 9, 9}) || client.ParentSpanID() != server.SpanID() {
		t.Errorf("client span IDs %v parent %v", client.SpanID(), client.ParentSpanID())
	}
	if server.Kind() != ptrace.SpanKindServer || client.Kind() != ptrace.SpanKindClient {
		t.Errorf("kinds %v, %v", server.Kind(), client.Kind())
	}
	if server.Name() != "GET example.com/api" || server.TraceState().AsRaw() != "vendor=x" {
		t.Errorf("server span %q, trace state %q", server.Name(), server.TraceState().AsRaw())
	}
	if server.StartTimestamp() != 1_700_000_000_000_000_000 || server.EndTimestamp() != 1_700_000_000_002_000_000 {
		t.Errorf("server span times %d–%d", server.StartTimestamp(), server.EndTimestamp())
	}
	if server.Status().Code() != ptrace.StatusCodeError {
		t.Errorf("server status %v", server.Status().Code())
	}
	for k, want := range map[string]any{
		"http.request.method": "GET", "url.path": "/api/x", "http.response.status_code": int64(502),
		"server.port": int64(8443), "http.response.body.size": int64(42), "error.type": "upstream_reset",
	} {
		v, ok := server.Attributes().Get(k)
		if !ok || v.AsRaw() != want {
			t.Errorf("server attribute %s = %v (present %v), want %v (%T)", k, v.AsRaw(), ok, want, want)
		}
	}
	if v, _ := client.Attributes().Get("server.address"); v.Str() != "10.0.0.1" {
		t.Errorf("client server.address %q", v.AsString())
	}
}
