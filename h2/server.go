package h2

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	_ "unsafe" // for go:linkname

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// ServerConfig configures a Server. The zero value works: every zero field
// takes the default documented on it. NewServer copies it.
type ServerConfig struct {
	// MaxHeaderBytes bounds the request header list (RFC 9113 §6.5.2: the
	// sum of name, value and 32 bytes per field, pseudo-fields included).
	// It is advertised as SETTINGS_MAX_HEADER_LIST_SIZE and enforced: a
	// larger request gets a 431 response and never reaches the handler.
	// Values below 321 are raised to 321. Default 64 KiB.
	MaxHeaderBytes int

	// MaxHeaderCount bounds the number of request header fields (not
	// counting pseudo-fields). A request with more gets a 431 response and
	// never reaches the handler. Default 100.
	MaxHeaderCount int

	// MaxConcurrentStreams is advertised as SETTINGS_MAX_CONCURRENT_STREAMS.
	// Default 250.
	MaxConcurrentStreams int

	// IdleTimeout closes, with GOAWAY, a conn that had no stream open for
	// this long. Default 120s.
	IdleTimeout time.Duration

	// HeaderTimeout bounds the time from the accepted conn to the first
	// request's header block: a client that connects and sends no request
	// within it is disconnected. (x/net bounds the client preface to 10s and
	// the client's first SETTINGS to 2s on its own.) Default 10s.
	HeaderTimeout time.Duration

	// InitialStreamWindow and InitialConnWindow are the flow-control windows
	// the server grants a client for request bodies, per stream and per conn
	// (RFC 9113 §6.9): they bound the body bytes buffered per conn. Between
	// 65535 and 2^31-1 (clamped); defaults 1 MiB and 4 MiB. With EngineXNet
	// they are x/net's MaxUploadBufferPerStream and ...PerConnection.
	InitialStreamWindow int
	InitialConnWindow   int

	// WriteTimeout bounds how long a response write may make no progress (a
	// client that stops reading): a conn whose socket writes stall that long
	// fails with all its streams; with EngineNative, a stream that waits
	// that long for flow-control window is reset (CANCEL) and its writes
	// fail with CodeClientCancelled (x/net's engine waits for window without
	// a bound). Default 30s.
	WriteTimeout time.Duration

	// Logger receives handler panics and, with EngineXNet, x/net's
	// conn-level messages. Default slog.Default().
	Logger *slog.Logger

	// Engine selects the HTTP/2 implementation that serves the conns:
	// EngineNative (the default) or EngineXNet. Both have the same API and
	// semantics; see Engine.
	Engine Engine
}

// Engine names an HTTP/2 server implementation.
type Engine uint8

// The engines.
const (
	// EngineNative serves each conn with this package's own engine (native.go):
	// handlers write frames themselves, with no per-frame handoff between
	// goroutines, and Reset sends the RST_STREAM code mapped from its
	// transport.Code.
	EngineNative Engine = iota
	// EngineXNet serves each conn with x/net's http2.Server and adapts its
	// http.ResponseWriter to transport.ServerStream. RST_STREAM from
	// ServerStream.Reset always carries INTERNAL_ERROR. It is the engine of
	// earlier releases, kept as a fallback.
	EngineXNet
)

func (c ServerConfig) withDefaults() ServerConfig {
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.MaxHeaderBytes < minHeaderListSize {
		c.MaxHeaderBytes = minHeaderListSize
	}
	if c.MaxHeaderCount <= 0 {
		c.MaxHeaderCount = 100
	}
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = 250
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = 10 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.InitialStreamWindow <= 0 {
		c.InitialStreamWindow = 1 << 20
	}
	if c.InitialConnWindow <= 0 {
		c.InitialConnWindow = 4 << 20
	}
	c.InitialStreamWindow = min(max(c.InitialStreamWindow, 65535), 1<<31-1)
	c.InitialConnWindow = min(max(c.InitialConnWindow, 65535), 1<<31-1)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// x/net v0.62 supports extended CONNECT (RFC 8441) only when the process
// starts with GODEBUG=http2xconnect=1 (golang/go#71128: it was turned off by
// default because net/http's own handlers did not support it): its init
// reads the variable into disableExtendedConnectProtocol. The gateway does
// support it, so this package turns it on for every process it is part of,
// whatever the environment; it is written here, before any Server exists.
// TestServerExtendedConnect fails if a new x/net drops or renames the switch:
// the symbol would then silently be ours alone.
//
//go:linkname xnetDisableExtendedConnect golang.org/x/net/http2.disableExtendedConnectProtocol
var xnetDisableExtendedConnect bool

func init() { xnetDisableExtendedConnect = false }

// x/net advertises http.Server.MaxHeaderBytes plus 10 fields' worth of HPACK
// overhead (10 × 32 bytes) as SETTINGS_MAX_HEADER_LIST_SIZE; the Server
// subtracts it back so that the advertised value is MaxHeaderBytes.
const (
	headerListPadding = 10 * 32
	minHeaderListSize = headerListPadding + 1
)

// Server serves HTTP/2 conns and yields their streams to a transport.Handler.
// Each conn is served, by the engine ServerConfig.Engine names, in goroutines
// that the Server owns; Shutdown and Close return once those have.
//
// It supports WebSocket over HTTP/2 (RFC 8441): it advertises
// SETTINGS_ENABLE_CONNECT_PROTOCOL, and an extended CONNECT with :protocol
// websocket reaches the handler with transport.Request.Protocol
// "websocket" (the method stays CONNECT); a 2xx response accepts it, and
// the stream's bodies both ways are the tunnel. Any other CONNECT, with
// another :protocol or none, is answered 501 without the handler.
type Server struct {
	h      transport.Handler
	cfg    ServerConfig
	h2     *http2.Server
	base   *http.Server // carries the settings x/net reads; never serves
	logger *slog.Logger

	mu       sync.Mutex // guards lns, conns and stopped
	lns      map[net.Listener]struct{}
	conns    map[*connHandler]struct{}
	stopped  bool           // Shutdown or Close was called: no new conns
	connWG   sync.WaitGroup // serveConn goroutines; Add only under mu while !stopped
	stopping atomic.Bool    // mirrors stopped for the ConnState hook
	closed   atomic.Bool    // Close was called
	done     chan struct{}  // closed by the first Shutdown or Close

	handlers     atomic.Int64  // ServeHTTP calls in progress
	handlersIdle chan struct{} // buffered(1): handlers dropped to 0 while stopping

	native *nativeServer // the native engine; nil with EngineXNet
}

// NewServer returns a Server that yields streams to h.
func NewServer(h transport.Handler, cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		h:            h,
		cfg:          cfg,
		logger:       cfg.Logger,
		lns:          make(map[net.Listener]struct{}),
		conns:        make(map[*connHandler]struct{}),
		done:         make(chan struct{}),
		handlersIdle: make(chan struct{}, 1),
	}
	if cfg.Engine == EngineNative {
		s.native = newNativeServer(s)
		return s
	}
	s.base = &http.Server{
		MaxHeaderBytes: cfg.MaxHeaderBytes - headerListPadding,
		IdleTimeout:    cfg.IdleTimeout,
		HTTP2:          &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxConcurrentStreams},
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelInfo),
		ConnState:      s.onConnState,
	}
	s.h2 = &http2.Server{
		WriteByteTimeout:             cfg.WriteTimeout,
		MaxUploadBufferPerStream:     int32(cfg.InitialStreamWindow),
		MaxUploadBufferPerConnection: int32(cfg.InitialConnWindow),
	}
	// ConfigureServer makes base.Shutdown start a graceful shutdown (GOAWAY)
	// on every conn that ServeConn serves with BaseConfig: base, and copies
	// base.IdleTimeout. It fails only on TLS settings, which base lacks.
	if err := http2.ConfigureServer(s.base, s.h2); err != nil {
		panic("h2: " + err.Error())
	}
	return s
}

// Serve accepts conns from ln and serves each in its own goroutine. ln yields
// *tls.Conn already handshaken with ALPN "h2" (a TLSListener's "h2"
// sub-listener), or plain conns that speak HTTP/2 with prior knowledge (h2c).
// Serve returns nil after Shutdown or Close, and otherwise the accept error
// that stopped it. Serve may be called with several listeners.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			if retryableAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return nil
				}
				continue
			}
			return err
		}
		backoff = 0
		if !s.startConn(c) {
			return nil
		}
	}
}

// startConn serves c in a goroutine of its own, unless the Server has
// stopped; then it closes c and returns false.
func (s *Server) startConn(c net.Conn) bool {
	if s.native != nil {
		return s.native.startConn(c)
	}
	ch := s.newConnHandler(c)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		ch.closeNow()
		return false
	}
	s.conns[ch] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	go s.serveConn(ch)
	return true
}

// retryableAccept reports whether an accept error is transient: a timeout, or
// a resource the kernel may have again shortly. Serve then backs off, like
// net/http's Server.Serve.
func retryableAccept(err error) bool {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

func (s *Server) serveConn(ch *connHandler) {
	defer s.connWG.Done()
	// Bound the time to the first request; the first ServeHTTP clears it.
	ch.conn.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	s.h2.ServeConn(ch.conn, &http2.ServeConnOpts{BaseConfig: s.base, Handler: ch})
	ch.closeNow() // x/net closed it already; this also closes the TCP conn under TLS
	s.mu.Lock()
	delete(s.conns, ch)
	s.mu.Unlock()
}

// Shutdown stops accepting, sends a graceful GOAWAY (RFC 9113 §6.8) on every
// conn, and waits until every conn has finished its streams and closed and
// every handler has returned. When ctx ends first, Shutdown returns ctx.Err()
// and leaves the rest to Close.
//
// The native engine sends GOAWAY in two steps (RFC 9113 §6.8: first with
// the last stream ID 2^31-1 and a PING, then, once the PING is answered,
// with the last stream it took) and closes each conn as soon as its streams
// are done. x/net closes a conn that sent a graceful GOAWAY one second after
// its last stream ended (or at once if the client closes first), so with
// EngineXNet Shutdown takes about that long even with no stream in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop()
	if s.native != nil {
		s.native.shutdown()
	} else {
		// base serves nothing itself: Shutdown only runs the hook that
		// ConfigureServer registered, which starts a graceful shutdown on
		// each conn x/net has registered so far, and returns at once. A
		// conn registered later is caught by onConnState.
		s.base.Shutdown(context.Background())
	}

	connsDone := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(connsDone)
	}()
	select {
	case <-connsDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	for s.handlers.Load() > 0 {
		select {
		case <-s.handlersIdle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close stops accepting and closes every conn at once, failing the streams in
// flight (their contexts end with cause CodeDraining). It returns once the
// conns' goroutines have; handlers still running finish on their own.
func (s *Server) Close() error {
	if s.native != nil {
		return s.native.close()
	}
	s.closed.Store(true)
	s.stop()
	s.mu.Lock()
	for ch := range s.conns {
		ch.closeNow()
	}
	s.mu.Unlock()
	s.connWG.Wait()
	return nil
}

// stop stops accepting new conns.
func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.stopped = true
		s.stopping.Store(true)
		close(s.done)
	}
	for ln := range s.lns {
		ln.Close()
	}
}

// onConnState is the http.Server ConnState hook. x/net calls it first right
// after it registered the conn for graceful shutdown and read the client
// preface. A conn whose registration raced with Shutdown may have missed the
// shutdown hook; it gets it here.
func (s *Server) onConnState(c net.Conn, _ http.ConnState) {
	var ch *connHandler
	switch c := c.(type) {
	case *tlsConn:
		ch = c.ch
	case *plainConn:
		ch = c.ch
	default:
		return
	}
	if ch.seen.Load() || !ch.seen.CompareAndSwap(false, true) {
		return
	}
	if s.stopping.Load() {
		s.base.Shutdown(context.Background())
	}
}

// goneCause is the cause a stream's context ends with when its conn or the
// client goes away.
func (s *Server) goneCause() error {
	if s.closed.Load() {
		return transport.CodeDraining.Err()
	}
	return errClientGone
}

func (s *Server) handlerStart() { s.handlers.Add(1) }

func (s *Server) handlerEnd() {
	if s.handlers.Add(-1) == 0 && s.stopping.Load() {
		select {
		case s.handlersIdle <- struct{}{}:
		default:
		}
	}
}

// tlsConn and plainConn wrap the conns given to x/net so that the ConnState
// hook finds their connHandler. tlsConn keeps *tls.Conn's ConnectionState,
// which x/net uses.
type tlsConn struct {
	*tls.Conn
	ch *connHandler
}

type plainConn struct {
	net.Conn
	ch *connHandler
}

// connHandler is the http.Handler of one conn: it holds what every stream of
// the conn shares.
type connHandler struct {
	s       *Server
	conn    net.Conn // the wrapper given to x/net
	raw     net.Conn // the TCP conn
	remote  netip.AddrPort
	shard   uint32 // transport.Request.Shard of its streams
	tls     bool
	scheme  string
	started atomic.Bool // a request reached ServeHTTP: the header deadline is off
	seen    atomic.Bool // ConnState was called: x/net registered the conn
}

func (s *Server) newConnHandler(c net.Conn) *connHandler {
	ch := &connHandler{s: s, raw: c, scheme: "http", shard: transport.NextShard()}
	if tc, ok := c.(*tls.Conn); ok {
		ch.tls, ch.scheme = true, "https"
		ch.raw = tc.NetConn()
		ch.conn = &tlsConn{Conn: tc, ch: ch}
	} else {
		ch.conn = &plainConn{Conn: c, ch: ch}
	}
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		ch.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			ch.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	return ch
}

// closeNow closes the TCP conn without a TLS close_notify, which could block
// on a peer that does not read.
func (ch *connHandler) closeNow() { ch.raw.Close() }

// ServeHTTP adapts one x/net stream to a transport.ServerStream.
func (ch *connHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !ch.started.Load() && ch.started.CompareAndSwap(false, true) {
		ch.conn.SetReadDeadline(time.Time{})
	}
	n := 0
	for _, vv := range r.Header {
		n += len(vv)
	}
	if n > ch.s.cfg.MaxHeaderCount {
		w.Header()["Content-Length"] = zeroLength
		w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
		return
	}

	h := r.Header
	var protocol string
	if r.Method == http.MethodConnect {
		// Only the extended CONNECT of WebSocket (RFC 8441 §4): x/net
		// leaves :protocol in the header map.
		if p := h[":protocol"]; len(p) == 1 && strings.EqualFold(p[0], "websocket") {
			protocol = "websocket"
		}
		delete(h, ":protocol")
		if protocol == "" {
			w.Header()["Content-Length"] = zeroLength
			w.WriteHeader(http.StatusNotImplemented)
			return
		}
	}

	s := &serverStream{ch: ch, w: w, r: r}
	s.fl, _ = w.(flushErrorer)
	s.dl, _ = w.(deadliner)
	delete(h, "Content-Length")
	delete(h, "Host")
	s.req = transport.Request{
		Method:        r.Method,
		Scheme:        ch.scheme,
		Authority:     r.Host,
		Path:          r.RequestURI,
		Header:        h,
		ContentLength: r.ContentLength,
		Trailer:       r.Trailer,
		Protocol:      protocol,
		Proto:         transport.ProtoHTTP2,
		RemoteAddr:    ch.remote,
		TLS:           ch.tls,
		Shard:         ch.shard,
	}
	if protocol != "" {
		// The tunnel's bytes are not content (transport.Request.Protocol).
		s.req.ContentLength = 0
		s.body.s = s
		s.req.Body = &s.body
	} else if r.ContentLength == 0 && r.Trailer == nil {
		s.req.Body = http.NoBody
	} else {
		s.body.s = s
		s.req.Body = &s.body
	}
	// The stream's context ends with a *transport.Error cause: x/net
	// cancels r's context, with cause context.Canceled, when the client
	// resets the stream or the conn closes.
	rctx := r.Context()
	s.ctx, s.cancel = context.WithCancelCause(context.WithoutCancel(rctx))
	s.stopCtx = context.AfterFunc(rctx, s.onGone)

	ch.s.handlerStart()
	defer s.end()
	ch.s.h.ServeStream(s)
}

var zeroLength = []string{"0"}

type flushErrorer interface{ FlushError() error }

type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// Stream states, advanced by the handler's goroutine only.
const (
	stateNew uint8 = iota
	stateHeader
	stateFinished
)

// Errors of ServerStream misuse; preallocated.
var (
	errHeaderTwice  = transport.NewError(transport.CodeInternal, false, errors.New("h2: WriteHeader called twice"))
	errNoHeader     = transport.NewError(transport.CodeInternal, false, errors.New("h2: body or Finish before WriteHeader"))
	errAfterFinish  = transport.NewError(transport.CodeInternal, false, errors.New("h2: write after Finish"))
	errBadStatus    = transport.NewError(transport.CodeInternal, false, errors.New("h2: invalid status code"))
	errInfoAfterHdr = transport.NewError(transport.CodeInternal, false, errors.New("h2: WriteInformational after WriteHeader"))
	errShortBody    = transport.NewError(transport.CodeInternal, false, errors.New("h2: body shorter than its Content-Length"))
)

// serverStream is a transport.ServerStream over an x/net
// http.ResponseWriter. It is allocated once per request and holds the
// request, its body wrapper and the context, so they cost one allocation.
type serverStream struct {
	ch  *connHandler
	w   http.ResponseWriter
	fl  flushErrorer
	dl  deadliner
	r   *http.Request
	req transport.Request

	body serverBody

	ctx     context.Context
	cancel  context.CancelCauseFunc
	stopCtx func() bool

	state       uint8     // handler goroutine only
	clBuf       [1]string // backing array of the Content-Length value
	declared    int64     // the Content-Length sent, or -1; handler goroutine only
	written     int64     // body bytes written; handler goroutine only
	reset       atomic.Bool
	rcode       atomic.Uint32 // the Code given to Reset
	mu          sync.Mutex    // guards done, and the calls into w from Reset
	handlerDone bool          // the handler returned; w must not be touched from Reset
}

var _ transport.ServerStream = (*serverStream)(nil)

// onGone runs when x/net cancels the request's context: the client reset the
// stream or the conn closed.
func (s *serverStream) onGone() { s.cancel(s.ch.s.goneCause()) }

// end runs when the handler returns. It recovers a panic, and resets the
// stream (by panicking with http.ErrAbortHandler, which makes x/net send
// RST_STREAM without logging) when Reset was called, the handler panicked, or
// it returned without Finish: a proxied response must not look complete when
// it is not.
func (s *serverStream) end() {
	p := recover()
	s.stopCtx()
	s.cancel(nil)
	s.mu.Lock()
	s.handlerDone = true
	s.mu.Unlock()
	s.ch.s.handlerEnd()
	if p != nil {
		if p != http.ErrAbortHandler {
			s.ch.s.logger.Error("h2: panic serving stream",
				"remote", s.ch.remote, "method", s.req.Method, "path", s.req.Path,
				"panic", p, "stack", string(debug.Stack()))
		}
		panic(http.ErrAbortHandler)
	}
	if s.reset.Load() || s.state != stateFinished {
		panic(http.ErrAbortHandler)
	}
}

// Context returns the stream's context. It ends when the client resets the
// stream or the conn closes (cause CodeClientCancelled, or CodeDraining after
// Server.Close), when Reset is called (cause: its code), or when the handler
// returns.
func (s *serverStream) Context() context.Context { return s.ctx }

// Request returns the request.
func (s *serverStream) Request() *transport.Request { return &s.req }

// resetErr is what writes return after Reset.
func (s *serverStream) resetErr() error {
	c := transport.Code(s.rcode.Load())
	if c == transport.CodeNone {
		c = transport.CodeInternal
	}
	return c.Err()
}

// writeErr translates an error of the ResponseWriter.
func (s *serverStream) writeErr(err error) error {
	if s.reset.Load() {
		return s.resetErr()
	}
	if s.r.Context().Err() != nil {
		return errClientGone
	}
	return err // a local misuse, such as http.ErrBodyNotAllowed
}

// WriteInformational sends a 1xx response. 100 Continue is a no-op: x/net
// sends it on its own when the handler first reads the body of a request
// with Expect: 100-continue.
func (s *serverStream) WriteInformational(status int, h http.Header) error {
	if s.reset.Load() {
		return s.resetErr()
	}
	if s.state != stateNew {
		return errInfoAfterHdr
	}
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		return errBadStatus
	}
	if status == http.StatusContinue {
		return nil
	}
	hdr := s.w.Header()
	for k, vv := range h {
		hdr[k] = vv
	}
	// x/net writes a 1xx head from the handler's header map and waits
	// until the frame is written, so the map can be cleared after: the
	// final response must not inherit the 1xx fields. It stops waiting
	// when the stream closes (its context ends first); then the map is
	// left alone, as nothing more is sent.
	s.w.WriteHeader(status)
	if s.reset.Load() {
		return s.resetErr()
	}
	if s.r.Context().Err() != nil {
		return errClientGone
	}
	clear(hdr)
	return nil
}

// WriteHeader records the final response head; x/net sends it with the first
// body bytes, on Flush, or when the handler returns.
func (s *serverStream) WriteHeader(status int, h http.Header, contentLength int64) error {
	if s.reset.Load() {
		return s.resetErr()
	}
	if s.state != stateNew {
		return errHeaderTwice
	}
	if status < 200 || status > 999 {
		return errBadStatus
	}
	s.state = stateHeader
	hdr := s.w.Header()
	for k, vv := range h {
		hdr[k] = vv
	}
	delete(hdr, "Transfer-Encoding")
	s.declared = -1
	if contentLength >= 0 && bodyAllowed(status) {
		s.clBuf[0] = strconv.FormatInt(contentLength, 10)
		hdr["Content-Length"] = s.clBuf[:1:1]
		if s.req.Method != http.MethodHead {
			s.declared = contentLength
		}
	} else {
		delete(hdr, "Content-Length")
	}
	// A present but empty Content-Type stops x/net from sniffing one: a
	// proxy must not add it. Nothing is sent for it.
	if _, ok := hdr["Content-Type"]; !ok {
		hdr["Content-Type"] = nil
	}
	s.w.WriteHeader(status)
	return nil
}

// bodyAllowed reports whether status allows a body (RFC 9110 §6.4.1).
func bodyAllowed(status int) bool {
	return status != http.StatusNoContent && status != http.StatusNotModified && (status < 100 || status > 199)
}

// Write writes body bytes.
func (s *serverStream) Write(p []byte) (int, error) {
	if s.reset.Load() {
		return 0, s.resetErr()
	}
	switch s.state {
	case stateNew:
		return 0, errNoHeader
	case stateFinished:
		return 0, errAfterFinish
	}
	n, err := s.w.Write(p)
	s.written += int64(n)
	if err != nil {
		return n, s.writeErr(err)
	}
	return n, nil
}

// Flush sends the head, if not yet sent, and the buffered body bytes.
func (s *serverStream) Flush() error {
	if s.reset.Load() {
		return s.resetErr()
	}
	if s.state == stateNew {
		return errNoHeader
	}
	if s.fl == nil {
		return nil
	}
	if err := s.fl.FlushError(); err != nil {
		return s.writeErr(err)
	}
	return nil
}

// Finish ends the response, with trailer when it is not empty. The trailer
// fields need not have been declared: they go out through x/net's
// http.TrailerPrefix mechanism. The stream ends (END_STREAM) when the
// handler returns. When the body written is shorter than the Content-Length
// given to WriteHeader, Finish resets the stream instead and returns a
// CodeInternal error: a truncated response must not look complete.
func (s *serverStream) Finish(trailer http.Header) error {
	if s.reset.Load() {
		return s.resetErr()
	}
	switch s.state {
	case stateNew:
		return errNoHeader
	case stateFinished:
		return errAfterFinish
	}
	if s.declared >= 0 && s.written != s.declared {
		// The handler returning now would end the stream cleanly on a
		// body that disagrees with its Content-Length; reset instead.
		s.Reset(transport.CodeInternal)
		return errShortBody
	}
	s.state = stateFinished
	if len(trailer) > 0 {
		hdr := s.w.Header()
		for k, vv := range trailer {
			hdr[http.TrailerPrefix+k] = vv
		}
	}
	if s.r.Context().Err() != nil {
		return errClientGone
	}
	return nil
}

// Reset aborts the stream with RST_STREAM. It may be called from any
// goroutine, also while the handler is blocked writing or reading the body:
// the stream is reset at once, and the handler's later calls fail with
// code's error. x/net's server picks the RST_STREAM error code itself:
// INTERNAL_ERROR, whatever code is; code becomes the cause of the stream's
// context and the error of later calls.
func (s *serverStream) Reset(code transport.Code) {
	if !s.reset.CompareAndSwap(false, true) {
		return
	}
	s.rcode.Store(uint32(code))
	if code == transport.CodeNone {
		code = transport.CodeInternal
	}
	s.cancel(code.Err())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handlerDone || s.dl == nil {
		return
	}
	// A write deadline in the past makes x/net send RST_STREAM
	// (INTERNAL_ERROR) and fail the writes; a read deadline in the past
	// fails a blocked body read. Both work from any goroutine while the
	// handler runs, which s.mu guarantees.
	past := time.Unix(1, 0)
	s.dl.SetWriteDeadline(past)
	s.dl.SetReadDeadline(past)
}

// serverBody is the request body: x/net's, with its errors translated.
type serverBody struct{ s *serverStream }

// Read reads the request body. Its errors other than io.EOF are
// CodeClientCancelled (the client reset the stream, went away, or sent a
// body that disagrees with its Content-Length), or the Reset code.
func (b *serverBody) Read(p []byte) (int, error) {
	n, err := b.s.r.Body.Read(p)
	if err != nil && err != io.EOF {
		if b.s.reset.Load() {
			return n, b.s.resetErr()
		}
		return n, errClientGone
	}
	return n, err
}
