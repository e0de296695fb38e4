package h1_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http/httptest"
	"testing"

	"github.com/proxynow/proxynow/h1"
	"github.com/proxynow/proxynow/transport/transporttest"
)

// TestConformance runs the upstream-connection conformance suite against
// h1 conns to a net/http echo server, in cleartext and over TLS.
func TestConformance(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		srv := httptest.NewServer(transporttest.EchoHandler())
		defer srv.Close()
		d := h1.NewDialer(h1.DialerConfig{})
		transporttest.TestConn(t, d, srv.Listener.Addr().String(), false)
	})
	t.Run("TLS", func(t *testing.T) {
		srv := httptest.NewTLSServer(transporttest.EchoHandler())
		defer srv.Close()
		roots := x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		d := h1.NewDialer(h1.DialerConfig{TLS: &tls.Config{RootCAs: roots}})
		transporttest.TestConn(t, d, srv.Listener.Addr().String(), false)
	})
}
