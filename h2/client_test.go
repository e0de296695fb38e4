package h2

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// h2tUpstreamEcho is the upstream handler of the client tests: it echoes
// the body and reports the request in headers.
func h2tUpstreamEcho(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	w.Header().Set("X-Request-URI", r.RequestURI)
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Method", r.Method)
	w.Header()["X-User-Agent"] = r.Header["User-Agent"]
	w.Header().Set("X-CL", strconv.FormatInt(r.ContentLength, 10))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

// h2tRoundTrip reserves a slot on c, sends req and reads the whole body.
func h2tRoundTrip(t *testing.T, c transport.Conn, req *transport.Request) (*transport.Response, []byte, error) {
	t.Helper()
	if !c.Reserve() {
		t.Fatal("Reserve failed")
	}
	res, err := c.RoundTrip(h2tTestCtx(t), req)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	return res, body, err
}

func h2tReq(method, path string, body io.Reader, cl int64) *transport.Request {
	if body == nil {
		body = http.NoBody
	}
	return &transport.Request{
		Method: method, Scheme: "https", Authority: "upstream.test", Path: path,
		Header: http.Header{}, ContentLength: cl, Body: body,
	}
}

func h2tModes(t *testing.T, f func(t *testing.T, useTLS bool)) {
	t.Run("tls", func(t *testing.T) { f(t, true) })
	t.Run("h2c", func(t *testing.T) { f(t, false) })
}

func TestClientReuse(t *testing.T) {
	h2tModes(t, func(t *testing.T, useTLS bool) {
		h2tCheckLeaks(t)
		u := h2tStartUpstream(t, useTLS, 0, http.HandlerFunc(h2tUpstreamEcho))
		c := h2tDial(t, h2tDialer(t, useTLS, DialerConfig{}), u.addr)
		if c.Available() != 250 {
			t.Errorf("Available %d, want the server's 250", c.Available())
		}
		for i := range 200 {
			payload := strings.Repeat("p", i)
			res, body, err := h2tRoundTrip(t, c, h2tReq("POST", "/r/"+strconv.Itoa(i), strings.NewReader(payload), int64(len(payload))))
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			if res.Status != 200 || string(body) != payload || res.ContentLength != int64(len(payload)) {
				t.Fatalf("request %d: %d, %q, cl %d", i, res.Status, body, res.ContentLength)
			}
			if _, ok := res.Header["Content-Length"]; ok {
				t.Fatal("Content-Length left in Header")
			}
			if got := res.Header.Get("X-Request-URI"); got != "/r/"+strconv.Itoa(i) {
				t.Fatalf("request URI %q", got)
			}
		}
		if !c.Idle() || c.Err() != nil || c.Available() != 250 {
			t.Errorf("after: idle %v err %v available %d", c.Idle(), c.Err(), c.Available())
		}
		if n := u.accepted.Load(); n != 1 {
			t.Errorf("%d conns accepted, want 1", n)
		}
	})
}

func TestClientRequestVerbatim(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(h2tUpstreamEcho))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	for _, path := range []string{"/a%2Fb/c?q=%20x&y", "//lead/ing?x", "/", "/ünï?ä=1"} {
		res, _, err := h2tRoundTrip(t, c, h2tReq("GET", path, nil, 0))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if got := res.Header.Get("X-Request-URI"); got != path {
			t.Errorf(":path %q, want %q", got, path)
		}
		if got := res.Header.Get("X-Host"); got != "upstream.test" {
			t.Errorf(":authority %q", got)
		}
		if ua, ok := res.Header["X-User-Agent"]; ok {
			t.Errorf("a User-Agent was added: %q", ua)
		}
	}
	// A given User-Agent goes through.
	req := h2tReq("GET", "/", nil, 0)
	req.Header.Set("User-Agent", "client/1")
	res, _, err := h2tRoundTrip(t, c, req)
	if err != nil || res.Header.Get("X-User-Agent") != "client/1" {
		t.Errorf("User-Agent: %v %v", res, err)
	}
}

func TestClientCapacity(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, true, 3, http.HandlerFunc(h2tUpstreamEcho))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	if c.Available() != 3 || !c.Idle() {
		t.Fatalf("Available %d Idle %v, want 3 true", c.Available(), c.Idle())
	}
	for i := range 3 {
		if !c.Reserve() {
			t.Fatalf("Reserve %d failed", i)
		}
	}
	if c.Reserve() || c.Available() != 0 || c.Idle() {
		t.Fatalf("over capacity: Available %d Idle %v", c.Available(), c.Idle())
	}
	c.Release()
	if c.Available() != 1 {
		t.Fatalf("Available %d after Release", c.Available())
	}
	// Use the three slots at once; each body close frees one.
	var ress []*transport.Response
	for i := range 3 {
		if i == 2 && !c.Reserve() {
			t.Fatal("Reserve after Release failed")
		}
		res, err := c.RoundTrip(h2tTestCtx(t), h2tReq("GET", "/", nil, 0))
		if err != nil {
			t.Fatal(err)
		}
		ress = append(ress, res)
	}
	if c.Reserve() {
		t.Fatal("Reserve succeeded with three responses open")
	}
	ress[0].Body.Close()
	ress[0].Body.Close() // twice frees once
	if c.Available() != 1 || !c.Reserve() || c.Reserve() {
		t.Fatal("body close did not free exactly one slot")
	}
	c.Release()
	for _, r := range ress[1:] {
		r.Body.Close()
	}
	if !c.Idle() || c.Available() != 3 {
		t.Errorf("at the end: Idle %v Available %d", c.Idle(), c.Available())
	}
}

func TestClientConcurrentStreams(t *testing.T) {
	h2tCheckLeaks(t)
	const n = 50
	var arrived atomic.Int64
	all := make(chan struct{})
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(5 * time.Second):
		}
		h2tUpstreamEcho(w, r)
	}))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		if !c.Reserve() {
			t.Fatal("Reserve failed")
		}
		wg.Go(func() {
			payload := strings.Repeat(strconv.Itoa(i), 1000)
			res, err := c.RoundTrip(h2tTestCtx(t), h2tReq("POST", "/", strings.NewReader(payload), -1))
			if err != nil {
				errs <- err
				return
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || string(body) != payload {
				errs <- errors.New("bad echo")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if arrived.Load() != n || u.accepted.Load() != 1 || !c.Idle() {
		t.Errorf("arrived %d, conns %d, idle %v", arrived.Load(), u.accepted.Load(), c.Idle())
	}
}

// h2tSetAtEOF is a request body that assigns the request's trailers when it
// returns io.EOF, as a server fills them.
type h2tSetAtEOF struct {
	r   io.Reader
	set func()
}

func (b *h2tSetAtEOF) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.set != nil {
		b.set()
		b.set = nil
	}
	return n, err
}

func TestClientTrailers(t *testing.T) {
	h2tModes(t, func(t *testing.T, useTLS bool) {
		h2tCheckLeaks(t)
		u := h2tStartUpstream(t, useTLS, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Trailer", "X-Declared")
			w.WriteHeader(200)
			w.Write(body)
			w.(http.Flusher).Flush()
			w.Header().Set("X-Declared", "d")
			w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
			w.Header().Set(http.TrailerPrefix+"X-Got", r.Trailer.Get("X-Req-Trailer"))
		}))
		c := h2tDial(t, h2tDialer(t, useTLS, DialerConfig{}), u.addr)

		// Declared in req.Trailer, filled in place at EOF (as x/net's
		// server does).
		req := h2tReq("POST", "/", nil, 4)
		req.Trailer = http.Header{"X-Req-Trailer": nil}
		req.Body = &h2tSetAtEOF{r: strings.NewReader("body"), set: func() { req.Trailer.Set("X-Req-Trailer", "one") }}
		res, body, err := h2tRoundTrip(t, c, req)
		if err != nil || string(body) != "body" {
			t.Fatalf("%q %v", body, err)
		}
		want := http.Header{"X-Declared": {"d"}, "X-Undeclared": {"u"}, "X-Got": {"one"}}
		for k, v := range want {
			if res.Trailer.Get(k) != v[0] {
				t.Errorf("response trailer %s = %q, want %q (all: %v)", k, res.Trailer.Get(k), v[0], res.Trailer)
			}
		}

		// Declared by a Trailer field, assigned at EOF (as an HTTP/1.1
		// server does), body of unknown length.
		req = h2tReq("POST", "/", nil, -1)
		req.Header.Set("Trailer", "X-Req-Trailer")
		req.Body = &h2tSetAtEOF{r: strings.NewReader("chunked"), set: func() { req.Trailer = http.Header{"X-Req-Trailer": {"two"}} }}
		res, _, err = h2tRoundTrip(t, c, req)
		if err != nil || res.Trailer.Get("X-Got") != "two" {
			t.Errorf("Trailer field: %v, trailers %v", err, res.Trailer)
		}
		if !c.Idle() {
			t.Error("not idle")
		}
	})
}

func TestClientInformational(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.WriteHeader(200)
		io.WriteString(w, "final")
	}))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	var got []string
	req := h2tReq("GET", "/", nil, 0)
	req.OnInformational = func(status int, h http.Header) error {
		got = append(got, strconv.Itoa(status)+" "+h.Get("Link"))
		return nil
	}
	res, body, err := h2tRoundTrip(t, c, req)
	if err != nil || string(body) != "final" || res.Status != 200 {
		t.Fatalf("%v %q %v", res, body, err)
	}
	if len(got) != 1 || got[0] != "103 </a.css>; rel=preload" {
		t.Errorf("informational: %q", got)
	}
}

func TestClientDialErrors(t *testing.T) {
	h2tCheckLeaks(t)
	ctx := h2tTestCtx(t)

	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = h2tDialer(t, false, DialerConfig{}).Dial(ctx, addr)
		if c := h2tCode(t, err); c != transport.CodeConnectRefused {
			t.Errorf("code %v (%v)", c, err)
		}
	})
	t.Run("tls verify", func(t *testing.T) {
		u := h2tStartUpstream(t, true, 0, http.HandlerFunc(h2tUpstreamEcho))
		d := NewDialer(DialerConfig{TLS: &tls.Config{RootCAs: nil, ServerName: "localhost"}})
		_, err := d.Dial(ctx, u.addr)
		if c := h2tCode(t, err); c != transport.CodeUpstreamTLS {
			t.Errorf("code %v (%v)", c, err)
		}
	})
	t.Run("no h2 alpn", func(t *testing.T) {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", h2tServerTLS(t, "http/1.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		srvDone := make(chan struct{})
		go func() {
			defer close(srvDone)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			io.Copy(io.Discard, c)
			c.Close()
		}()
		_, err = h2tDialer(t, true, DialerConfig{}).Dial(ctx, ln.Addr().String())
		if c := h2tCode(t, err); c != transport.CodeUpstreamProtocol {
			t.Errorf("code %v (%v)", c, err)
		}
		h2tRecv(t, srvDone, "server")
	})
	t.Run("h2c to http1", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(h2tUpstreamEcho)}
		done := make(chan struct{})
		go func() { srv.Serve(ln); close(done) }()
		defer func() { srv.Close(); <-done }()
		_, err = h2tDialer(t, false, DialerConfig{}).Dial(ctx, ln.Addr().String())
		if c := h2tCode(t, err); c != transport.CodeUpstreamProtocol {
			t.Errorf("code %v (%v)", c, err)
		}
	})
	t.Run("TLS handshake timeout", func(t *testing.T) {
		// A peer that accepts TCP but never answers the TLS handshake:
		// TLSHandshakeTimeout ends the dial, not the longer ConnectTimeout.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
		defer func() {
			ln.Close()
			<-done
			for _, c := range conns {
				c.Close()
			}
		}()
		start := time.Now()
		_, err = h2tDialer(t, true, DialerConfig{ConnectTimeout: time.Minute, TLSHandshakeTimeout: 100 * time.Millisecond}).Dial(ctx, ln.Addr().String())
		if c := h2tCode(t, err); c != transport.CodeConnectTimeout {
			t.Errorf("code %v (%v)", c, err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("the dial took %v: ConnectTimeout, not TLSHandshakeTimeout, ended it", d)
		}
		// Without TLS, the silent peer never sends its SETTINGS: the
		// preface exchange is bounded by ConnectTimeout.
		_, err = h2tDialer(t, false, DialerConfig{ConnectTimeout: 100 * time.Millisecond, TLSHandshakeTimeout: time.Minute}).Dial(ctx, ln.Addr().String())
		if c := h2tCode(t, err); c != transport.CodeConnectTimeout {
			t.Errorf("h2c: code %v (%v)", c, err)
		}
	})
	t.Run("caller cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancelCause(ctx)
		cancel(transport.CodeDraining.Err())
		_, err := h2tDialer(t, false, DialerConfig{}).Dial(cctx, "127.0.0.1:1")
		if c := h2tCode(t, err); c != transport.CodeDraining {
			t.Errorf("code %v (%v)", c, err)
		}
	})
}

func TestClientStreamErrors(t *testing.T) {
	h2tCheckLeaks(t)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	handlerCtxDone := make(chan struct{}, 4)
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/rst-mid-body":
			w.Write(bytes.Repeat([]byte("x"), 1000))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case "/rst-before-head":
			panic(http.ErrAbortHandler)
		case "/hang":
			select {
			case <-block:
			case <-r.Context().Done():
				handlerCtxDone <- struct{}{}
			}
		case "/stream":
			w.WriteHeader(200)
			w.Write([]byte("first"))
			w.(http.Flusher).Flush()
			select {
			case <-block:
			case <-r.Context().Done():
				handlerCtxDone <- struct{}{}
			}
		}
	}))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	// The short header timeout bounds every request on its conn: only /hang
	// goes there, so that a slow machine cannot time out the others.
	slow := h2tDial(t, h2tDialer(t, true, DialerConfig{ResponseHeaderTimeout: 200 * time.Millisecond}), u.addr)

	_, body, err := h2tRoundTrip(t, c, h2tReq("GET", "/rst-mid-body", nil, 0))
	if code := h2tCode(t, err); code != transport.CodeUpstreamReset || len(body) != 1000 {
		t.Errorf("mid-body RST: %v (%v), %d bytes", code, err, len(body))
	}
	if te, _ := errors.AsType[*transport.Error](err); te == nil || !te.Remote {
		t.Errorf("mid-body RST not marked remote: %#v", te)
	}
	_, _, err = h2tRoundTrip(t, c, h2tReq("GET", "/rst-before-head", nil, 0))
	if code := h2tCode(t, err); code != transport.CodeUpstreamReset {
		t.Errorf("RST before head: %v (%v)", code, err)
	}

	_, _, err = h2tRoundTrip(t, slow, h2tReq("GET", "/hang", nil, 0))
	if code := h2tCode(t, err); code != transport.CodeResponseTimeout {
		t.Errorf("header timeout: %v (%v)", code, err)
	}
	h2tRecv(t, handlerCtxDone, "upstream stream cancelled after header timeout")
	if slow.Err() != nil || !slow.Idle() {
		t.Errorf("conn after header timeout: err %v idle %v", slow.Err(), slow.Idle())
	}

	// Cancelling ctx mid-body resets the upstream stream.
	ctx, cancel := context.WithCancel(h2tTestCtx(t))
	if !c.Reserve() {
		t.Fatal("Reserve")
	}
	res, err := c.RoundTrip(ctx, h2tReq("GET", "/stream", nil, 0))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("%q %v", buf, err)
	}
	cancel()
	_, err = io.ReadAll(res.Body)
	if code := h2tCode(t, err); code != transport.CodeClientCancelled {
		t.Errorf("body read after cancel: %v (%v)", code, err)
	}
	res.Body.Close()
	h2tRecv(t, handlerCtxDone, "upstream stream cancelled")

	// The conn survived all of it.
	if c.Err() != nil || !c.Idle() {
		t.Errorf("conn: err %v idle %v", c.Err(), c.Idle())
	}
	if _, body, err := h2tRoundTrip(t, c, h2tReq("GET", "/other", nil, 0)); err != nil || len(body) != 0 {
		t.Errorf("after errors: %v", err)
	}
}

func TestClientGoAway(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// x/net's server answers "Connection: close" with a graceful
		// GOAWAY.
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	}))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	_, body, err := h2tRoundTrip(t, c, h2tReq("GET", "/", nil, 0))
	if err != nil || string(body) != "bye" {
		t.Fatalf("%q %v", body, err)
	}
	h2tWaitFor(t, "Err after GOAWAY", func() bool { return c.Err() != nil })
	if code := h2tCode(t, c.Err()); code != transport.CodeUpstreamReset {
		t.Errorf("Err code %v", code)
	}
	if c.Reserve() || c.Available() != 0 {
		t.Error("Reserve succeeded after GOAWAY")
	}
}

func TestClientClosedBeforeUse(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, false, 0, http.HandlerFunc(h2tUpstreamEcho))
	c := h2tDial(t, h2tDialer(t, false, DialerConfig{}), u.addr)
	// The upstream goes away before the conn carried a request.
	u.mu.Lock()
	for _, sc := range u.conns {
		sc.Close()
	}
	u.mu.Unlock()
	h2tWaitFor(t, "Err after close", func() bool { return c.Err() != nil })
	if c.Reserve() {
		t.Error("Reserve succeeded on a closed conn")
	}
}

func TestClientShutdown(t *testing.T) {
	h2tCheckLeaks(t)
	started := make(chan struct{})
	release := make(chan struct{})
	u := h2tStartUpstream(t, true, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "late answer")
	}))
	c := h2tDial(t, h2tDialer(t, true, DialerConfig{}), u.addr)
	if !c.Reserve() {
		t.Fatal("Reserve")
	}
	type result struct {
		body string
		err  error
	}
	rt := make(chan result, 1)
	go func() {
		res, err := c.RoundTrip(h2tTestCtx(t), h2tReq("GET", "/", nil, 0))
		if err != nil {
			rt <- result{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		rt <- result{string(b), err}
	}()
	h2tRecv(t, started, "upstream handler")
	shut := make(chan error, 1)
	go func() { shut <- c.Shutdown(h2tTestCtx(t)) }()
	h2tWaitFor(t, "Err after Shutdown", func() bool { return c.Err() != nil })
	if code := h2tCode(t, c.Err()); code != transport.CodeDraining || c.Reserve() {
		t.Errorf("during Shutdown: Err %v, Reserve allowed", code)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a stream in flight: %v", err)
	default:
	}
	close(release)
	if r := h2tRecv(t, rt, "round trip"); r.err != nil || r.body != "late answer" {
		t.Errorf("in-flight stream: %q %v", r.body, r.err)
	}
	if err := h2tRecv(t, shut, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestProxyChain runs x/net client → Server → handler → conn.RoundTrip → x/net
// upstream: both halves of the package together, trailers and 1xx included.
func TestProxyChain(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, false, 0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</x.js>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Req-Trailer", r.Trailer.Get("X-Sum"))
		w.WriteHeader(200)
		w.Write(body)
		w.Header().Set(http.TrailerPrefix+"X-Resp-Sum", "resp-"+strconv.Itoa(len(body)))
	}))
	c := h2tDial(t, h2tDialer(t, false, DialerConfig{}), u.addr)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		req.OnInformational = s.WriteInformational
		if !c.Reserve() {
			s.Reset(transport.CodeOverloaded)
			return
		}
		res, err := c.RoundTrip(s.Context(), req)
		if err != nil {
			s.Reset(transport.CodeOf(err))
			return
		}
		defer res.Body.Close()
		s.WriteHeader(res.Status, res.Header, res.ContentLength)
		if _, err := io.Copy(s, res.Body); err != nil {
			s.Reset(transport.CodeOf(err))
			return
		}
		s.Finish(res.Trailer)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	payload := strings.Repeat("0123456789", 10000)
	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "POST", "https://localhost/chain?x=1", nil)
	req.Trailer = http.Header{"X-Sum": nil}
	req.Body = io.NopCloser(&h2tSetAtEOF{r: strings.NewReader(payload), set: func() { req.Trailer.Set("X-Sum", "req-sum") }})
	req.ContentLength = -1
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || string(body) != payload {
		t.Fatalf("%d bytes, %v", len(body), err)
	}
	if res.Header.Get("X-Req-Trailer") != "req-sum" {
		t.Errorf("request trailer lost: %v", res.Header)
	}
	if res.Trailer.Get("X-Resp-Sum") != "resp-"+strconv.Itoa(len(payload)) {
		t.Errorf("response trailer lost: %v", res.Trailer)
	}
	h2tWaitFor(t, "upstream slot freed", c.Idle)
}

func BenchmarkClientRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	body := []byte("hello, world")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Length"] = []string{"12"}
		w.Write(body)
	})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		(&http2.Server{}).ServeConn(c, &http2.ServeConnOpts{Handler: h})
	}()
	c, err := NewDialer(DialerConfig{}).Dial(context.Background(), ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := h2tReq("GET", "/", nil, 0)
	req.Header["User-Agent"] = []string{"bench"}
	ctx := context.Background()
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if !c.Reserve() {
			b.Fatal("Reserve")
		}
		res, err := c.RoundTrip(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := res.Body.Read(buf); err != nil {
				break
			}
		}
		res.Body.Close()
	}
}

type h2tFailingBody struct {
	data []byte
	err  error
}

func (b *h2tFailingBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	return 0, b.err
}

func TestClientRequestBodyErrors(t *testing.T) {
	h2tCheckLeaks(t)
	u := h2tStartUpstream(t, false, 0, http.HandlerFunc(h2tUpstreamEcho))
	c := h2tDial(t, h2tDialer(t, false, DialerConfig{}), u.addr)
	cases := []struct {
		name string
		body io.Reader
		cl   int64
		want transport.Code
	}{
		{"short", strings.NewReader("12345"), 10, transport.CodeBadRequest},
		{"long", strings.NewReader("123456789012"), 10, transport.CodeBadRequest},
		{"downstream reset", &h2tFailingBody{[]byte("abc"), transport.CodeClientCancelled.Err()}, -1, transport.CodeClientCancelled},
		{"downstream i/o error", &h2tFailingBody{[]byte("abc"), io.ErrUnexpectedEOF}, -1, transport.CodeClientCancelled},
	}
	for _, tc := range cases {
		_, _, err := h2tRoundTrip(t, c, h2tReq("POST", "/", tc.body, tc.cl))
		if code := h2tCode(t, err); code != tc.want {
			t.Errorf("%s: %v (%v), want %v", tc.name, code, err, tc.want)
		}
	}
	if _, body, err := h2tRoundTrip(t, c, h2tReq("POST", "/", strings.NewReader("fine"), 4)); err != nil || string(body) != "fine" {
		t.Errorf("after: %q %v", body, err)
	}
	if !c.Idle() || c.Err() != nil {
		t.Errorf("idle %v err %v", c.Idle(), c.Err())
	}
}
