package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// ServerConfig configures a Server. The zero value works: every zero field
// takes the default documented on it.
type ServerConfig struct {
	// MaxHeaderBytes bounds the request line and header fields together,
	// and separately a chunked body's trailer section; beyond it the
	// server answers 431. Default 64 KiB.
	MaxHeaderBytes int
	// MaxHeaderCount bounds the number of header (and trailer) fields;
	// beyond it the server answers 431. Default 100.
	MaxHeaderCount int
	// MaxRequestLine bounds the request line; beyond it the server answers
	// 414. Default 8 KiB.
	MaxRequestLine int
	// HeaderTimeout is the time allowed to receive a whole header section,
	// from the first byte of the request (from the connection's start for
	// the first request). A client that is slower is disconnected, after a
	// 408 when it had sent something. Default 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that waits this long for
	// its next request. Default 120s.
	IdleTimeout time.Duration
	// WriteTimeout fails a connection whose response writes make no
	// progress for this long (a client that stops reading); the handler
	// sees its writes fail as CodeClientCancelled. Default 30s.
	WriteTimeout time.Duration
	// Logger receives panics and connection errors; nil discards them.
	Logger *slog.Logger
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.MaxHeaderCount <= 0 {
		c.MaxHeaderCount = 100
	}
	if c.MaxRequestLine <= 0 {
		c.MaxRequestLine = 8 << 10
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Server serves HTTP/1.1 on the conns of listeners, yielding one
// transport.ServerStream per request to its handler. Each conn has one
// goroutine that serves its requests one after the other (keep-alive, with
// pipelined requests read in order).
//
// The zero value is not usable; use NewServer.
type Server struct {
	h     transport.Handler
	drain transport.DrainState // h's, or nil
	cfg   ServerConfig
	log   *slog.Logger
	lim   blockLimits // for request headers
	tlim  blockLimits // for trailers

	shuttingDown atomic.Bool

	mu      sync.Mutex // guards lns, conns, closed and allGone
	lns     map[net.Listener]struct{}
	conns   map[*serverConn]struct{}
	closed  bool
	allGone chan struct{} // closed when conns empties after Shutdown

	date dateCache
}

// NewServer returns a server yielding streams to h. Zero fields of cfg take
// their defaults; cfg is copied.
func NewServer(h transport.Handler, cfg ServerConfig) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		h:     h,
		cfg:   cfg,
		log:   cfg.Logger,
		lns:   make(map[net.Listener]struct{}),
		conns: make(map[*serverConn]struct{}),
	}
	s.drain, _ = h.(transport.DrainState)
	s.lim = blockLimits{maxBytes: cfg.MaxHeaderBytes, maxFields: cfg.MaxHeaderCount,
		maxStartLine: cfg.MaxRequestLine, skipEmpty: true}
	s.tlim = blockLimits{maxBytes: cfg.MaxHeaderBytes, maxFields: cfg.MaxHeaderCount}
	return s
}

// Serve accepts conns on ln and serves them until Shutdown or Close, then
// returns nil; it returns the accept error that stopped it otherwise. A
// *tls.Conn must have completed its handshake: its requests have Scheme
// "https" and TLS true; any other conn serves "http". Serve closes ln when
// it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed || s.shuttingDown.Load() {
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
		ln.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.shuttingDown.Load() {
				return nil
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("h1: accept error; retrying", "err", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := s.newConn(nc)
		if !s.track(c) {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

// Shutdown stops the server gracefully: it closes the listeners and the
// conns waiting for a request; responses started from now on carry
// Connection: close and their conns close after them. It returns nil once
// every conn has closed, or ctx's error when ctx ends first, leaving the rest
// to Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shuttingDown.Store(true)
	s.mu.Lock()
	s.closeListenersLocked()
	if len(s.conns) == 0 {
		s.mu.Unlock()
		return nil
	}
	if s.allGone == nil {
		s.allGone = make(chan struct{})
	}
	gone := s.allGone
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
	select {
	case <-gone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the listeners and every conn at once; the handlers still
// running see their streams fail and their contexts cancelled with
// CodeDraining. It does not wait for them.
func (s *Server) Close() error {
	s.shuttingDown.Store(true)
	s.mu.Lock()
	s.closed = true
	s.closeListenersLocked()
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.cancel(transport.CodeDraining.Err())
		c.raw.Close()
	}
	return nil
}

// Draining reports whether Shutdown or Close has been called.
func (s *Server) Draining() bool { return s.shuttingDown.Load() }

// draining reports whether responses must close their conns: the server is
// shutting down, or the handler says a drain has begun.
func (s *Server) draining() bool {
	return s.shuttingDown.Load() || (s.drain != nil && s.drain.Draining())
}

func (s *Server) closeListenersLocked() {
	for ln := range s.lns {
		ln.Close()
	}
	clear(s.lns)
}

func (s *Server) track(c *serverConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.shuttingDown.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *serverConn) {
	s.mu.Lock()
	delete(s.conns, c)
	if len(s.conns) == 0 && s.allGone != nil {
		select {
		case <-s.allGone:
		default:
			close(s.allGone)
		}
	}
	s.mu.Unlock()
}

// Buffer sizes. The reader must hold a whole chunk-size line (maxChunkLine).
const bufSize = 4096

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

func (s *Server) newConn(nc net.Conn) *serverConn {
	c := &serverConn{srv: s, nc: nc, raw: nc, scheme: "http", start: time.Now()}
	if tc, ok := nc.(*tls.Conn); ok {
		c.raw = tc.NetConn()
		c.scheme = "https"
		c.tls = true
	}
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		c.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	c.cr.c = c
	c.cr.cond = sync.NewCond(&c.cr.mu)
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	c.st.c = c
	return c
}

// dateCache holds the Date field line, formatted once per second.
type dateCache struct {
	v atomic.Pointer[dateLine]
}

type dateLine struct {
	sec  int64
	line []byte // "Date: ...\r\n"
}

func (d *dateCache) get(now time.Time) []byte {
	sec := now.Unix()
	if p := d.v.Load(); p != nil && p.sec == sec {
		return p.line
	}
	b := make([]byte, 0, 64)
	b = append(b, "Date: "...)
	b = now.UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\n"...)
	d.v.Store(&dateLine{sec: sec, line: b})
	return b
}
