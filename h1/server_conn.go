package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// serverConn is one downstream connection and its goroutine.
type serverConn struct {
	srv    *Server
	nc     net.Conn // the conn served: *tls.Conn or TCP
	raw    net.Conn // the TCP conn under nc
	scheme string
	tls    bool
	remote netip.AddrPort
	start  time.Time
	shard  uint32 // transport.Request.Shard of its requests

	ctx    context.Context // cancelled when the client goes away or the conn closes
	cancel context.CancelCauseFunc

	// state is stateIdle while the conn waits for the first byte of a
	// request (the server's Shutdown may close it then), stateActive from
	// that byte to the end of the response, and stateClosing once Shutdown
	// claimed it.
	state atomic.Int32

	cr  connReader
	br  *bufio.Reader
	bw  *bufio.Writer // on dw
	dw  deadlineWriter
	blk block
	fs  []field

	st stream // reused for each request
}

const (
	stateIdle int32 = iota
	stateActive
	stateClosing
)

// aLongTimeAgo is a deadline in the past, to interrupt a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// closeIfIdle closes c when it waits for a request; Shutdown calls it.
func (c *serverConn) closeIfIdle() {
	if c.state.CompareAndSwap(stateIdle, stateClosing) {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

func (c *serverConn) serve() {
	c.shard = transport.NextShard()
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(&c.cr)
	c.bw = writerPool.Get().(*bufio.Writer)
	c.dw.c = c
	c.bw.Reset(&c.dw)
	defer func() {
		c.cancel(transport.CodeClientCancelled.Err())
		c.nc.Close()
		// After a panic or a Reset the body may still be read elsewhere:
		// stop that before the buffers go back to their pools.
		if b := c.st.body; b != nil {
			b.close()
		}
		c.cr.abortPendingRead()
		c.br.Reset(nil)
		readerPool.Put(c.br)
		c.bw.Reset(nil)
		writerPool.Put(c.bw)
		c.srv.untrack(c)
	}()

	c.nc.SetReadDeadline(c.start.Add(c.srv.cfg.HeaderTimeout))
	for first := true; ; first = false {
		if !c.awaitRequest(first) {
			return
		}
		st := &c.st
		if err := c.readRequest(st); err != nil {
			c.requestError(err)
			return
		}
		// The body's reads have no deadline: the handler bounds them.
		c.nc.SetReadDeadline(time.Time{})
		if st.body == nil || st.body.tunnel {
			// Watch for the client going away while the handler works
			// (a body's reader starts the watch at its EOF; an upgrade's
			// stops it when the protocols switch).
			c.cr.startBackgroundRead()
		}
		if c.runHandler(st) {
			return
		}
		keep, graceful := c.finishRequest(st)
		if !keep {
			if graceful {
				c.closeGracefully()
			}
			return
		}
		// Forget the request: nothing of it must outlive the exchange here.
		st.req = transport.Request{}
		st.body = nil
	}
}

// awaitRequest waits for the first byte of the next request under the idle
// timeout (the header timeout, already set, for the first request), then
// arms the header timeout. It reports false when the conn must close.
func (c *serverConn) awaitRequest(first bool) bool {
	if !first && c.br.Buffered() == 0 && !c.cr.hasPending() {
		c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.IdleTimeout))
	}
	c.state.Store(stateIdle)
	if c.srv.shuttingDown.Load() {
		return false
	}
	if _, err := c.br.Peek(1); err != nil {
		return false
	}
	if !c.state.CompareAndSwap(stateIdle, stateActive) {
		return false // Shutdown closed it
	}
	if !first {
		c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.HeaderTimeout))
	}
	return true
}

// runHandler calls the handler and reports whether it panicked.
func (c *serverConn) runHandler(st *stream) (panicked bool) {
	defer func() {
		if p := recover(); p != nil {
			panicked = true
			c.srv.log.Error("h1: panic serving stream", "remote", c.remote, "panic", p,
				"stack", string(debug.Stack()))
		}
	}()
	c.srv.h.ServeStream(st)
	return false
}

// finishRequest completes the exchange after the handler returned. It
// reports whether the conn may serve another request and, when not, whether
// to close it gracefully (a request body is left unread).
func (c *serverConn) finishRequest(st *stream) (keep, graceful bool) {
	if st.resetCode.Load() != 0 {
		return false, false
	}
	if st.expectContinue {
		// A body read still running elsewhere must not send 100 Continue
		// from now on: the conn's writer is ours again.
		st.contMu.Lock()
		st.cont.CompareAndSwap(contPending, contDisabled)
		st.contMu.Unlock()
	}
	if !st.wroteHeader {
		// The handler did not answer: the gateway always does, so this is
		// a bug; say so to the client, and close.
		c.writeSimple(http.StatusBadGateway, "no response")
		st.closeAfter = true
	} else if !st.finished {
		// A missing Finish: the body is complete only when its length
		// says so; never fake the end of a chunked body.
		if st.mode == modeLength && st.written == st.cl || st.mode == modeNone {
			st.finished = true
		} else {
			st.closeAfter = true
		}
		st.flush()
	}
	if b := st.body; b != nil && !b.finish() {
		st.closeAfter = true
		graceful = true
	}
	c.cr.abortPendingRead()
	if st.closeAfter || st.werr != nil || c.ctx.Err() != nil {
		return false, graceful && st.werr == nil
	}
	return true, false
}

// requestError answers a request that failed before its handler.
func (c *serverConn) requestError(err error) {
	if pe, ok := err.(*protoError); ok {
		c.writeSimple(pe.status, pe.msg)
		c.closeGracefully()
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() && c.blk.n > 0 {
		// Header timeout with a partial request: tell the client why.
		c.writeSimple(http.StatusRequestTimeout, "request header timeout")
	}
}

// deadlineWriter is the writer under the conn's bufio.Writer. It keeps the
// conn's write deadline WriteTimeout ahead, moving it at most every quarter
// of WriteTimeout rather than for every write: a write then fails after at
// least three quarters of WriteTimeout without being able to finish (the
// client stopped reading), and a steady response pays one deadline change
// per several seconds, not per request.
type deadlineWriter struct {
	c    *serverConn
	next time.Time // when the deadline is due to move again
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if now := time.Now(); now.After(w.next) {
		t := w.c.srv.cfg.WriteTimeout
		w.c.nc.SetWriteDeadline(now.Add(t))
		w.next = now.Add(t / 4)
	}
	return w.c.nc.Write(p)
}

// writeSimple writes a short text response with Connection: close.
func (c *serverConn) writeSimple(status int, msg string) {
	bw := c.bw
	bw.Write(statusLine(status))
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n")
	bw.Write(c.srv.date.get(time.Now()))
	var b [20]byte
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(b[:0], int64(len(msg)+1), 10))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(msg)
	bw.WriteByte('\n')
	bw.Flush()
}

// closeGracefully half-closes the conn and waits briefly for the client to
// close its side, reading what it still sends: closing with unread data
// would send a TCP RST that could destroy the response before the client
// reads it.
func (c *serverConn) closeGracefully() {
	c.closeWrite()
	c.cr.abortPendingRead()
	c.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.CopyN(io.Discard, c.raw, 256<<10)
}

// closeWrite half-closes the conn: the client reads the end of the stream
// (after a TLS close_notify) while it can still send.
func (c *serverConn) closeWrite() {
	if tc, ok := c.nc.(interface{ CloseWrite() error }); ok && c.tls {
		tc.CloseWrite() // close_notify
	}
	if tc, ok := c.raw.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
}

// readRequest reads and checks one request head and fills st for it. Any
// error means the conn must close: a *protoError is answered with its status.
func (c *serverConn) readRequest(st *stream) error {
	srv := c.srv
	blk := &c.blk
	if err := blk.read(c.br, srv.lim); err != nil {
		return err
	}

	st.reset()
	req := &st.req
	buf := blk.buf
	rl := blk.lines[0]
	line := buf[rl.start:rl.end]

	// request-line = method SP request-target SP HTTP-version (RFC 9112 §3)
	sp1 := indexByte(line, ' ')
	if sp1 < 0 {
		return errRequestLine
	}
	sp2 := indexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return errRequestLine
	}
	sp2 += sp1 + 1
	method, target, version := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	if len(method) == 0 || len(target) == 0 {
		return errRequestLine
	}
	for _, ch := range method {
		if !isTokenChar(ch) {
			return errMethod
		}
	}
	if len(version) != 8 || string(version[:5]) != "HTTP/" || version[6] != '.' ||
		!isDigit(version[5]) || !isDigit(version[7]) {
		return errRequestLine
	}
	if version[5] != '1' {
		return errVersion // HTTP/2 preface "PRI * HTTP/2.0" lands here
	}
	st.http10 = version[7] == '0'
	for _, ch := range target {
		// visible ASCII only; no fragment (RFC 9112 §3.2)
		if ch <= ' ' || ch >= 0x7f || ch == '#' {
			return errTarget
		}
	}
	if string(method) == "CONNECT" {
		return errConnect
	}

	var err error
	c.fs, err = parseFields(blk, 1, c.fs[:0])
	if err != nil {
		return err
	}
	str := string(buf) // the one copy of the head; strings below are its substrings

	// Request target forms (RFC 9112 §3.2).
	var authority []byte
	absolute := false
	switch {
	case target[0] == '/':
		req.Path = str[rl.start+int32(sp1)+1 : rl.start+int32(sp2)]
	case len(target) == 1 && target[0] == '*':
		if string(method) != "OPTIONS" {
			return errTarget
		}
		req.Path = "*"
	default:
		rest, ok := cutScheme(target)
		if !ok {
			return errTarget
		}
		i := 0
		for i < len(rest) && rest[i] != '/' && rest[i] != '?' {
			i++
		}
		authority = rest[:i]
		if !validHost(authority) { // also rejects userinfo
			return errTarget
		}
		absolute = true
		off := rl.start + int32(sp1) + 1 + int32(len(target)-len(rest))
		req.Authority = str[off : off+int32(i)]
		switch {
		case i == len(rest):
			req.Path = "/"
		case rest[i] == '?':
			req.Path = "/" + str[off+int32(i):rl.start+int32(sp2)]
		default:
			req.Path = str[off+int32(i) : rl.start+int32(sp2)]
		}
	}
	req.Method = internMethod(method, str[rl.start:rl.start+int32(sp1)])

	// Framing and control fields.
	hosts := 0
	var host span
	cl := int64(-1)
	te, chunked := false, false
	expects := 0
	expectContinue := false
	connUpgrade, upgradeWS := false, false
	for i := range c.fs {
		f := &c.fs[i]
		v := buf[f.value.start:f.value.end]
		switch f.kind {
		case kindHost:
			hosts++
			host = f.value
		case kindContentLength:
			if cl, err = parseContentLength(v, cl); err != nil {
				return err
			}
		case kindTransferEncoding:
			te = true
			if chunked, err = parseTransferEncoding(v, chunked); err != nil {
				return err
			}
		case kindExpect:
			expects++
			expectContinue = equalFold(v, "100-continue")
		case kindConnection:
			if hasToken(v, "close") {
				st.reqClose = true
			}
			if hasToken(v, "keep-alive") {
				st.keepAlive = true
			}
			if hasToken(v, "upgrade") {
				connUpgrade = true
			}
		case kindUpgrade:
			if hasToken(v, "websocket") {
				upgradeWS = true
			}
		}
	}
	if st.http10 && !st.keepAlive {
		st.reqClose = true
	}
	if hosts > 1 || hosts == 0 && !st.http10 {
		return errHost
	}
	if !absolute && hosts == 1 {
		hv := buf[host.start:host.end]
		if !validHost(hv) {
			return errHost
		}
		req.Authority = str[host.start:host.end]
	}
	if te {
		if st.http10 {
			return errTEInHTTP10
		}
		if cl >= 0 {
			return errCLAndTE
		}
		if !chunked {
			return errTEUnsupported
		}
	}
	if expects > 0 {
		if expects > 1 || !expectContinue {
			return errExpect
		}
		// An HTTP/1.0 client's 100-continue is ignored (RFC 9110 §10.1.1).
		st.expectContinue = !st.http10
	}

	// A WebSocket upgrade: a GET without content, in HTTP/1.1 (RFC 6455
	// §4.1; an HTTP/1.0 Upgrade is ignored, RFC 9110 §7.8). Any other
	// upgrade is not honoured: its fields stay in Header, hop-by-hop fields
	// for the handler to strip.
	if connUpgrade && upgradeWS && !st.http10 && req.Method == http.MethodGet && !te && cl <= 0 {
		req.Protocol = "websocket"
	}

	req.Scheme = c.scheme
	req.Header = buildHeader(str, c.fs, kindHost|kindContentLength|kindTransferEncoding|kindExpect)
	req.Proto = transport.ProtoHTTP1
	req.RemoteAddr = c.remote
	req.Shard = c.shard
	req.TLS = c.tls
	st.isHead = req.Method == http.MethodHead
	switch {
	case req.Protocol != "":
		// No content; after 101 the body is the client's side of the
		// tunnel.
		req.ContentLength = 0
		st.body = &body{st: st, tunnel: true}
		req.Body = st.body
		st.expectContinue = false
	case te:
		req.ContentLength = -1
		st.body = &body{st: st, chunked: true}
		st.body.ch.init(c.br, &c.blk, c.srv.tlim)
		req.Body = st.body
	case cl > 0:
		req.ContentLength = cl
		st.body = &body{st: st, remaining: cl}
		req.Body = st.body
	default:
		req.ContentLength = 0
		req.Body = http.NoBody
		st.expectContinue = false
	}
	if st.expectContinue {
		st.cont.Store(contPending)
	}
	return nil
}

// parseTransferEncoding checks a Transfer-Encoding value: the only coding
// accepted is chunked, once, last (RFC 9112 §6.1; anything else is 501, a
// repeated chunked 400). chunked says whether an earlier field had it.
func parseTransferEncoding(v []byte, chunked bool) (bool, error) {
	for v != nil {
		var elem []byte
		elem, v = cutList(v)
		switch {
		case len(elem) == 0:
			return false, errTransferEncoding
		case equalFold(elem, "chunked"):
			if chunked {
				return false, errTransferEncoding
			}
			chunked = true
		default:
			for _, ch := range elem {
				if !isTokenChar(ch) && ch != ';' && ch != '=' && ch != ' ' && ch != '\t' && ch != '"' {
					return false, errTransferEncoding
				}
			}
			return false, errTEUnsupported
		}
	}
	return chunked, nil
}

// cutScheme strips "http://" or "https://" (any case) from an absolute-form
// target.
func cutScheme(t []byte) ([]byte, bool) {
	switch {
	case len(t) > 7 && equalFold(t[:7], "http://"):
		return t[7:], true
	case len(t) > 8 && equalFold(t[:8], "https://"):
		return t[8:], true
	}
	return nil, false
}

// internMethod returns the constant string of a common method, so the
// method costs nothing; others are the substring s.
func internMethod(m []byte, s string) string {
	switch string(m) {
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	case "DELETE":
		return http.MethodDelete
	case "OPTIONS":
		return http.MethodOptions
	case "PATCH":
		return http.MethodPatch
	}
	return s
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// connReader is the reader under the conn's bufio.Reader. Between requests
// (once the request body is read) it runs a background read of one byte, to
// notice the client closing while the handler waits on its upstream; the byte
// it may get is kept for the next request.
type connReader struct {
	c *serverConn

	mu      sync.Mutex // guards the fields below
	cond    *sync.Cond // on mu; signalled when inRead goes false
	inRead  bool       // a background read is running
	aborted bool       // abortPendingRead interrupted it
	hasByte bool
	byteBuf [1]byte
}

func (cr *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	cr.mu.Lock()
	if cr.inRead {
		cr.mu.Unlock()
		return 0, errConcurrentRead
	}
	if cr.hasByte {
		p[0] = cr.byteBuf[0]
		cr.hasByte = false
		cr.mu.Unlock()
		return 1, nil
	}
	cr.mu.Unlock()
	return cr.c.nc.Read(p)
}

var errConcurrentRead = errors.New("h1: read during background read")

func (cr *connReader) hasPending() bool {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.hasByte
}

// startBackgroundRead starts watching the conn, unless bytes of a next
// request are already buffered (a pipelining client is still there).
func (cr *connReader) startBackgroundRead() {
	if cr.c.br.Buffered() > 0 {
		return
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.inRead || cr.hasByte {
		return
	}
	cr.inRead = true
	go cr.backgroundRead()
}

func (cr *connReader) backgroundRead() {
	// byteBuf is the background read's alone while inRead is set.
	n, err := cr.c.nc.Read(cr.byteBuf[:])
	cr.mu.Lock()
	if n == 1 {
		cr.hasByte = true
	}
	if err != nil {
		ne, ok := errors.AsType[net.Error](err)
		if !(cr.aborted && ok && ne.Timeout()) {
			// The client closed or reset the conn.
			cr.c.cancel(transport.CodeClientCancelled.Err())
		}
	}
	cr.aborted = false
	cr.inRead = false
	cr.mu.Unlock()
	cr.cond.Broadcast()
}

// abortPendingRead stops the background read and waits for it to end.
func (cr *connReader) abortPendingRead() {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if !cr.inRead {
		return
	}
	cr.aborted = true
	cr.c.nc.SetReadDeadline(aLongTimeAgo)
	for cr.inRead {
		cr.cond.Wait()
	}
	cr.c.nc.SetReadDeadline(time.Time{})
}
