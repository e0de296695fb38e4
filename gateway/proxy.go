package gateway

import (
	"io"
	"net/http"
	"runtime/debug"
	"sync"

	"github.com/proxynow/proxynow/transport"
)

// exchange is the per-request scratch state of the proxy. It is pooled, with
// its 1xx callback bound once, so a request allocates neither.
type exchange struct {
	s      transport.ServerStream
	onInfo func(status int, h http.Header) error
	buf    []byte
	body   limitedBody
}

var exchangePool = sync.Pool{New: func() any {
	ex := &exchange{buf: make([]byte, 32<<10)}
	ex.onInfo = ex.writeInformational
	return ex
}}

func (ex *exchange) writeInformational(status int, h http.Header) error {
	stripHopByHop(h)
	return ex.s.WriteInformational(status, h)
}

// ServeStream proxies one exchange. It implements transport.Handler. A panic
// is recovered here, counted, and resets this stream only.
func (g *Gateway) ServeStream(s transport.ServerStream) {
	defer func() {
		if p := recover(); p != nil {
			g.panics.Add(1)
			g.log.Error("panic serving stream", "panic", p, "stack", string(debug.Stack()))
			s.Reset(transport.CodeInternal)
		}
	}()
	g.active.Add(1)
	defer g.active.Add(-1)
	st := g.acquire()
	defer st.release()
	ex := exchangePool.Get().(*exchange)
	ex.s = s
	code := g.proxy(st, ex)
	ex.s = nil
	ex.body = limitedBody{}
	exchangePool.Put(ex)
	if code != transport.CodeNone && g.log.Enabled(s.Context(), levelDebug) {
		req := s.Request()
		g.log.Debug("request failed", "proto", req.Proto.String(), "method", req.Method,
			"authority", req.Authority, "path", req.Path, "code", code.String())
	}
}

// proxy runs one exchange and returns the code it ended with.
func (g *Gateway) proxy(st *state, ex *exchange) transport.Code {
	s := ex.s
	req := s.Request()
	h := req.Header
	// Hop-by-hop fields go first, before anything reads or adds fields
	// (RFC 9110 §7.6.1).
	stripHopByHop(h)
	// The downstream server answered any Expect: 100-continue itself.
	delete(h, "Expect")

	if req.EarlyData {
		if !safeMethod(req.Method) {
			return fail(s, transport.CodeTooEarly)
		}
		h["Early-Data"] = earlyDataValue // RFC 8470 §5.1
	}
	rt := st.router.match(req.Authority, req.Path)
	if rt == nil {
		return fail(s, transport.CodeNoRoute)
	}
	if st.maxBody > 0 {
		if req.ContentLength > st.maxBody {
			return fail(s, transport.CodeBodyTooLarge)
		}
		if req.ContentLength < 0 {
			ex.body = limitedBody{r: req.Body, left: st.maxBody}
			req.Body = &ex.body
		}
	}
	setForwarded(h, req.RemoteAddr, req.Scheme, req.Authority, st.trusted)
	// Via tells the upstream which protocol the client spoke (RFC 9110 §7.6.3).
	if prior := h["Via"]; len(prior) > 0 {
		h["Via"] = append(prior, viaValues[req.Proto][0])
	} else {
		h["Via"] = viaValues[req.Proto]
	}

	ctx := s.Context()
	c := rt.cluster
	up := c.pick()
	up.active.Add(1)
	defer up.active.Add(-1)

	conn, err := c.pool.Get(ctx, up.addr)
	if err != nil {
		return fail(s, codeOf(ctx, err))
	}
	req.OnInformational = ex.onInfo
	resp, err := conn.RoundTrip(ctx, req)
	req.OnInformational = nil
	if err != nil {
		c.pool.Put(conn)
		if ex.body.left < 0 {
			return fail(s, transport.CodeBodyTooLarge)
		}
		return fail(s, codeOf(ctx, err))
	}

	rh := resp.Header
	stripHopByHop(rh)
	// An upstream's own Alt-Svc describes the upstream, not us.
	delete(rh, "Alt-Svc")
	if rt.altSvc && req.Proto != transport.ProtoHTTP3 {
		if g.Draining() {
			rh["Alt-Svc"] = altSvcClear // RFC 7838 §3
		} else {
			rh["Alt-Svc"] = st.altSvc
		}
	}
	length := resp.ContentLength
	if len(resp.Trailer) > 0 || len(rh["Trailer"]) > 0 {
		length = -1 // trailers need a framing that carries them
	}
	code := transport.CodeNone
	if err := s.WriteHeader(resp.Status, rh, length); err != nil {
		code = transport.CodeClientCancelled
	} else {
		code = copyBody(s, resp.Body, ex.buf, length < 0)
	}
	resp.Body.Close()
	c.pool.Put(conn)
	switch code {
	case transport.CodeNone:
		if err := s.Finish(resp.Trailer); err != nil {
			return transport.CodeClientCancelled
		}
	case transport.CodeClientCancelled:
		s.Reset(code)
	default:
		// The response has started: the client can only learn of the
		// failure from a reset (or, on HTTP/1.1, a truncated body).
		s.Reset(code)
	}
	return code
}

// copyBody streams the upstream body to the client with the pooled buffer.
// flush sends each piece at once, for bodies of unknown length (streams, SSE).
func copyBody(s transport.ServerStream, body io.Reader, buf []byte, flush bool) transport.Code {
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := s.Write(buf[:n]); err != nil {
				return transport.CodeClientCancelled
			}
			if flush {
				if err := s.Flush(); err != nil {
					return transport.CodeClientCancelled
				}
			}
		}
		if rerr == io.EOF {
			return transport.CodeNone
		}
		if rerr != nil {
			if s.Context().Err() != nil {
				return transport.CodeClientCancelled
			}
			if c := transport.CodeOf(rerr); c != transport.CodeInternal {
				return c
			}
			return transport.CodeUpstreamReset
		}
	}
}

// fail answers s with the error response for code and returns code.
func fail(s transport.ServerStream, code transport.Code) transport.Code {
	writeError(s, code)
	return code
}

// codeOf classifies an upstream error: once the client has gone, whatever
// failed upstream is the client's doing.
func codeOf(ctx interface{ Err() error }, err error) transport.Code {
	if ctx.Err() != nil {
		return transport.CodeClientCancelled
	}
	return transport.CodeOf(err)
}

func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, "TRACE":
		return true
	}
	return false
}

var (
	viaValues = [...][]string{
		0:                    {"1.1 " + ProxyName},
		transport.ProtoHTTP1: {"1.1 " + ProxyName},
		transport.ProtoHTTP2: {"2 " + ProxyName},
		transport.ProtoHTTP3: {"3 " + ProxyName},
	}
	earlyDataValue = []string{"1"}
	altSvcClear    = []string{"clear"}
)

// limitedBody fails a request body of unknown length once it exceeds the
// limit, with CodeBodyTooLarge.
type limitedBody struct {
	r    io.Reader
	left int64
}

var errBodyTooLarge = transport.CodeBodyTooLarge.Err()

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, errBodyTooLarge
	}
	return n, err
}
