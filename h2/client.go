package h2

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// DialerConfig configures a Dialer. The zero value works: every zero field
// takes the default documented on it. NewDialer copies it.
type DialerConfig struct {
	// TLS, when set, makes the Dialer speak HTTP/2 over TLS: NewDialer
	// clones it and sets NextProtos to ["h2"]; an empty ServerName defaults
	// to the host of the dialed address. A server that does not select
	// "h2" with ALPN fails the dial with CodeUpstreamProtocol. Nil means
	// cleartext HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3).
	TLS *tls.Config

	// ConnectTimeout bounds the TCP connect and, separately, the exchange
	// of HTTP/2 prefaces and SETTINGS that follows the TLS handshake.
	// Default 5s.
	ConnectTimeout time.Duration

	// TLSHandshakeTimeout bounds the TLS handshake. Default 10s.
	TLSHandshakeTimeout time.Duration

	// ResponseHeaderTimeout bounds the wait for a response head once
	// RoundTrip has started. Default 30s.
	ResponseHeaderTimeout time.Duration

	// MaxHeaderBytes bounds the response header list (RFC 9113 §6.5.2)
	// and is advertised as SETTINGS_MAX_HEADER_LIST_SIZE. Default 1 MiB.
	MaxHeaderBytes int
}

func (c DialerConfig) withDefaults() DialerConfig {
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.TLSHandshakeTimeout <= 0 {
		c.TLSHandshakeTimeout = 10 * time.Second
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 30 * time.Second
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 1 << 20
	}
	return c
}

// Dialer dials upstream HTTP/2 conns. It implements transport.Dialer. It keeps
// no pool: transport.Pool does.
//
// Its conns implement transport.Conn with as many slots as the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS. Their RoundTrip sends :path as req.Path
// byte for byte and adds no User-Agent (it puts an empty User-Agent entry in
// req.Header when there is none, to keep x/net from adding its default). It
// sends request trailers when req.Trailer is non-nil, when req.Header has a
// Trailer field, or when the body's length is unknown: then the fields of
// req.Trailer found at the body's io.EOF follow the body. Its errors are
// *transport.Error values; CodeUpstreamReset with cause ErrUnprocessed marks a
// request the upstream provably did not process (REFUSED_STREAM, or a stream
// above a GOAWAY's last stream ID). After RoundTrip failed, x/net may still be
// inside one Read of req.Body.
type Dialer struct {
	cfg DialerConfig
	tls *tls.Config // nil for h2c
	t   *http2.Transport
	nd  net.Dialer
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer returns a Dialer.
func NewDialer(cfg DialerConfig) *Dialer {
	cfg = cfg.withDefaults()
	d := &Dialer{cfg: cfg}
	if cfg.TLS != nil {
		d.tls = cfg.TLS.Clone()
		d.tls.NextProtos = []string{http2.NextProtoTLS}
	}
	d.t = &http2.Transport{
		AllowHTTP:          cfg.TLS == nil,
		DisableCompression: true,
		MaxHeaderListSize:  uint32(min(cfg.MaxHeaderBytes, 1<<32-1)),
		// The conn's own slot count (reserved + in flight, capped by the
		// peer's SETTINGS_MAX_CONCURRENT_STREAMS) decides who may start a
		// stream. Strict mode makes x/net wait rather than fail when its
		// own count lags ours by a stream it has not forgotten yet.
		StrictMaxConcurrentStreams: true,
	}
	return d
}

// Dial connects to addr (host:port), completes the TLS handshake when
// configured, sends the HTTP/2 preface and waits for the server's SETTINGS
// (with a PING round trip), so the conn's capacity is known when Dial returns.
// Its errors are *transport.Error: CodeConnectRefused, CodeConnectTimeout,
// CodeUpstreamTLS, CodeUpstreamUnreachable, CodeUpstreamProtocol (no h2 with
// ALPN, or a peer that does not speak HTTP/2), and the cause of ctx (or
// CodeClientCancelled) when ctx ends.
func (d *Dialer) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	raw, err := d.nd.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, dialErr(ctx, dctx, phaseTCP, err)
	}
	nc := raw
	if d.tls != nil {
		cfg := d.tls
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		tctx, tcancel := context.WithTimeout(ctx, d.cfg.TLSHandshakeTimeout)
		defer tcancel()
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(tctx); err != nil {
			raw.Close()
			return nil, dialErr(ctx, tctx, phaseTLS, err)
		}
		if tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
			raw.Close()
			return nil, transport.NewError(transport.CodeUpstreamProtocol, true, errNoH2)
		}
		nc = tc
	}

	// The preface exchange gets its own ConnectTimeout after the TLS
	// handshake. The preface is written synchronously; bound that write too.
	pctx, pcancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer pcancel()
	if dl, ok := pctx.Deadline(); ok {
		nc.SetWriteDeadline(dl)
	}
	cc, err := d.t.NewClientConn(nc)
	if err != nil {
		raw.Close()
		return nil, dialErr(ctx, pctx, phaseH2, err)
	}
	// A server sends its SETTINGS first (RFC 9113 §3.4), so the PING ACK
	// proves that x/net has read them, and that the conn works.
	if err := cc.Ping(pctx); err != nil {
		cc.Close()
		raw.Close()
		return nil, dialErr(ctx, pctx, phaseH2, err)
	}
	nc.SetWriteDeadline(time.Time{})
	c := &conn{d: d, cc: cc, raw: raw}
	c.capacity.Store(int64(cc.State().MaxConcurrentStreams))
	return c, nil
}

// conn is one upstream HTTP/2 conn.
//
// Slots: x/net's ClientConn can reserve a stream (ReserveNewRequest) but not
// give a reservation back, so conn counts slots itself: inUse is reserved plus
// in-flight streams, and Reserve succeeds while inUse is below capacity, the
// peer's SETTINGS_MAX_CONCURRENT_STREAMS (refreshed whenever a slot is freed),
// and x/net says the conn can take a new request. A slot is freed by Release,
// by a failed RoundTrip, or by closing the response body.
type conn struct {
	d   *Dialer
	cc  *http2.ClientConn
	raw net.Conn // the TCP conn, closed by Close in case TLS close blocks

	inUse    atomic.Int64
	capacity atomic.Int64
	used     atomic.Bool                     // a RoundTrip has started
	err      atomic.Pointer[transport.Error] // sticky: why the conn takes no new streams
}

var _ transport.Conn = (*conn)(nil)

// usable reports whether x/net can start a new stream on the conn; once it
// cannot, the reason is recorded and sticks.
func (c *conn) usable() bool {
	if c.err.Load() != nil {
		return false
	}
	ok := c.cc.CanTakeNewRequest()
	if ok && !c.used.Load() {
		// x/net lets a closed conn that never carried a request take one
		// (so the request reports the failure); the pool must not.
		st := c.cc.State()
		ok = !st.Closed && !st.Closing
	}
	if !ok {
		c.markBroken()
	}
	return ok
}

func (c *conn) markBroken() {
	st := c.cc.State()
	e := errConnBroken
	if !st.Closed {
		e = errConnGoAway
	}
	c.err.CompareAndSwap(nil, e)
}

// Reserve reserves one stream slot.
func (c *conn) Reserve() bool {
	for {
		n := c.inUse.Load()
		if n >= c.capacity.Load() {
			return false
		}
		if c.inUse.CompareAndSwap(n, n+1) {
			break
		}
	}
	if !c.usable() {
		c.inUse.Add(-1)
		return false
	}
	return true
}

// Release gives back a reserved slot that was not used.
func (c *conn) Release() { c.free() }

// free frees a slot and refreshes the capacity, which the peer may change
// with a later SETTINGS frame.
func (c *conn) free() {
	c.inUse.Add(-1)
	if mcs := c.cc.State().MaxConcurrentStreams; mcs > 0 {
		c.capacity.Store(int64(mcs))
	}
}

// Available reports how many more slots Reserve could take now.
func (c *conn) Available() int {
	if !c.usable() {
		return 0
	}
	return int(max(0, c.capacity.Load()-c.inUse.Load()))
}

// Idle reports whether no slot is reserved or in use.
func (c *conn) Idle() bool { return c.inUse.Load() <= 0 }

// Err returns nil while the conn can take new streams, and otherwise a
// *transport.Error: CodeUpstreamReset after GOAWAY or when the conn broke,
// CodeDraining after Shutdown or Close.
func (c *conn) Err() error {
	if c.usable() {
		return nil
	}
	return c.err.Load()
}

// Shutdown sends GOAWAY, stops new streams and waits for those in flight to
// finish, then closes the conn. When ctx ends first it returns ctx.Err().
func (c *conn) Shutdown(ctx context.Context) error {
	c.err.CompareAndSwap(nil, errConnShutdown)
	return c.cc.Shutdown(ctx)
}

// Close closes the conn at once, failing streams in flight.
func (c *conn) Close() error {
	c.err.CompareAndSwap(nil, errConnClosed)
	err := c.cc.Close()
	c.raw.Close()
	return err
}

// RoundTrip sends req on a reserved slot. See transport.Conn.
//
// The request goes out as given: :path is req.Path byte for byte, :authority
// is req.Authority. A request with no User-Agent gets none (RoundTrip adds an
// empty User-Agent entry to req.Header to stop x/net from adding its own).
//
// Trailers: x/net ends the body with END_STREAM unless the request may carry
// trailers, so RoundTrip sends trailers when req.Trailer is non-nil (its keys
// are declared in a trailer field), when req.Header has a Trailer field, or
// when the body's length is unknown; then it sends the fields of req.Trailer
// found after the body's io.EOF, in a HEADERS frame (or an empty DATA frame
// with END_STREAM when there are none).
//
// The errors: CodeResponseTimeout after ResponseHeaderTimeout;
// CodeUpstreamReset when the upstream resets the stream or the conn goes
// away (with cause ErrUnprocessed for REFUSED_STREAM and GOAWAY before the
// stream: retryable); CodeUpstreamProtocol for a malformed response or a
// connection error; a *transport.Error from req.Body as is, CodeBadRequest
// when req.Body is longer or shorter than req.ContentLength, and
// CodeClientCancelled when req.Body fails otherwise; and, when ctx
// ends, its cause if it is a *transport.Error, else CodeResponseTimeout for a
// deadline and CodeClientCancelled otherwise. Reads of the response body
// return the same codes. After an error, x/net may still be in one Read of
// req.Body.
func (c *conn) RoundTrip(ctx context.Context, req *transport.Request) (*transport.Response, error) {
	c.used.Store(true)
	rs := &roundTrip{c: c, req: req, ctx: ctx}
	rctx, cancel := context.WithCancelCause(ctx)
	rs.cancel = cancel
	if req.OnInformational != nil {
		rs.trace.Got1xxResponse = rs.got1xx
		rctx = httptrace.WithClientTrace(rctx, &rs.trace)
	}
	rs.timer = time.AfterFunc(c.d.cfg.ResponseHeaderTimeout, rs.onHeaderTimeout)

	rs.url = url.URL{Scheme: "https", Host: req.Authority, Opaque: req.Path}
	if c.d.tls == nil {
		rs.url.Scheme = "http"
	}
	if len(req.Path) > 1 && req.Path[0] == '/' && req.Path[1] == '/' {
		// url.URL.RequestURI reads an Opaque starting with "//" as an
		// authority; x/net strips scheme://authority back off.
		rs.url.Opaque = "//" + req.Authority + req.Path
	}
	h := req.Header
	if h == nil {
		h = noUserAgent
	} else if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = nil
	}
	hreq := &http.Request{
		Method:        req.Method,
		URL:           &rs.url,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        h,
		Host:          req.Authority,
		ContentLength: req.ContentLength,
		Body:          http.NoBody,
	}
	body := req.Body
	if body == nil {
		body = http.NoBody
	}
	hasBody := body != http.NoBody && req.ContentLength != 0
	if hasBody || req.Trailer != nil || len(req.Header["Trailer"]) > 0 {
		rs.reqBody.rs = rs
		hreq.Body = &rs.reqBody
		switch {
		case len(req.Header["Trailer"]) > 0:
			// Declared by the header field; filled at io.EOF.
			hreq.Trailer = make(http.Header)
		case req.Trailer != nil:
			// x/net declares the keys; a server fills the values
			// in place at io.EOF (or reqBody copies them).
			hreq.Trailer = req.Trailer
		case req.ContentLength < 0:
			hreq.Trailer = make(http.Header)
		}
		if req.ContentLength == 0 {
			hreq.ContentLength = -1
		}
	} else {
		hreq.ContentLength = 0
	}
	rs.hreq = hreq.WithContext(rctx)

	hres, err := c.cc.RoundTrip(rs.hreq)
	if !rs.timer.Stop() && err == nil {
		// The header timeout fired as the head arrived: the context is
		// cancelled, so the body is lost.
		hres.Body.Close()
		err = context.Canceled
	}
	if err != nil {
		rs.cancel(nil)
		c.free()
		return nil, rs.mapErr(err, false)
	}
	rs.hres = hres
	hdr := hres.Header
	delete(hdr, "Content-Length")
	rs.resp = transport.Response{
		Status:        hres.StatusCode,
		Header:        hdr,
		ContentLength: hres.ContentLength,
		Body:          &rs.respBody,
		Trailer:       hres.Trailer,
	}
	rs.respBody.rs = rs
	return &rs.resp, nil
}

var noUserAgent = http.Header{"User-Agent": nil}

// roundTrip is the state of one RoundTrip, allocated once: the URL, the
// request and response body wrappers and the response live in it.
type roundTrip struct {
	c      *conn
	req    *transport.Request
	ctx    context.Context // the caller's
	url    url.URL
	hreq   *http.Request
	hres   *http.Response
	cancel context.CancelCauseFunc
	timer  *time.Timer
	trace  httptrace.ClientTrace

	reqBody  reqBody
	respBody respBody
	resp     transport.Response
	closed   atomic.Bool
}

// errHeaderTimeout is the cause of a RoundTrip context that the
// response-header timer cancelled.
var errHeaderTimeout = transport.CodeResponseTimeout.Err()

func (rs *roundTrip) onHeaderTimeout() { rs.cancel(errHeaderTimeout) }

func (rs *roundTrip) got1xx(code int, h textproto.MIMEHeader) error {
	return rs.req.OnInformational(code, http.Header(h))
}

// mapErr translates an error of the exchange: of RoundTrip, or of a read of
// the response body when inBody.
func (rs *roundTrip) mapErr(err error, inBody bool) error {
	if rs.ctx.Err() != nil {
		return ctxErr(rs.ctx, transport.CodeResponseTimeout)
	}
	if context.Cause(rs.hreq.Context()) == errHeaderTimeout {
		return errHeaderTimeout
	}
	if e := streamErr(err); e != nil {
		return e
	}
	if inBody {
		return errUpstreamReset
	}
	// x/net's own errors are not typed. On a conn that is closing (GOAWAY
	// received, or Shutdown) but not closed, they are a stream above the
	// GOAWAY's last stream ID or a stream that could not start: the
	// request was not processed.
	st := rs.c.cc.State()
	if st.Closing && !st.Closed {
		return errUnprocessed
	}
	if st.Closed || st.Closing {
		return errUpstreamReset
	}
	return errUpstreamProtocol
}

// reqBody feeds req.Body to x/net without closing it, checks its length
// against req.ContentLength, and copies the request trailers at io.EOF. Its
// errors are *transport.Error values, which RoundTrip and the response body
// return as they are: a failing request body is the downstream's doing.
type reqBody struct {
	rs *roundTrip
	n  int64 // bytes read
}

func (b *reqBody) Read(p []byte) (int, error) {
	req := b.rs.req
	if req.Body == nil {
		return 0, io.EOF
	}
	n, err := req.Body.Read(p)
	b.n += int64(n)
	if cl := req.ContentLength; cl >= 0 {
		// Sending it would frame a different body than the declared
		// one. The excess is not returned, so that x/net reports our
		// error rather than its own.
		if b.n > cl {
			n -= int(b.n - cl)
			b.n = cl
			return n, errBodyLength
		}
		if err == io.EOF && b.n < cl {
			return n, errBodyLength
		}
	}
	switch {
	case err == nil:
	case err == io.EOF:
		if t := b.rs.hreq.Trailer; t != nil {
			// The same map when req.Trailer was given; reassigning
			// its keys while ranging over it is allowed.
			for k, vv := range req.Trailer {
				t[k] = vv
			}
		}
	default:
		if te, ok := errors.AsType[*transport.Error](err); ok {
			return n, te
		}
		return n, errClientGone
	}
	return n, err
}

// Close does not close req.Body: the caller owns it.
func (b *reqBody) Close() error { return nil }

// respBody is the response body: x/net's, with its errors translated, the
// trailers published at io.EOF and the slot freed by Close.
type respBody struct{ rs *roundTrip }

func (b *respBody) Read(p []byte) (int, error) {
	rs := b.rs
	n, err := rs.hres.Body.Read(p)
	if err == nil {
		return n, nil
	}
	if err == io.EOF {
		rs.resp.Trailer = rs.hres.Trailer // x/net fills it just before io.EOF
		return n, io.EOF
	}
	if rs.closed.Load() {
		return n, err
	}
	return n, rs.mapErr(err, true)
}

// Close ends the exchange: it cancels the stream if it is still open
// (RST_STREAM CANCEL), and frees the slot. It is safe to call more than once.
func (b *respBody) Close() error {
	rs := b.rs
	if !rs.closed.CompareAndSwap(false, true) {
		return nil
	}
	// Cancel first: after io.EOF that is harmless; before, it is the
	// RST_STREAM, and it keeps x/net's Close from waiting on a request
	// body that is still being written.
	rs.cancel(nil)
	rs.hres.Body.Close()
	rs.c.free()
	return nil
}
