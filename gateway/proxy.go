package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// exchange is the per-request scratch state of the proxy. It is pooled, with
// its 1xx callback bound once, so a request allocates neither.
type exchange struct {
	s      transport.ServerStream
	onInfo func(status int, h http.Header) error
	buf    []byte
	obs    exchangeObs
}

// exchangeObs is what metrics, the access log and tracing need of one
// request: proxy fills it, record reads it.
type exchangeObs struct {
	start  time.Time // zero when nothing needs the request's duration
	route  *route    // nil when none matched
	up     *upstreamServer
	status int   // the upstream's status, sent downstream; 0 when the gateway answered itself
	bytes  int64 // response body bytes written downstream
	tr     reqTrace
}

var exchangePool = sync.Pool{New: func() any {
	ex := &exchange{buf: make([]byte, 32<<10)}
	ex.onInfo = ex.writeInformational
	return ex
}}

func (ex *exchange) writeInformational(status int, h http.Header) error {
	stripHopByHop(h)
	return ex.s.WriteInformational(status, h)
}

// ServeStream proxies one exchange. It implements transport.Handler. A panic
// is recovered here, counted, and resets this stream only.
func (g *Gateway) ServeStream(s transport.ServerStream) {
	defer func() {
		if p := recover(); p != nil {
			g.panics.Add(1)
			g.log.Error("panic serving stream", "panic", p, "stack", string(debug.Stack()))
			s.Reset(transport.CodeInternal)
		}
	}()
	g.active.Add(1)
	defer g.active.Add(-1)
	st := g.acquire()
	defer st.release()
	ex := exchangePool.Get().(*exchange)
	ex.s = s
	if st.timed {
		ex.obs.start = time.Now() // the one full clock read of the request
	}
	if g.metrics != nil {
		if p := s.Request().Proto; int(p) < numProtos {
			g.streams[p].Add(1)
			defer g.streams[p].Add(-1)
		}
	}
	code := g.proxy(st, ex)
	if !ex.obs.start.IsZero() {
		g.record(st, ex, code)
	}
	ex.s = nil
	ex.obs = exchangeObs{}
	exchangePool.Put(ex)
	if code != transport.CodeNone && g.log.Enabled(s.Context(), levelDebug) {
		req := s.Request()
		g.log.Debug("request failed", "proto", req.Proto.String(), "method", req.Method,
			"authority", req.Authority, "path", req.Path, "code", code.String())
	}
}

// proxy runs one exchange and returns the code it ended with.
func (g *Gateway) proxy(st *state, ex *exchange) transport.Code {
	s := ex.s
	req := s.Request()
	h := req.Header
	// Hop-by-hop fields go first, before anything reads or adds fields
	// (RFC 9110 §7.6.1).
	stripHopByHop(h)
	// The downstream server answered any Expect: 100-continue itself.
	delete(h, "Expect")
	if st.tracer != nil {
		ex.obs.tr.begin(st.tracer, h)
		if ex.obs.tr.sampled && ex.obs.start.IsZero() {
			ex.obs.start = time.Now()
		}
	}

	if req.EarlyData {
		if !safeMethod(req.Method) {
			return fail(s, transport.CodeTooEarly)
		}
		h["Early-Data"] = earlyDataValue // RFC 8470 §5.1
	}
	rt := st.router.match(req.Authority, req.Path)
	if rt == nil {
		return fail(s, transport.CodeNoRoute)
	}
	ex.obs.route = rt
	if req.Protocol != "" {
		return g.tunnel(st, ex, rt) // a WebSocket upgrade: tunnel.go
	}
	var limited *limitedBody
	if st.maxBody > 0 {
		if req.ContentLength > st.maxBody {
			return fail(s, transport.CodeBodyTooLarge)
		}
		if req.ContentLength < 0 {
			limited = &limitedBody{r: req.Body, left: st.maxBody}
			req.Body = limited
		}
	}
	c := rt.cluster
	if max := c.configRef.MaxConcurrentRequests; max > 0 {
		if c.inflight.Add(1) > int64(max) {
			c.inflight.Add(-1)
			return fail(s, transport.CodeOverloaded)
		}
		defer c.inflight.Add(-1)
	}
	ctx := s.Context()
	var dl *deadlines
	if c.configRef.Timeout > 0 || c.configRef.TryTimeout > 0 || c.configRef.BodyIdleTimeout > 0 {
		dl = newDeadlines(ctx, c.configRef)
		defer dl.stop()
		ctx = dl.ctx
	}
	// A body that an attempt read from cannot be replayed, so retries need
	// to know; a request without a body needs no counting. The wrapper is
	// per request, not in the pooled exchange: an upstream client may still
	// be reading the body on its own goroutine (HTTP/2 and HTTP/3 write
	// request bodies asynchronously) after the exchange went back to the
	// pool.
	var sent *countedBody
	if req.ContentLength != 0 {
		sent = &countedBody{r: req.Body}
		req.Body = sent
	}
	c.budget.deposit()

	var (
		up   *upstreamServer
		conn transport.Conn
		resp *transport.Response
	)
	last := transport.CodeNoHealthyUpstream
	for attempt := 0; ; attempt++ {
		if up = c.pick(up); up == nil {
			// None available: at once on the first attempt; after a
			// failed one, its error tells the client more.
			if attempt == 0 && rt.cm != nil {
				rt.cm.upstreamError(last)
			}
			return fail(s, last)
		}
		ex.obs.up = up
		if attempt == 0 {
			if ex.obs.tr.sampled {
				ex.obs.tr.upStart = time.Now().UnixNano()
			}
			// Only now that the request will go upstream.
			setForwarded(h, req.RemoteAddr, req.Scheme, req.Authority, st.trusted)
			// Via tells the upstream which protocol the client spoke
			// (RFC 9110 §7.6.3).
			if prior := h["Via"]; len(prior) > 0 {
				h["Via"] = append(prior, viaValues[req.Proto][0])
			} else {
				h["Via"] = viaValues[req.Proto]
			}
		}
		var err error
		conn, resp, err = g.try(ctx, c, up, req, ex, dl)
		if err == nil {
			break
		}
		if limited != nil && limited.tripped.Load() {
			return fail(s, transport.CodeBodyTooLarge)
		}
		code := codeOf(ctx, err)
		if rt.cm != nil {
			rt.cm.upstreamError(code)
		}
		if code == transport.CodeOverloaded || code == transport.CodeClientCancelled {
			return fail(s, code)
		}
		c.report(up, outlierFailure(code, 0))
		last = code
		if attempt >= c.configRef.Retries.Max || !retryable(req.Method, err, sent.read()) || !c.budget.withdraw() {
			return fail(s, code)
		}
		g.log.Debug("retrying", "cluster", c.name, "upstream", up.addr, "code", code.String(), "attempt", attempt+1)
	}
	c.report(up, outlierFailure(transport.CodeNone, resp.Status))
	if rt.cm != nil {
		rt.cm.upstreamDuration.Observe(time.Since(ex.obs.start).Seconds())
	}
	ex.obs.status = resp.Status

	rh := resp.Header
	stripHopByHop(rh)
	// An upstream's own Alt-Svc describes the upstream, not us.
	delete(rh, "Alt-Svc")
	if rt.altSvc && req.Proto != transport.ProtoHTTP3 {
		if g.Draining() {
			rh["Alt-Svc"] = altSvcClear // RFC 7838 §3
		} else {
			rh["Alt-Svc"] = st.altSvc
		}
	}
	length := resp.ContentLength
	if len(resp.Trailer) > 0 || len(rh["Trailer"]) > 0 {
		length = -1 // trailers need a framing that carries them
	}
	code := transport.CodeNone
	if err := s.WriteHeader(resp.Status, rh, length); err != nil {
		code = transport.CodeClientCancelled
	} else {
		code = copyBody(s, resp.Body, ex.buf, length < 0, dl, &ex.obs.bytes)
		if code != transport.CodeNone && rt.cm != nil {
			rt.cm.upstreamError(code) // client_cancelled is not counted
		}
	}
	resp.Body.Close()
	c.pool.Put(conn)
	if code != transport.CodeNone {
		// The response has started: the client can only learn of the
		// failure from a reset (or, on HTTP/1.1, a truncated body).
		s.Reset(code)
		return code
	}
	if err := s.Finish(resp.Trailer); err != nil {
		return transport.CodeClientCancelled
	}
	return transport.CodeNone
}

// copyBody streams the upstream body to the client with the pooled buffer,
// adding the bytes written to *written. flush sends each piece at once, for
// bodies of unknown length (streams, SSE).
func copyBody(s transport.ServerStream, body io.Reader, buf []byte, flush bool, dl *deadlines, written *int64) transport.Code {
	for {
		dl.bodyRead()
		n, rerr := body.Read(buf)
		if n > 0 {
			w, err := s.Write(buf[:n])
			*written += int64(w)
			if err != nil {
				return transport.CodeClientCancelled
			}
			if flush {
				if err := s.Flush(); err != nil {
					return transport.CodeClientCancelled
				}
			}
		}
		if rerr == io.EOF {
			return transport.CodeNone
		}
		if rerr != nil {
			if s.Context().Err() != nil {
				return transport.CodeClientCancelled
			}
			if c := transport.CodeOf(rerr); c != transport.CodeInternal {
				return c
			}
			return transport.CodeUpstreamReset
		}
	}
}

// record counts, logs and traces a request that has ended with code. It
// reads the clock once; the rest is atomic adds, and allocations only for the
// requests the access log or a trace keeps.
func (g *Gateway) record(st *state, ex *exchange, code transport.Code) {
	o := &ex.obs
	d := time.Since(o.start)
	req := ex.s.Request()
	status, bytes := o.status, o.bytes
	switch {
	case code == transport.CodeClientCancelled:
		status = StatusClientClosedRequest // whatever had been sent
	case status == 0: // the gateway answered
		status = StatusFor(code)
		if req.Method != http.MethodHead {
			bytes = infoFor(code).contentLength
		}
	}
	if st.none != nil {
		m := st.none
		if o.route != nil {
			m = o.route.m
		}
		m.observe(req.Proto, status, d)
	}
	if st.access == nil && st.tracer == nil {
		return
	}
	failed := failedRequest(status, code)
	tr := &o.tr
	if st.tracer != nil && !tr.sampled && st.tracer.sampleErrors && failed {
		// Tail sampling of an error: the upstream was not told. Its span
		// starts with the request, the only time read.
		tr.start(nil)
		tr.upStart = o.start.UnixNano()
	}
	end := o.start.Add(d)
	var upstream, cluster, routeName, upProto string
	if o.up != nil {
		upstream = o.up.addr
	}
	if o.route != nil {
		routeName, cluster, upProto = o.route.name, o.route.cluster.name, o.route.cluster.protocol
	}
	if st.access != nil && st.access.want(failed) {
		e := &accessEntry{
			proto: req.Proto, method: req.Method, authority: req.Authority, path: req.Path,
			status: status, bytes: bytes, duration: d, upstream: upstream, code: code, client: req.RemoteAddr,
		}
		if tr.sampled {
			e.trace, e.span = tr.trace, tr.server
		}
		st.access.write(end, e)
	}
	if tr.sampled && st.tracer != nil {
		r := &spanRecord{
			trace: tr.trace, server: tr.server, traceState: tr.state,
			start: o.start.UnixNano(), end: end.UnixNano(),
			method: req.Method, scheme: req.Scheme, authority: req.Authority, path: req.Path,
			proto: req.Proto, status: status, code: code, route: routeName, cluster: cluster,
			upstream: upstream, clientAddr: req.RemoteAddr, bytesOut: bytes, upstreamProtocol: upProto, upStatus: o.status,
		}
		if tr.hasParent {
			r.parent = tr.parent.parent
		}
		if o.up != nil && tr.upStart != 0 {
			r.client, r.upStart, r.upEnd = tr.client, tr.upStart, end.UnixNano()
		}
		st.tracer.exp.export(r)
	}
}

// fail answers s with the error response for code and returns code.
func fail(s transport.ServerStream, code transport.Code) transport.Code {
	writeError(s, code)
	return code
}

// codeOf classifies an upstream error: once the request's context has ended,
// its cause decides (the client went away, or a gateway timeout fired).
func codeOf(ctx context.Context, err error) transport.Code {
	if ctx.Err() != nil {
		if c := transport.CodeOf(context.Cause(ctx)); c == transport.CodeResponseTimeout {
			return c
		}
		return transport.CodeClientCancelled
	}
	return transport.CodeOf(err)
}

// try makes one attempt on up: a conn from the pool (bounded by
// max_pending_requests), then the request. On success the caller owns conn
// and resp and must close resp.Body and Put conn.
func (g *Gateway) try(ctx context.Context, c *cluster, up *upstreamServer, req *transport.Request, ex *exchange, dl *deadlines) (transport.Conn, *transport.Response, error) {
	up.active.Add(1)
	defer up.active.Add(-1)
	dl.startTry()
	defer dl.endTry()
	if max := c.configRef.MaxPendingRequests; max > 0 {
		if c.pending.Add(1) > int64(max) {
			c.pending.Add(-1)
			return nil, nil, errOverloaded
		}
		defer c.pending.Add(-1)
	}
	conn, err := c.pool.GetShard(ctx, up.addr, req.Shard)
	if err != nil {
		return nil, nil, err
	}
	req.OnInformational = ex.onInfo
	resp, err := conn.RoundTrip(ctx, req)
	req.OnInformational = nil
	if err != nil {
		c.pool.Put(conn)
		return nil, nil, err
	}
	return conn, resp, nil
}

var errOverloaded = transport.CodeOverloaded.Err()

// retryable reports whether a failed attempt may be sent again: when the
// upstream provably did not process it (a failed connection, a refused
// stream, a stream above GOAWAY) and none of its body was consumed, or when
// its method is idempotent (RFC 9110 §9.2.2), none of its body was consumed
// and the upstream reset the exchange before answering. A POST that may have
// reached an upstream is never sent twice.
func retryable(method string, err error, bodyRead int64) bool {
	if bodyRead > 0 {
		return false
	}
	switch transport.CodeOf(err) {
	case transport.CodeConnectRefused, transport.CodeConnectTimeout, transport.CodeUpstreamTLS,
		transport.CodeUpstreamUnreachable:
		return true // no request was sent
	case transport.CodeUpstreamReset:
		return errors.Is(err, transport.ErrNotProcessed) || idempotent(method)
	}
	return false
}

func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, "TRACE", http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// countedBody counts the request body bytes an attempt consumed: a body that
// was read from cannot be replayed.
type countedBody struct {
	r io.Reader
	n atomic.Int64 // read by the gateway while an upstream client may still be reading
}

// read returns the bytes read so far; a nil *countedBody (no body) read none.
func (b *countedBody) read() int64 {
	if b == nil {
		return 0
	}
	return b.n.Load()
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// deadlines are the gateway's own timeouts of one request, made only for
// clusters that configure one: total, per try (until the response head) and
// between body reads. Each cancels the request's upstream context with
// CodeResponseTimeout. A nil *deadlines does nothing.
type deadlines struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	cfg    *ClusterConfig
	total  *time.Timer
	try    *time.Timer
	idle   *time.Timer
}

var errGatewayTimeout = transport.CodeResponseTimeout.Err()

func newDeadlines(parent context.Context, cfg *ClusterConfig) *deadlines {
	d := &deadlines{cfg: cfg}
	d.ctx, d.cancel = context.WithCancelCause(parent)
	if t := time.Duration(cfg.Timeout); t > 0 {
		d.total = time.AfterFunc(t, d.expire)
	}
	return d
}

func (d *deadlines) expire() { d.cancel(errGatewayTimeout) }

func (d *deadlines) startTry() {
	if d == nil || d.cfg.TryTimeout <= 0 {
		return
	}
	if d.try == nil {
		d.try = time.AfterFunc(time.Duration(d.cfg.TryTimeout), d.expire)
	} else {
		d.try.Reset(time.Duration(d.cfg.TryTimeout))
	}
}

func (d *deadlines) endTry() {
	if d != nil && d.try != nil {
		d.try.Stop()
	}
}

// bodyRead arms the idle timer before each read of the response body.
func (d *deadlines) bodyRead() {
	if d == nil || d.cfg.BodyIdleTimeout <= 0 {
		return
	}
	if d.idle == nil {
		d.idle = time.AfterFunc(time.Duration(d.cfg.BodyIdleTimeout), d.expire)
	} else {
		d.idle.Reset(time.Duration(d.cfg.BodyIdleTimeout))
	}
}

func (d *deadlines) stop() {
	for _, t := range []*time.Timer{d.total, d.try, d.idle} {
		if t != nil {
			t.Stop()
		}
	}
	d.cancel(context.Canceled)
}

func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, "TRACE":
		return true
	}
	return false
}

var (
	viaValues = [...][]string{
		0:                    {"1.1 " + ProxyName},
		transport.ProtoHTTP1: {"1.1 " + ProxyName},
		transport.ProtoHTTP2: {"2 " + ProxyName},
		transport.ProtoHTTP3: {"3 " + ProxyName},
	}
	earlyDataValue = []string{"1"}
	altSvcClear    = []string{"clear"}
)

// limitedBody fails a request body of unknown length once it exceeds the
// limit, with CodeBodyTooLarge.
type limitedBody struct {
	r       io.Reader
	left    int64       // only the reader's goroutine touches it
	tripped atomic.Bool // the limit was exceeded; read by the gateway
}

var errBodyTooLarge = transport.CodeBodyTooLarge.Err()

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		b.tripped.Store(true)
		return 0, errBodyTooLarge
	}
	return n, err
}
