package h3

import (
	"io"
	"net/http"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

// small answers every request with a fixed 13-byte body.
func small(s transport.ServerStream) {
	s.WriteHeader(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, 13)
	s.Write([]byte("hello, world\n"))
	s.Finish(nil)
}

// BenchmarkServerGET measures a small GET through Server, client included
// (quic-go's http3 client, in the same process), on each engine.
func BenchmarkServerGET(b *testing.B) {
	for _, e := range []struct {
		name   string
		engine Engine
	}{{"quic-go", EngineQuicGo}, {"native", EngineNative}} {
		b.Run(e.name, func(b *testing.B) { benchServerGET(b, e.engine) })
	}
}

func benchServerGET(b *testing.B, engine Engine) {
	ts := startServer(b, transport.HandlerFunc(small), func(c *ServerConfig) { c.Engine = engine })
	cl := ts.client(b)
	url := ts.url("/bench")
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		resp, err := cl.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkDialerGET measures a small GET through a Dialer's conn, server
// included (quic-go's http3.Server, in the same process).
func BenchmarkDialerGET(b *testing.B) {
	u := startUpstreamB(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello, world\n"))
	}))
	d := NewDialer(DialerConfig{TLS: u.clientTLS})
	defer d.Close()
	c, err := d.Dial(testCtx(b), u.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &transport.Request{Method: "GET", Scheme: "https", Authority: u.addr, Path: "/bench", Header: http.Header{}, Body: http.NoBody}
	ctx := testCtx(b)
	buf := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		c.Reserve()
		resp, err := c.RoundTrip(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := resp.Body.Read(buf); err != nil {
				break
			}
		}
		resp.Body.Close()
	}
}
