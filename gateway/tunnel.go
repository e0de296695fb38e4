package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// WebSocket tunnels (transport.Request.Protocol "websocket").
//
// A WebSocket handshake comes as an HTTP/1.1 Upgrade (RFC 6455 §4) or as an
// HTTP/2 or HTTP/3 extended CONNECT (RFC 8441, RFC 9220); it always goes to
// the upstream as an HTTP/1.1 Upgrade, so the route's cluster must be h1
// (else 501). An HTTP/1.1 client's handshake passes through: its
// Sec-WebSocket-Key goes up, the upstream's Sec-WebSocket-Accept comes back
// in the 101. An HTTP/2 or HTTP/3 client has no key (RFC 8441 §5): the
// gateway is then the HTTP/1.1 client of the upstream, makes a key, checks
// the accept value and answers the client 200 without it. Either way the
// request first loses its hop-by-hop fields, like any other; the other
// Sec-WebSocket-* fields pass both ways. An upstream answer other than 101 is
// passed on as an ordinary response.
//
// Once switched, the bytes are copied both ways as they come, without
// looking into the frames. The tunnel ends when the upstream closes its side
// (the client's side then ends cleanly: HTTP/1.1 half-close, HTTP/2
// END_STREAM, HTTP/3 FIN) or either side fails (the other is reset or
// closed). When the client ends its side first, the upstream's side is
// half-closed and the upstream gets tunnelLinger to close its own before it
// is cut. A tunnel is a stream like any other: it counts in flight, a drain
// waits for it, and the drain timeout cuts it. The cluster's try timeout
// bounds the handshake; its total and body idle timeouts do not apply to
// the tunnel.

// tunnelLinger is how long the upstream has to end its side of a tunnel
// once the client ended its own.
const tunnelLinger = 5 * time.Second

// tunnelConn is the body of a 101 response from an upstream conn that
// supports upgrades: it reads the upstream's bytes, writes to the upstream,
// and half-closes towards it (see transport.Request.Protocol).
type tunnelConn interface {
	io.ReadCloser
	io.Writer
	CloseWrite() error
}

// websocketGUID is the GUID of the accept value (RFC 6455 §1.3).
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

var (
	// errTunnelLinger ends a tunnel whose upstream did not close its side
	// within tunnelLinger of the client's.
	errTunnelLinger = errors.New("gateway: tunnel linger expired")
	websocketV13    = []string{"13"}
	tunnelBufs      = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// tunnel proxies the WebSocket handshake of ex.s, routed to rt, and then the
// tunnel. It returns the code the exchange ended with.
func (g *Gateway) tunnel(st *state, ex *exchange, rt *route) transport.Code {
	s := ex.s
	req := s.Request()
	c := rt.cluster
	if c.protocol != "h1" {
		return fail(s, transport.CodeNotImplemented)
	}
	if max := c.configRef.MaxConcurrentRequests; max > 0 {
		if c.inflight.Add(1) > int64(max) {
			c.inflight.Add(-1)
			return fail(s, transport.CodeOverloaded)
		}
		defer c.inflight.Add(-1)
	}
	h := req.Header
	var key string // ours, for an HTTP/2 or HTTP/3 client
	if req.Proto != transport.ProtoHTTP1 {
		// RFC 8441 §5: the HTTP/1.1 handshake that the extended CONNECT
		// stands for is a GET with a key. The request says CONNECT again
		// once sent, for the logs.
		defer func(m string) { req.Method = m }(req.Method)
		req.Method = http.MethodGet
		key = websocketKey()
		h["Sec-Websocket-Key"] = []string{key}
		if len(h["Sec-Websocket-Version"]) == 0 {
			h["Sec-Websocket-Version"] = websocketV13
		}
	}
	setForwarded(h, req.RemoteAddr, req.Scheme, req.Authority, st.trusted)
	if prior := h["Via"]; len(prior) > 0 {
		h["Via"] = append(prior, viaValues[req.Proto][0])
	} else {
		h["Via"] = viaValues[req.Proto]
	}

	// The deadlines' ctx is the tunnel's: cancelling it closes the
	// upstream conn. Only the try timeout is armed.
	dl := &deadlines{cfg: c.configRef}
	dl.ctx, dl.cancel = context.WithCancelCause(s.Context())
	defer dl.stop()
	ctx := dl.ctx
	c.budget.deposit()
	var (
		up   *upstreamServer
		conn transport.Conn
		resp *transport.Response
	)
	last := transport.CodeNoHealthyUpstream
	for attempt := 0; ; attempt++ {
		if up = c.pick(up); up == nil {
			return fail(s, last)
		}
		ex.obs.up = up
		var err error
		conn, resp, err = g.try(ctx, c, up, req, ex, dl)
		if err == nil {
			break
		}
		code := codeOf(ctx, err)
		if code == transport.CodeOverloaded || code == transport.CodeClientCancelled {
			return fail(s, code)
		}
		c.report(up, outlierFailure(code, 0))
		last = code
		// The handshake has no body: it may go again when the upstream
		// provably did not take it, or reset it (a GET is idempotent).
		if attempt >= c.configRef.Retries.Max || !retryable(http.MethodGet, err, 0) || !c.budget.withdraw() {
			return fail(s, code)
		}
	}
	c.report(up, outlierFailure(transport.CodeNone, resp.Status))

	rh := resp.Header
	stripHopByHop(rh)
	delete(rh, "Alt-Svc")
	if resp.Status != http.StatusSwitchingProtocols {
		return g.tunnelDeclined(s, c, conn, resp, ex)
	}
	tc, ok := resp.Body.(tunnelConn)
	if !ok || key != "" && !validAccept(rh, key) {
		resp.Body.Close()
		c.pool.Put(conn)
		return fail(s, transport.CodeUpstreamProtocol)
	}
	status := http.StatusSwitchingProtocols
	if key != "" {
		delete(rh, "Sec-Websocket-Accept") // RFC 8441 §5: not used
		status = http.StatusOK
	}
	ex.obs.status = status
	code := transport.CodeNone
	if s.WriteHeader(status, rh, -1) != nil || s.Flush() != nil {
		code = transport.CodeClientCancelled
	} else {
		code = g.pipe(s, req.Body, tc, ex.buf, dl, &ex.obs.bytes)
	}
	dl.cancel(context.Canceled) // the linger must not start from now on
	// The upstream conn is done: closing it also fails a write of the
	// client's bytes still under way.
	tc.Close()
	c.pool.Put(conn)
	if code == transport.CodeNone {
		if s.Finish(nil) != nil {
			return transport.CodeClientCancelled
		}
		return code
	}
	s.Reset(code)
	return code
}

// pipe copies the tunnel both ways until the upstream's side ends, and
// returns the code it ended with (CodeNone for a clean end). The upstream's
// bytes go to the client on this goroutine, with buf, and add to *written;
// the client's go to the upstream on another. That one ends when the client
// ends its side, and otherwise once the exchange ends: the server then fails
// the body's read (every server does when the handler returns), and tc,
// closed by the caller, its write. It is not waited for: with HTTP/2 the
// client sees the end of the tunnel only once the handler returns.
func (g *Gateway) pipe(s transport.ServerStream, body io.Reader, tc tunnelConn, buf []byte, dl *deadlines, written *int64) transport.Code {
	linger := time.AfterFunc(time.Hour, func() { dl.cancel(errTunnelLinger) })
	linger.Stop()
	defer linger.Stop()
	go copyToUpstream(body, tc, dl, linger)
	for {
		n, rerr := tc.Read(buf)
		if n > 0 {
			w, err := s.Write(buf[:n])
			*written += int64(w)
			if err != nil {
				return transport.CodeClientCancelled
			}
			if err := s.Flush(); err != nil {
				return transport.CodeClientCancelled
			}
		}
		if rerr == io.EOF {
			return transport.CodeNone
		}
		if rerr != nil {
			if context.Cause(dl.ctx) == errTunnelLinger {
				return transport.CodeNone // both sides had ended
			}
			return codeOf(dl.ctx, rerr)
		}
	}
}

// copyToUpstream copies the client's side of a tunnel to the upstream. When
// the client ends it, the upstream's side is half-closed and linger armed;
// when the client fails, the tunnel is cut at once.
func copyToUpstream(body io.Reader, tc tunnelConn, dl *deadlines, linger *time.Timer) {
	bp := tunnelBufs.Get().(*[]byte)
	defer tunnelBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := tc.Write(buf[:n]); err != nil {
				// The upstream is gone or the tunnel over: the other
				// direction finds out, or the linger ends it.
				armLinger(dl, linger)
				return
			}
		}
		if rerr == io.EOF {
			tc.CloseWrite()
			armLinger(dl, linger)
			return
		}
		if rerr != nil {
			dl.cancel(transport.CodeClientCancelled.Err())
			return
		}
	}
}

// armLinger starts the upstream's linger, unless the tunnel is over.
func armLinger(dl *deadlines, linger *time.Timer) {
	if dl.ctx.Err() == nil {
		linger.Reset(tunnelLinger)
	}
}

// tunnelDeclined passes on an upstream's answer other than 101 as an
// ordinary response.
func (g *Gateway) tunnelDeclined(s transport.ServerStream, c *cluster, conn transport.Conn, resp *transport.Response, ex *exchange) transport.Code {
	length := resp.ContentLength
	if len(resp.Trailer) > 0 || len(resp.Header["Trailer"]) > 0 {
		length = -1
	}
	ex.obs.status = resp.Status
	code := transport.CodeNone
	if err := s.WriteHeader(resp.Status, resp.Header, length); err != nil {
		code = transport.CodeClientCancelled
	} else {
		code = copyBody(s, resp.Body, ex.buf, length < 0, nil, &ex.obs.bytes)
	}
	resp.Body.Close()
	c.pool.Put(conn)
	if code == transport.CodeNone {
		if s.Finish(resp.Trailer) != nil {
			return transport.CodeClientCancelled
		}
		return code
	}
	s.Reset(code)
	return code
}

// websocketKey returns a fresh Sec-WebSocket-Key: 16 random bytes in base64
// (RFC 6455 §4.1).
func websocketKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// validAccept reports whether h holds the Sec-WebSocket-Accept of key:
// base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
func validAccept(h http.Header, key string) bool {
	v := h["Sec-Websocket-Accept"]
	if len(v) != 1 {
		return false
	}
	sum := sha1.Sum([]byte(key + websocketGUID))
	return v[0] == base64.StdEncoding.EncodeToString(sum[:])
}
