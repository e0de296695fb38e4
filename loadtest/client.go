package loadtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

// conn is one client connection of any protocol, carrying one (HTTP/1.1) or
// many (HTTP/2, HTTP/3) requests at a time.
type conn interface {
	roundTrip(req *http.Request) (*http.Response, error)
	// usable reports whether the connection may take a new request: false
	// once it is closed.
	usable() bool
	close()
}

// client dials connections for one run. The stacks are independent of the
// server under test: net/http for HTTP/1.1 and HTTP/2 (one http.ClientConn
// per connection, so the C×M shape is exact and no pool reshuffles requests),
// quic-go's http3 for HTTP/3 (one quic.Conn per connection).
type client struct {
	t      *target
	scheme string
	tr     *http.Transport  // h1, h2: only a factory of ClientConns, never a pool
	h3     *http3.Transport // h3: only a factory of ClientConns
	qconf  *quic.Config
	udp    *net.UDPAddr
}

// connKey carries a connection dialed by client.dialTCP into the
// http.Transport's dial hooks, which hand it to Transport.NewClientConn.
type connKey struct{}

func passConn(ctx context.Context, _, _ string) (net.Conn, error) {
	if c, ok := ctx.Value(connKey{}).(net.Conn); ok {
		return c, nil
	}
	return nil, errors.New("loadtest: no connection to hand over")
}

func newClient(ctx context.Context, t *target) (*client, error) {
	c := &client{t: t, scheme: t.urls[0].Scheme}
	switch t.cfg.Proto {
	case H1, H2:
		p := new(http.Protocols)
		switch {
		case t.cfg.Proto == H1:
			p.SetHTTP1(true)
		case t.tls != nil:
			p.SetHTTP2(true)
		default:
			p.SetUnencryptedHTTP2(true)
		}
		c.tr = &http.Transport{
			DialContext:        passConn,
			DialTLSContext:     passConn,
			Protocols:          p,
			DisableCompression: true, // measure the bytes the server sends, as wrk and h2load do
			ReadBufferSize:     32 << 10,
			WriteBufferSize:    32 << 10,
		}
	case H3:
		ua, err := resolveUDP(ctx, t.addr)
		if err != nil {
			return nil, err
		}
		c.udp = ua
		c.qconf = &quic.Config{
			HandshakeIdleTimeout: t.cfg.ConnectTimeout,
			MaxIdleTimeout:       max(30*time.Second, t.cfg.Timeout),
		}
		c.h3 = &http3.Transport{DisableCompression: true}
	}
	return c, nil
}

func resolveUDP(ctx context.Context, addr string) (*net.UDPAddr, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("loadtest: no address for %s", host)
	}
	p, err := net.LookupPort("udp", port)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(p))), nil
}

// dialed describes a new connection.
type dialed struct {
	setup   time.Duration // from dial start until a request can be sent
	resumed bool          // TLS session resumed (for early HTTP/3 connections, known later)
}

// dial opens a connection for slot s. early asks for a QUIC connection usable
// in 0-RTT (DialEarly). The error comes with the phase it happened in.
func (c *client) dial(ctx context.Context, s *slot, early bool) (conn, dialed, phase, error) {
	if c.t.cfg.Proto == H3 {
		return c.dialQUIC(ctx, s, early)
	}
	return c.dialTCP(ctx, s)
}

func (c *client) dialTCP(ctx context.Context, s *slot) (conn, dialed, phase, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.t.cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", c.t.addr)
	if err != nil {
		return nil, dialed{}, phaseConnect, err
	}
	var res dialed
	if c.t.tls != nil {
		tc := tls.Client(nc, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, dialed{}, phaseHandshake, err
		}
		st := tc.ConnectionState()
		if c.t.cfg.Proto == H2 && st.NegotiatedProtocol != http2.NextProtoTLS {
			nc.Close()
			return nil, dialed{}, phaseHandshake, errNoALPN
		}
		res.resumed = st.DidResume
		nc = tc
	}
	cc, err := c.tr.NewClientConn(context.WithValue(ctx, connKey{}, nc), c.scheme, c.t.addr)
	if err != nil {
		nc.Close()
		return nil, dialed{}, phaseHandshake, err
	}
	res.setup = time.Since(start)
	return &httpConn{cc: cc}, res, 0, nil
}

func (c *client) dialQUIC(ctx context.Context, s *slot, early bool) (conn, dialed, phase, error) {
	start := time.Now()
	tr, err := s.quicTransport()
	if err != nil {
		return nil, dialed{}, phaseConnect, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.t.cfg.ConnectTimeout)
	defer cancel()
	var qc *quic.Conn
	if early {
		qc, err = tr.DialEarly(ctx, c.udp, s.tls, c.qconf)
	} else {
		qc, err = tr.Dial(ctx, c.udp, s.tls, c.qconf)
	}
	if err != nil {
		// A QUIC handshake that gets no answer in time is the equivalent of
		// a TCP connect that does: a closed UDP port is silent.
		if isTimeout(err) {
			return nil, dialed{}, phaseConnect, err
		}
		return nil, dialed{}, phaseHandshake, err
	}
	hc := &h3Conn{qc: qc, cc: c.h3.NewClientConn(qc), h3: c.h3, early: early, dialedEarly: early}
	res := dialed{setup: time.Since(start)}
	if !early {
		res.resumed = qc.ConnectionState().TLS.DidResume
	}
	return hc, res, 0, nil
}

// httpConn is an HTTP/1.1 or HTTP/2 connection: a net/http ClientConn.
type httpConn struct{ cc *http.ClientConn }

func (c *httpConn) roundTrip(req *http.Request) (*http.Response, error) { return c.cc.RoundTrip(req) }
func (c *httpConn) usable() bool                                        { return c.cc.Err() == nil }
func (c *httpConn) close()                                              { c.cc.Close() }

// h3Conn is an HTTP/3 connection: a quic-go http3 ClientConn on its QUIC
// connection.
type h3Conn struct {
	qc    *quic.Conn
	cc    *http3.ClientConn
	h3    *http3.Transport
	early bool // dialed with DialEarly: the first request may go in 0-RTT
	// dialedEarly stays set when early is cleared after a 0-RTT rejection.
	dialedEarly bool
}

func (c *h3Conn) roundTrip(req *http.Request) (*http.Response, error) {
	if c.early {
		// Only safe methods go in 0-RTT (RFC 9114, section 4.1; RFC 8470).
		switch req.Method {
		case http.MethodGet:
			req.Method = http3.MethodGet0RTT
		case http.MethodHead:
			req.Method = http3.MethodHead0RTT
		}
	}
	resp, err := c.cc.RoundTrip(req)
	if err != nil && c.early && errors.Is(err, quic.Err0RTTRejected) {
		// The server refused 0-RTT: everything sent early is void. Wait for
		// the handshake and send again on the same connection (RFC 9001,
		// section 4.6.2).
		qc, nerr := c.qc.NextConnection(req.Context())
		if nerr != nil {
			return nil, nerr
		}
		c.qc, c.early = qc, false
		c.cc = c.h3.NewClientConn(qc)
		switch req.Method {
		case http3.MethodGet0RTT:
			req.Method = http.MethodGet
		case http3.MethodHead0RTT:
			req.Method = http.MethodHead
		}
		return c.cc.RoundTrip(req)
	}
	return resp, err
}

func (c *h3Conn) usable() bool { return c.qc.Context().Err() == nil }
func (c *h3Conn) close()       { c.qc.CloseWithError(0, "") }

// slot is one of the run's connections: the conn currently in use, redialed
// when it dies, shared by the slot's streams. In new-connection mode each
// stream has its own slot and a fresh conn per request.
type slot struct {
	c   *client
	tls *tls.Config // with Config.Resume, the slot's own session cache
	cur atomic.Pointer[liveConn]

	// mu guards dialing (one dial at a time per slot), udp and the figures
	// below. It is shared only by the streams of this one connection and
	// taken only to dial.
	mu      sync.Mutex
	setup   Histogram
	dials   int64
	resumed int64
	zeroRTT int64
	udp     *quic.Transport // h3: the slot's UDP socket, opened on first use
}

func newSlot(c *client) *slot {
	s := &slot{c: c, tls: c.t.tls}
	if c.t.tls != nil && c.t.cfg.Resume {
		// One cache per slot, as one client has one: a session ticket is
		// used by one connection at a time (and concurrent resumptions of
		// one cached session race inside quic-go).
		s.tls = c.t.tls.Clone()
		s.tls.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	}
	return s
}

func (s *slot) quicTransport() (*quic.Transport, error) {
	// Called with s.mu held (get) or by the slot's only stream (new-conn mode).
	if s.udp != nil {
		return s.udp, nil
	}
	uc, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, err
	}
	s.udp = &quic.Transport{Conn: uc}
	return s.udp, nil
}

// liveConn is a conn with the count of requests in flight on it, so that a
// retired conn (GOAWAY, or an error that leaves it open) is closed only once
// its last request is done.
type liveConn struct {
	conn
	inflight  atomic.Int32
	retired   atomic.Bool
	closeOnce sync.Once
}

func (lc *liveConn) shut() { lc.closeOnce.Do(lc.conn.close) }

// get returns the slot's conn with one request accounted in flight on it,
// dialing if there is none. Release it with put.
func (s *slot) get(ctx context.Context) (*liveConn, phase, error) {
	for {
		if lc := s.cur.Load(); lc != nil {
			if !lc.usable() {
				s.retire(lc)
				continue
			}
			lc.inflight.Add(1)
			if lc.retired.Load() {
				s.put(lc)
				continue
			}
			return lc, 0, nil
		}
		s.mu.Lock()
		if s.cur.Load() != nil { // another stream dialed meanwhile
			s.mu.Unlock()
			continue
		}
		cn, d, ph, err := s.c.dial(ctx, s, false)
		if err != nil {
			s.mu.Unlock()
			return nil, ph, err
		}
		s.recordDialLocked(d)
		lc := &liveConn{conn: cn}
		s.cur.Store(lc)
		s.mu.Unlock()
	}
}

func (s *slot) recordDialLocked(d dialed) {
	s.setup.Record(d.setup)
	s.dials++
	if d.resumed {
		s.resumed++
	}
}

// put ends one request on lc.
func (s *slot) put(lc *liveConn) {
	if lc.inflight.Add(-1) == 0 && lc.retired.Load() {
		lc.shut()
	}
}

// retire stops new requests from using lc and closes it once idle.
func (s *slot) retire(lc *liveConn) {
	s.cur.CompareAndSwap(lc, nil)
	lc.retired.Store(true)
	if lc.inflight.Load() == 0 {
		lc.shut()
	}
}

// close closes the slot's conn and socket; no stream may use s any more.
func (s *slot) close() {
	if lc := s.cur.Swap(nil); lc != nil {
		lc.retired.Store(true)
		lc.shut()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		s.udp.Close()
		s.udp.Conn.Close()
		s.udp = nil
	}
}

// streamLevel reports whether err ended only its own stream, leaving the
// connection usable for others: an HTTP/2 RST_STREAM or a QUIC stream reset.
func streamLevel(err error) bool {
	if _, ok := errors.AsType[http2.StreamError](err); ok {
		return true
	}
	_, ok := errors.AsType[*quic.StreamError](err)
	return ok
}
