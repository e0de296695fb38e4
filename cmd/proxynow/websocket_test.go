package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"

	"github.com/proxynow/proxynow/transport"
)

// WebSocket opcodes (RFC 6455 §5.2).
const (
	wsText   = 0x1
	wsBinary = 0x2
	wsClose  = 0x8
)

// wsWriteFrame writes one final, masked client frame (RFC 6455 §5.2, §5.3)
// in one Write, so that it travels as one DATA frame or TLS record.
func wsWriteFrame(w io.Writer, op byte, payload []byte) error {
	b := make([]byte, 0, 14+len(payload))
	b = append(b, 0x80|op)
	switch l := len(payload); {
	case l < 126:
		b = append(b, 0x80|byte(l))
	case l <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(l))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(l))
	}
	var key [4]byte
	rand.Read(key[:])
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	_, err := w.Write(b)
	return err
}

// wsReadFrame reads one server frame: final and unmasked, as a server's
// must be (RFC 6455 §5.1), the only kind our upstream sends.
func wsReadFrame(r io.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("frame header %x: fragmented or masked", h)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

func wsAccept(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// wsUpstream is a WebSocket echo server on HTTP/1.1 (x/net/websocket): it
// echoes every message with its type, and answers a Close with a Close.
// Each handshake's request header goes to handshakes; /deny refuses with 403.
type wsUpstream struct {
	*testUpstream
	handshakes chan http.Header
}

type wsMessage struct {
	data []byte
	typ  byte
}

var wsEchoCodec = websocket.Codec{
	Marshal: func(v any) ([]byte, byte, error) {
		m := v.(wsMessage)
		return m.data, m.typ, nil
	},
	Unmarshal: func(data []byte, typ byte, v any) error {
		m := v.(*wsMessage)
		m.data, m.typ = data, typ
		return nil
	},
}

func startWSUpstream(t *testing.T) *wsUpstream {
	t.Helper()
	u := &wsUpstream{testUpstream: &testUpstream{proto: "h1"}, handshakes: make(chan http.Header, 16)}
	srv := websocket.Server{
		Handshake: func(cfg *websocket.Config, r *http.Request) error {
			u.requests.Add(1)
			u.handshakes <- r.Header.Clone()
			if r.URL.Path == "/deny" {
				return errors.New("denied")
			}
			if len(cfg.Protocol) > 0 {
				cfg.Protocol = cfg.Protocol[:1] // the first one offered
			}
			return nil
		},
		Handler: func(ws *websocket.Conn) {
			defer ws.Close() // sends a Close frame, then closes the conn
			for {
				var m wsMessage
				if err := wsEchoCodec.Receive(ws, &m); err != nil {
					return // a Close frame reads as io.EOF
				}
				if err := wsEchoCodec.Send(ws, m); err != nil {
					return
				}
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(countingListener{ln, &u.conns})
	u.close = func() { hs.Close() }
	t.Cleanup(u.close)
	return u
}

// handshake returns the header of the next handshake the upstream saw.
func (u *wsUpstream) handshake(t *testing.T) http.Header {
	t.Helper()
	select {
	case h := <-u.handshakes:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream saw no handshake")
		return nil
	}
}

// wsClient is the client's end of a WebSocket through the gateway.
type wsClient struct {
	status     int
	header     http.Header // of the 101 (h1) or 200 (h2, h3) response
	key        string      // the Sec-WebSocket-Key sent (h1 only)
	r          io.Reader   // the server's frames
	w          io.Writer   // the client's frames
	closeWrite func() error
}

// dialWS opens a WebSocket to the gateway at path, speaking proto: an
// HTTP/1.1 Upgrade, or an HTTP/2 or HTTP/3 extended CONNECT. It offers the
// subprotocols "chat, superchat".
func dialWS(t *testing.T, f *fixture, proto, path string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	ws := &wsClient{}
	switch proto {
	case "h1":
		c := rawTLS(t, f)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		var k [16]byte
		rand.Read(k[:])
		ws.key = base64.StdEncoding.EncodeToString(k[:])
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"+
			"Origin: https://localhost\r\n\r\n", path, ws.key)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatalf("h1 handshake: %v", err)
		}
		ws.status, ws.header = resp.StatusCode, resp.Header
		ws.r, ws.w, ws.closeWrite = br, c, c.CloseWrite
		if resp.StatusCode != http.StatusSwitchingProtocols {
			io.Copy(io.Discard, resp.Body)
		}
		return ws
	case "h2":
		tc, err := tls.Dial("tcp", "127.0.0.1:"+f.port, &tls.Config{RootCAs: testRoots(t), ServerName: "localhost", NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tc.Close() })
		cc, err := (&http2.Transport{}).NewClientConn(tc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, f.url(path), pr)
		req.Header.Set(":protocol", "websocket") // RFC 8441 §4
		setWSFields(req.Header)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatalf("h2 extended CONNECT: %v", err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		ws.status, ws.header = resp.StatusCode, resp.Header
		ws.r, ws.w, ws.closeWrite = resp.Body, pw, pw.Close
		return ws
	case "h3":
		tr := clientFor(t, "h3").Transport.(*http3.Transport)
		pr, pw := io.Pipe()
		t.Cleanup(func() { pw.Close() })
		req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, f.url(path), pr)
		req.Proto = "websocket" // quic-go sends it as :protocol (RFC 9220)
		setWSFields(req.Header)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("h3 extended CONNECT: %v", err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		ws.status, ws.header = resp.StatusCode, resp.Header
		ws.r, ws.w, ws.closeWrite = resp.Body, pw, pw.Close
		return ws
	}
	t.Fatalf("unknown protocol %q", proto)
	return nil
}

// setWSFields sets the fields of an RFC 8441 handshake: no key.
func setWSFields(h http.Header) {
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Protocol", "chat, superchat")
	h.Set("Origin", "https://localhost")
}

// echo sends one message and checks that it comes back.
func (ws *wsClient) echo(t *testing.T, op byte, msg []byte) {
	t.Helper()
	if err := wsWriteFrame(ws.w, op, msg); err != nil {
		t.Fatalf("writing a frame: %v", err)
	}
	gotOp, got, err := wsReadFrame(ws.r)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if gotOp != op || !bytes.Equal(got, msg) {
		t.Fatalf("echo: opcode %d, %d bytes %.20q; want opcode %d, %d bytes", gotOp, len(got), got, op, len(msg))
	}
}

// close runs the closing handshake (RFC 6455 §7): our Close, the server's
// Close, then the end of both sides.
func (ws *wsClient) close(t *testing.T) {
	t.Helper()
	if err := wsWriteFrame(ws.w, wsClose, []byte{0x03, 0xe8}); err != nil { // 1000, normal closure
		t.Fatalf("writing Close: %v", err)
	}
	op, _, err := wsReadFrame(ws.r)
	if err != nil || op != wsClose {
		t.Fatalf("after our Close: opcode %d, %v; want the server's Close", op, err)
	}
	ws.closeWrite()
	if rest, err := io.ReadAll(ws.r); len(rest) != 0 || err != nil {
		t.Errorf("after the closing handshake: %q, %v; want a clean end", rest, err)
	}
}

// checkHandshake checks what the upstream received for a WebSocket from a
// client speaking proto: a proper HTTP/1.1 handshake.
func checkHandshake(t *testing.T, h http.Header, proto string, ws *wsClient) {
	t.Helper()
	key := h.Get("Sec-Websocket-Key")
	if k, err := base64.StdEncoding.DecodeString(key); err != nil || len(k) != 16 {
		t.Errorf("upstream key %q is not 16 bytes in base64", key)
	}
	if proto == "h1" && key != ws.key {
		t.Errorf("upstream key %q, the client sent %q", key, ws.key)
	}
	want := map[string]string{
		"Upgrade": "websocket", "Connection": "Upgrade", "Sec-Websocket-Version": "13",
		"Sec-Websocket-Protocol": "chat, superchat", "Origin": "https://localhost", "X-Forwarded-Proto": "https",
		"Via": map[string]string{"h1": "1.1", "h2": "2", "h3": "3"}[proto] + " proxynow",
	}
	for k, v := range want {
		if got := h.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("upstream %s: %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"Http2-Settings", "Content-Length", "Transfer-Encoding"} {
		if _, ok := h[k]; ok {
			t.Errorf("upstream received %s", k)
		}
	}
}

// TestWebSocket: a WebSocket through the gateway to an HTTP/1.1 upstream,
// from an HTTP/1.1 Upgrade, an HTTP/2 extended CONNECT (RFC 8441) and an
// HTTP/3 one (RFC 9220): the upstream sees a proper handshake, messages of
// every size echo both ways, and the closing handshake ends both sides.
func TestWebSocket(t *testing.T) {
	up := startWSUpstream(t)
	f := startGateway(t, simpleConfig("h1"), up.testUpstream)
	big := make([]byte, 70000) // a 64-bit payload length
	rand.Read(big)
	for _, proto := range modes {
		t.Run(proto, func(t *testing.T) {
			ws := dialWS(t, f, proto, "/chat?room=1")
			h := up.handshake(t)
			checkHandshake(t, h, proto, ws)
			if proto == "h1" {
				if ws.status != 101 || ws.header.Get("Sec-Websocket-Accept") != wsAccept(ws.key) ||
					ws.header.Get("Upgrade") != "websocket" || ws.header.Get("Connection") != "Upgrade" {
					t.Fatalf("h1 handshake: %d %v", ws.status, ws.header)
				}
			} else if ws.status != 200 || ws.header.Get("Sec-Websocket-Accept") != "" {
				t.Fatalf("%s handshake: %d %v", proto, ws.status, ws.header)
			}
			if p := ws.header.Get("Sec-Websocket-Protocol"); p != "chat" {
				t.Errorf("subprotocol %q, want the upstream's choice, chat", p)
			}
			ws.echo(t, wsText, []byte("hello over "+proto))
			ws.echo(t, wsBinary, big)
			ws.echo(t, wsBinary, big[:300]) // a 16-bit payload length
			// Several in flight at once.
			for i := range 5 {
				if err := wsWriteFrame(ws.w, wsText, []byte(strings.Repeat("m", i+1))); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 5 {
				op, p, err := wsReadFrame(ws.r)
				if err != nil || op != wsText || string(p) != strings.Repeat("m", i+1) {
					t.Fatalf("pipelined message %d: %d %q %v", i, op, p, err)
				}
			}
			ws.close(t)
		})
	}
	if n := up.conns.Load(); n != 3 {
		t.Errorf("upstream conns %d, want one per WebSocket", n)
	}
}

// TestWebSocketRecorded checks what the metrics and the access log say of
// a tunnel: its status (101 over HTTP/1.1, 200 over HTTP/2 and HTTP/3), the
// bytes the upstream sent through it, and the upstream.
func TestWebSocketRecorded(t *testing.T) {
	up := startWSUpstream(t)
	var out lockedBuffer
	l := newLogs(&out, "json", new(slog.LevelVar), 1024)
	f := startGatewayWith(t, simpleConfig("h1"), startOptions{logs: l}, up.testUpstream)
	msg := bytes.Repeat([]byte("w"), 1000)
	for _, proto := range modes {
		ws := dialWS(t, f, proto, "/chat")
		up.handshake(t)
		ws.echo(t, wsBinary, msg)
		ws.close(t)
	}
	// A tunnel is recorded once the gateway's side of it has ended.
	var entries []map[string]any
	waitFor(t, 10*time.Second, "3 tunnels in the access log", func() bool {
		if err := l.access.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		entries = entries[:0]
		for line := range strings.Lines(out.String()) {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["path"] == "/chat" {
				entries = append(entries, e)
			}
		}
		return len(entries) == 3
	})
	// The upstream's bytes: its echo (1000 bytes and a 4-byte frame head)
	// and its Close frame (2 bytes and a 2-byte head).
	const upstreamBytes = 1000 + 4 + 2 + 2
	for _, e := range entries {
		want := 200.0
		if e["proto"] == "h1" {
			want = 101
		}
		if e["status"] != want || e["bytes"] != float64(upstreamBytes) || e["upstream"] != up.addr {
			t.Errorf("access log entry %v: want status %v, %d bytes, upstream %s", e, want, upstreamBytes, up.addr)
		}
	}
	mfs := scrape(t, f.inst.AdminAddr())
	for proto, class := range map[string]string{"h1": "1xx", "h2": "2xx", "h3": "2xx"} {
		if got, _ := metric(mfs, "proxynow_requests_total", "protocol", proto, "status_class", class); got != 1 {
			t.Errorf("proxynow_requests_total{protocol=%s,status_class=%s} = %v, want 1", proto, class, got)
		}
	}
}

// TestWebSocketRefused: an upstream that refuses the handshake is answered
// as it said; a cluster that is not HTTP/1.1 cannot take a WebSocket (501).
func TestWebSocketRefused(t *testing.T) {
	up := startWSUpstream(t)
	f := startGateway(t, simpleConfig("h1"), up.testUpstream)
	h2up := startUpstream(t, "h2")
	f2 := startGateway(t, simpleConfig("h2"), h2up)
	for _, proto := range modes {
		t.Run(proto, func(t *testing.T) {
			if ws := dialWS(t, f, proto, "/deny"); ws.status != http.StatusForbidden {
				t.Errorf("refused by the upstream: status %d, want 403", ws.status)
			}
			up.handshake(t)
			if ws := dialWS(t, f2, proto, "/chat"); ws.status != http.StatusNotImplemented {
				t.Errorf("to an h2 cluster: status %d, want 501", ws.status)
			}
		})
	}
	if n := h2up.requests.Load(); n != 0 {
		t.Errorf("the h2 upstream received %d requests", n)
	}
}

// TestWebSocketDrain: a drain waits for the WebSockets in flight, which keep
// working until their clients close them; at the drain timeout, those still
// open are cut.
func TestWebSocketDrain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout string
		close   bool
	}{
		{"waits", "20s", true},
		{"cuts", "1s", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startWSUpstream(t)
			f := startGateway(t, simpleConfig("h1")+"drain_timeout: "+tc.timeout+"\n", up.testUpstream)
			wss := map[string]*wsClient{}
			for _, proto := range modes {
				wss[proto] = dialWS(t, f, proto, "/chat")
				up.handshake(t)
				wss[proto].echo(t, wsText, []byte("before the drain"))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			drained := make(chan error, 1)
			start := time.Now()
			go func() { drained <- f.inst.Drain(ctx) }()
			waitFor(t, 5*time.Second, "the drain to begin", func() bool { return f.inst.drain.Phase() >= transport.PhaseDraining })
			if !tc.close {
				select {
				case err := <-drained:
					if !errors.Is(err, transport.ErrDrainTimeout) {
						t.Errorf("drain: %v, want the drain timeout", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the drain did not cut the WebSockets at its timeout")
				}
				if el := time.Since(start); el < 900*time.Millisecond {
					t.Errorf("drain ended after %v, before its 1s timeout", el)
				}
				for proto, ws := range wss {
					if _, _, err := wsReadFrame(ws.r); err == nil {
						t.Errorf("%s: the WebSocket still reads after the drain timeout", proto)
					}
				}
				return
			}
			for proto, ws := range wss {
				ws.echo(t, wsText, []byte("during the drain over "+proto))
			}
			select {
			case err := <-drained:
				t.Fatalf("the drain ended (%v) with WebSockets open", err)
			default:
			}
			for _, ws := range wss {
				ws.close(t)
			}
			select {
			case err := <-drained:
				if err != nil {
					t.Errorf("drain: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the drain did not end once the WebSockets closed")
			}
		})
	}
}
