package gateway

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

// fakeStream is a ServerStream that records the response: a narrow seam for
// the proxy logic; the end-to-end tests in cmd/proxynow use real servers.
type fakeStream struct {
	ctx     context.Context
	req     *transport.Request
	status  int
	header  http.Header
	body    bytes.Buffer
	trailer http.Header
	reset   transport.Code
	done    bool
}

func (s *fakeStream) Context() context.Context                  { return s.ctx }
func (s *fakeStream) Request() *transport.Request               { return s.req }
func (s *fakeStream) WriteInformational(int, http.Header) error { return nil }
func (s *fakeStream) WriteHeader(st int, h http.Header, _ int64) error {
	s.status, s.header = st, h
	return nil
}
func (s *fakeStream) Write(p []byte) (int, error) { return s.body.Write(p) }
func (s *fakeStream) Flush() error                { return nil }
func (s *fakeStream) Finish(t http.Header) error  { s.trailer, s.done = t, true; return nil }
func (s *fakeStream) Reset(c transport.Code)      { s.reset = c }

// fakeConn answers every request with fn.
type fakeConn struct {
	mu   sync.Mutex
	busy int
	fn   func(*transport.Request) (*transport.Response, error)
}

func (c *fakeConn) Reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy++
	return true
}
func (c *fakeConn) Release() { c.mu.Lock(); c.busy--; c.mu.Unlock() }
func (c *fakeConn) RoundTrip(ctx context.Context, req *transport.Request) (*transport.Response, error) {
	resp, err := c.fn(req)
	c.Release()
	return resp, err
}
func (c *fakeConn) Available() int                 { return 100 }
func (c *fakeConn) Idle() bool                     { c.mu.Lock(); defer c.mu.Unlock(); return c.busy == 0 }
func (c *fakeConn) Err() error                     { return nil }
func (c *fakeConn) Shutdown(context.Context) error { return nil }
func (c *fakeConn) Close() error                   { return nil }

func newTestGateway(t *testing.T, yaml string, fn func(*transport.Request) (*transport.Response, error)) *Gateway {
	t.Helper()
	cfg, err := ParseConfig("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	conn := &fakeConn{fn: fn}
	g, err := New(Options{Config: cfg, HTTP3Port: 8443, Dialers: func(DialerSpec) (transport.Dialer, error) {
		return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return conn, nil }), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

const oneCluster = `
clusters:
  - {name: app, servers: ["127.0.0.1:1"]}
`

func newReq(method string, early bool, body string) *transport.Request {
	return &transport.Request{
		Method: method, Scheme: "https", Authority: "example.com", Path: "/x",
		Header: http.Header{}, ContentLength: int64(len(body)), Body: strings.NewReader(body),
		Proto: transport.ProtoHTTP3, RemoteAddr: netip.MustParseAddrPort("192.0.2.1:5000"), TLS: true, EarlyData: early,
	}
}

func okResponse(req *transport.Request) (*transport.Response, error) {
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return nil, err
	}
	return &transport.Response{Status: 200, Header: http.Header{"X-Early": req.Header["Early-Data"]}, ContentLength: 2, Body: io.NopCloser(strings.NewReader("ok"))}, nil
}

// TestEarlyData: a request received in 0-RTT is forwarded with Early-Data: 1
// when its method is safe and refused with 425 otherwise (RFC 8470).
func TestEarlyData(t *testing.T) {
	var upstreamCalls int
	g := newTestGateway(t, oneCluster, func(r *transport.Request) (*transport.Response, error) {
		upstreamCalls++
		return okResponse(r)
	})
	s := &fakeStream{ctx: context.Background(), req: newReq("GET", true, "")}
	g.ServeStream(s)
	if s.status != 200 || s.header.Get("X-Early") != "1" {
		t.Errorf("early GET: status %d, upstream saw Early-Data %q", s.status, s.header.Get("X-Early"))
	}
	s = &fakeStream{ctx: context.Background(), req: newReq("POST", true, "data")}
	g.ServeStream(s)
	if s.status != http.StatusTooEarly || upstreamCalls != 1 {
		t.Errorf("early POST: status %d, upstream calls %d", s.status, upstreamCalls)
	}
	s = &fakeStream{ctx: context.Background(), req: newReq("POST", false, "data")}
	g.ServeStream(s)
	if s.status != 200 || s.header.Get("X-Early") != "" {
		t.Errorf("POST after handshake: status %d, Early-Data %q", s.status, s.header.Get("X-Early"))
	}
}

func TestBodyLimit(t *testing.T) {
	g := newTestGateway(t, "limits: {max_body_bytes: 10}\n"+oneCluster, okResponse)
	s := &fakeStream{ctx: context.Background(), req: newReq("POST", false, strings.Repeat("x", 11))}
	g.ServeStream(s)
	if s.status != 413 {
		t.Errorf("declared length over the limit: status %d", s.status)
	}
	req := newReq("POST", false, strings.Repeat("x", 11))
	req.ContentLength = -1
	s = &fakeStream{ctx: context.Background(), req: req}
	g.ServeStream(s)
	if s.status != 413 {
		t.Errorf("unknown length over the limit: status %d", s.status)
	}
}

// TestPanicRecovered: a panic while proxying resets that stream only.
func TestPanicRecovered(t *testing.T) {
	g := newTestGateway(t, oneCluster, func(*transport.Request) (*transport.Response, error) { panic("boom") })
	s := &fakeStream{ctx: context.Background(), req: newReq("GET", false, "")}
	g.ServeStream(s)
	if s.reset != transport.CodeInternal || g.Panics() != 1 {
		t.Errorf("reset %v, panics %d", s.reset, g.Panics())
	}
}

// BenchmarkProxyFake measures the gateway's own per-request cost around a
// fake upstream conn (no sockets): routing, header work, pool, body copy.
func BenchmarkProxyFake(b *testing.B) {
	cfg, err := ParseConfig("bench.yaml", []byte(oneCluster))
	if err != nil {
		b.Fatal(err)
	}
	resp := &transport.Response{Status: 200, ContentLength: 2}
	body := &rewindReader{s: "ok"}
	conn := &fakeConn{fn: func(*transport.Request) (*transport.Response, error) {
		body.i = 0
		resp.Header = http.Header{"Content-Type": {"text/plain"}}
		resp.Body = body
		return resp, nil
	}}
	g, err := New(Options{Config: cfg, Dialers: func(DialerSpec) (transport.Dialer, error) {
		return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return conn, nil }), nil
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	req := newReq("GET", false, "")
	s := &fakeStream{ctx: context.Background(), req: req}
	b.ReportAllocs()
	for b.Loop() {
		req.Header = http.Header{"User-Agent": {"bench"}}
		s.body.Reset()
		g.ServeStream(s)
	}
}

type rewindReader struct {
	s string
	i int
}

func (r *rewindReader) Read(p []byte) (int, error) {
	if r.i >= len(r.s) {
		return 0, io.EOF
	}
	n := copy(p, r.s[r.i:])
	r.i += n
	return n, nil
}
func (r *rewindReader) Close() error { return nil }

// BenchmarkProxyRefused measures the failure path: every dial is refused.
// Compare its allocations with BenchmarkProxyFake's success path. The pool's
// dial back-off (pool.dial_backoff, on by default) makes most requests fail
// at once with the last dial's error; a dial, with its waiter and goroutine,
// happens once per back-off window (10ms doubling to 250ms).
func BenchmarkProxyRefused(b *testing.B) {
	benchRefusedUpstream(b, `{consecutive_failures: -1}`, false, 502)
}

// BenchmarkProxyEjected measures the failure path once outlier detection has
// ejected the only upstream: 503 at once, no dial.
func BenchmarkProxyEjected(b *testing.B) {
	benchRefusedUpstream(b, `{consecutive_failures: 1, base_ejection: 1h}`, true, 503)
}

// benchRefusedUpstream proxies requests to a cluster whose one upstream
// refuses every dial, with the given outlier detection and no retries; warm
// sends one request before the loop. Each response must have status want.
func benchRefusedUpstream(b *testing.B, outlier string, warm bool, want int) {
	cfg, err := ParseConfig("bench.yaml", []byte(`
clusters:
  - {name: app, servers: ["127.0.0.1:1"], retries: {max: -1}, outlier_detection: `+outlier+`}
`))
	if err != nil {
		b.Fatal(err)
	}
	refused := transport.CodeConnectRefused.Err()
	g, err := New(Options{Config: cfg, Dialers: func(DialerSpec) (transport.Dialer, error) {
		return transport.DialerFunc(func(context.Context, string) (transport.Conn, error) { return nil, refused }), nil
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	req := newReq("GET", false, "")
	s := &fakeStream{ctx: context.Background(), req: req}
	if warm {
		g.ServeStream(s)
	}
	b.ReportAllocs()
	for b.Loop() {
		req.Header = http.Header{"User-Agent": {"bench"}}
		s.body.Reset()
		g.ServeStream(s)
		if s.status != want {
			b.Fatalf("status %d, want %d", s.status, want)
		}
	}
}
