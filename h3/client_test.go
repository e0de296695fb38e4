package h3

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/transport"
	"github.com/proxynow/proxynow/transport/transporttest"
)

// upstream is a quic-go http3.Server for the client tests.
type upstream struct {
	srv       *http3.Server
	addr      string
	clientTLS *tls.Config
	conns     atomic.Int32 // connections served
}

func startUpstream(t *testing.T, h http.Handler) *upstream { return startUpstreamB(t, h) }

func startUpstreamB(t testing.TB, h http.Handler) *upstream {
	t.Helper()
	serverTLS, clientTLS := tlsPair(t)
	u := &upstream{addr: "", clientTLS: clientTLS}
	u.srv = &http3.Server{
		Handler:   h,
		TLSConfig: http3.ConfigureTLSConfig(serverTLS),
		ConnContext: func(ctx context.Context, _ *quic.Conn) context.Context {
			u.conns.Add(1)
			return ctx
		},
	}
	pc := listenUDP(t)
	u.addr = pc.LocalAddr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.srv.Serve(pc)
	}()
	t.Cleanup(func() {
		u.srv.Close()
		<-done
	})
	return u
}

func (u *upstream) dialer(t *testing.T, configure func(*DialerConfig)) *Dialer {
	cfg := DialerConfig{TLS: u.clientTLS}
	if configure != nil {
		configure(&cfg)
	}
	d := NewDialer(cfg)
	t.Cleanup(func() { d.Close() })
	return d
}

func (u *upstream) dial(t *testing.T, d *Dialer) transport.Conn {
	t.Helper()
	c, err := d.Dial(testCtx(t), u.addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (u *upstream) request(method, path string, body io.Reader, n int64) *transport.Request {
	if body == nil {
		body = http.NoBody
	}
	return &transport.Request{
		Method: method, Scheme: "https", Authority: u.addr, Path: path,
		Header: http.Header{}, Body: body, ContentLength: n,
	}
}

// exchange reserves a slot, does one round trip and reads the body.
func exchange(t *testing.T, c transport.Conn, req *transport.Request) (*transport.Response, []byte) {
	t.Helper()
	if !c.Reserve() {
		t.Fatalf("Reserve = false (Available %d, Err %v)", c.Available(), c.Err())
	}
	resp, err := c.RoundTrip(testCtx(t), req)
	if err != nil {
		t.Fatalf("RoundTrip %s: %v", req.Path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading %s: %v", req.Path, err)
	}
	return resp, b
}

func TestDialerReuse(t *testing.T) {
	u := startUpstream(t, transporttest.EchoHandler())
	d := u.dialer(t, nil)
	c := u.dial(t, d)
	if n := c.Available(); n != 100 {
		t.Errorf("Available = %d, want the configured 100", n)
	}
	for i := range 100 {
		payload := fmt.Appendf(nil, "request %d", i)
		resp, b := exchange(t, c, u.request(http.MethodPost, fmt.Sprintf("/r/%d", i), bytes.NewReader(payload), int64(len(payload))))
		if resp.Status != 200 || !bytes.Equal(b, payload) {
			t.Fatalf("exchange %d: %d %q", i, resp.Status, b)
		}
		if resp.Trailer.Get(transporttest.TrailerBodySHA256) != patternSumOf(payload) {
			t.Fatalf("exchange %d: trailer %v", i, resp.Trailer)
		}
		if !c.Idle() || c.Err() != nil {
			t.Fatalf("after exchange %d: Idle %v Err %v", i, c.Idle(), c.Err())
		}
	}
	if n := u.conns.Load(); n != 1 {
		t.Errorf("%d QUIC connections, want 1", n)
	}
}

func TestDialerConcurrent(t *testing.T) {
	u := startUpstream(t, transporttest.EchoHandler())
	c := u.dial(t, u.dialer(t, nil))
	const n = 64
	var wg sync.WaitGroup
	// Reserve every slot before any request starts: a request that finishes
	// releases its slot, so Available is only exact before the first one runs.
	for i := range n {
		if !c.Reserve() {
			t.Fatalf("Reserve %d = false", i)
		}
	}
	if got := c.Available(); got != 100-n {
		t.Errorf("Available with %d reserved = %d", n, got)
	}
	for i := range n {
		wg.Go(func() {
			payload := bytes.Repeat([]byte{byte(i)}, 32<<10+i)
			resp, err := c.RoundTrip(testCtx(t), u.request(http.MethodPost, "/c", bytes.NewReader(payload), -1))
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				c.Release()
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(b, payload) {
				t.Errorf("stream %d: %d bytes, %v", i, len(b), err)
			}
			if got := resp.Header.Get(transporttest.HeaderContentLength); got != "-1" {
				t.Errorf("stream %d: upstream saw Content-Length %s, want unknown", i, got)
			}
		})
	}
	wg.Wait()
	if !c.Idle() || c.Available() != 100 {
		t.Errorf("after: Idle %v Available %d", c.Idle(), c.Available())
	}
	if n := u.conns.Load(); n != 1 {
		t.Errorf("%d QUIC connections, want 1", n)
	}
}

func TestDialerRequestFidelity(t *testing.T) {
	type seen struct {
		uri, host, ua string
		hasUA         bool
		header        http.Header
		trailer       string
	}
	got := make(chan seen, 1)
	u := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		_, hasUA := r.Header["User-Agent"]
		got <- seen{r.RequestURI, r.Host, r.UserAgent(), hasUA, r.Header, r.Trailer.Get("X-Req-Trailer")}
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("Trailer", "X-Resp-Trailer")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("ok"))
		w.Header().Set("X-Resp-Trailer", "done")
	}))
	c := u.dial(t, u.dialer(t, nil))
	for _, path := range []string{"/a%2Fb/../c?x=%20&y", "//double//slash?q=1", "/empty-query?", "/plain"} {
		req := u.request(http.MethodPost, path, strings.NewReader("body"), -1)
		req.Authority = "upstream.test:8443"
		req.Header = http.Header{"X-Multi": {"1", "2"}}
		req.Trailer = http.Header{"X-Req-Trailer": nil}
		var infos []int
		req.OnInformational = func(status int, h http.Header) error {
			infos = append(infos, status)
			if h.Get("Link") == "" {
				t.Errorf("1xx without its Link field: %v", h)
			}
			return nil
		}
		// The trailer value becomes known at the end of the body, as when
		// a proxy relays a client's trailers.
		req.Body = &trailerAtEOF{r: req.Body, t: req.Trailer, v: "tv"}
		resp, b := exchange(t, c, req)
		s := <-got
		if s.uri != path || s.host != "upstream.test:8443" {
			t.Errorf("sent %s %s, upstream saw %s %s", req.Authority, path, s.host, s.uri)
		}
		if s.hasUA {
			t.Errorf("User-Agent added: %q", s.ua)
		}
		if _, ok := req.Header["User-Agent"]; ok {
			t.Error("User-Agent left in the caller's header")
		}
		if v := s.header["X-Multi"]; len(v) != 2 {
			t.Errorf("X-Multi = %v", v)
		}
		if s.trailer != "tv" {
			t.Errorf("request trailer = %q", s.trailer)
		}
		if len(infos) != 1 || infos[0] != 103 {
			t.Errorf("1xx seen: %v", infos)
		}
		if string(b) != "ok" || resp.ContentLength != 2 || resp.Header.Get("Content-Length") != "" {
			t.Errorf("response: %q, ContentLength %d, header %v", b, resp.ContentLength, resp.Header)
		}
		if resp.Trailer.Get("X-Resp-Trailer") != "done" {
			t.Errorf("response trailer = %v", resp.Trailer)
		}
	}
}

// trailerAtEOF sets a trailer value when the body ends.
type trailerAtEOF struct {
	r io.Reader
	t http.Header
	v string
}

func (b *trailerAtEOF) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.t.Set("X-Req-Trailer", b.v)
	}
	return n, err
}

func TestDialerErrors(t *testing.T) {
	t.Run("nothing listening", func(t *testing.T) {
		pc := listenUDP(t) // bound, never read: no answer, like a dead host
		d := NewDialer(DialerConfig{ConnectTimeout: 500 * time.Millisecond})
		defer d.Close()
		start := time.Now()
		_, err := d.Dial(testCtx(t), pc.LocalAddr().String())
		el := time.Since(start)
		if transport.CodeOf(err) != transport.CodeConnectTimeout {
			t.Errorf("Dial = %v, want CodeConnectTimeout", err)
		}
		// Timers do not fire early; the upper bound leaves room for a
		// loaded machine and stays below the 5s default.
		if el < 400*time.Millisecond || el > 4*time.Second {
			t.Errorf("Dial failed after %v, want about 500ms", el)
		}
	})
	t.Run("bad certificate", func(t *testing.T) {
		u := startUpstream(t, transporttest.EchoHandler())
		d := NewDialer(DialerConfig{}) // system roots do not know the test CA
		defer d.Close()
		_, err := d.Dial(testCtx(t), u.addr)
		if transport.CodeOf(err) != transport.CodeUpstreamTLS {
			t.Errorf("Dial = %v, want CodeUpstreamTLS", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		d := NewDialer(DialerConfig{})
		defer d.Close()
		_, err := d.Dial(testCtx(t), "no-port")
		if transport.CodeOf(err) != transport.CodeUpstreamUnreachable {
			t.Errorf("Dial = %v, want CodeUpstreamUnreachable", err)
		}
	})
	t.Run("response timeout", func(t *testing.T) {
		u := startUpstream(t, transporttest.EchoHandler())
		c := u.dial(t, u.dialer(t, func(c *DialerConfig) { c.ResponseHeaderTimeout = 200 * time.Millisecond }))
		c.Reserve()
		_, err := c.RoundTrip(testCtx(t), u.request(http.MethodGet, transporttest.PathSlow, nil, 0))
		if transport.CodeOf(err) != transport.CodeResponseTimeout {
			t.Errorf("RoundTrip = %v, want CodeResponseTimeout", err)
		}
		if !c.Idle() {
			t.Error("slot not freed")
		}
	})
}

func TestDialerUpstreamReset(t *testing.T) {
	u := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/reset-head":
			panic(http.ErrAbortHandler) // quic-go resets with H3_INTERNAL_ERROR
		case "/reset-body":
			w.WriteHeader(http.StatusOK)
			w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			<-r.Context().Done() // until the client has read it and asks for the rest
			panic(http.ErrAbortHandler)
		case "/reject":
			str, err := w.(http3.HTTPStreamer).HTTPStream()
			if err != nil {
				t.Error(err)
				return
			}
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
		}
	}))
	c := u.dial(t, u.dialer(t, nil))

	c.Reserve()
	_, err := c.RoundTrip(testCtx(t), u.request(http.MethodGet, "/reset-head", nil, 0))
	if e, ok := errors.AsType[*transport.Error](err); !ok || e.Code != transport.CodeUpstreamReset || !e.Remote {
		t.Errorf("reset before head: %v, want a remote CodeUpstreamReset", err)
	}
	if errors.Is(err, ErrRequestNotProcessed) {
		t.Error("a stream reset with H3_INTERNAL_ERROR reported as not processed")
	}

	c.Reserve()
	_, err = c.RoundTrip(testCtx(t), u.request(http.MethodGet, "/reject", nil, 0))
	if transport.CodeOf(err) != transport.CodeUpstreamReset || !errors.Is(err, ErrRequestNotProcessed) {
		t.Errorf("H3_REQUEST_REJECTED: %v, want CodeUpstreamReset, not processed", err)
	}

	c.Reserve()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	resp, err := c.RoundTrip(ctx, u.request(http.MethodGet, "/reset-body", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 7)); err != nil {
		t.Fatal(err)
	}
	// Closing the body early cancels the stream; the upstream's handler
	// sees its context end and resets.
	resp.Body.Close()
	if !c.Idle() || c.Err() != nil {
		t.Errorf("after an early Close: Idle %v Err %v", c.Idle(), c.Err())
	}
	if n := u.conns.Load(); n != 1 {
		t.Errorf("resets cost the connection: %d connections", n)
	}
}

func TestDialerResetMidBody(t *testing.T) {
	proceed := make(chan struct{})
	u := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		<-proceed
		panic(http.ErrAbortHandler)
	}))
	c := u.dial(t, u.dialer(t, nil))
	c.Reserve()
	resp, err := c.RoundTrip(testCtx(t), u.request(http.MethodGet, "/", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, make([]byte, 7)); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	_, err = io.ReadAll(resp.Body)
	if e, ok := errors.AsType[*transport.Error](err); !ok || e.Code != transport.CodeUpstreamReset || !e.Remote {
		t.Errorf("body read after the upstream's reset: %v, want a remote CodeUpstreamReset", err)
	}
}

func TestDialerShutdown(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	u := startUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		w.Write([]byte("late"))
	}))
	d := u.dialer(t, nil)
	c := u.dial(t, d)
	c.Reserve()
	type result struct {
		resp *transport.Response
		err  error
	}
	rt := make(chan result, 1)
	go func() {
		resp, err := c.RoundTrip(testCtx(t), u.request(http.MethodGet, "/slow", nil, 0))
		rt <- result{resp, err}
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- c.Shutdown(testCtx(t)) }()
	waitFor(t, "Shutdown to begin", func() bool { return c.Err() != nil })
	if c.Reserve() {
		t.Error("Reserve during Shutdown = true")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a stream in flight", err)
	default:
	}
	close(release)
	r := <-rt
	if r.err != nil {
		t.Fatal(r.err)
	}
	b, err := io.ReadAll(r.resp.Body)
	if err != nil || string(b) != "late" {
		t.Errorf("in-flight response: %q %v", b, err)
	}
	r.resp.Body.Close()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return after the stream ended")
	}
	// The last connection gone, the Dialer's socket is closed.
	waitFor(t, "the socket to close", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.tr == nil && d.refs == 0
	})
}

func TestDialerGoAway(t *testing.T) {
	u := startUpstream(t, transporttest.EchoHandler())
	c := u.dial(t, u.dialer(t, nil))
	exchange(t, c, u.request(http.MethodGet, "/", nil, 0))
	go u.srv.Shutdown(testCtx(t))
	// quic-go's client closes an idle connection on GOAWAY.
	waitFor(t, "GOAWAY to show", func() bool { return c.Err() != nil })
	if c.Reserve() || c.Available() != 0 {
		t.Error("a conn that received GOAWAY takes streams")
	}
}

func TestDialerCancel(t *testing.T) {
	u := startUpstream(t, transporttest.EchoHandler())
	c := u.dial(t, u.dialer(t, nil))
	c.Reserve()
	ctx, cancel := context.WithCancel(testCtx(t))
	resp, err := c.RoundTrip(ctx, u.request(http.MethodGet, transporttest.PathSlowBody, nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		read <- err
	}()
	cancel()
	if err := <-read; transport.CodeOf(err) != transport.CodeClientCancelled {
		t.Errorf("body read after cancel: %v, want CodeClientCancelled", err)
	}
	resp.Body.Close()
	if !c.Idle() || c.Err() != nil {
		t.Errorf("after cancel: Idle %v Err %v", c.Idle(), c.Err())
	}
	exchange(t, c, u.request(http.MethodGet, "/after", nil, 0))
}
