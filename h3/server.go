package h3

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/transport"
)

// ServerConfig configures a Server. The zero value of every field but TLS
// takes the default documented on it; the caller's struct is not modified.
type ServerConfig struct {
	// TLS holds the server certificates (Certificates, GetCertificate or
	// GetConfigForClient for SNI). The server uses a clone with NextProtos
	// set to "h3". Required.
	TLS *tls.Config

	// IdleTimeout closes a connection without network activity for this
	// long (QUIC max_idle_timeout, RFC 9000 §10.1). Default 30s.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds a QUIC handshake. Default 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout resets a request stream (H3_REQUEST_CANCELLED) whose
	// response writes make no progress for this long: the client's flow
	// control holds them up (it stopped reading). The handler's writes fail
	// with CodeClientCancelled. Default 30s.
	WriteTimeout time.Duration
	// KeepAlivePeriod, if positive, makes the server send PINGs on idle
	// connections. Default 0: clients keep their connections alive.
	KeepAlivePeriod time.Duration

	// MaxStreams is the number of concurrent request streams a client may
	// open on one connection (QUIC MAX_STREAMS for bidirectional streams).
	// Default 250.
	MaxStreams int

	// Flow-control windows, in bytes: per stream and per connection, the
	// initial window and the largest the auto-tuning may grow it to.
	// Defaults 512 KiB, 6 MiB, 768 KiB, 15 MiB.
	InitialStreamWindow, MaxStreamWindow, InitialConnWindow, MaxConnWindow int64

	// MaxHeaderBytes caps the request field section (RFC 9114 §4.2.2 size:
	// names, values and 32 bytes per field). It is advertised as
	// SETTINGS_MAX_FIELD_SECTION_SIZE; a larger section is answered with
	// 431 and the request is not handed to the Handler. Default 64 KiB.
	MaxHeaderBytes int
	// MaxHeaderCount caps the number of request header fields; a request
	// with more is answered with 431 without calling the Handler.
	// Default 100.
	MaxHeaderCount int

	// EarlyData is "off" (the default: 0-RTT is refused, every request waits
	// for the handshake) or "safe": 0-RTT is accepted and requests received
	// before the handshake completed have transport.Request.EarlyData set;
	// the Handler decides (RFC 8470: 425 Too Early for unsafe methods).
	EarlyData string

	// Retry is the address validation policy (RFC 9000 §8.1.2): "never",
	// "always", or "auto" (the default): send a Retry to clients without a
	// token once more than RetryAbove handshake attempts per second arrive.
	// Retry costs the client one round trip; a NEW_TOKEN token from an
	// earlier connection skips it.
	Retry string
	// RetryAbove is the rate of handshake attempts above which "auto" sends
	// Retry, counted in Initial packets without a valid token (a ClientHello
	// with a post-quantum key share takes two). Default 1000 per second.
	RetryAbove int
	// MaxHandshakesPerSecond caps new connections per second; beyond it
	// they are refused (CONNECTION_REFUSED). Default 5000.
	MaxHandshakesPerSecond int
	// MaxConnsPerSource caps the concurrent connections from one IP
	// address; beyond it new ones are refused. Default 100. The address of a
	// connection attempt is not validated unless Retry or a token did so.
	MaxConnsPerSource int

	// Keys holds the stateless-reset and token keys. Nil: random keys per
	// process, which loses two things across a restart: clients do not
	// recognise our stateless resets for their old connections, and Retry
	// and NEW_TOKEN tokens issued before are rejected. Share one Keys (see
	// LoadOrCreateKeys) across restarts and across a fleet behind one
	// address.
	Keys *Keys

	// Logger receives the server's logs. Default slog.Default().
	Logger *slog.Logger

	// Engine selects the HTTP/3 implementation that serves each connection:
	// EngineQuicGo (the default) or EngineNative. Both have the same API,
	// semantics and Stats; see Engine.
	Engine Engine
}

// Engine names an HTTP/3 server implementation.
type Engine uint8

// The engines.
const (
	// EngineQuicGo hands each connection to quic-go's http3.Server, which
	// parses requests into http.Requests on a goroutine per request; an
	// adapter then takes the request stream over and writes the response
	// frames itself.
	EngineQuicGo Engine = iota
	// EngineNative serves each connection with this package's own HTTP/3
	// layer (native.go): it runs the control and QPACK streams, parses
	// request frames and field sections straight into transport.Requests,
	// and reads each request's head on the pooled worker that then runs the
	// Handler.
	EngineNative
)

// Keys are the secrets a QUIC server derives stateless-reset tokens
// (RFC 9000 §10.3) and address-validation tokens (§8.1.3) from.
type Keys struct {
	StatelessReset [32]byte
	Token          [32]byte
}

func (c ServerConfig) withDefaults() (ServerConfig, error) {
	if c.TLS == nil {
		return c, errors.New("h3: ServerConfig.TLS is nil")
	}
	if len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil {
		return c, errors.New("h3: ServerConfig.TLS has no certificate")
	}
	durations := []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.IdleTimeout, 30 * time.Second}, {&c.HandshakeTimeout, 10 * time.Second}, {&c.WriteTimeout, 30 * time.Second}}
	for _, d := range durations {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if c.KeepAlivePeriod < 0 {
		c.KeepAlivePeriod = 0
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxStreams", &c.MaxStreams, 250},
		{"MaxHeaderBytes", &c.MaxHeaderBytes, 64 << 10},
		{"MaxHeaderCount", &c.MaxHeaderCount, 100},
		{"RetryAbove", &c.RetryAbove, 1000},
		{"MaxHandshakesPerSecond", &c.MaxHandshakesPerSecond, 5000},
		{"MaxConnsPerSource", &c.MaxConnsPerSource, 100},
	}
	for _, f := range ints {
		if *f.v < 0 {
			return c, fmt.Errorf("h3: ServerConfig.%s is negative: %d", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	windows := []struct {
		name string
		v    *int64
		def  int64
	}{
		{"InitialStreamWindow", &c.InitialStreamWindow, 512 << 10},
		{"MaxStreamWindow", &c.MaxStreamWindow, 6 << 20},
		{"InitialConnWindow", &c.InitialConnWindow, 768 << 10},
		{"MaxConnWindow", &c.MaxConnWindow, 15 << 20},
	}
	for _, f := range windows {
		if *f.v < 0 {
			return c, fmt.Errorf("h3: ServerConfig.%s is negative: %d", f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.InitialStreamWindow > c.MaxStreamWindow {
		c.MaxStreamWindow = c.InitialStreamWindow
	}
	if c.InitialConnWindow > c.MaxConnWindow {
		c.MaxConnWindow = c.InitialConnWindow
	}
	switch c.EarlyData {
	case "":
		c.EarlyData = "off"
	case "off", "safe":
	default:
		return c, fmt.Errorf("h3: ServerConfig.EarlyData must be \"off\" or \"safe\", not %q", c.EarlyData)
	}
	switch c.Retry {
	case "":
		c.Retry = "auto"
	case "never", "always", "auto":
	default:
		return c, fmt.Errorf("h3: ServerConfig.Retry must be \"never\", \"always\" or \"auto\", not %q", c.Retry)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Engine > EngineNative {
		return c, fmt.Errorf("h3: ServerConfig.Engine %d is not an engine", c.Engine)
	}
	return c, nil
}

// ServerStats are a Server's counters since it was made.
type ServerStats struct {
	Conns          uint64 // connections accepted (handshake done, or 0-RTT ready)
	ConnsOpen      int64  // connections open now
	Refused        uint64 // connection attempts refused by MaxHandshakesPerSecond or MaxConnsPerSource (each Initial packet counts)
	Retries        uint64 // Initial packets answered with Retry by the Retry policy
	Requests       uint64 // requests handed to the Handler
	EarlyRequests  uint64 // of those, received in 0-RTT
	HeaderRejected uint64 // requests answered with 431 by MaxHeaderCount
	Panics         uint64 // Handler panics recovered

	// ZeroRTTAccepted and ZeroRTTRejected count accepted connections whose
	// ClientHello offered 0-RTT (it carried the early_data extension, RFC
	// 8446 §4.2.10), by whether the server accepted the early data. 0-RTT is
	// rejected when EarlyData is "off" (a client may still hold a ticket
	// from a server with "safe" that shares its session ticket keys), when
	// the session ticket cannot be used (other ticket keys, expired), when
	// the transport parameters the ticket remembers no longer hold (a
	// smaller flow-control window or stream limit), or after a
	// HelloRetryRequest. A connection is counted
	// when it is accepted: attempts whose handshake fails, or that are
	// refused by the limits, are in neither. 0-RTT packets that reach the
	// server without a ClientHello it can process are not counted.
	ZeroRTTAccepted, ZeroRTTRejected uint64

	// UDPReceiveDrops is the number of datagrams for the server's UDP socket
	// that the kernel discarded since the socket was made: the socket's
	// drops (sk_drops) in /proc/net/udp or /proc/net/udp6, mostly because
	// its receive buffer was full (see CheckUDP), also for a bad checksum.
	// Linux only (0 elsewhere), and 0 if the socket handed to Serve has no
	// file descriptor. It keeps its last value after the socket is closed.
	UDPReceiveDrops uint64
	// HostUDPSndbufErrors is the UDP SndbufErrors counter of the whole
	// network namespace (host or container) since it was made: the sum of
	// Udp SndbufErrors in /proc/net/snmp and Udp6SndbufErrors in
	// /proc/net/snmp6, all processes' UDP sockets together. The kernel counts
	// a datagram there when it could not allocate it against the socket's
	// send buffer, or when the qdisc or device dropped it (ENOBUFS) and the
	// error was not reported to the sender. Send errors that quic-go sees
	// close the connection rather than drop a packet, so this is the honest
	// send-drop figure. Linux only (0 elsewhere).
	HostUDPSndbufErrors uint64
}

// Server serves HTTP/3 on a UDP socket and yields every request to a
// transport.Handler as a transport.ServerStream.
//
// It is built on quic-go: a quic.Transport and listener of its own (so it
// controls accepting, the Retry policy and the per-source and per-second
// limits) and, with EngineQuicGo, an http3.Server that it hands each
// accepted connection to (for the HTTP/3 control stream, QPACK, SETTINGS and
// GOAWAY); with EngineNative it speaks HTTP/3 on the QUIC streams itself.
//
// It supports WebSocket over HTTP/3 (RFC 9220): both engines always
// advertise SETTINGS_ENABLE_CONNECT_PROTOCOL, and an extended CONNECT with
// :protocol websocket reaches the Handler with transport.Request.Protocol
// "websocket" (the method stays CONNECT); a 2xx response accepts it, and the
// stream's bodies both ways are the tunnel. Any other CONNECT, with another
// :protocol or none, is answered 501 without the Handler.
type Server struct {
	cfg     ServerConfig
	handler transport.Handler
	workers *transport.Workers // run the handler on goroutines with grown stacks
	log     *slog.Logger
	keys    Keys
	tlsConf *tls.Config
	qconf   *quic.Config
	h3      *http3.Server

	mu     sync.Mutex // guards tr, ln, conns, closed and port
	tr     *quic.Transport
	ln     quicListener
	conns  map[*quic.Conn]*connState
	closed bool // Shutdown or Close began
	port   int
	connWG sync.WaitGroup // serveConn goroutines

	draining atomic.Bool

	srcMu   sync.Mutex // guards sources
	sources map[netip.Addr]int

	handshakes, tokenless rateWindow
	now                   func() time.Time // time.Now; tests replace it

	nConns, nOpen, nRefused, nRetries, nRequests, nEarly, n431, nPanics atomic.Int64
	n0RTTAccepted, n0RTTRejected                                        atomic.Int64

	udp udpStats // the UDP socket's kernel counters, read by Stats
}

// quicListener is what quic.Listener and quic.EarlyListener share.
type quicListener interface {
	Accept(context.Context) (*quic.Conn, error)
	Close() error
}

var (
	errTooManyHandshakes = errors.New("h3: too many handshakes per second")
	errTooManyFromSource = errors.New("h3: too many connections from one address")
)

// NewServer returns a server that yields requests to h. Its errors are
// configuration errors.
func NewServer(h transport.Handler, cfg ServerConfig) (*Server, error) {
	if h == nil {
		return nil, errors.New("h3: nil Handler")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		handler: h,
		workers: transport.NewWorkers(0),
		log:     cfg.Logger,
		conns:   make(map[*quic.Conn]*connState),
		sources: make(map[netip.Addr]int),
		now:     time.Now,
	}
	if cfg.Keys != nil {
		s.keys = *cfg.Keys
	} else {
		if _, err := rand.Read(s.keys.StatelessReset[:]); err != nil {
			return nil, fmt.Errorf("h3: generating keys: %w", err)
		}
		if _, err := rand.Read(s.keys.Token[:]); err != nil {
			return nil, fmt.Errorf("h3: generating keys: %w", err)
		}
		s.log.Warn("h3: no QUIC keys configured, using random keys for this process: " +
			"after a restart clients will not recognise stateless resets for their old connections, " +
			"and Retry and NEW_TOKEN tokens issued before the restart will be rejected")
	}
	// ConfigureTLSConfig clones and sets NextProtos to h3, also for configs
	// returned by GetConfigForClient.
	s.tlsConf = http3.ConfigureTLSConfig(cfg.TLS)
	// Note which ClientHellos offer 0-RTT, for ZeroRTTAccepted and
	// ZeroRTTRejected: the TLS stack does not report a refused offer.
	gfc := s.tlsConf.GetConfigForClient
	s.tlsConf.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		if a, ok := chi.Context().Value(attemptKey{}).(*attempt); ok && slices.Contains(chi.Extensions, extensionEarlyData) {
			a.offered0RTT.Store(true)
		}
		if gfc != nil {
			return gfc(chi)
		}
		return nil, nil
	}
	s.qconf = &quic.Config{
		// quic-go aborts a handshake after twice its idle timeout.
		HandshakeIdleTimeout:           cfg.HandshakeTimeout / 2,
		MaxIdleTimeout:                 cfg.IdleTimeout,
		KeepAlivePeriod:                cfg.KeepAlivePeriod,
		MaxIncomingStreams:             int64(cfg.MaxStreams),
		InitialStreamReceiveWindow:     uint64(cfg.InitialStreamWindow),
		MaxStreamReceiveWindow:         uint64(cfg.MaxStreamWindow),
		InitialConnectionReceiveWindow: uint64(cfg.InitialConnWindow),
		MaxConnectionReceiveWindow:     uint64(cfg.MaxConnWindow),
		Allow0RTT:                      cfg.EarlyData == "safe",
	}
	s.h3 = &http3.Server{
		Handler:        (*adapter)(s),
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		ConnContext:    s.h3ConnContext,
		// No Logger: quic-go's server logs every request at Debug level,
		// which costs allocations even when the level is off.
	}
	return s, nil
}

// Serve serves QUIC on pc, a UDP socket the caller opened (usually on the
// same port as the TCP listener) and closes after Serve returns. It returns
// nil after Shutdown or Close, and the error that stopped it otherwise.
func (s *Server) Serve(pc net.PacketConn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.tr != nil {
		s.mu.Unlock()
		return errors.New("h3: Serve called twice")
	}
	tr := &quic.Transport{
		Conn:                pc,
		StatelessResetKey:   (*quic.StatelessResetKey)(&s.keys.StatelessReset),
		TokenGeneratorKey:   (*quic.TokenGeneratorKey)(&s.keys.Token),
		VerifySourceAddress: s.verifySource,
		ConnContext:         s.connContext,
	}
	var ln quicListener
	var err error
	if s.qconf.Allow0RTT {
		ln, err = tr.ListenEarly(s.tlsConf, s.qconf)
	} else {
		ln, err = tr.Listen(s.tlsConf, s.qconf)
	}
	if err != nil {
		s.mu.Unlock()
		tr.Close()
		return fmt.Errorf("h3: listen on %s: %w", pc.LocalAddr(), err)
	}
	s.tr, s.ln = tr, ln
	s.udp.setSocket(pc)
	if a, ok := pc.LocalAddr().(*net.UDPAddr); ok {
		s.port = a.Port
	}
	s.mu.Unlock()

	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			if s.isClosed() || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("h3: accept: %w", err)
		}
		s.count0RTT(qc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			continue
		}
		cs := newConnState(s, qc)
		s.conns[qc] = cs
		s.connWG.Add(1)
		s.mu.Unlock()
		s.nConns.Add(1)
		s.nOpen.Add(1)
		go s.serveConn(cs)
	}
}

func (s *Server) serveConn(cs *connState) {
	defer s.connWG.Done()
	var err error
	if cs.nc != nil {
		err = cs.nc.serve()
	} else {
		err = s.h3.ServeQUICConn(cs.qc)
	}
	// ServeQUICConn returns once the connection is closed, except when the
	// server was closed before it started: then the conn is ours to close.
	cs.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	s.mu.Lock()
	delete(s.conns, cs.qc)
	s.mu.Unlock()
	s.nOpen.Add(-1)
	if err != nil && s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("h3: connection ended", "remote", cs.remote, "error", err)
	}
}

// count0RTT counts a connection whose ClientHello offered 0-RTT as accepted
// or rejected. The server decides while it processes the ClientHello, which
// is done when Accept returns the connection, also from an early listener
// (quic-go hands it over once it has the client's transport parameters,
// which come in the ClientHello).
func (s *Server) count0RTT(qc *quic.Conn) {
	a, ok := qc.Context().Value(attemptKey{}).(*attempt)
	if !ok || !a.offered0RTT.Load() {
		return
	}
	if qc.ConnectionState().Used0RTT {
		s.n0RTTAccepted.Add(1)
	} else {
		s.n0RTTRejected.Add(1)
	}
}

// extensionEarlyData is the TLS early_data extension (RFC 8446 §4.2).
const extensionEarlyData = 42

// attempt is what the server learns about a connection attempt during its
// handshake. It lives in the connection's context.
type attempt struct {
	offered0RTT atomic.Bool // the ClientHello carried early_data
}

type attemptKey struct{}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// h3ConnContext gives quic-go's HTTP/3 layer the per-connection state, which
// the adapter finds in every request's context.
func (s *Server) h3ConnContext(ctx context.Context, qc *quic.Conn) context.Context {
	s.mu.Lock()
	cs := s.conns[qc]
	s.mu.Unlock()
	return context.WithValue(ctx, connStateKey{}, cs)
}

type connStateKey struct{}

// connContext runs for every connection attempt that passed the Retry
// policy. It applies MaxHandshakesPerSecond and MaxConnsPerSource; an error
// makes quic-go refuse the connection.
func (s *Server) connContext(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	if s.handshakes.add(s.now().Unix()) > s.cfg.MaxHandshakesPerSecond {
		s.nRefused.Add(1)
		return nil, errTooManyHandshakes
	}
	addr := addrOf(info.RemoteAddr).Addr()
	s.srcMu.Lock()
	if s.sources[addr] >= s.cfg.MaxConnsPerSource {
		s.srcMu.Unlock()
		s.nRefused.Add(1)
		return nil, errTooManyFromSource
	}
	s.sources[addr]++
	s.srcMu.Unlock()
	// ctx ends when the connection closes or its handshake fails.
	context.AfterFunc(ctx, func() {
		s.srcMu.Lock()
		if s.sources[addr]--; s.sources[addr] <= 0 {
			delete(s.sources, addr)
		}
		s.srcMu.Unlock()
	})
	return context.WithValue(ctx, attemptKey{}, new(attempt)), nil
}

// verifySource is the Retry policy. quic-go asks it for every Initial packet
// that carries no valid token.
func (s *Server) verifySource(net.Addr) bool {
	var retry bool
	switch s.cfg.Retry {
	case "always":
		retry = true
	case "never":
		retry = false
	default:
		retry = s.tokenless.add(s.now().Unix()) > s.cfg.RetryAbove
	}
	if retry {
		s.nRetries.Add(1)
	}
	return retry
}

// Shutdown drains the server (RFC 9114 §5.2): it stops accepting
// connections, sends GOAWAY on every connection so that clients open no new
// streams (streams that arrive anyway are reset with H3_REQUEST_REJECTED),
// lets the requests in flight finish, and closes each connection with
// H3_NO_ERROR once it has none left. It returns nil when all connections
// have ended, and ctx's error if ctx ends first, after closing what was
// left. The UDP socket stays open until the caller closes it.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	conns := make([]*connState, 0, len(s.conns))
	for _, cs := range s.conns {
		conns = append(conns, cs)
	}
	s.mu.Unlock()
	s.draining.Store(true)
	if ln != nil {
		ln.Close() // handshakes in progress are refused; established conns stay
	}
	if s.cfg.Engine == EngineNative {
		err := s.shutdownNative(ctx, conns)
		s.closeTransport()
		s.workers.Close()
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.h3.Shutdown(ctx) }()
	// quic-go's clients close an idle connection on GOAWAY; other clients
	// may not, so close the idle ones here.
	for _, cs := range conns {
		cs.closeWhenIdle()
	}
	err := <-errc
	s.connWG.Wait()
	s.closeTransport()
	s.workers.Close()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// Close closes the server at once: every connection is closed with
// H3_NO_ERROR, aborting the requests in flight. It returns once the
// Handler calls have returned. The UDP socket stays open until the caller
// closes it.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	s.draining.Store(true)
	if ln != nil {
		ln.Close()
	}
	err := s.h3.Close()
	s.mu.Lock()
	left := make([]*quic.Conn, 0, len(s.conns))
	for qc := range s.conns {
		left = append(left, qc)
	}
	s.mu.Unlock()
	for _, qc := range left {
		qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
	}
	s.connWG.Wait()
	s.closeTransport()
	s.workers.Close()
	return err
}

func (s *Server) closeTransport() {
	s.mu.Lock()
	tr := s.tr
	s.mu.Unlock()
	if tr != nil {
		tr.Close() // stops reading pc; does not close it
	}
}

// Port returns the UDP port the server serves on, or 0 before Serve.
func (s *Server) Port() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.port
}

// Stats returns the server's counters. On Linux it reads the UDP counters
// from /proc, so call it when the figures are wanted (a scrape), not per
// request.
func (s *Server) Stats() ServerStats {
	recvDrops, sndbufErrors := s.udp.read()
	return ServerStats{
		Conns:          uint64(s.nConns.Load()),
		ConnsOpen:      s.nOpen.Load(),
		Refused:        uint64(s.nRefused.Load()),
		Retries:        uint64(s.nRetries.Load()),
		Requests:       uint64(s.nRequests.Load()),
		EarlyRequests:  uint64(s.nEarly.Load()),
		HeaderRejected: uint64(s.n431.Load()),
		Panics:         uint64(s.nPanics.Load()),

		ZeroRTTAccepted:     uint64(s.n0RTTAccepted.Load()),
		ZeroRTTRejected:     uint64(s.n0RTTRejected.Load()),
		UDPReceiveDrops:     recvDrops,
		HostUDPSndbufErrors: sndbufErrors,
	}
}

// connState is what the server keeps per connection.
type connState struct {
	srv      *Server
	qc       *quic.Conn
	remote   netip.AddrPort
	shard    uint32       // transport.Request.Shard of its streams
	inflight atomic.Int32 // requests in the Handler (EngineNative: request streams accepted and not done)
	closing  atomic.Bool  // a close-when-idle timer is pending
	nc       *nconn       // the native engine's state; nil with EngineQuicGo
}

func newConnState(s *Server, qc *quic.Conn) *connState {
	cs := &connState{srv: s, qc: qc, remote: addrOf(qc.RemoteAddr()), shard: transport.NextShard()}
	if s.cfg.Engine == EngineNative {
		cs.nc = &nconn{cs: cs}
	}
	return cs
}

// closeWhenIdle closes the connection with H3_NO_ERROR once no request is in
// flight on it, during a drain. It waits a little first: a stream accepted
// just before GOAWAY may not have reached the Handler yet (its HEADERS frame
// can lag by up to a round trip).
func (cs *connState) closeWhenIdle() {
	if cs.inflight.Load() != 0 || !cs.closing.CompareAndSwap(false, true) {
		return
	}
	st := cs.qc.ConnectionStats()
	linger := min(max(st.SmoothedRTT+4*st.MeanDeviation+25*time.Millisecond, 25*time.Millisecond), time.Second)
	time.AfterFunc(linger, func() {
		cs.closing.Store(false)
		if cs.inflight.Load() == 0 {
			cs.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		}
	})
}

// rateWindow counts events per wall-clock second.
type rateWindow struct {
	mu  sync.Mutex // guards sec and n
	sec int64
	n   int
}

// add counts one event in second sec and returns the count so far.
func (w *rateWindow) add(sec int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if sec != w.sec {
		w.sec, w.n = sec, 0
	}
	w.n++
	return w.n
}

// addrOf returns the address of a UDP peer, with IPv4-mapped IPv6 addresses
// unmapped.
func addrOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap
	}
	return netip.AddrPort{}
}
