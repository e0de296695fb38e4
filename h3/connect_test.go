package h3

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// tunnelEcho accepts a tunnel with 200 and echoes the client's bytes until
// the client ends its side; then it writes "bye" and finishes.
func tunnelEcho(seen chan<- transport.Request) transport.Handler {
	return transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		seen <- *req
		if err := s.WriteHeader(http.StatusOK, http.Header{"Sec-Websocket-Protocol": {"chat"}}, -1); err != nil {
			return
		}
		buf := make([]byte, 1024)
		for {
			n, err := req.Body.Read(buf)
			if n > 0 {
				if _, err := s.Write(buf[:n]); err != nil {
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

// TestServerExtendedConnect: an extended CONNECT for websocket (RFC 9220)
// reaches the handler with Protocol set; after the 200 the stream carries
// the tunnel both ways.
func TestServerExtendedConnect(t *testing.T) {
	seen := make(chan transport.Request, 1)
	ts := startServer(t, tunnelEcho(seen), nil)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodConnect, ts.url("/chat?room=1"), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Proto = "websocket" // quic-go's client sends it as :protocol
	req.Header.Set("Sec-WebSocket-Version", "13")
	res, err := ts.client(t).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r transport.Request
	select {
	case r = <-seen:
	case <-time.After(testTimeout):
		t.Fatal("the handler did not see the request")
	}
	if r.Protocol != "websocket" || r.Method != http.MethodConnect || r.Path != "/chat?room=1" || r.Authority != ts.addr ||
		r.ContentLength != 0 || r.Header.Get("Sec-Websocket-Version") != "13" {
		t.Errorf("request: protocol %q method %q path %q authority %q length %d header %v",
			r.Protocol, r.Method, r.Path, r.Authority, r.ContentLength, r.Header)
	}
	if res.StatusCode != 200 || res.Header.Get("Sec-Websocket-Protocol") != "chat" {
		t.Fatalf("response %d %v", res.StatusCode, res.Header)
	}
	for _, msg := range []string{"hello", strings.Repeat("x", 5000)} {
		if _, err := io.WriteString(pw, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(res.Body, got); err != nil || string(got) != msg {
			t.Fatalf("read %.20q %v", got, err)
		}
	}
	pw.Close() // FIN: the handler reads EOF
	if rest, err := io.ReadAll(res.Body); string(rest) != "bye" || err != nil {
		t.Errorf("after FIN: %q %v", rest, err)
	}
}

// TestServerOtherConnect: a CONNECT with another :protocol, or a classic
// CONNECT, is answered 501 and never reaches the handler.
func TestServerOtherConnect(t *testing.T) {
	called := make(chan transport.Request, 2)
	ts := startServer(t, tunnelEcho(called), nil)
	c := ts.client(t)
	for _, tc := range []struct{ name, url, protocol string }{
		{"connect-udp", ts.url("/.well-known/masque/udp/a/53/"), "connect-udp"},
		{"classic", "https://" + ts.addr, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(testCtx(t), http.MethodConnect, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Proto = tc.protocol
			res, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusNotImplemented {
				t.Errorf("status %d", res.StatusCode)
			}
		})
	}
	select {
	case r := <-called:
		t.Errorf("the handler saw %s %s", r.Method, r.Path)
	default:
	}
}
