package transport_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
	"github.com/proxynow/proxynow/transport/transporttest"
)

const testWait = 5 * time.Second // bound on anything that should happen at once

// acceptAll runs Accept on ln until it fails, sending conns on the first
// channel and the final error on the second.
func acceptAll(t *testing.T, ln net.Listener) (<-chan net.Conn, <-chan error) {
	conns := make(chan net.Conn, 16)
	errc := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	})
	return conns, errc
}

func startTLSListener(t *testing.T, handshakeTimeout time.Duration) (*transport.TLSListener, *tls.Config) {
	t.Helper()
	srvConf, cliConf := transporttest.TLSConfigs(t)
	srvConf.NextProtos = []string{"h2", "http/1.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := transport.NewTLSListener(ln, srvConf, handshakeTimeout)
	t.Cleanup(func() { l.Close() })
	return l, cliConf
}

func run(l *transport.TLSListener) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- l.Run() }()
	return errc
}

// dialTLS handshakes a client offering protos and returns the conn.
func dialTLS(t *testing.T, addr string, conf *tls.Config, protos ...string) *tls.Conn {
	t.Helper()
	conf = conf.Clone()
	conf.NextProtos = protos
	d := &net.Dialer{Timeout: testWait}
	c, err := tls.DialWithDialer(d, "tcp", addr, conf)
	if err != nil {
		t.Fatalf("dial with ALPN %q: %v", protos, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recvConn(t *testing.T, name string, ch <-chan net.Conn) *tls.Conn {
	t.Helper()
	select {
	case c := <-ch:
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.Fatalf("%s: accepted %T, want *tls.Conn", name, c)
		}
		return tc
	case <-time.After(testWait):
		t.Fatalf("%s: no conn accepted", name)
		return nil
	}
}

func noConn(t *testing.T, name string, ch <-chan net.Conn) {
	t.Helper()
	select {
	case c := <-ch:
		t.Errorf("%s: unexpected conn with ALPN %q", name, c.(*tls.Conn).ConnectionState().NegotiatedProtocol)
	default:
	}
}

func TestTLSListenerALPN(t *testing.T) {
	l, cliConf := startTLSListener(t, 0)
	hooked := make(chan string, 3)
	l.OnHandshake = func(raw net.Conn, proto string) {
		if _, ok := raw.(*tls.Conn); ok {
			t.Errorf("OnHandshake got the *tls.Conn, want the conn as accepted")
		}
		hooked <- proto
	}
	h2conns, h2errc := acceptAll(t, l.Listener("h2"))
	h1conns, h1errc := acceptAll(t, l.Listener(""))
	runErr := run(l)
	addr := l.Addr().String()

	c := dialTLS(t, addr, cliConf, "h2", "http/1.1")
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("client negotiated %q, want h2", p)
	}
	if sc := recvConn(t, "h2 listener", h2conns); sc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Errorf("h2 listener got ALPN %q", sc.ConnectionState().NegotiatedProtocol)
	}
	// The handshaken conn carries the client's bytes.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}

	dialTLS(t, addr, cliConf, "http/1.1")
	if sc := recvConn(t, "default listener (http/1.1)", h1conns); sc.ConnectionState().NegotiatedProtocol != "http/1.1" {
		t.Errorf("default listener got ALPN %q", sc.ConnectionState().NegotiatedProtocol)
	}
	dialTLS(t, addr, cliConf)
	if sc := recvConn(t, "default listener (no ALPN)", h1conns); sc.ConnectionState().NegotiatedProtocol != "" {
		t.Errorf("default listener got ALPN %q", sc.ConnectionState().NegotiatedProtocol)
	}
	noConn(t, "h2 listener", h2conns)
	noConn(t, "default listener", h1conns)
	// The hook saw each conn, before it was handed over, in dial order.
	for _, want := range []string{"h2", "http/1.1", ""} {
		if got := <-hooked; got != want {
			t.Errorf("OnHandshake proto %q, want %q", got, want)
		}
	}

	if err := l.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	for name, errc := range map[string]<-chan error{"h2": h2errc, "default": h1errc} {
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("%s listener: Accept after Close = %v, want net.ErrClosed", name, err)
			}
		case <-time.After(testWait):
			t.Errorf("%s listener: Accept still blocked after Close", name)
		}
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run = %v, want nil after Close", err)
		}
	case <-time.After(testWait):
		t.Error("Run still running after Close")
	}
	// New clients are refused.
	if c, err := net.DialTimeout("tcp", addr, testWait); err == nil {
		c.Close()
		t.Error("dial after Close succeeded")
	}
}

func TestTLSListenerHandshakeTimeout(t *testing.T) {
	const timeout = time.Second
	l, cliConf := startTLSListener(t, timeout)
	h2conns, _ := acceptAll(t, l.Listener("h2"))
	run(l)
	addr := l.Addr().String()

	// The listener's clock starts at accept, which may come before the dial
	// returns here: start this one before dialing.
	start := time.Now()
	slow, err := net.DialTimeout("tcp", addr, testWait)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()

	// The silent client does not hold up the others.
	dialTLS(t, addr, cliConf, "h2")
	recvConn(t, "h2 listener", h2conns)
	if el := time.Since(start); el >= timeout {
		t.Errorf("a good handshake took %v, beyond the silent client's timeout %v", el, timeout)
	}

	// The silent client is dropped after the handshake timeout.
	slow.SetReadDeadline(time.Now().Add(testWait))
	_, err = io.ReadAll(slow)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("silent client not dropped within %v", testWait)
	}
	if el := time.Since(start); el < timeout {
		t.Errorf("silent client dropped after %v, before the handshake timeout %v", el, timeout)
	}
	noConn(t, "h2 listener", h2conns)
}

// TestTLSListenerCloseDuringHandshake: Close does not wait for the handshakes
// in progress to time out.
func TestTLSListenerCloseDuringHandshake(t *testing.T) {
	l, cliConf := startTLSListener(t, time.Minute)
	h2conns, _ := acceptAll(t, l.Listener("h2"))
	runErr := run(l)
	addr := l.Addr().String()

	slow, err := net.DialTimeout("tcp", addr, testWait)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// Accept is in order: once this one is through, the silent one is in
	// its handshake.
	dialTLS(t, addr, cliConf, "h2")
	recvConn(t, "h2 listener", h2conns)

	l.Close()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(testWait):
		t.Fatal("Run waits for a handshake in progress after Close")
	}
	slow.SetReadDeadline(time.Now().Add(testWait))
	if _, err := io.ReadAll(slow); err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			t.Error("silent client not dropped by Close")
		}
	}
}

// TestTLSListenerAcceptError: an accept error that is not transient stops Run
// with that error and closes the sub-listeners.
func TestTLSListenerAcceptError(t *testing.T) {
	srvConf, _ := transporttest.TLSConfigs(t)
	boom := errors.New("accept: boom")
	l := transport.NewTLSListener(failingListener{boom}, srvConf, 0)
	sub := l.Listener("")
	if err := l.Run(); !errors.Is(err, boom) {
		t.Errorf("Run = %v, want %v", err, boom)
	}
	if _, err := sub.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept = %v, want net.ErrClosed", err)
	}
}

type failingListener struct{ err error }

func (l failingListener) Accept() (net.Conn, error) { return nil, l.err }
func (l failingListener) Close() error              { return nil }
func (l failingListener) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestTLSListenerAcceptEMFILE: running out of file descriptors does not stop
// Run; it backs off and accepts again.
func TestTLSListenerAcceptEMFILE(t *testing.T) {
	srvConf, _ := transporttest.TLSConfigs(t)
	ln := &flakyListener{fails: 3, closed: make(chan struct{})}
	l := transport.NewTLSListener(ln, srvConf, 0)
	runErr := run(l)
	select {
	case <-ln.blocked():
	case err := <-runErr:
		t.Fatalf("Run = %v after EMFILE, want it to go on", err)
	case <-time.After(testWait):
		t.Fatal("Run did not accept again after EMFILE")
	}
	l.Close()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(testWait):
		t.Fatal("Run still running after Close")
	}
}

// flakyListener fails Accept with EMFILE fails times, then blocks until
// Close.
type flakyListener struct {
	mu      sync.Mutex // guards fails and waiting
	fails   int
	waiting chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func (l *flakyListener) blocked() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting == nil {
		l.waiting = make(chan struct{})
	}
	return l.waiting
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	l.mu.Unlock()
	close(l.blocked())
	<-l.closed
	return nil, net.ErrClosed
}

func (l *flakyListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
