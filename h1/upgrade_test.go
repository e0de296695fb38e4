package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

const wsRequest = "GET /chat HTTP/1.1\nHost: a\nConnection: keep-alive, Upgrade\nUpgrade: websocket\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n"

// tunnelEcho is a handler that accepts an upgrade and echoes the client's
// tunnel bytes, each read prefixed with "echo:", until the client
// half-closes; then it writes "bye" and finishes. It reports the request
// it saw, and what reading the body before the switch returned.
func tunnelEcho(seen chan<- transport.Request) transport.Handler {
	return transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		pre, err := req.Body.Read(make([]byte, 8))
		if pre != 0 || err != io.EOF {
			s.Reset(transport.CodeInternal)
			return
		}
		seen <- *req
		h := http.Header{"Sec-Websocket-Accept": {"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}, "Upgrade": {"bogus"},
			"Connection": {"close"}, "Content-Length": {"5"}}
		if err := s.WriteHeader(http.StatusSwitchingProtocols, h, 5); err != nil {
			return
		}
		buf := make([]byte, 1024)
		for {
			n, err := req.Body.Read(buf)
			if n > 0 {
				s.Write([]byte("echo:"))
				s.Write(buf[:n])
				if s.Flush() != nil {
					return
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		s.Write([]byte("bye"))
		s.Finish(nil)
	})
}

// TestServerUpgrade: a WebSocket upgrade request reaches the handler with
// Protocol "websocket" and an empty body; after 101 the body reads the
// client's bytes (those sent right after the head included), Write sends
// raw bytes, and Finish half-closes, over TCP and TLS.
func TestServerUpgrade(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[useTLS], func(t *testing.T) {
			seen := make(chan transport.Request, 1)
			var c net.Conn
			if useTLS {
				conf, pool := selfSigned(t)
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				tl := transport.NewTLSListener(ln, conf, time.Second)
				go tl.Run()
				s := NewServer(tunnelEcho(seen), ServerConfig{})
				done := make(chan error, 1)
				go func() { done <- s.Serve(tl.Listener("")) }()
				t.Cleanup(func() {
					s.Close()
					tl.Close()
					waitFor(t, done, "Serve")
				})
				tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost"})
				if err != nil {
					t.Fatal(err)
				}
				tc.SetDeadline(time.Now().Add(testTimeout))
				t.Cleanup(func() { tc.Close() })
				c = tc
			} else {
				_, addr := startServer(t, tunnelEcho(seen), ServerConfig{})
				c = dial(t, addr)
			}
			// The first tunnel bytes go with the head: they must wait in
			// the conn's buffer for the switch.
			io.WriteString(c, crlf(wsRequest)+"early")
			req := waitFor(t, seen, "the upgrade request")
			if req.Protocol != "websocket" || req.Method != "GET" || req.ContentLength != 0 {
				t.Errorf("protocol %q method %q content length %d", req.Protocol, req.Method, req.ContentLength)
			}
			if req.Header.Get("Sec-Websocket-Key") != "dGhlIHNhbXBsZSBub25jZQ==" || req.Header.Get("Upgrade") != "websocket" {
				t.Errorf("header %v", req.Header)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 101 || resp.Header.Values("Upgrade")[0] != "websocket" || len(resp.Header.Values("Upgrade")) != 1 ||
				resp.Header.Get("Connection") != "Upgrade" || resp.Header.Get("Sec-Websocket-Accept") == "" ||
				resp.Header.Get("Content-Length") != "" {
				t.Fatalf("101 response: %d %v", resp.StatusCode, resp.Header)
			}
			want := "echo:early"
			got := make([]byte, len(want))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
				t.Fatalf("read %q %v, want %q", got, err, want)
			}
			io.WriteString(c, "hello")
			want = "echo:hello"
			if _, err := io.ReadFull(br, got[:len(want)]); err != nil || string(got[:len(want)]) != want {
				t.Fatalf("read %q %v, want %q", got, err, want)
			}
			// Half-close: the handler reads EOF, sends its last bytes and
			// finishes, which half-closes the server's side.
			if tc, ok := c.(*tls.Conn); ok {
				tc.CloseWrite()
			} else {
				c.(*net.TCPConn).CloseWrite()
			}
			rest, err := io.ReadAll(br)
			if string(rest) != "bye" || err != nil {
				t.Errorf("after half-close: %q %v", rest, err)
			}
		})
	}
}

// TestServerUpgradeDeclined: a handler that answers other than 101 declines
// the upgrade: a normal response, and the conn closes after it.
func TestServerUpgradeDeclined(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		if s.Request().Protocol != "websocket" {
			s.Reset(transport.CodeInternal)
			return
		}
		s.WriteHeader(403, http.Header{}, 2)
		s.Write([]byte("no"))
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, crlf(wsRequest)+crlf("GET / HTTP/1.1\nHost: a\n\n"))
	br := bufio.NewReader(c)
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != 403 || body != "no" || !resp.Close {
		t.Errorf("status %d body %q close %v", resp.StatusCode, body, resp.Close)
	}
	expectClosed(t, br)
}

// TestServerUpgradeNotHonoured: only a WebSocket upgrade of an HTTP/1.1 GET
// without content sets Protocol; other Upgrade requests are ordinary ones
// (their fields stay for the handler to strip), and 101 is refused for them.
func TestServerUpgradeNotHonoured(t *testing.T) {
	type result struct {
		protocol string
		upgrade  string
		err101   error
	}
	got := make(chan result, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		r := s.Request()
		io.Copy(io.Discard, r.Body)
		res := result{protocol: r.Protocol, upgrade: r.Header.Get("Upgrade")}
		if r.Protocol == "" {
			res.err101 = s.WriteHeader(http.StatusSwitchingProtocols, http.Header{}, -1)
		}
		got <- res
		okHandler(s)
	})
	_, addr := startServer(t, h, ServerConfig{})
	for _, tc := range []struct{ name, req, upgrade string }{
		{"h2c", "GET / HTTP/1.1\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\n\n", "h2c"},
		{"no-connection-token", "GET / HTTP/1.1\nHost: a\nConnection: keep-alive\nUpgrade: websocket\n\n", "websocket"},
		{"http10", "GET / HTTP/1.0\nHost: a\nConnection: Upgrade\nUpgrade: websocket\n\n", "websocket"},
		{"post-with-body", "POST / HTTP/1.1\nHost: a\nConnection: Upgrade\nUpgrade: websocket\nContent-Length: 2\n\nhi", "websocket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			io.WriteString(c, crlf(tc.req))
			res := waitFor(t, got, "the request")
			if res.protocol != "" || res.upgrade != tc.upgrade || res.err101 == nil {
				t.Errorf("protocol %q Upgrade %q, WriteHeader(101): %v", res.protocol, res.upgrade, res.err101)
			}
			if resp, body := readResp(t, bufio.NewReader(c), "GET"); resp.StatusCode != 200 || body != "ok" {
				t.Errorf("status %d body %q", resp.StatusCode, body)
			}
		})
	}
}

// TestServerTunnelEnds: a tunnel reset or left without Finish closes the
// conn, and the body reader in another goroutine is released.
func TestServerTunnelEnds(t *testing.T) {
	for _, how := range []string{"reset", "return"} {
		t.Run(how, func(t *testing.T) {
			readErr := make(chan error, 1)
			h := transport.HandlerFunc(func(s transport.ServerStream) {
				s.WriteHeader(http.StatusSwitchingProtocols, http.Header{}, -1)
				body := s.Request().Body
				started := make(chan struct{})
				go func() {
					buf := make([]byte, 4)
					io.ReadFull(body, buf) // "ping"
					close(started)
					_, err := io.ReadAll(body)
					readErr <- err
				}()
				<-started
				s.Write([]byte("pong"))
				s.Flush()
				if how == "reset" {
					s.Reset(transport.CodeUpstreamReset)
				}
			})
			_, addr := startServer(t, h, ServerConfig{})
			c := dial(t, addr)
			io.WriteString(c, crlf(wsRequest)+"ping")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
			if err != nil || resp.StatusCode != 101 {
				t.Fatalf("response %v %v", resp, err)
			}
			if err := waitFor(t, readErr, "the tunnel read"); err == nil {
				t.Error("tunnel read ended cleanly")
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != "pong" {
				t.Errorf("read %q", rest)
			}
		})
	}
}

// wsUpgradeReq is a WebSocket upgrade request for the client.
func wsUpgradeReq() *transport.Request {
	req := getReq("/chat")
	req.Protocol = "websocket"
	req.Header = http.Header{
		"Sec-Websocket-Key":      {"dGhlIHNhbXBsZSBub25jZQ=="},
		"Sec-Websocket-Version":  {"13"},
		"Sec-Websocket-Protocol": {"chat"},
		"Connection":             {"keep-alive"}, // replaced by the client's own
		"Upgrade":                {"h2c"},        // likewise
	}
	return req
}

// tunnelOf returns the tunnel of a 101 response.
func tunnelOf(t *testing.T, resp *transport.Response) interface {
	io.ReadCloser
	io.Writer
	CloseWrite() error
} {
	t.Helper()
	tb, ok := resp.Body.(interface {
		io.ReadCloser
		io.Writer
		CloseWrite() error
	})
	if !ok {
		t.Fatalf("the body of a 101 response (%T) is not a tunnel", resp.Body)
	}
	return tb
}

// TestClientUpgrade: an upgrade request goes out with the client's own
// Connection and Upgrade fields and no framing; a 101 response's body is the
// tunnel both ways, bytes sent with the 101 head included; CloseWrite
// half-closes; the conn is never reused. Over TCP and TLS.
func TestClientUpgrade(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "tls"}[useTLS], func(t *testing.T) {
			conf, pool := selfSigned(t)
			heads := make(chan string, 1)
			addr := rawServer(t, func(c net.Conn) {
				if useTLS {
					tc := tls.Server(c, conf)
					defer tc.Close()
					c = tc
				}
				br := bufio.NewReader(c)
				heads <- readHead(br)
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade, X-Hop\r\n"+
					"X-Hop: 1\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nearly")
				buf := make([]byte, 64)
				for {
					n, err := br.Read(buf)
					if n > 0 {
						io.WriteString(c, "echo:"+string(buf[:n]))
					}
					if err != nil {
						break
					}
				}
				io.WriteString(c, "bye")
			})
			cfg := DialerConfig{}
			if useTLS {
				cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "localhost"}
			}
			c := dialT(t, NewDialer(cfg), addr)
			c.Reserve()
			resp, err := c.RoundTrip(t.Context(), wsUpgradeReq())
			if err != nil {
				t.Fatal(err)
			}
			head := waitFor(t, heads, "the request head")
			for _, want := range []string{"GET /chat HTTP/1.1\r\n", "\r\nConnection: Upgrade\r\n", "\r\nUpgrade: websocket\r\n",
				"\r\nSec-Websocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "\r\nSec-Websocket-Protocol: chat\r\n"} {
				if !strings.Contains(head, want) {
					t.Errorf("request head lacks %q:\n%s", want, head)
				}
			}
			for _, bad := range []string{"keep-alive", "h2c", "Content-Length", "Transfer-Encoding"} {
				if strings.Contains(head, bad) {
					t.Errorf("request head has %q:\n%s", bad, head)
				}
			}
			if resp.Status != 101 || resp.Header.Get("Sec-Websocket-Accept") == "" || resp.Header.Get("Connection") != "" ||
				resp.Header.Get("Upgrade") != "" || resp.Header.Get("X-Hop") != "" {
				t.Errorf("response %d %v", resp.Status, resp.Header)
			}
			tb := tunnelOf(t, resp)
			got := make([]byte, 10)
			if _, err := io.ReadFull(tb, got[:5]); err != nil || string(got[:5]) != "early" {
				t.Fatalf("read %q %v", got[:5], err)
			}
			if _, err := io.WriteString(tb, "hello"); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(tb, got); err != nil || string(got) != "echo:hello" {
				t.Fatalf("read %q %v", got, err)
			}
			if err := tb.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if _, err := tb.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
			rest, err := io.ReadAll(tb)
			if string(rest) != "bye" || err != nil {
				t.Errorf("after half-close: %q %v", rest, err)
			}
			if c.Err() != nil || c.Idle() {
				t.Errorf("tunnel open: conn Err %v Idle %v", c.Err(), c.Idle())
			}
			tb.Close()
			if c.Err() == nil || !c.Idle() {
				t.Errorf("after the tunnel: conn Err %v Idle %v", c.Err(), c.Idle())
			}
		})
	}
}

// TestClientUpgradeRefused: a non-101 answer to an upgrade request is an
// ordinary response (and the conn is not reused); a 101 that does not
// switch to WebSocket is CodeUpstreamProtocol; a protocol other than
// websocket is not sent.
func TestClientUpgradeRefused(t *testing.T) {
	for _, tc := range []struct {
		name, resp string
		code       transport.Code
	}{
		{"declined", "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", transport.CodeNone},
		{"other-protocol", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", transport.CodeUpstreamProtocol},
		{"no-connection", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", transport.CodeUpstreamProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, func(c net.Conn) {
				readHead(bufio.NewReader(c))
				io.WriteString(c, tc.resp)
			})
			c := dialT(t, NewDialer(DialerConfig{}), addr)
			c.Reserve()
			resp, err := c.RoundTrip(t.Context(), wsUpgradeReq())
			if tc.code != transport.CodeNone {
				if !errors.Is(err, tc.code.Err()) {
					t.Errorf("err %v, want %v", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Status != 403 || string(b) != "no" {
				t.Errorf("response %d %q", resp.Status, b)
			}
			if c.Err() == nil {
				t.Error("the conn of a declined upgrade is reused")
			}
		})
	}
	t.Run("unknown-protocol", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn) { readHead(bufio.NewReader(c)) })
		c := dialT(t, NewDialer(DialerConfig{}), addr)
		c.Reserve()
		req := wsUpgradeReq()
		req.Protocol = "h2c"
		if _, err := c.RoundTrip(t.Context(), req); !errors.Is(err, transport.CodeBadRequest.Err()) {
			t.Errorf("err %v, want CodeBadRequest", err)
		}
	})
}

// TestClientTunnelCancel: ending the round trip's ctx cuts the tunnel: a
// blocked Read fails with the ctx's cause and the conn closes.
func TestClientTunnelCancel(t *testing.T) {
	release := make(chan struct{})
	addr := rawServer(t, func(c net.Conn) {
		readHead(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		<-release
	})
	defer close(release)
	c := dialT(t, NewDialer(DialerConfig{}), addr)
	c.Reserve()
	ctx, cancel := context.WithCancelCause(t.Context())
	resp, err := c.RoundTrip(ctx, wsUpgradeReq())
	if err != nil {
		t.Fatal(err)
	}
	tb := tunnelOf(t, resp)
	readErr := make(chan error, 1)
	go func() {
		_, err := tb.Read(make([]byte, 10))
		readErr <- err
	}()
	cancel(transport.CodeDraining.Err())
	if err := waitFor(t, readErr, "the tunnel read"); !errors.Is(err, transport.CodeDraining.Err()) {
		t.Errorf("read: %v, want CodeDraining", err)
	}
	if _, err := tb.Write([]byte("x")); err == nil {
		t.Error("write after cancel succeeded")
	}
	tb.Close()
	if c.Err() == nil || !c.Idle() {
		t.Errorf("conn Err %v Idle %v", c.Err(), c.Idle())
	}
}

// TestClientServerTunnel runs the client's upgrade against the server: the
// two native sides of a tunnel.
func TestClientServerTunnel(t *testing.T) {
	seen := make(chan transport.Request, 1)
	_, addr := startServer(t, tunnelEcho(seen), ServerConfig{})
	c := dialT(t, NewDialer(DialerConfig{}), addr)
	c.Reserve()
	resp, err := c.RoundTrip(t.Context(), wsUpgradeReq())
	if err != nil {
		t.Fatal(err)
	}
	if r := waitFor(t, seen, "the request"); r.Protocol != "websocket" {
		t.Errorf("server saw protocol %q", r.Protocol)
	}
	if resp.Status != 101 || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("response %d %v", resp.Status, resp.Header)
	}
	tb := tunnelOf(t, resp)
	defer tb.Close()
	for _, msg := range []string{"one", "two", strings.Repeat("x", 900)} {
		io.WriteString(tb, msg)
		got := make([]byte, len("echo:")+len(msg))
		if _, err := io.ReadFull(tb, got); err != nil || string(got) != "echo:"+msg {
			t.Fatalf("read %.20q %v", got, err)
		}
	}
	tb.CloseWrite()
	if rest, err := io.ReadAll(tb); string(rest) != "bye" || err != nil {
		t.Errorf("after half-close: %q %v", rest, err)
	}
}
