package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// TLSListener terminates TLS on one TCP listener and splits the handshaken
// conns by ALPN protocol among sub-listeners: "h2" to one server, "http/1.1"
// (or no ALPN) to another. Handshakes run concurrently, each bounded by a
// timeout, so a slow client cannot hold up accepting.
type TLSListener struct {
	ln               net.Listener
	config           *tls.Config
	handshakeTimeout time.Duration

	mu     sync.Mutex // guards subs
	subs   map[string]*subListener
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup // handshakes in progress
}

// NewTLSListener wraps ln. config must list the ALPN protocols in NextProtos.
// handshakeTimeout defaults to 10s when zero.
func NewTLSListener(ln net.Listener, config *tls.Config, handshakeTimeout time.Duration) *TLSListener {
	if handshakeTimeout <= 0 {
		handshakeTimeout = 10 * time.Second
	}
	return &TLSListener{
		ln: ln, config: config, handshakeTimeout: handshakeTimeout,
		subs: make(map[string]*subListener), closed: make(chan struct{}),
	}
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
// or nil after Close.
func (l *TLSListener) Run() error {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				l.wg.Wait()
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			l.Close()
			l.wg.Wait()
			return err
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

func (l *TLSListener) handshake(c net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(c, l.config)
	ctx, cancel := context.WithTimeout(context.Background(), l.handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Close()
		return
	}
	proto := tc.ConnectionState().NegotiatedProtocol
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
		err = l.ln.Close()
	})
	return err
}

type subListener struct {
	parent *TLSListener
	conns  chan net.Conn
}

func (s *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.parent.closed:
		return nil, net.ErrClosed
	}
}

func (s *subListener) Close() error   { return s.parent.Close() }
func (s *subListener) Addr() net.Addr { return s.parent.Addr() }
