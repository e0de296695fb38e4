package gateway

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// accessLog writes one line per request, or a sample of them, to a
// slog.Handler (an AsyncHandler in production, so the line is formatted and
// written off the request's goroutine). Failed requests can be logged
// whatever the sample.
//
// The line is a record with the message "access" and these attributes:
// proto, method, authority, path, status, bytes (response body bytes sent),
// duration, upstream (host:port, "" when none was reached), code (the
// transport code, "none" on success), client (the peer address), and
// trace_id and span_id for sampled requests.
//
// The access log ignores the log level: its own settings say what it writes.
type accessLog struct {
	h slog.Handler
	// threshold: a successful request is logged when a uniform random
	// uint64 falls below it; all overrides it.
	threshold uint64
	all       bool
	errors    bool // log every failed request
}

func newAccessLog(h slog.Handler, ratio float64, errors bool) *accessLog {
	a := &accessLog{h: h, errors: errors}
	switch {
	case ratio >= 1:
		a.all = true
	case ratio > 0:
		a.threshold = uint64(ratio * (1 << 64))
	}
	return a
}

// want reports whether a request is logged. failed is failedRequest's
// verdict.
func (a *accessLog) want(failed bool) bool {
	if failed && a.errors || a.all {
		return true
	}
	return a.threshold != 0 && rand.Uint64() < a.threshold
}

// failedRequest reports whether a request counts as failed for the access
// log and tail sampling: the gateway answered it with an error of its own,
// cut it, or the upstream answered 5xx.
func failedRequest(status int, code transport.Code) bool {
	return code != transport.CodeNone || status >= 500
}

// accessEntry is the content of one access log line. It is allocated per
// logged request and never changed once written: the attributes are built by
// LogValue on the log writer's goroutine, so the request path pays for one
// allocation and the record it hands over carries a single attribute.
type accessEntry struct {
	proto     transport.Proto
	method    string
	authority string
	path      string
	status    int
	bytes     int64
	duration  time.Duration
	upstream  string
	code      transport.Code
	client    netip.AddrPort
	trace     traceID // zero when the request was not sampled
	span      spanID
}

// LogValue returns the entry's attributes as a group with an empty key,
// which handlers inline into the record.
func (e *accessEntry) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("proto", e.proto.String()),
		slog.String("method", e.method),
		slog.String("authority", e.authority),
		slog.String("path", e.path),
		slog.Int("status", e.status),
		slog.Int64("bytes", e.bytes),
		slog.Duration("duration", e.duration),
		slog.String("upstream", e.upstream),
		slog.String("code", e.code.String()),
	)
	if e.client.IsValid() {
		attrs = append(attrs, slog.String("client", e.client.String()))
	}
	if e.trace.isValid() {
		attrs = append(attrs, slog.String("trace_id", e.trace.String()), slog.String("span_id", e.span.String()))
	}
	return slog.GroupValue(attrs...)
}

// write hands e to the handler as a record stamped end, the time the request
// ended (no clock read here).
func (a *accessLog) write(end time.Time, e *accessEntry) {
	r := slog.NewRecord(end, slog.LevelInfo, "access", 0)
	r.AddAttrs(slog.Any("", e))
	// An AsyncHandler only fails after Close, writing synchronously; the
	// request has nothing to do about it.
	_ = a.h.Handle(context.Background(), r)
}
