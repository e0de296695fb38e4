package h2

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// h2tTunnelEcho accepts a tunnel with 200 and echoes the client's bytes
// until the client ends its side; then it writes "bye" and finishes.
func h2tTunnelEcho(seen chan<- transport.Request) transport.Handler {
	return transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		seen <- *req
		if err := s.WriteHeader(http.StatusOK, http.Header{"Sec-Websocket-Protocol": {"chat"}}, -1); err != nil {
			return
		}
		s.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := req.Body.Read(buf)
			if n > 0 {
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

// TestServerExtendedConnect: the server advertises
// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3) whatever GODEBUG says, and
// an extended CONNECT for websocket reaches the handler with Protocol set;
// after the 200 the stream carries the tunnel both ways.
func TestServerExtendedConnect(t *testing.T) {
	h2tCheckLeaks(t)
	seen := make(chan transport.Request, 1)
	ts := h2tStartServer(t, h2tTunnelEcho(seen), ServerConfig{})

	raw := h2tDialRaw(t, ts.addr)
	enabled := false
	raw.next("the server's SETTINGS", func(f http2.Frame) bool {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return false
		}
		v, ok := sf.Value(http2.SettingEnableConnectProtocol)
		enabled = ok && v == 1
		return true
	})
	if !enabled {
		t.Fatal("SETTINGS_ENABLE_CONNECT_PROTOCOL is not advertised: has x/net's switch moved?")
	}

	cc := h2tDialClient(t, ts.addr)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(h2tTestCtx(t), http.MethodConnect, "https://localhost/chat?room=1", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	r := h2tRecv(t, seen, "the request")
	if r.Protocol != "websocket" || r.Method != http.MethodConnect || r.Path != "/chat?room=1" || r.Authority != "localhost" ||
		r.ContentLength != 0 || r.Header.Get("Sec-Websocket-Version") != "13" {
		t.Errorf("request: protocol %q method %q path %q authority %q length %d header %v",
			r.Protocol, r.Method, r.Path, r.Authority, r.ContentLength, r.Header)
	}
	if _, ok := r.Header[":protocol"]; ok {
		t.Error(":protocol left in the header")
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
	pw.Close() // END_STREAM: the handler reads EOF
	if rest, err := io.ReadAll(res.Body); string(rest) != "bye" || err != nil {
		t.Errorf("after END_STREAM: %q %v", rest, err)
	}
}

// TestServerOtherConnect: a CONNECT with another :protocol, or a classic
// CONNECT, is answered 501 and never reaches the handler.
func TestServerOtherConnect(t *testing.T) {
	h2tCheckLeaks(t)
	called := make(chan transport.Request, 2)
	ts := h2tStartServer(t, h2tTunnelEcho(called), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)
	for _, tc := range []struct{ name, url, protocol string }{
		{"connect-udp", "https://localhost/.well-known/masque/udp/a/53/", "connect-udp"},
		{"classic", "https://localhost:443", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(h2tTestCtx(t), http.MethodConnect, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.protocol != "" {
				req.Header.Set(":protocol", tc.protocol)
			}
			res, err := cc.RoundTrip(req)
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
