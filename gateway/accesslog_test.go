package gateway

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

func TestAccessLogLine(t *testing.T) {
	var buf lockedBuffer
	h := NewAsyncHandler(slog.NewJSONHandler(&buf, nil), AsyncHandlerOptions{})
	a := newAccessLog(h, 1, true)
	end := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	a.write(end, &accessEntry{
		proto: transport.ProtoHTTP2, method: "GET", authority: "example.com", path: "/a?b=c",
		status: 200, bytes: 1234, duration: 1500 * time.Microsecond, upstream: "10.0.0.1:80",
		client: netip.MustParseAddrPort("192.0.2.1:5000"),
	})
	tr, sp := newTraceID(), newSpanID()
	a.write(end, &accessEntry{
		proto: transport.ProtoHTTP3, method: "POST", authority: "example.com", path: "/",
		status: 502, code: transport.CodeConnectRefused, trace: tr, span: sp,
	})
	closeLog(t, h)
	lines := buf.lines()
	if len(lines) != 2 {
		t.Fatalf("lines: %q", lines)
	}
	var l1, l2 map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &l1); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &l2); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"time": "2025-01-02T03:04:05Z", "level": "INFO", "msg": "access",
		"proto": "h2", "method": "GET", "authority": "example.com", "path": "/a?b=c", "status": 200.0,
		"bytes": 1234.0, "duration": 1.5e6, "upstream": "10.0.0.1:80", "code": "none", "client": "192.0.2.1:5000",
	}
	for k, v := range want {
		if l1[k] != v {
			t.Errorf("%s = %v, want %v (line %s)", k, l1[k], v, lines[0])
		}
	}
	if _, ok := l1["trace_id"]; ok {
		t.Errorf("an unsampled request has a trace id: %s", lines[0])
	}
	if l2["trace_id"] != tr.String() || l2["span_id"] != sp.String() || l2["code"] != "connect_refused" || l2["upstream"] != "" {
		t.Errorf("sampled failed request: %s", lines[1])
	}
}

func TestAccessLogSampling(t *testing.T) {
	count := func(a *accessLog, failed bool) int {
		n := 0
		for range 100000 {
			if a.want(failed) {
				n++
			}
		}
		return n
	}
	if n := count(newAccessLog(nil, 0, true), false); n != 0 {
		t.Errorf("ratio 0: %d successes logged", n)
	}
	if n := count(newAccessLog(nil, 0, true), true); n != 100000 {
		t.Errorf("ratio 0, errors on: %d of 100000 failures logged", n)
	}
	if n := count(newAccessLog(nil, 0, false), true); n != 0 {
		t.Errorf("ratio 0, errors off: %d failures logged", n)
	}
	if n := count(newAccessLog(nil, 1, false), false); n != 100000 {
		t.Errorf("ratio 1: %d of 100000", n)
	}
	if n := count(newAccessLog(nil, 0.1, false), false); n < 9000 || n > 11000 {
		t.Errorf("ratio 0.1: %d of 100000", n)
	}
	for _, tc := range []struct {
		status int
		code   transport.Code
		failed bool
	}{
		{200, transport.CodeNone, false},
		{404, transport.CodeNone, false}, // the upstream's own 404
		{503, transport.CodeNone, true},
		{404, transport.CodeNoRoute, true},
		{200, transport.CodeUpstreamReset, true}, // cut after the head
		{499, transport.CodeClientCancelled, true},
	} {
		if got := failedRequest(tc.status, tc.code); got != tc.failed {
			t.Errorf("failedRequest(%d, %v) = %v", tc.status, tc.code, got)
		}
	}
}

// countingHandler counts records without resolving them.
type countingHandler struct{ n int }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (h *countingHandler) Handle(context.Context, slog.Record) error { h.n++; return nil }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler        { return h }
func (h *countingHandler) WithGroup(string) slog.Handler             { return h }

// TestAccessLogWriteAllocs: handing a line over costs the request nothing
// beyond the entry itself.
func TestAccessLogWriteAllocs(t *testing.T) {
	h := &countingHandler{}
	a := newAccessLog(h, 1, true)
	e := &accessEntry{method: "GET", path: "/"}
	now := time.Now()
	if n := testing.AllocsPerRun(100, func() { a.write(now, e) }); n != 0 && !raceEnabled {
		t.Errorf("write allocates %v", n)
	}
}
