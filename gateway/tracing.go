package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// Tracing follows W3C Trace Context (https://www.w3.org/TR/trace-context/):
// the gateway accepts traceparent and tracestate, makes a server span per
// sampled request with a client span for the upstream exchange, and
// propagates the context to the upstream with that client span as parent.
//
// Unsampled requests cost nothing beyond the sampling decision: nothing is
// allocated, and an incoming traceparent travels to the upstream unchanged
// (the gateway does not take part in that trace, as the specification
// allows), so the upstream still joins the client's trace.

// traceID is a W3C trace-id: 16 bytes, not all zero.
type traceID [16]byte

// spanID is a W3C parent-id, the id of a span: 8 bytes, not all zero.
type spanID [8]byte

func (t traceID) isValid() bool { return t != traceID{} }
func (s spanID) isValid() bool  { return s != spanID{} }

const hexDigits = "0123456789abcdef"

func appendHex(b []byte, p []byte) []byte {
	for _, c := range p {
		b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return b
}

// String returns the 32 lowercase hex digits of t.
func (t traceID) String() string { return string(appendHex(make([]byte, 0, 32), t[:])) }

// String returns the 16 lowercase hex digits of s.
func (s spanID) String() string { return string(appendHex(make([]byte, 0, 16), s[:])) }

// newTraceID and newSpanID draw ids from math/rand/v2's runtime source: per
// thread, lock-free and about as fast as an atomic add. Ids need to be unique
// with high probability, not unpredictable; W3C §3.2.2.3 asks for random
// trace-ids, which these are.
func newTraceID() (t traceID) {
	for !t.isValid() {
		putUint64(t[:8], rand.Uint64())
		putUint64(t[8:], rand.Uint64())
	}
	return t
}

func newSpanID() (s spanID) {
	for !s.isValid() {
		putUint64(s[:], rand.Uint64())
	}
	return s
}

func putUint64(b []byte, v uint64) {
	_ = b[7]
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

// traceParent is a parsed traceparent field (W3C §3.2):
//
//	version "-" trace-id "-" parent-id "-" trace-flags
//	00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
type traceParent struct {
	trace  traceID
	parent spanID
	flags  byte
}

// flagSampled is the sampled bit of trace-flags (W3C §3.2.2.5).
const flagSampled = 0x01

// traceParentLen is the length of a version 00 traceparent.
const traceParentLen = 55

// parseTraceParent parses a traceparent value. It accepts version 00 of
// exactly 55 characters and, for forward compatibility (W3C §3.2.4), higher
// versions whose first 55 characters have the version 00 layout followed by
// the end or a "-". Hex must be lowercase; version ff, an all-zero trace-id
// or parent-id, and anything else are invalid.
func parseTraceParent(s string) (tp traceParent, ok bool) {
	if len(s) < traceParentLen {
		return tp, false
	}
	v, ok := hexByte(s[0], s[1])
	if !ok || v == 0xff {
		return tp, false
	}
	if v == 0 && len(s) != traceParentLen {
		return tp, false
	}
	if len(s) > traceParentLen && s[traceParentLen] != '-' {
		return tp, false
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return tp, false
	}
	for i := range tp.trace {
		if tp.trace[i], ok = hexByte(s[3+2*i], s[4+2*i]); !ok {
			return tp, false
		}
	}
	for i := range tp.parent {
		if tp.parent[i], ok = hexByte(s[36+2*i], s[37+2*i]); !ok {
			return tp, false
		}
	}
	if tp.flags, ok = hexByte(s[53], s[54]); !ok {
		return tp, false
	}
	if !tp.trace.isValid() || !tp.parent.isValid() {
		return tp, false
	}
	return tp, true
}

func hexByte(hi, lo byte) (byte, bool) {
	h, ok1 := hexNibble(hi)
	l, ok2 := hexNibble(lo)
	return h<<4 | l, ok1 && ok2
}

func hexNibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// appendTo appends the version 00 form of tp. A participant sends version 00
// whatever version it received (W3C §3.2.4).
func (tp traceParent) appendTo(b []byte) []byte {
	b = append(b, "00-"...)
	b = appendHex(b, tp.trace[:])
	b = append(b, '-')
	b = appendHex(b, tp.parent[:])
	b = append(b, '-', hexDigits[tp.flags>>4], hexDigits[tp.flags&0xf])
	return b
}

// String returns the version 00 form of tp.
func (tp traceParent) String() string {
	return string(tp.appendTo(make([]byte, 0, traceParentLen)))
}

// maxTraceStateLen bounds the tracestate the gateway records in a span and
// forwards as it is. W3C §3.3.1.5 lets a vendor cut a longer one; 512 is the
// length every participant must be able to carry.
const maxTraceStateLen = 512

// sampler makes the head sampling decision of a request.
type sampler struct {
	// threshold: a request is sampled when a uniform random uint64 falls
	// below it. 0 samples nothing; all overrides it.
	threshold uint64
	all       bool
	// parentBased follows the sampled flag of a valid incoming
	// traceparent instead of the ratio.
	parentBased bool
}

func newSampler(ratio float64, parentBased bool) sampler {
	s := sampler{parentBased: parentBased}
	switch {
	case ratio >= 1:
		s.all = true
	case ratio > 0:
		s.threshold = uint64(ratio * (1 << 64))
	}
	return s
}

// sample decides for a request; parent is the incoming context, if valid.
func (s *sampler) sample(parent *traceParent) bool {
	if s.parentBased && parent != nil {
		return parent.flags&flagSampled != 0
	}
	if s.all {
		return true
	}
	return s.threshold != 0 && rand.Uint64() < s.threshold
}

// tracer is the compiled tracing config of a state: the sampler and where
// finished spans go.
type tracer struct {
	sampler      sampler
	sampleErrors bool
	exp          spanSink
	otlp         *otlpExporter // the exporter behind exp, closed when the config is replaced
}

// reqTrace is the trace state of one request, kept in the pooled exchange.
type reqTrace struct {
	sampled   bool
	hasParent bool // parent holds a valid incoming traceparent
	parent    traceParent
	trace     traceID
	server    spanID // the gateway's server span
	client    spanID // the upstream client span
	state     string // incoming tracestate, "" when absent or too long
	upStart   int64  // unix ns; 0 without an upstream exchange
	upEnd     int64
}

// begin reads the incoming context of h and decides whether the request is
// sampled. A sampled request gets its ids, and h a traceparent naming the
// client span, for the upstream (W3C §3.2: a participant replaces the
// parent-id with its own span). An unsampled request leaves h alone and
// allocates nothing.
func (rt *reqTrace) begin(tr *tracer, h http.Header) {
	*rt = reqTrace{}
	if v := h["Traceparent"]; len(v) == 1 {
		// Several traceparent fields are invalid (W3C §3.2): ignored.
		rt.parent, rt.hasParent = parseTraceParent(v[0])
	}
	var p *traceParent
	if rt.hasParent {
		p = &rt.parent
	}
	if !tr.sampler.sample(p) {
		return
	}
	rt.start(h)
}

// start gives the request its ids and tells the upstream.
func (rt *reqTrace) start(h http.Header) {
	rt.sampled = true
	if rt.hasParent {
		rt.trace = rt.parent.trace
		if v := h["Tracestate"]; len(v) == 1 && len(v[0]) <= maxTraceStateLen {
			rt.state = v[0]
		}
	} else {
		rt.trace = newTraceID()
		// A tracestate without a valid traceparent is meaningless (W3C
		// §3.3): it is not forwarded.
		delete(h, "Tracestate")
	}
	rt.server = newSpanID()
	rt.client = newSpanID()
	if h != nil {
		h["Traceparent"] = []string{traceParent{trace: rt.trace, parent: rt.client, flags: flagSampled}.String()}
	}
}

// spanRecord is what the exporter needs of one sampled request: the server
// span and, when an upstream was reached, its client span. It is allocated
// for sampled requests only and never changed once handed to the exporter.
type spanRecord struct {
	trace      traceID
	server     spanID
	parent     spanID // the incoming parent-id; zero for a root span
	client     spanID // zero without an upstream exchange
	traceState string

	start, end       int64 // unix ns
	upStart, upEnd   int64
	method, scheme   string
	authority, path  string
	proto            transport.Proto
	status           int
	code             transport.Code
	route, cluster   string
	upstream         string
	clientAddr       netip.AddrPort
	bytesOut         int64
	upstreamProtocol string
	upStatus         int // the upstream's status; 0 when it gave none
}

// spanSink receives the span records of finished sampled requests. It must
// not block.
type spanSink interface {
	export(*spanRecord)
}

// traceCounters count what happened to span records, across the exporters of
// successive configs.
type traceCounters struct {
	exported atomic.Uint64 // spans the collector accepted
	dropped  atomic.Uint64 // spans dropped because the export queue was full or closed
	failed   atomic.Uint64 // spans in export requests that failed
}

// exporterConfig configures an otlpExporter.
type exporterConfig struct {
	// endpoint is the collector's base URL; spans are POSTed to
	// endpoint + "/v1/traces" (the OTLP/HTTP default path).
	endpoint    string
	serviceName string
	queueSize   int           // span records waiting; beyond: dropped
	batchSize   int           // span records per export request
	interval    time.Duration // a partial batch waits at most this long
	timeout     time.Duration // per export request
	client      *http.Client  // nil: a client of its own
	log         *slog.Logger
	counters    *traceCounters
}

// otlpExporter sends span records to an OpenTelemetry collector with
// OTLP/HTTP in its JSON encoding (https://opentelemetry.io/docs/specs/otlp/):
// a POST of an ExportTraceServiceRequest, batched by a goroutine of its own
// behind a bounded queue; when the queue is full, records are dropped and
// counted, so a slow or absent collector never holds up a request.
//
// It is written here rather than taken from the OpenTelemetry Go SDK on
// purpose: the SDK's span API allocates a span object, its attribute slices
// and a context per span on the request goroutine, takes locks in the span
// processor, and brings a large dependency tree (gRPC, protobuf) into the
// gateway. The gateway needs one fixed span shape per request: it fills a
// plain struct on the request path (sampled requests only) and does all the
// encoding on the exporter goroutine. OTLP/gRPC is not implemented; every
// collector accepts OTLP/HTTP.
type otlpExporter struct {
	cfg exporterConfig
	url string
	c   *traceCounters

	q        chan *spanRecord
	flushReq chan chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	closed   atomic.Bool

	ctx    context.Context // of export requests; cancelled when Close gives up
	cancel context.CancelFunc

	failing bool // the last export failed; owned by the run goroutine
}

// newOTLPExporter starts an exporter; Close stops it.
func newOTLPExporter(cfg exporterConfig) *otlpExporter {
	if cfg.queueSize <= 0 {
		cfg.queueSize = 2048
	}
	if cfg.batchSize <= 0 {
		cfg.batchSize = 512
	}
	if cfg.interval <= 0 {
		cfg.interval = 5 * time.Second
	}
	if cfg.timeout <= 0 {
		cfg.timeout = 10 * time.Second
	}
	if cfg.client == nil {
		cfg.client = &http.Client{}
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	if cfg.counters == nil {
		cfg.counters = new(traceCounters)
	}
	if cfg.serviceName == "" {
		cfg.serviceName = ProxyName
	}
	e := &otlpExporter{
		cfg: cfg, url: strings.TrimSuffix(cfg.endpoint, "/") + "/v1/traces", c: cfg.counters,
		q: make(chan *spanRecord, cfg.queueSize), flushReq: make(chan chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	go e.run()
	return e
}

// export queues r, or drops and counts it when the queue is full or the
// exporter closed. It never blocks.
func (e *otlpExporter) export(r *spanRecord) {
	if e.closed.Load() {
		e.c.dropped.Add(1)
		return
	}
	select {
	case e.q <- r:
	default:
		e.c.dropped.Add(1)
	}
}

func (e *otlpExporter) run() {
	defer close(e.done)
	t := time.NewTicker(e.cfg.interval)
	defer t.Stop()
	batch := make([]*spanRecord, 0, e.cfg.batchSize)
	var buf bytes.Buffer
	send := func() {
		if len(batch) > 0 {
			e.send(&buf, batch)
			clear(batch)
			batch = batch[:0]
		}
	}
	// drain moves what is queued into batches and sends them.
	drain := func() {
		for {
			select {
			case r := <-e.q:
				if batch = append(batch, r); len(batch) == e.cfg.batchSize {
					send()
				}
			default:
				send()
				return
			}
		}
	}
	for {
		select {
		case r := <-e.q:
			if batch = append(batch, r); len(batch) == e.cfg.batchSize {
				send()
			}
		case <-t.C:
			send()
		case ch := <-e.flushReq:
			drain()
			close(ch)
		case <-e.stop:
			drain()
			return
		}
	}
}

// flush sends what is queued now. It returns ctx's error if ctx ends first.
func (e *otlpExporter) flush(ctx context.Context) error {
	ch := make(chan struct{})
	select {
	case e.flushReq <- ch:
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close sends what is queued and stops the exporter. If ctx ends first, the
// export in progress is aborted, the rest is dropped, and ctx's error is
// returned. Spans exported after Close are dropped and counted.
func (e *otlpExporter) Close(ctx context.Context) error {
	e.stopOnce.Do(func() {
		e.closed.Store(true)
		close(e.stop)
	})
	select {
	case <-e.done:
		e.cancel()
		return nil
	case <-ctx.Done():
		e.cancel()
		<-e.done
		// Records still queued were never sent.
		for {
			select {
			case <-e.q:
				e.c.dropped.Add(1)
			default:
				return ctx.Err()
			}
		}
	}
}

// send POSTs one batch. A failure is counted and logged when exporting
// starts failing and when it recovers, not per batch.
func (e *otlpExporter) send(buf *bytes.Buffer, batch []*spanRecord) {
	if e.ctx.Err() != nil {
		e.c.dropped.Add(uint64(len(batch)))
		return
	}
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(e.request(batch)); err != nil {
		// Only invalid UTF-8 could get here, and encoding/json replaces it.
		e.c.failed.Add(uint64(len(batch)))
		return
	}
	err := e.post(buf.Bytes())
	if err != nil {
		e.c.failed.Add(uint64(len(batch)))
		if !e.failing {
			e.cfg.log.Warn("trace export failing; spans are dropped until it recovers", "endpoint", e.url, "err", err)
		}
		e.failing = true
		return
	}
	e.c.exported.Add(uint64(len(batch)))
	if e.failing {
		e.cfg.log.Info("trace export recovered", "endpoint", e.url)
		e.failing = false
	}
}

var errExportStatus = errors.New("gateway: trace collector answered with an error status")

func (e *otlpExporter) post(body []byte) error {
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.cfg.client.Do(req)
	if err != nil {
		return err
	}
	// Drain a bounded part of the body so the conn can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errors.Join(errExportStatus, errors.New(resp.Status))
	}
	return nil
}

// The OTLP JSON mapping (opentelemetry-proto, ExportTraceServiceRequest):
// field names in lowerCamelCase, trace and span ids as hex strings, 64-bit
// integers as decimal strings, enums as integers.
type (
	otlpTraceRequest struct {
		ResourceSpans []otlpResourceSpans `json:"resourceSpans"`
	}
	otlpResourceSpans struct {
		Resource   otlpResource     `json:"resource"`
		ScopeSpans []otlpScopeSpans `json:"scopeSpans"`
	}
	otlpResource struct {
		Attributes []otlpKeyValue `json:"attributes"`
	}
	otlpScopeSpans struct {
		Scope otlpScope  `json:"scope"`
		Spans []otlpSpan `json:"spans"`
	}
	otlpScope struct {
		Name string `json:"name"`
	}
	otlpSpan struct {
		TraceID           string         `json:"traceId"`
		SpanID            string         `json:"spanId"`
		ParentSpanID      string         `json:"parentSpanId,omitempty"`
		TraceState        string         `json:"traceState,omitempty"`
		Name              string         `json:"name"`
		Kind              int            `json:"kind"`
		StartTimeUnixNano string         `json:"startTimeUnixNano"`
		EndTimeUnixNano   string         `json:"endTimeUnixNano"`
		Attributes        []otlpKeyValue `json:"attributes,omitempty"`
		Status            *otlpStatus    `json:"status,omitempty"`
	}
	otlpKeyValue struct {
		Key   string       `json:"key"`
		Value otlpAnyValue `json:"value"`
	}
	otlpAnyValue struct {
		StringValue *string `json:"stringValue,omitempty"`
		IntValue    *string `json:"intValue,omitempty"`
	}
	otlpStatus struct {
		Code    int    `json:"code"`
		Message string `json:"message,omitempty"`
	}
)

// Span kinds and status codes of OTLP.
const (
	otlpKindServer  = 2
	otlpKindClient  = 3
	otlpStatusError = 2
)

// otlpScopeName names the instrumentation scope of the gateway's spans.
const otlpScopeName = "github.com/proxynow/proxynow/gateway"

func strAttr(k, v string) otlpKeyValue {
	return otlpKeyValue{Key: k, Value: otlpAnyValue{StringValue: &v}}
}
func intAttr(k string, v int64) otlpKeyValue {
	s := strconv.FormatInt(v, 10)
	return otlpKeyValue{Key: k, Value: otlpAnyValue{IntValue: &s}}
}

func (e *otlpExporter) request(batch []*spanRecord) *otlpTraceRequest {
	spans := make([]otlpSpan, 0, 2*len(batch))
	for _, r := range batch {
		spans = r.appendSpans(spans)
	}
	return &otlpTraceRequest{ResourceSpans: []otlpResourceSpans{{
		Resource:   otlpResource{Attributes: []otlpKeyValue{strAttr("service.name", e.cfg.serviceName)}},
		ScopeSpans: []otlpScopeSpans{{Scope: otlpScope{Name: otlpScopeName}, Spans: spans}},
	}}}
}

var protoVersions = [...]string{transport.ProtoHTTP1: "1.1", transport.ProtoHTTP2: "2", transport.ProtoHTTP3: "3", 0: ""}

// appendSpans appends the server span of r and, when an upstream was
// reached, its client span, following the OpenTelemetry HTTP semantic
// conventions. The query is left out of url.path: it may carry secrets.
func (r *spanRecord) appendSpans(spans []otlpSpan) []otlpSpan {
	path, _, _ := strings.Cut(r.path, "?")
	host, port := splitAuthority(r.authority)
	name := r.method
	if r.route != "" {
		name += " " + r.route
	}
	attrs := []otlpKeyValue{
		strAttr("http.request.method", r.method),
		strAttr("url.scheme", r.scheme),
		strAttr("url.path", path),
		strAttr("server.address", host),
		strAttr("network.protocol.name", "http"),
		intAttr("http.response.status_code", int64(r.status)),
		intAttr("http.response.body.size", r.bytesOut),
	}
	if port > 0 {
		attrs = append(attrs, intAttr("server.port", int64(port)))
	}
	if int(r.proto) < len(protoVersions) && protoVersions[r.proto] != "" {
		attrs = append(attrs, strAttr("network.protocol.version", protoVersions[r.proto]))
	}
	if r.clientAddr.IsValid() {
		attrs = append(attrs, strAttr("client.address", r.clientAddr.Addr().String()), intAttr("client.port", int64(r.clientAddr.Port())))
	}
	if r.route != "" {
		attrs = append(attrs, strAttr("proxynow.route", r.route), strAttr("proxynow.cluster", r.cluster))
	}
	var status *otlpStatus
	if r.code != transport.CodeNone {
		attrs = append(attrs, strAttr("error.type", r.code.String()))
	}
	// A server span is an error for a 5xx or a failure the gateway caused,
	// not for a client that went away (semantic conventions, HTTP spans).
	if r.status >= 500 || (r.code != transport.CodeNone && r.code != transport.CodeClientCancelled) {
		status = &otlpStatus{Code: otlpStatusError, Message: r.code.String()}
	}
	server := otlpSpan{
		TraceID: r.trace.String(), SpanID: r.server.String(), TraceState: r.traceState,
		Name: name, Kind: otlpKindServer,
		StartTimeUnixNano: strconv.FormatInt(r.start, 10), EndTimeUnixNano: strconv.FormatInt(r.end, 10),
		Attributes: attrs, Status: status,
	}
	if r.parent.isValid() {
		server.ParentSpanID = r.parent.String()
	}
	spans = append(spans, server)
	if !r.client.isValid() || r.upStart == 0 {
		return spans
	}
	uhost, uport := splitAuthority(r.upstream)
	cattrs := []otlpKeyValue{
		strAttr("http.request.method", r.method),
		strAttr("server.address", uhost),
		strAttr("network.protocol.name", "http"),
		strAttr("proxynow.upstream_protocol", r.upstreamProtocol),
		strAttr("proxynow.cluster", r.cluster),
	}
	if uport > 0 {
		cattrs = append(cattrs, intAttr("server.port", int64(uport)))
	}
	var cstatus *otlpStatus
	if r.upStatus > 0 {
		cattrs = append(cattrs, intAttr("http.response.status_code", int64(r.upStatus)))
	}
	if r.code != transport.CodeNone && r.code != transport.CodeClientCancelled {
		cattrs = append(cattrs, strAttr("error.type", r.code.String()))
		cstatus = &otlpStatus{Code: otlpStatusError, Message: r.code.String()}
	} else if r.upStatus >= 400 {
		// A client span is an error for a 4xx too (semantic conventions).
		cstatus = &otlpStatus{Code: otlpStatusError}
	}
	upEnd := r.upEnd
	if upEnd == 0 {
		upEnd = r.end
	}
	return append(spans, otlpSpan{
		TraceID: r.trace.String(), SpanID: r.client.String(), ParentSpanID: r.server.String(),
		Name: r.method, Kind: otlpKindClient,
		StartTimeUnixNano: strconv.FormatInt(r.upStart, 10), EndTimeUnixNano: strconv.FormatInt(upEnd, 10),
		Attributes: cattrs, Status: cstatus,
	})
}

// splitAuthority splits host[:port]; port is 0 when absent or invalid.
// Brackets around an IPv6 literal are removed.
func splitAuthority(a string) (host string, port int) {
	host = a
	if i := strings.LastIndexByte(a, ':'); i >= 0 && !strings.Contains(a[i:], "]") {
		if p, err := strconv.Atoi(a[i+1:]); err == nil && p > 0 && p < 65536 {
			host, port = a[:i], p
		}
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return host, port
}
