package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// DialerConfig configures a Dialer. The zero value works: every zero field
// takes the default documented on it.
type DialerConfig struct {
	// TLS, when set, makes the conns TLS with ALPN "http/1.1". It is
	// cloned; an empty ServerName defaults to the host of the dialed
	// address. Nil means plaintext TCP.
	TLS *tls.Config
	// ConnectTimeout bounds the TCP connect. Default 5s.
	ConnectTimeout time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake, from the connect on.
	// Default 10s.
	TLSHandshakeTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the response head once the
	// request (with its body) is written. Default 30s.
	ResponseHeaderTimeout time.Duration
}

// maxResponseHeaderBytes bounds a response head (and a trailer section).
const (
	maxResponseHeaderBytes = 1 << 20
	maxResponseFields      = 1000
	maxStatusLine          = 8 << 10
	max1xx                 = 16
)

// Dialer dials HTTP/1.1 upstream conns. It is safe for concurrent use.
type Dialer struct {
	cfg  DialerConfig
	tls  *tls.Config // with NextProtos {"http/1.1"}; nil for plaintext
	nd   net.Dialer
	lim  blockLimits // for response heads
	tlim blockLimits // for response trailers
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer returns a Dialer. Zero fields of cfg take their defaults; cfg
// and its TLS config are copied.
func NewDialer(cfg DialerConfig) *Dialer {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.TLSHandshakeTimeout <= 0 {
		cfg.TLSHandshakeTimeout = 10 * time.Second
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 30 * time.Second
	}
	d := &Dialer{
		cfg:  cfg,
		lim:  blockLimits{maxBytes: maxResponseHeaderBytes, maxFields: maxResponseFields, maxStartLine: maxStatusLine},
		tlim: blockLimits{maxBytes: maxResponseHeaderBytes, maxFields: maxResponseFields},
	}
	if cfg.TLS != nil {
		d.tls = cfg.TLS.Clone()
		d.tls.NextProtos = []string{"http/1.1"}
		if d.tls.ClientSessionCache == nil {
			d.tls.ClientSessionCache = tls.NewLRUClientSessionCache(0)
		}
	}
	return d
}

// Dial connects to addr (host:port) and completes the TLS handshake. Its
// errors are *transport.Error values: CodeConnectRefused, CodeConnectTimeout,
// CodeUpstreamTLS, CodeUpstreamUnreachable, or, when ctx is cancelled,
// context.Cause(ctx) if it is a *transport.Error, else CodeClientCancelled.
func (d *Dialer) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	nc, raw, err := d.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c := &conn{
		d:    d,
		addr: addr,
		nc:   nc,
		raw:  raw,
		br:   bufio.NewReaderSize(nc, bufSize),
		bw:   bufio.NewWriterSize(nc, 2*bufSize),
	}
	c.abortFunc = c.abort
	return c, nil
}

func (d *Dialer) dial(ctx context.Context, addr string) (nc, raw net.Conn, err error) {
	dctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	raw, err = d.nd.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, dialError(ctx, err)
	}
	if d.tls == nil {
		return raw, raw, nil
	}
	conf := d.tls
	if conf.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		conf = conf.Clone()
		conf.ServerName = host
	}
	tctx, tcancel := context.WithTimeout(ctx, d.cfg.TLSHandshakeTimeout)
	defer tcancel()
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(tctx); err != nil {
		raw.Close()
		return nil, nil, handshakeError(ctx, err)
	}
	return tc, raw, nil
}

// dialError classifies a TCP dial error by type.
func dialError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctxDialError(ctx, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return transport.NewError(transport.CodeUpstreamUnreachable, false, err)
	}
	if errno, ok := errors.AsType[syscall.Errno](err); ok {
		switch errno {
		case syscall.ECONNREFUSED:
			return transport.NewError(transport.CodeConnectRefused, true, err)
		case syscall.ETIMEDOUT:
			return transport.NewError(transport.CodeConnectTimeout, false, err)
		case syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EADDRNOTAVAIL, syscall.ENETDOWN, syscall.EHOSTDOWN:
			return transport.NewError(transport.CodeUpstreamUnreachable, false, err)
		case syscall.ECONNRESET:
			return transport.NewError(transport.CodeConnectRefused, true, err)
		}
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	}
	// Bad addresses (*net.AddrError) and the rest: the upstream cannot be
	// reached.
	return transport.NewError(transport.CodeUpstreamUnreachable, false, err)
}

// handshakeError classifies a TLS handshake error: a timeout is
// CodeConnectTimeout (the timeout covers both), anything else (alerts,
// certificate verification, a peer that does not speak TLS, a reset) is
// CodeUpstreamTLS.
func handshakeError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctxDialError(ctx, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	}
	return transport.NewError(transport.CodeUpstreamTLS, true, err)
}

// ctxDialError is a dial's error when the caller's ctx ended: its cause
// when that is a *transport.Error, CodeConnectTimeout for a deadline, else
// CodeClientCancelled.
func ctxDialError(ctx context.Context, err error) error {
	cause := context.Cause(ctx)
	if e, ok := errors.AsType[*transport.Error](cause); ok {
		return e
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	}
	return transport.NewError(transport.CodeClientCancelled, false, err)
}

// ctxError is a round trip's error when ctx ended: its cause when that is a
// *transport.Error, CodeResponseTimeout for a deadline, else
// CodeClientCancelled. It does not allocate.
func ctxError(ctx context.Context) error {
	cause := context.Cause(ctx)
	if e, ok := cause.(*transport.Error); ok {
		return e
	}
	if e, ok := errors.AsType[*transport.Error](cause); ok {
		return e
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return transport.CodeResponseTimeout.Err()
	}
	return transport.CodeClientCancelled.Err()
}

// The round trip errors, preallocated: the upstream caused them.
var (
	errUpstreamReset    error = &transport.Error{Code: transport.CodeUpstreamReset, Remote: true}
	errUpstreamProtocol error = &transport.Error{Code: transport.CodeUpstreamProtocol, Remote: true}
	errConnClosed       error = &transport.Error{Code: transport.CodeUpstreamReset, Err: errors.New("h1: conn closed")}
	errConnShutdown     error = &transport.Error{Code: transport.CodeDraining, Err: errors.New("h1: conn shut down")}
	errConnBroken       error = &transport.Error{Code: transport.CodeUpstreamReset, Err: errors.New("h1: conn broken")}
	errNoSlot           error = &transport.Error{Code: transport.CodeOverloaded, Err: errors.New("h1: conn busy")}
	errInvalidRequest   error = &transport.Error{Code: transport.CodeBadRequest, Err: errors.New("h1: request not valid on the wire")}
)

// conn is one upstream HTTP/1.1 connection: one stream slot.
type conn struct {
	d    *Dialer
	addr string

	mu       sync.Mutex // guards slot, err, shutdown, idle, headDone, and nc/raw replacement
	slot     uint8
	err      error // why the conn takes no more streams; nil while usable
	shutdown bool
	idle     chan struct{} // closed when the slot frees, for Shutdown
	headDone bool          // the final response head arrived (for the body writer)
	nc, raw  net.Conn      // the conn (TLS or TCP), and the TCP conn under it

	// The exchange state, owned by the slot's holder.
	br        *bufio.Reader
	bw        *bufio.Writer
	blk       block
	fs        []field
	ch        chunkedReader
	ctx       context.Context
	stop      func() bool // stops the ctx watch
	abortFunc func()      // c.abort, bound once
	used      bool
	reqClose  bool // the request says Connection: close
	idleSince time.Time

	// The request body writer, when the request has a body.
	wstate atomic.Int32
	wErr   error         // the body's read error, set before wstate becomes wFailed
	wEOF   atomic.Bool   // the writer has read the whole body
	wdone  chan struct{} // closed when the writer returns; nil without one

	// aborted is set when the conn was closed during an exchange (ctx
	// cancelled, Close): the response body fails even if its end arrived.
	aborted atomic.Bool
}

var _ transport.Conn = (*conn)(nil)

const (
	slotFree uint8 = iota
	slotReserved
	slotActive
)

const (
	wNone    int32 = iota // no body writer
	wRunning              // writing the body
	wDone                 // the body was written
	wFailed               // the body could not be read or written
)

// Reserve reserves the conn's one slot.
func (c *conn) Reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slot != slotFree || c.err != nil || c.shutdown {
		return false
	}
	c.slot = slotReserved
	return true
}

// Release gives back a reserved, unused slot.
func (c *conn) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slot == slotReserved {
		c.freeLocked()
	}
}

// Available reports 1 when Reserve would succeed, else 0.
func (c *conn) Available() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slot != slotFree || c.err != nil || c.shutdown {
		return 0
	}
	return 1
}

// Idle reports whether the slot is neither reserved nor in use.
func (c *conn) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slot == slotFree
}

// Err returns nil while the conn can take a stream, and why not otherwise.
func (c *conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if c.shutdown {
		return errConnShutdown
	}
	return nil
}

// Shutdown stops new streams, waits for the one in flight (until its
// response body is closed) or for ctx to end, and closes the conn. It
// returns ctx's error when ctx ended first.
func (c *conn) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.shutdown = true
	if c.slot == slotFree {
		c.closeLocked(errConnShutdown)
		c.mu.Unlock()
		return nil
	}
	if c.idle == nil {
		c.idle = make(chan struct{})
	}
	idle := c.idle
	c.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
}

// Close closes the conn at once; a stream in flight fails.
func (c *conn) Close() error {
	c.mu.Lock()
	c.closeLocked(errConnClosed)
	c.mu.Unlock()
	return nil
}

// closeLocked closes the conn for the reason err. An idle TLS conn is closed
// with close_notify; one with an exchange in flight is cut at the TCP level,
// so that its reads fail at once and the peer cannot take it for a clean end.
func (c *conn) closeLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.slot == slotActive {
		c.aborted.Store(true)
		c.raw.Close()
	}
	c.nc.Close()
}

// freeLocked frees the slot and closes the conn if it was shut down.
func (c *conn) freeLocked() {
	c.slot = slotFree
	if c.shutdown {
		c.closeLocked(errConnShutdown)
	}
	if c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
}

// begin takes the slot for a round trip: the reserved one, or a free one.
func (c *conn) begin() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.slot == slotActive:
		return errNoSlot
	case c.err != nil:
		if c.slot == slotReserved {
			c.freeLocked()
		}
		return c.err
	case c.slot == slotFree && c.shutdown:
		return errConnShutdown
	}
	c.slot = slotActive
	c.headDone = false
	return nil
}

// end ends the exchange and frees the slot; the conn stays open for the next
// exchange only when reuse is true and nothing went wrong.
func (c *conn) end(reuse bool) {
	if c.stop != nil {
		if !c.stop() {
			reuse = false // ctx ended: the watch closed the conn
		}
		c.stop = nil
	}
	if c.wdone != nil {
		// The response is complete; the request body must be too. The
		// writer may still be finishing its last write: give it a moment
		// if it has read the whole body; otherwise the conn is lost.
		select {
		case <-c.wdone:
		default:
			if !c.wEOF.Load() || !waitClosed(c.wdone, 100*time.Millisecond) {
				reuse = false
			}
		}
		if c.wstate.Load() != wDone {
			reuse = false
		}
		c.wdone = nil
	}
	c.ctx = nil
	if reuse {
		c.idleSince = time.Now()
	}
	c.mu.Lock()
	if !reuse {
		c.closeLocked(errConnBroken)
	}
	c.freeLocked()
	c.mu.Unlock()
}

func waitClosed(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// abort closes the conn when the round trip's ctx ends.
func (c *conn) abort() {
	c.mu.Lock()
	c.closeLocked(errConnBroken)
	c.mu.Unlock()
}

// fail ends a round trip that failed with err and returns its error.
func (c *conn) fail(err error) error {
	err = c.mapError(err)
	c.end(false)
	return err
}

// mapError turns an error of the round trip or the response body into its
// transport error, by type.
func (c *conn) mapError(err error) error {
	if c.ctx != nil && c.ctx.Err() != nil {
		return ctxError(c.ctx)
	}
	if c.wstate.Load() == wFailed && c.wErr != nil {
		// The request body failed (the client went away): that is the
		// cause, not the conn we closed because of it.
		return bodyError(c.wErr)
	}
	switch e := err.(type) {
	case *protoError:
		return errUpstreamProtocol
	case *transport.Error:
		return e
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return transport.CodeResponseTimeout.Err()
	}
	return errUpstreamReset
}

func bodyError(err error) error {
	if e, ok := err.(*transport.Error); ok {
		return e
	}
	if e, ok := errors.AsType[*transport.Error](err); ok {
		return e
	}
	return transport.CodeClientCancelled.Err()
}

// RoundTrip sends req on the reserved slot (or on the free slot, when none
// was reserved) and returns the response once its head arrived. Closing the
// response body frees the slot. Its errors are *transport.Error values:
// CodeUpstreamReset when the upstream closed or reset the conn,
// CodeUpstreamProtocol for a malformed response, CodeResponseTimeout after
// ResponseHeaderTimeout, CodeBadRequest for a request that cannot be written,
// the request body's error when reading it failed, and for a cancelled ctx
// its cause if it is a *transport.Error, else CodeClientCancelled. A conn
// found dead on reuse (the upstream closed it while idle) is redialed first,
// so that error can also be a dial's.
func (c *conn) RoundTrip(ctx context.Context, req *transport.Request) (*transport.Response, error) {
	if err := c.begin(); err != nil {
		return nil, err
	}
	c.wstate.Store(wNone)
	c.wErr = nil
	c.wEOF.Store(false)
	if ctx.Err() != nil {
		c.end(true)
		return nil, ctxError(ctx)
	}
	if err := c.refresh(ctx); err != nil {
		c.end(false)
		return nil, err
	}
	c.ctx = ctx
	if ctx.Done() != nil {
		c.stop = context.AfterFunc(ctx, c.abortFunc)
	}

	body := req.Body
	cl := req.ContentLength
	if body == nil || body == http.NoBody || req.Protocol != "" {
		// An upgrade request has no content: its tunnel bytes go
		// through the 101 response's body.
		body, cl = nil, 0
	} else if cl == 0 {
		body = nil
	} else if cl < 0 {
		var err error
		if body, cl, err = probeBody(ctx, body, req); err != nil {
			return nil, c.fail(err)
		}
	}
	if err := c.writeHead(req, cl); err != nil {
		return nil, c.fail(err)
	}
	if body != nil {
		c.wstate.Store(wRunning)
		c.wdone = make(chan struct{})
		go c.writeBody(body, req, cl, c.wdone)
	} else {
		if err := c.bw.Flush(); err != nil {
			return nil, c.fail(err)
		}
		c.nc.SetReadDeadline(time.Now().Add(c.d.cfg.ResponseHeaderTimeout))
	}
	resp, err := c.readResponse(req)
	if err != nil {
		return nil, c.fail(err)
	}
	return resp, nil
}

// probeWait is how long probeBody waits for the first byte or the end of a
// body of unknown length: net/http's Transport waits as long.
const probeWait = 200 * time.Millisecond

// probeBody finds out whether a request body of unknown length is in fact
// empty before the head goes out, as net/http's Transport does: a client's
// request (an HTTP/3 GET whose stream FIN came in a packet after its HEADERS,
// or an HTTP/2 one ended by an empty DATA frame) must not reach the upstream
// as a chunked request with a body. It reads the body once, waiting up to
// probeWait. A body that ends at once without trailers is dropped (nil, 0);
// otherwise the body is returned with what the probe read put back in front,
// to be sent chunked, and the read still under way after probeWait goes on.
// Only requests with a body of unknown length pay for the probe (a goroutine
// and a small allocation).
func probeBody(ctx context.Context, body io.Reader, req *transport.Request) (io.Reader, int64, error) {
	p := &probedBody{r: body, done: make(chan struct{})}
	go p.probe()
	t := time.NewTimer(probeWait)
	defer t.Stop()
	select {
	case <-p.done:
		if p.n == 0 && p.err == io.EOF && len(req.Trailer) == 0 {
			return nil, 0, nil
		}
	case <-t.C:
	case <-ctx.Done():
		return nil, 0, ctxError(ctx)
	}
	return p, -1, nil
}

// probedBody is a body whose first read probeBody made: Read returns that
// read's bytes and error first, then reads the body.
type probedBody struct {
	r    io.Reader
	done chan struct{} // closed when the probe's read returned
	buf  [512]byte
	n    int   // bytes of buf not yet returned
	off  int   // of buf
	err  error // the probe's error, returned once buf is drained
	read bool  // the probe's result was returned
}

// ready reports whether the probe's read has returned.
func (p *probedBody) ready() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *probedBody) probe() {
	defer close(p.done)
	p.n, p.err = p.r.Read(p.buf[:])
}

func (p *probedBody) Read(b []byte) (int, error) {
	if !p.read {
		<-p.done
		if p.n > 0 {
			n := copy(b, p.buf[p.off:p.off+p.n])
			p.off += n
			p.n -= n
			return n, nil
		}
		p.read = true
		if p.err != nil {
			return 0, p.err
		}
	}
	return p.r.Read(b)
}

// refresh checks, before reusing a conn idle for a while, that the upstream
// has not closed it, and redials it if it has: the request was not sent, so
// it is safe to send on a new conn.
func (c *conn) refresh(ctx context.Context) error {
	if !c.used {
		c.used = true
		return nil
	}
	if time.Since(c.idleSince) < time.Second || !connDead(c.raw, c.d.tls == nil) {
		return nil
	}
	nc, raw, err := c.d.dial(ctx, c.addr)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		nc.Close()
		return c.err
	}
	old := c.nc
	c.nc, c.raw = nc, raw
	c.mu.Unlock()
	old.Close()
	c.br.Reset(nc)
	c.bw.Reset(nc)
	return nil
}

// sendsContentLength0 reports whether an empty request of method m carries
// Content-Length: 0: for the methods whose requests anticipate content (RFC
// 9110 §8.6).
func sendsContentLength0(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions, http.MethodTrace, http.MethodConnect:
		return false
	}
	return true
}

// writeHead buffers the request head. The target is req.Path as is, Host is
// req.Authority, the fields are req.Header's but Host and the framing
// fields, which come from cl: -1 is chunked. Nothing else is added, except
// for an upgrade request (req.Protocol "websocket"): its Connection and
// Upgrade fields are the conn's own.
func (c *conn) writeHead(req *transport.Request, cl int64) error {
	if !isToken(req.Method) || !validTarget(req.Path) || !validTarget(req.Authority) && req.Authority != "" {
		return errInvalidRequest
	}
	upgrade := req.Protocol != ""
	if upgrade && req.Protocol != "websocket" {
		return errInvalidRequest
	}
	bw := c.bw
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.Path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.Authority)
	bw.WriteString("\r\n")
	c.reqClose = false
	for k, vv := range req.Header {
		switch fieldKind(k) {
		case kindHost, kindContentLength, kindTransferEncoding:
			continue
		case kindConnection:
			if upgrade {
				continue
			}
			for _, v := range vv {
				c.reqClose = c.reqClose || hasTokenString(v, "close")
			}
		case kindUpgrade:
			if upgrade {
				continue
			}
		}
		if !isToken(k) {
			return errInvalidRequest
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return errInvalidRequest
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if upgrade {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: websocket\r\n")
	}
	switch {
	case cl < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case cl > 0 || sendsContentLength0(req.Method):
		var b [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(b[:0], cl, 10))
		bw.WriteString("\r\n")
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// validTarget reports whether s can go on the request line or in Host: no
// whitespace or control characters.
func validTarget(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeBody copies the request body to the conn while the caller waits for
// the response, so an upstream that answers before reading the whole body is
// heard. It sends each piece as it comes (a streamed body is not held back).
func (c *conn) writeBody(body io.Reader, req *transport.Request, cl int64, done chan<- struct{}) {
	defer close(done)
	bp := copyBufPool.Get().(*[]byte)
	buf := *bp
	var werr, rerr error // conn write error, body read error
	var sent int64
	var hex [20]byte
	if pb, ok := body.(*probedBody); ok && !pb.ready() {
		// The body's first bytes are late: the head goes now, as the
		// upstream may answer (or a client wait for it) before they come.
		werr = c.bw.Flush()
	}
	for werr == nil {
		p := buf
		if cl >= 0 && int64(len(p)) > cl-sent {
			p = p[:cl-sent]
		}
		var n int
		eof := len(p) == 0
		if !eof {
			n, rerr = body.Read(p)
			if rerr == io.EOF {
				rerr, eof = nil, true
			}
		}
		if n > 0 {
			if cl < 0 {
				c.bw.Write(strconv.AppendInt(hex[:0], int64(n), 16))
				c.bw.WriteString("\r\n")
				c.bw.Write(p[:n])
				c.bw.WriteString("\r\n")
			} else {
				c.bw.Write(p[:n])
			}
			sent += int64(n)
		}
		if cl >= 0 && sent == cl {
			eof = true
		}
		if eof {
			if cl >= 0 && sent < cl {
				rerr = io.ErrUnexpectedEOF
			} else {
				c.wEOF.Store(true)
			}
			break
		}
		if rerr != nil {
			break
		}
		// Send each piece as it comes; the last one goes with the end.
		if werr = c.bw.Flush(); werr != nil {
			break
		}
	}
	copyBufPool.Put(bp)
	if werr == nil && rerr == nil && cl < 0 {
		c.bw.WriteString("0\r\n")
		for k, vv := range req.Trailer {
			if fieldKind(k) != kindOther || !isToken(k) {
				continue
			}
			for _, v := range vv {
				if validFieldValue(v) {
					c.bw.WriteString(k)
					c.bw.WriteString(": ")
					c.bw.WriteString(v)
					c.bw.WriteString("\r\n")
				}
			}
		}
		c.bw.WriteString("\r\n")
	}
	if werr == nil && rerr == nil {
		werr = c.bw.Flush()
	}
	c.mu.Lock()
	if !c.headDone {
		// The request is written (or cannot be): the response head is due.
		c.nc.SetReadDeadline(time.Now().Add(c.d.cfg.ResponseHeaderTimeout))
	}
	nc := c.nc
	c.mu.Unlock()
	switch {
	case rerr != nil:
		// The upstream must not take a truncated body for a whole one:
		// abort the conn.
		c.wErr = rerr
		c.wstate.Store(wFailed)
		nc.Close()
	case werr != nil:
		// The upstream may have answered and closed: the reader finds out.
		c.wstate.Store(wFailed)
	default:
		c.wstate.Store(wDone)
	}
}

// readResponse reads the response head, passing 1xx responses to
// req.OnInformational.
func (c *conn) readResponse(req *transport.Request) (*transport.Response, error) {
	for n1xx := 0; ; n1xx++ {
		if err := c.blk.read(c.br, c.d.lim); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err == errRequestLineTooLong || err == errHeaderTooLarge || err == errTooManyFields {
				err = errUpstreamProtocol
			}
			return nil, err
		}
		rl := c.blk.lines[0]
		status, http10, err := parseStatusLine(c.blk.buf[rl.start:rl.end])
		if err != nil {
			return nil, err
		}
		c.fs, err = parseFields(&c.blk, 1, c.fs[:0])
		if err != nil {
			return nil, err
		}
		str := string(c.blk.buf)
		if status < 200 {
			if status == http.StatusSwitchingProtocols {
				if req.Protocol == "" {
					return nil, errUpgrade
				}
				return c.newTunnel(str)
			}
			if n1xx >= max1xx {
				return nil, errTooMany1xx
			}
			if req.OnInformational != nil {
				h := buildHeader(str, c.fs, kindContentLength|kindTransferEncoding|kindConnection)
				if err := req.OnInformational(status, h); err != nil {
					return nil, bodyError(err)
				}
			}
			continue
		}
		return c.newResponse(req, str, status, http10)
	}
}

// parseStatusLine parses HTTP-version SP 3DIGIT [SP reason-phrase].
func parseStatusLine(l []byte) (status int, http10 bool, err error) {
	if len(l) < 12 || string(l[:7]) != "HTTP/1." || !isDigit(l[7]) || l[8] != ' ' ||
		!isDigit(l[9]) || !isDigit(l[10]) || !isDigit(l[11]) || l[9] == '0' {
		return 0, false, errStatusLine
	}
	if len(l) > 12 {
		if l[12] != ' ' {
			return 0, false, errStatusLine
		}
		for _, ch := range l[13:] {
			if !isValueChar(ch) {
				return 0, false, errStatusLine
			}
		}
	}
	status = int(l[9]-'0')*100 + int(l[10]-'0')*10 + int(l[11]-'0')
	return status, l[7] == '0', nil
}

// newResponse builds the response from the head in c.fs and str, with its
// framing per RFC 9112 §6.3.
func (c *conn) newResponse(req *transport.Request, str string, status int, http10 bool) (*transport.Response, error) {
	buf := c.blk.buf
	cl := int64(-1)
	te, chunked, connClose, connFields := false, false, false, false
	var err error
	for i := range c.fs {
		f := &c.fs[i]
		v := buf[f.value.start:f.value.end]
		switch f.kind {
		case kindContentLength:
			if cl, err = parseContentLength(v, cl); err != nil {
				return nil, errUpstreamProtocol
			}
		case kindTransferEncoding:
			te = true
			if chunked, err = parseTransferEncoding(v, chunked); err != nil {
				return nil, errUpstreamProtocol
			}
		case kindConnection:
			if hasToken(v, "close") {
				connClose = true
			}
			connFields = true
		}
	}
	// Both, or a coding other than chunked, would leave the length in
	// doubt: refuse the response rather than guess (RFC 9112 §6.3).
	if te && (cl >= 0 || !chunked || http10) {
		return nil, errUpstreamProtocol
	}

	// The conn of an upgrade request is not reused even when the upgrade
	// was declined: upgrades are rare, and a fresh conn leaves no doubt
	// about what the old one carries next.
	b := &respBody{c: c, reuse: !http10 && !connClose && !c.reqClose && req.Protocol == ""}
	resp := &b.resp
	resp.Status = status
	resp.Body = b
	resp.Header = buildHeader(str, c.fs, kindContentLength|kindTransferEncoding|kindConnection)
	if connFields {
		// Connection and the fields it names describe this conn only
		// (RFC 9110 §7.6.1): the caller does not see Connection, so drop
		// them here.
		for i := range c.fs {
			if f := &c.fs[i]; f.kind == kindConnection {
				dropConnectionFields(resp.Header, str[f.value.start:f.value.end])
			}
		}
	}
	switch {
	case req.Method == http.MethodHead || status == http.StatusNotModified:
		// No body; the length is that of the representation.
		b.mode = modeNone
		resp.ContentLength = cl
		b.eof = true
	case status == http.StatusNoContent:
		b.mode = modeNone
		resp.ContentLength = 0
		b.eof = true
	case te:
		b.mode = modeChunked
		resp.ContentLength = -1
		c.ch.init(c.br, &c.blk, c.d.tlim)
	case cl >= 0:
		b.mode = modeLength
		resp.ContentLength = cl
		b.remaining = cl
		b.eof = cl == 0
	default:
		b.mode = modeClose
		resp.ContentLength = -1
		b.reuse = false
	}
	c.mu.Lock()
	c.headDone = true
	c.nc.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	return resp, nil
}

// dropConnectionFields deletes from h the fields that a Connection value
// names.
func dropConnectionFields(h http.Header, v string) {
	for v != "" {
		var name string
		i := 0
		for i < len(v) && v[i] != ',' {
			i++
		}
		name, v = v[:i], v[min(i+1, len(v)):]
		for name != "" && (name[0] == ' ' || name[0] == '\t') {
			name = name[1:]
		}
		for name != "" && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t') {
			name = name[:len(name)-1]
		}
		switch {
		case name == "" || equalFoldString(name, "close"):
		case equalFoldString(name, "keep-alive"):
			delete(h, "Keep-Alive")
		default:
			delete(h, http.CanonicalHeaderKey(name))
		}
	}
}

// respBody is a response body and, embedded, its response: one allocation.
// Its Close frees the conn's slot.
type respBody struct {
	resp      transport.Response
	c         *conn
	mode      uint8
	remaining int64
	reuse     bool // the conn may serve another exchange after this one
	eof       bool
	closed    atomic.Bool
	err       error
}

// Read reads the body. Its errors: io.EOF at the end (the trailers are then
// in the Response), CodeUpstreamReset when the conn fails before the end,
// CodeUpstreamProtocol for a malformed chunked body, and the ctx's error when
// the round trip's ctx ended.
func (b *respBody) Read(p []byte) (int, error) {
	switch {
	case b.closed.Load():
		return 0, errBodyClosed
	case b.err != nil:
		return 0, b.err
	case b.eof:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	c := b.c
	var n int
	var err error
	switch b.mode {
	case modeLength:
		if int64(len(p)) > b.remaining {
			p = p[:b.remaining]
		}
		n, err = c.br.Read(p)
		b.remaining -= int64(n)
		if b.remaining == 0 {
			err = io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	case modeChunked:
		n, err = c.ch.Read(p)
		if err == io.EOF && c.ch.trailer != nil {
			b.resp.Trailer = c.ch.trailer
		}
	default: // modeClose: the body ends when the conn does
		n, err = c.br.Read(p)
	}
	if err == io.EOF && c.aborted.Load() {
		err = errConnClosed
	}
	switch err {
	case nil:
		return n, nil
	case io.EOF:
		b.eof = true
		return n, io.EOF
	}
	b.err = c.mapError(err)
	return n, b.err
}

// Close frees the slot. A body not read to its end closes the conn, unless
// its rest is already buffered.
func (b *respBody) Close() error {
	if b.closed.Swap(true) {
		return nil
	}
	c := b.c
	if !b.eof && b.err == nil && b.reuse && b.mode == modeLength && b.remaining <= int64(c.br.Buffered()) {
		c.br.Discard(int(b.remaining))
		b.eof = true
	}
	c.end(b.eof && b.reuse && b.err == nil)
	return nil
}

// newTunnel builds the response to an accepted upgrade from the 101 head in
// c.fs and str. The upstream must have switched to the protocol asked for:
// Upgrade: websocket and Connection: upgrade (RFC 6455 §4.1), else the
// response is CodeUpstreamProtocol.
func (c *conn) newTunnel(str string) (*transport.Response, error) {
	buf := c.blk.buf
	upgrade, connUpgrade := false, false
	for i := range c.fs {
		f := &c.fs[i]
		v := buf[f.value.start:f.value.end]
		switch f.kind {
		case kindUpgrade:
			upgrade = upgrade || hasToken(v, "websocket")
		case kindConnection:
			connUpgrade = connUpgrade || hasToken(v, "upgrade")
		}
	}
	if !upgrade || !connUpgrade {
		return nil, errUpstreamProtocol
	}
	t := &tunnelBody{c: c, ctx: c.ctx}
	resp := &t.resp
	resp.Status = http.StatusSwitchingProtocols
	resp.ContentLength = -1
	resp.Body = t
	resp.Header = buildHeader(str, c.fs, kindContentLength|kindTransferEncoding|kindConnection|kindUpgrade)
	for i := range c.fs {
		if f := &c.fs[i]; f.kind == kindConnection {
			dropConnectionFields(resp.Header, str[f.value.start:f.value.end])
		}
	}
	c.mu.Lock()
	c.headDone = true
	t.nc, t.raw = c.nc, c.raw
	c.nc.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	return resp, nil
}

// tunnelBody is the body of a 101 response: the upstream's side of the
// tunnel, and, embedded, its response. Read and Close are for one
// goroutine, Write and CloseWrite for another (the two directions of the
// tunnel); Close may be called while a Write blocks, and fails it. Close
// closes the conn: it is never reused after an upgrade.
type tunnelBody struct {
	resp    transport.Response
	c       *conn
	ctx     context.Context // the round trip's: its end closes the conn
	nc, raw net.Conn        // the conn and the TCP conn under it
	closed  atomic.Bool
	eof     bool  // the upstream closed its side; Read's goroutine only
	err     error // sticky read error; Read's goroutine only

	wmu     sync.Mutex // guards wclosed; held during Write and CloseWrite
	wclosed bool
}

// errTunnelWriteClosed is Write's error after CloseWrite.
var errTunnelWriteClosed = errors.New("h1: write after CloseWrite")

// Read reads the upstream's tunnel bytes, those that came with the 101 head
// first. Its errors: io.EOF once the upstream closed its side, the round
// trip ctx's cause (or CodeClientCancelled) when it ended, and
// CodeUpstreamReset when the conn failed.
func (t *tunnelBody) Read(p []byte) (int, error) {
	switch {
	case t.closed.Load():
		return 0, errBodyClosed
	case t.err != nil:
		return 0, t.err
	case t.eof:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	n, err := t.c.br.Read(p)
	if err == io.EOF && !t.c.aborted.Load() {
		t.eof = true
		return n, io.EOF
	}
	if err != nil {
		t.err = t.mapError()
		return n, t.err
	}
	return n, nil
}

// mapError is the error of a failed read or write of the tunnel.
func (t *tunnelBody) mapError() error {
	if t.ctx != nil && t.ctx.Err() != nil {
		return ctxError(t.ctx)
	}
	return errUpstreamReset
}

// Write writes p to the upstream at once. Its errors are those of Read,
// and an error after CloseWrite.
func (t *tunnelBody) Write(p []byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.wclosed || t.closed.Load() {
		return 0, errTunnelWriteClosed
	}
	n, err := t.nc.Write(p)
	if err != nil {
		return n, t.mapError()
	}
	return n, nil
}

// CloseWrite ends the tunnel towards the upstream (a TLS close_notify, then
// a TCP half-close); the upstream's side stays readable.
func (t *tunnelBody) CloseWrite() error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.wclosed {
		return nil
	}
	t.wclosed = true
	var err error
	if tc, ok := t.nc.(*tls.Conn); ok {
		err = tc.CloseWrite()
	}
	if tc, ok := t.raw.(interface{ CloseWrite() error }); ok {
		if e := tc.CloseWrite(); err == nil {
			err = e
		}
	}
	if err != nil {
		return t.mapError()
	}
	return nil
}

// Close ends the tunnel both ways: it closes the conn and frees its slot.
func (t *tunnelBody) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.c.end(false)
	return nil
}
