package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// TLSListener terminates TLS on one TCP listener and splits the handshaken
// conns by ALPN protocol among sub-listeners: "h2" to one server, "http/1.1"
// (or no ALPN) to another. Handshakes run concurrently, each bounded by a
// timeout, so a slow client cannot hold up accepting.
type TLSListener struct {
	// OnHandshake, when set (before Run), is called with each conn as ln
	// accepted it and the ALPN protocol negotiated on it ("" for none),
	// after a successful handshake and before the conn is handed to its
	// sub-listener: a metrics layer's hook to count conns by protocol.
	OnHandshake func(raw net.Conn, proto string)

	ln               net.Listener
	config           *tls.Config
	handshakeTimeout time.Duration

	mu     sync.Mutex // guards subs
	subs   map[string]*subListener
	closed chan struct{}
	ctx    context.Context // parent of the handshakes; cancelled by Close
	cancel context.CancelFunc
	once   sync.Once
	wg     sync.WaitGroup // handshakes in progress
}

// NewTLSListener wraps ln. config must list the ALPN protocols in NextProtos.
// handshakeTimeout defaults to 10s when zero.
func NewTLSListener(ln net.Listener, config *tls.Config, handshakeTimeout time.Duration) *TLSListener {
	if handshakeTimeout <= 0 {
		handshakeTimeout = 10 * time.Second
	}
	l := &TLSListener{
		ln: ln, config: config, handshakeTimeout: handshakeTimeout,
		subs: make(map[string]*subListener), closed: make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// Listener returns the sub-listener for ALPN protocol proto. The empty proto
// also receives conns whose ALPN is not registered (no ALPN, or "http/1.1"
// when only "" is registered). Call it before Run.
func (l *TLSListener) Listener(proto string) net.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.subs[proto]
	if s == nil {
		s = &subListener{parent: l, conns: make(chan net.Conn)}
		l.subs[proto] = s
	}
	return s
}

// Addr returns the TCP address.
func (l *TLSListener) Addr() net.Addr { return l.ln.Addr() }

// Run accepts conns until Close. It returns the accept error that stopped it,
// or nil after Close. Running out of file descriptors or buffers does not stop
// it: like net/http's Server.Serve it backs off (5ms doubling up to 1s) and
// accepts again, so a burst of connections cannot take the listener down.
func (l *TLSListener) Run() error {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				l.wg.Wait()
				return nil
			default:
			}
			if retryableAccept(err) {
				delay = max(5*time.Millisecond, min(2*delay, time.Second))
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-l.closed:
					t.Stop()
				}
				continue
			}
			l.Close()
			l.wg.Wait()
			return err
		}
		delay = 0
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// retryableAccept reports whether an accept error is transient: a timeout, or
// a resource the kernel may have again shortly.
func retryableAccept(err error) bool {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

func (l *TLSListener) handshake(c net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(c, l.config)
	// Derived from l.ctx so that Close aborts handshakes in progress: Run
	// then returns at once rather than after the handshake timeout.
	ctx, cancel := context.WithTimeout(l.ctx, l.handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Close()
		return
	}
	proto := tc.ConnectionState().NegotiatedProtocol
	if l.OnHandshake != nil {
		l.OnHandshake(c, proto)
	}
	l.mu.Lock()
	s := l.subs[proto]
	if s == nil {
		s = l.subs[""]
	}
	l.mu.Unlock()
	if s == nil {
		c.Close()
		return
	}
	select {
	case s.conns <- tc:
	case <-l.closed:
		c.Close()
	}
}

// Close stops accepting: the TCP listener and every sub-listener close.
// Conns already handed to servers are theirs to close.
func (l *TLSListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		l.cancel()
		err = l.ln.Close()
	})
	return err
}

type subListener struct {
	parent *TLSListener
	conns  chan net.Conn
}

func (s *subListener) Accept() (net.Conn, error) {
	// After Close, report it even when a handshaken conn is ready too
	// (select would pick at random).
	select {
	case <-s.parent.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.parent.closed:
		return nil, net.ErrClosed
	}
}

func (s *subListener) Close() error   { return s.parent.Close() }
func (s *subListener) Addr() net.Addr { return s.parent.Addr() }
