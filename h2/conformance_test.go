package h2_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http/httptest"
	"sync"
	"testing"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/h2"
	"github.com/proxynow/proxynow/transport/transporttest"
)

// TestConformance runs the upstream-connection conformance suite against h2
// conns to an x/net http2 echo server, over TLS and in cleartext (h2c with
// prior knowledge).
func TestConformance(t *testing.T) {
	t.Run("TLS", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(transporttest.EchoHandler())
		if err := http2.ConfigureServer(srv.Config, &http2.Server{}); err != nil {
			t.Fatal(err)
		}
		srv.TLS = &tls.Config{NextProtos: []string{"h2"}}
		srv.StartTLS()
		defer srv.Close()
		roots := x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		d := h2.NewDialer(h2.DialerConfig{TLS: &tls.Config{RootCAs: roots}})
		transporttest.TestConn(t, d, srv.Listener.Addr().String(), true)
	})
	t.Run("h2c", func(t *testing.T) {
		addr := serveH2C(t)
		d := h2.NewDialer(h2.DialerConfig{})
		transporttest.TestConn(t, d, addr, true)
	})
}

// serveH2C runs an x/net http2 server speaking cleartext HTTP/2 with prior
// knowledge on a loopback listener until the test ends.
func serveH2C(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http2.Server{}
	opts := &http2.ServeConnOpts{Handler: transporttest.EchoHandler()}
	var (
		mu    sync.Mutex // guards conns
		conns = make(map[net.Conn]struct{})
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("h2c accept: %v", err)
				}
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				srv.ServeConn(c, opts)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
