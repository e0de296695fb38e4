package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/transport"
)

// DialerConfig configures a Dialer. The zero value of every field takes the
// default documented on it; the caller's struct is not modified.
type DialerConfig struct {
	// TLS is the client TLS configuration. The Dialer uses a clone with
	// NextProtos set to "h3", a session cache for resumption if none is
	// set, and, per dial, ServerName set to the address's host when empty.
	// Nil means a zero tls.Config (system roots).
	TLS *tls.Config

	// ConnectTimeout bounds the QUIC handshake. Default 5s.
	ConnectTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the response head once the
	// request, body included, is sent. Default 30s.
	ResponseHeaderTimeout time.Duration
	// IdleTimeout is the QUIC idle timeout: a connection on which nothing
	// arrives for this long is dead. The Dialer sends keep-alive PINGs at
	// half of it, so a pooled connection stays open while its peer lives.
	// Default 30s.
	IdleTimeout time.Duration

	// MaxStreams is the number of stream slots per connection. quic-go does
	// not expose the peer's MAX_STREAMS limit, so this is configured: set it
	// to the upstream's limit. If the upstream allows fewer, a RoundTrip
	// beyond its limit waits in quic-go for a stream to free up (bounded by
	// the RoundTrip's context). Default 100, quic-go's and most servers'
	// default.
	MaxStreams int

	// MaxResponseHeaderBytes caps the response field section. Default 1 MiB.
	MaxResponseHeaderBytes int
}

// Dialer dials HTTP/3 upstream connections. All its connections share one
// UDP socket and quic.Transport: QUIC demultiplexes by connection ID, so one
// socket (one file descriptor, one read loop) serves any number of
// upstreams. The socket is opened on the first dial and closed when the last
// connection ends, so an idle Dialer holds no resources.
type Dialer struct {
	cfg     DialerConfig
	tlsConf *tls.Config
	qconf   *quic.Config
	h3t     *http3.Transport

	mu     sync.Mutex // guards tr, udp, refs and closed
	tr     *quic.Transport
	udp    *net.UDPConn
	refs   int // connections and dials using tr
	closed bool
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer returns a Dialer.
func NewDialer(cfg DialerConfig) *Dialer {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 100
	}
	if cfg.MaxResponseHeaderBytes <= 0 {
		cfg.MaxResponseHeaderBytes = 1 << 20
	}
	var tlsConf *tls.Config
	if cfg.TLS != nil {
		tlsConf = cfg.TLS.Clone()
	} else {
		tlsConf = &tls.Config{}
	}
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	if tlsConf.ClientSessionCache == nil {
		tlsConf.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	}
	return &Dialer{
		cfg:     cfg,
		tlsConf: tlsConf,
		qconf: &quic.Config{
			HandshakeIdleTimeout: cfg.ConnectTimeout,
			MaxIdleTimeout:       cfg.IdleTimeout,
			KeepAlivePeriod:      cfg.IdleTimeout / 2,
			MaxIncomingStreams:   -1, // servers open no request streams (RFC 9114 §6.1)
			TokenStore:           quic.NewLRUTokenStore(64, 4),
		},
		h3t: &http3.Transport{
			DisableCompression:     true, // a proxy passes Accept-Encoding through
			MaxResponseHeaderBytes: cfg.MaxResponseHeaderBytes,
		},
	}
}

var (
	errDialerClosed   = transport.NewError(transport.CodeDraining, false, errors.New("h3: dialer closed"))
	errConnectTimeout = errors.New("h3: QUIC handshake timed out")
)

// Dial connects to addr (host:port) and completes the QUIC and TLS
// handshakes. Its errors are *transport.Error values: CodeConnectTimeout
// (no answer within ConnectTimeout: QUIC has no refusal a closed port
// reports, so that is what nothing listening looks like), CodeUpstreamTLS
// (a TLS alert or a certificate that does not verify), CodeConnectRefused
// (the server refused the connection), CodeUpstreamUnreachable (bad address,
// DNS failure, no route), and CodeDraining after Close.
func (d *Dialer) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, transport.NewError(transport.CodeUpstreamUnreachable, false, fmt.Errorf("h3: bad upstream address %q: %w", addr, err))
	}
	ctx, cancel := context.WithTimeoutCause(ctx, d.cfg.ConnectTimeout, errConnectTimeout)
	defer cancel()
	ua, err := resolveUDP(ctx, host, port)
	if err != nil {
		if context.Cause(ctx) == errConnectTimeout {
			return nil, transport.NewError(transport.CodeConnectTimeout, false, err)
		}
		return nil, dialErr(err)
	}
	tr, err := d.acquire()
	if err != nil {
		return nil, err
	}
	tlsConf := d.tlsConf
	if tlsConf.ServerName == "" {
		tlsConf = tlsConf.Clone()
		tlsConf.ServerName = host
	}
	qc, err := tr.Dial(ctx, ua, tlsConf, d.qconf)
	if err != nil {
		d.release()
		if context.Cause(ctx) == errConnectTimeout {
			return nil, transport.NewError(transport.CodeConnectTimeout, false, fmt.Errorf("h3: dial %s: %w", addr, errConnectTimeout))
		}
		return nil, dialErr(fmt.Errorf("h3: dial %s: %w", addr, err))
	}
	context.AfterFunc(qc.Context(), d.release)
	c := &conn{
		qc:       qc,
		cc:       d.h3t.NewClientConn(qc),
		capacity: int32(d.cfg.MaxStreams),
		timeout:  d.cfg.ResponseHeaderTimeout,
		drained:  make(chan struct{}),
	}
	return c, nil
}

// Close closes the Dialer's socket, aborting every connection it dialed.
// Dial fails with CodeDraining afterwards.
func (d *Dialer) Close() error {
	d.mu.Lock()
	d.closed = true
	tr, udp := d.tr, d.udp
	d.tr, d.udp = nil, nil
	d.mu.Unlock()
	if tr != nil {
		tr.Close()
		udp.Close()
	}
	return nil
}

// acquire returns the shared transport, opening its socket if needed.
func (d *Dialer) acquire() (*quic.Transport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errDialerClosed
	}
	if d.tr == nil {
		udp, err := net.ListenUDP("udp", nil)
		if err != nil {
			return nil, transport.NewError(transport.CodeUpstreamUnreachable, false, fmt.Errorf("h3: opening UDP socket: %w", err))
		}
		d.udp, d.tr = udp, &quic.Transport{Conn: udp}
	}
	d.refs++
	return d.tr, nil
}

// release drops a reference to the shared transport and closes it with the
// last one.
func (d *Dialer) release() {
	d.mu.Lock()
	d.refs--
	var tr *quic.Transport
	var udp *net.UDPConn
	if d.refs == 0 && d.tr != nil {
		tr, udp = d.tr, d.udp
		d.tr, d.udp = nil, nil
	}
	d.mu.Unlock()
	if tr != nil {
		tr.Close()
		udp.Close()
	}
}

func resolveUDP(ctx context.Context, host, port string) (*net.UDPAddr, error) {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		n, err := net.DefaultResolver.LookupPort(ctx, "udp", port)
		if err != nil {
			return nil, err
		}
		p = uint64(n)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
		ip = ips[0]
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip.Unmap(), uint16(p))), nil
}

// conn is one upstream HTTP/3 connection.
//
// Its slots: MaxStreams (configured, see DialerConfig.MaxStreams), taken by
// Reserve and freed by Release, by a failed RoundTrip, or by Close of a
// response body.
type conn struct {
	qc       *quic.Conn
	cc       *http3.ClientConn
	capacity int32
	timeout  time.Duration

	active    atomic.Int32  // slots reserved or in use
	flags     atomic.Uint32 // flagGoAway, flagShutdown, flagClosed
	drained   chan struct{} // closed once shutting down with no slot in use
	drainOnce sync.Once
}

const (
	flagGoAway = 1 << iota
	flagShutdown
	flagClosed
)

var _ transport.Conn = (*conn)(nil)

func (c *conn) Reserve() bool {
	for {
		if c.Err() != nil {
			return false
		}
		n := c.active.Load()
		if n >= c.capacity {
			return false
		}
		if c.active.CompareAndSwap(n, n+1) {
			break
		}
	}
	// A Shutdown that began meanwhile may already have seen no slot in use.
	if c.flags.Load()&(flagShutdown|flagClosed) != 0 {
		c.release()
		return false
	}
	return true
}

func (c *conn) Release() { c.release() }

func (c *conn) release() {
	if c.active.Add(-1) == 0 && c.flags.Load()&flagShutdown != 0 {
		c.drainOnce.Do(func() { close(c.drained) })
	}
}

func (c *conn) Available() int {
	if c.Err() != nil {
		return 0
	}
	return max(int(c.capacity-c.active.Load()), 0)
}

func (c *conn) Idle() bool { return c.active.Load() == 0 }

// Err returns nil while the conn takes new streams. GOAWAY becomes visible
// here when the connection closes (quic-go's client closes it once its
// streams are done) or when a RoundTrip found it could not open a stream;
// quic-go does not expose the GOAWAY frame itself.
func (c *conn) Err() error {
	f := c.flags.Load()
	switch {
	case f&flagClosed != 0:
		return errConnClosed
	case f&flagShutdown != 0:
		return errConnShutdown
	case f&flagGoAway != 0:
		return errConnGoingAway
	}
	if c.qc.Context().Err() != nil {
		return errConnClosed
	}
	return nil
}

func (c *conn) setFlag(f uint32) { c.flags.Or(f) }

// Shutdown stops new streams, waits until no slot is in use (or the
// connection closes, or ctx ends), then closes the connection with
// H3_NO_ERROR. It returns ctx's error if ctx ended first.
func (c *conn) Shutdown(ctx context.Context) error {
	c.setFlag(flagShutdown)
	if c.active.Load() == 0 {
		c.drainOnce.Do(func() { close(c.drained) })
	}
	var err error
	select {
	case <-c.drained:
	case <-c.qc.Context().Done():
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.close()
	return err
}

// Close closes the connection with H3_NO_ERROR at once; streams in flight
// fail.
func (c *conn) Close() error {
	c.close()
	return nil
}

func (c *conn) close() {
	c.setFlag(flagClosed)
	c.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
}

var (
	errNotSent        = transport.NewError(transport.CodeUpstreamReset, false, ErrRequestNotProcessed)
	errBadRequestHead = transport.NewError(transport.CodeBadRequest, false, errors.New("h3: request head cannot be sent"))
	errBodyDetached   = errors.New("h3: request body no longer read: the exchange ended")
	errBodyClosed     = transport.NewError(transport.CodeClientCancelled, false, errors.New("h3: read after response body Close"))
)

// roundTrip is the state of one exchange; its Read and Close are the
// response body's.
type roundTrip struct {
	c      *conn
	treq   *transport.Request
	ctx    context.Context // the caller's
	rctx   context.Context // ours, cancelled when the exchange ends
	cancel context.CancelCauseFunc
	trace  httptrace.ClientTrace
	base   http.Request
	url    url.URL
	hreq   *http.Request // what quic-go's client got: base with rctx
	hresp  *http.Response
	resp   transport.Response

	wroteHeaders atomic.Bool // the request head reached the stream
	wroteRequest atomic.Bool // quic-go finished sending the request (or failed to)
	detached     atomic.Bool // the request body must not be read any more
	closed       atomic.Bool

	mu        sync.Mutex // guards timer and gotHeader
	timer     *time.Timer
	gotHeader bool
}

// RoundTrip sends req on a reserved slot and returns the response once its
// head arrived. Cancelling ctx resets the stream with H3_REQUEST_CANCELLED,
// also while the body is read. Errors (all *transport.Error):
// CodeUpstreamReset (the upstream reset the stream or closed the
// connection; the cause is ErrRequestNotProcessed when it provably did not
// process the request: H3_REQUEST_REJECTED, or no stream could be opened
// after GOAWAY), CodeUpstreamProtocol (a malformed response),
// CodeResponseTimeout (no response head within ResponseHeaderTimeout after
// the request was sent), CodeBadRequest (a request quic-go cannot encode),
// and ctx's cause (CodeClientCancelled for a plain cancellation).
//
// quic-go reads req.Body on a goroutine of its own, possibly after
// RoundTrip returned (full duplex); it stops reading once the response body
// is closed. req.Trailer is sent after the body if it holds fields when the
// body ends. If req.Header has no User-Agent, RoundTrip adds a nil
// User-Agent entry while it runs, so that quic-go adds none.
func (c *conn) RoundTrip(ctx context.Context, req *transport.Request) (*transport.Response, error) {
	if ctx.Err() != nil {
		c.release()
		return nil, ctxErr(ctx)
	}
	if p := req.Path; p == "" || (p[0] != '/' && p != "*") {
		c.release()
		return nil, errBadRequestHead
	}
	rt := &roundTrip{c: c, treq: req, ctx: ctx}
	rt.rctx, rt.cancel = context.WithCancelCause(ctx)
	rt.trace.WroteHeaders = rt.onWroteHeaders
	rt.trace.WroteRequest = rt.onWroteRequest
	if req.OnInformational != nil {
		rt.trace.Got1xxResponse = rt.onInformational
	}

	setURL(&rt.url, req.Authority, req.Path)
	h := req.Header
	if h == nil {
		h = make(http.Header, 1)
	}
	_, hasUA := h["User-Agent"]
	if !hasUA {
		h["User-Agent"] = nil // quic-go then sends none
	}
	rt.base = http.Request{
		Method:     req.Method,
		URL:        &rt.url,
		Proto:      "HTTP/3.0",
		ProtoMajor: 3,
		Header:     h,
		Host:       req.Authority,
	}
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		rt.base.Body = (*upstreamRequestBody)(rt)
		rt.base.ContentLength = req.ContentLength // -1: unknown
		if len(req.Trailer) > 0 {
			rt.base.Trailer = req.Trailer
		}
	}
	rt.hreq = rt.base.WithContext(httptrace.WithClientTrace(rt.rctx, &rt.trace))

	hresp, err := c.cc.RoundTrip(rt.hreq)
	if !hasUA {
		delete(h, "User-Agent") // the head is encoded by now
	}
	rt.mu.Lock()
	rt.gotHeader = true
	if rt.timer != nil {
		rt.timer.Stop()
	}
	rt.mu.Unlock()
	if err != nil {
		err = rt.roundTripErr(err)
		rt.detached.Store(true)
		rt.cancel(err)
		c.release()
		return nil, err
	}
	rt.hresp = hresp
	delete(hresp.Header, "Content-Length")
	rt.resp = transport.Response{
		Status:        hresp.StatusCode,
		Header:        hresp.Header,
		ContentLength: hresp.ContentLength,
		Body:          rt,
	}
	return &rt.resp, nil
}

func (rt *roundTrip) roundTripErr(err error) error {
	if rt.rctx.Err() != nil {
		cause := context.Cause(rt.rctx)
		if rt.ctx.Err() != nil {
			return ctxErr(rt.ctx)
		}
		if e, ok := cause.(*transport.Error); ok {
			return e // our response-header timeout, or a head quic-go could not send
		}
	}
	if !rt.wroteHeaders.Load() && !rt.wroteRequest.Load() {
		// quic-go could not even open a stream: the connection received
		// GOAWAY (RFC 9114 §5.2 forbids new streams), or it closed. Either
		// way the request was not sent.
		if rt.c.qc.Context().Err() == nil {
			rt.c.setFlag(flagGoAway)
		}
		return errNotSent
	}
	return upstreamErr(err)
}

func (rt *roundTrip) onWroteHeaders() { rt.wroteHeaders.Store(true) }

// onWroteRequest runs when quic-go has sent the whole request, or failed to.
// The response-header timeout starts here, as in net/http.
func (rt *roundTrip) onWroteRequest(info httptrace.WroteRequestInfo) {
	rt.wroteRequest.Store(true)
	if info.Err != nil && !rt.wroteHeaders.Load() {
		// quic-go could not encode the head (an invalid field) and would
		// wait for a response that cannot come.
		rt.cancel(errBadRequestHead)
		return
	}
	rt.mu.Lock()
	if !rt.gotHeader && rt.timer == nil {
		rt.timer = time.AfterFunc(rt.c.timeout, rt.onResponseTimeout)
	}
	rt.mu.Unlock()
}

func (rt *roundTrip) onResponseTimeout() {
	rt.mu.Lock()
	got := rt.gotHeader
	rt.mu.Unlock()
	if !got {
		rt.cancel(errResponseTimeout)
	}
}

func (rt *roundTrip) onInformational(code int, h textproto.MIMEHeader) error {
	if code == http.StatusSwitchingProtocols {
		return nil
	}
	return rt.treq.OnInformational(code, http.Header(h))
}

// Read reads the response body.
func (rt *roundTrip) Read(p []byte) (int, error) {
	n, err := rt.hresp.Body.Read(p)
	switch err {
	case nil:
		return n, nil
	case io.EOF:
		rt.takeTrailers()
		return n, io.EOF
	}
	if rt.ctx.Err() != nil {
		return n, ctxErr(rt.ctx)
	}
	if rt.closed.Load() {
		return n, errBodyClosed
	}
	return n, upstreamErr(err)
}

// Close ends the exchange and frees its slot. Closing before io.EOF
// cancels the stream.
func (rt *roundTrip) Close() error {
	if !rt.closed.CompareAndSwap(false, true) {
		return nil
	}
	rt.detached.Store(true)
	rt.hresp.Body.Close() // H3_REQUEST_CANCELLED unless the body was read to its end
	rt.cancel(nil)
	rt.c.release()
	return nil
}

func (rt *roundTrip) takeTrailers() {
	t := rt.hresp.Trailer
	if len(t) == 0 || rt.resp.Trailer != nil {
		return
	}
	for k, vv := range t {
		if len(vv) == 0 {
			delete(t, k) // announced but not sent
		}
	}
	if len(t) > 0 {
		rt.resp.Trailer = t
	}
}

// upstreamRequestBody is the request body quic-go reads: the gateway's, cut
// off once the exchange has ended, with the trailers handed over at its end.
type upstreamRequestBody roundTrip

func (b *upstreamRequestBody) Read(p []byte) (int, error) {
	rt := (*roundTrip)(b)
	if rt.detached.Load() {
		return 0, errBodyDetached // quic-go then resets the request direction
	}
	n, err := rt.treq.Body.Read(p)
	if err == io.EOF && len(rt.treq.Trailer) > 0 {
		// quic-go sends hreq.Trailer after the body; this goroutine is the
		// one that reads it next.
		rt.hreq.Trailer = rt.treq.Trailer
	}
	return n, err
}

// Close does nothing: the body belongs to the caller.
func (b *upstreamRequestBody) Close() error { return nil }

// ctxErr translates the end of a caller's context.
func ctxErr(ctx context.Context) error {
	cause := context.Cause(ctx)
	if e, ok := cause.(*transport.Error); ok {
		return e
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return transport.CodeResponseTimeout.Err()
	}
	return transport.CodeClientCancelled.Err()
}

// setURL fills u so that quic-go sends path as :path byte for byte:
// url.URL.RequestURI returns Opaque unchanged, plus the query.
func setURL(u *url.URL, authority, path string) {
	*u = url.URL{Scheme: "https", Host: authority}
	p, q, hasQuery := strings.Cut(path, "?")
	u.RawQuery = q
	u.ForceQuery = hasQuery && q == ""
	if strings.HasPrefix(p, "//") {
		// RequestURI would prefix an opaque "//..." with the scheme; use
		// the escaped-path form, exact whenever p is validly escaped.
		if up, err := url.PathUnescape(p); err == nil {
			u.Path, u.RawPath = up, p
			return
		}
	}
	u.Opaque = p
}
