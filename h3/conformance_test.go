package h3_test

import (
	"net"
	"testing"

	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport/transporttest"
)

// TestConformance runs the upstream-connection conformance suite against h3
// conns to a quic-go http3 echo server on loopback.
func TestConformance(t *testing.T) {
	srvTLS, cliTLS := transporttest.TLSConfigs(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{Handler: transporttest.EchoHandler(), TLSConfig: http3.ConfigureTLSConfig(srvTLS)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(pc) }()
	t.Cleanup(func() {
		srv.Close()
		pc.Close()
		<-served
	})
	d := h3.NewDialer(h3.DialerConfig{TLS: cliTLS})
	transporttest.TestConn(t, d, pc.LocalAddr().String(), true)
}
