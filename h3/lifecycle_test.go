package h3

import (
	"bytes"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

func TestNewServerConfig(t *testing.T) {
	serverTLS, _ := tlsPair(t)
	h := transport.HandlerFunc(echo)
	bad := map[string]ServerConfig{
		"no TLS":          {},
		"no certificate":  {TLS: &tls.Config{}},
		"early data":      {TLS: serverTLS, EarlyData: "always"},
		"retry":           {TLS: serverTLS, Retry: "sometimes"},
		"negative":        {TLS: serverTLS, MaxStreams: -1},
		"negative window": {TLS: serverTLS, MaxConnWindow: -1},
	}
	for name, cfg := range bad {
		if _, err := NewServer(h, cfg); err == nil || !strings.HasPrefix(err.Error(), "h3: ") {
			t.Errorf("%s: NewServer = %v, want an h3 error", name, err)
		}
	}
	if _, err := NewServer(nil, ServerConfig{TLS: serverTLS}); err == nil {
		t.Error("nil handler accepted")
	}

	var logs bytes.Buffer
	cfg := ServerConfig{TLS: serverTLS, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	s, err := NewServer(h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxStreams != 0 || cfg.TLS.NextProtos != nil {
		t.Error("NewServer modified the caller's config")
	}
	c := s.cfg
	if c.IdleTimeout.Seconds() != 30 || c.HandshakeTimeout.Seconds() != 10 || c.MaxStreams != 250 ||
		c.InitialStreamWindow != 512<<10 || c.MaxStreamWindow != 6<<20 || c.InitialConnWindow != 768<<10 ||
		c.MaxConnWindow != 15<<20 || c.MaxHeaderBytes != 64<<10 || c.MaxHeaderCount != 100 ||
		c.EarlyData != "off" || c.Retry != "auto" || c.RetryAbove != 1000 ||
		c.MaxHandshakesPerSecond != 5000 || c.MaxConnsPerSource != 100 {
		t.Errorf("defaults: %+v", c)
	}
	if s.tlsConf.NextProtos[0] != "h3" {
		t.Errorf("NextProtos %v", s.tlsConf.NextProtos)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "stateless resets") {
		t.Errorf("no warning about random keys: %q", logs.String())
	}
	s.Close()
	if err := s.Serve(listenUDP(t)); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
}

// TestNoLeaks runs a server, a client and a Dialer and checks that closing
// them stops every goroutine they started.
func TestNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	ts := startServer(t, transport.HandlerFunc(echo), nil)
	cl := ts.client(t)
	for range 3 {
		req, _ := http.NewRequestWithContext(testCtx(t), http.MethodGet, ts.url("/"), nil)
		resp, err := cl.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	d := NewDialer(DialerConfig{TLS: ts.clientTLS})
	c, err := d.Dial(testCtx(t), ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, c, &transport.Request{Method: "GET", Scheme: "https", Authority: ts.addr, Path: "/", Header: http.Header{}, Body: http.NoBody})
	c.Close()
	d.Close()
	cl.Close()
	ts.Close()
	if err := <-ts.served; err != nil {
		t.Errorf("Serve = %v", err)
	}
	ts.served <- nil
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
