package h3

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/proxynow/proxynow/transport"
)

// adapter is the http.Handler that quic-go's http3.Server calls for every
// request. It takes the request stream over from quic-go's response writer
// at once (http3.HTTPStreamer), before anything is written, and from then on
// writes the response frames itself: that gives the ServerStream exact
// control of the head (no Date, Content-Type sniffing or buffering added),
// 1xx responses, trailers, and resets with any error code at any point.
// The request head, the request body and the request trailers stay quic-go's
// to parse.
type adapter Server

// ServeHTTP serves one request.
func (a *adapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := (*Server)(a)
	cs, _ := r.Context().Value(connStateKey{}).(*connState)
	hsr, ok := w.(http3.HTTPStreamer)
	if cs == nil || !ok {
		// Not one of our connections: cannot happen.
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	hs, err := hsr.HTTPStream()
	if err != nil {
		return // nothing was written: cannot fail
	}
	st := &serverStream{srv: s, cs: cs, hr: r, hs: hs, qs: hs.QUICStream(), clen: -1}
	st.isHead = r.Method == http.MethodHead

	count := 0
	for _, vv := range r.Header {
		count += len(vv)
	}
	if count > s.cfg.MaxHeaderCount {
		s.n431.Add(1)
		st.reject(http.StatusRequestHeaderFieldsTooLarge, http3.ErrCodeExcessiveLoad)
		return
	}
	var protocol string
	if r.Method == http.MethodConnect {
		// Only the extended CONNECT of WebSocket (RFC 9220): quic-go
		// puts :protocol in r.Proto ("HTTP/3.0" for a classic CONNECT).
		if !strings.EqualFold(r.Proto, "websocket") {
			st.reject(http.StatusNotImplemented, http3.ErrCodeNoError)
			return
		}
		protocol = "websocket"
	}

	cs.inflight.Add(1)
	defer func() {
		if cs.inflight.Add(-1) == 0 && s.draining.Load() {
			cs.closeWhenIdle()
		}
	}()
	st.initRequest(protocol)
	s.nRequests.Add(1)
	if st.req.EarlyData {
		s.nEarly.Add(1)
	}

	st.ctx, st.cancel = context.WithCancelCause(context.Background())
	// quic-go cancels the stream's send-side context on STOP_SENDING from
	// the client, on our Close or CancelWrite, and when the connection
	// closes; its cause tells which.
	stop := context.AfterFunc(st.sendContext(), st.onStreamDone)
	// On a pooled goroutine: quic-go's, new for each request, would grow
	// its stack anew every time. This one waits.
	s.workers.Do(st)
	stop()
	st.cancel(nil)
}

// serverStream is a transport.ServerStream on an HTTP/3 request stream, for
// both engines: the response side writes its frames to the QUIC stream
// itself. With EngineQuicGo, hr and hs are quic-go's request and stream and
// the request body is quic-go's; with EngineNative they are nil and the
// stream reads its request frames itself (native_stream.go).
type serverStream struct {
	req transport.Request

	srv *Server
	cs  *connState
	hr  *http.Request // EngineQuicGo only
	hs  *http3.Stream // the request stream, taken over from quic-go; EngineQuicGo only
	qs  *quic.Stream  // the QUIC stream (under hs), that response frames are written to

	nat nativeIn // EngineNative: the request side

	ctx    context.Context
	cancel context.CancelCauseFunc

	// Touched by the handler's goroutine only.
	state   uint8 // stateIdle, stateHead or stateDone
	isHead  bool
	noBody  bool      // HEAD, 204 or 304: body bytes are dropped
	clen    int64     // the response's Content-Length, or -1
	written int64     // body bytes written
	wdl     time.Time // when armWrite moves the write deadline again
	fh      [frameHeaderRoom]byte

	resetBy  atomic.Uint32 // 1+Code of the first Reset, 0 if none
	finKnown atomic.Bool   // the request's final size was known at start
}

const (
	stateIdle = iota // no final head yet: 1xx allowed
	stateHead        // final head sent: body allowed
	stateDone        // finished
)

var (
	errInformationalLate = errors.New("h3: WriteInformational after WriteHeader")
	errBadStatus         = errors.New("h3: invalid status code")
	errHeaderTwice       = errors.New("h3: WriteHeader called twice")
	errNoHeader          = errors.New("h3: body or Finish before WriteHeader")
	errFinished          = errors.New("h3: write after Finish")
	errBodyTooLong       = errors.New("h3: response body longer than its Content-Length")
	errBodyTooShort      = errors.New("h3: response body shorter than its Content-Length")
)

// initRequest fills st.req from the request; protocol is its
// transport.Request.Protocol.
func (st *serverStream) initRequest(protocol string) {
	r := st.hr
	h := r.Header
	delete(h, "Content-Length") // framing travels as ContentLength
	delete(h, "Host")           // travels as Authority
	if len(r.Trailer) > 0 {
		// quic-go moved the Trailer field into r.Trailer; it is end-to-end
		// and belongs in the header the gateway forwards.
		keys := make([]string, 0, len(r.Trailer))
		for k := range r.Trailer {
			keys = append(keys, k)
		}
		h["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	cl := r.ContentLength
	var body io.Reader = (*requestBody)(st)
	switch {
	case protocol != "":
		cl = 0 // the tunnel's bytes are not content (transport.Request.Protocol)
	case cl == 0:
		body = http.NoBody
	case cl < 0 && st.bodyless():
		cl, body = 0, http.NoBody
	}
	early := false
	select {
	case <-st.cs.qc.HandshakeComplete():
	default:
		// Received in 0-RTT and the handshake is still not complete, so
		// the request may be a replay (RFC 8470 §5.2). Once the handshake
		// completes, a request on this connection cannot be one.
		early = true
	}
	st.req = transport.Request{
		Method:        r.Method,
		Scheme:        "https",
		Authority:     r.Host,
		Path:          r.RequestURI,
		Header:        h,
		ContentLength: cl,
		Body:          body,
		Protocol:      protocol,
		Proto:         transport.ProtoHTTP3,
		RemoteAddr:    st.cs.remote,
		TLS:           true,
		EarlyData:     early,
		Shard:         st.cs.shard,
	}
}

// bodyless reports whether a request without Content-Length has no body: the
// client's FIN already arrived and no byte follows the head. Then the
// gateway can forward it with Content-Length 0 rather than as a body of
// unknown length (chunked to an HTTP/1.1 upstream). When unsure, it says no.
func (st *serverStream) bodyless() bool {
	st.qs.SetReceiveFinalSizeCallback(func(int64) { st.finKnown.Store(true) })
	st.qs.SetReceiveFinalSizeCallback(nil)
	if !st.finKnown.Load() {
		return false
	}
	// The final size is known: Peek waits at most for bytes the client has
	// sent already (reordered packets), never for the client to decide.
	var b [1]byte
	n, err := st.qs.Peek(b[:])
	return n == 0 && err == io.EOF
}

// Run serves the stream with the server's handler, on a worker.
func (st *serverStream) Run() { st.serve(st.srv.handler) }

func (st *serverStream) serve(h transport.Handler) {
	defer func() {
		if p := recover(); p != nil {
			st.srv.nPanics.Add(1)
			if p != http.ErrAbortHandler {
				st.srv.log.Error("h3: panic serving a stream", "remote", st.cs.remote,
					"method", st.req.Method, "path", st.req.Path, "panic", p, "stack", string(debug.Stack()))
			}
			st.Reset(transport.CodeInternal)
			return
		}
		st.end()
	}()
	h.ServeStream(st)
}

// end runs after the handler returned.
func (st *serverStream) end() {
	if st.resetBy.Load() != 0 {
		return
	}
	if st.state != stateDone {
		// The handler returned without finishing the response: the
		// client must not take a truncated body for a complete one.
		st.Reset(transport.CodeInternal)
		return
	}
	// The response is complete. If the request body was not read to its
	// end, tell the client to stop sending it (RFC 9114 §4.1); a no-op
	// when it was.
	st.cancelRead(http3.ErrCodeNoError)
}

// reject answers with a bodyless error status and leaves the request unread,
// telling the client so with code (RFC 9114 §4.1).
func (st *serverStream) reject(status int, code http3.ErrCode) {
	st.cancelRead(code)
	e := getEncoder()
	e.status(status)
	e.field("content-length", "0")
	_, err := st.qs.Write(e.frame())
	putEncoder(e)
	if err != nil {
		st.cancelWrite(code)
		return
	}
	st.closeWrite()
}

func (st *serverStream) onStreamDone() {
	if err := streamCause(context.Cause(st.sendContext())); err != nil {
		st.cancel(err)
	}
}

// The stream operations both engines share: through quic-go's stream when
// it has one, on the QUIC stream otherwise.

func (st *serverStream) cancelRead(code http3.ErrCode) {
	if st.hs != nil {
		st.hs.CancelRead(quic.StreamErrorCode(code))
		return
	}
	st.qs.CancelRead(quic.StreamErrorCode(code))
}

func (st *serverStream) cancelWrite(code http3.ErrCode) {
	if st.hs != nil {
		st.hs.CancelWrite(quic.StreamErrorCode(code))
		return
	}
	st.qs.CancelWrite(quic.StreamErrorCode(code))
}

func (st *serverStream) closeWrite() error {
	if st.hs != nil {
		return st.hs.Close()
	}
	return st.qs.Close()
}

// sendContext is the stream's send-side context, cancelled on STOP_SENDING
// from the client, on our Close or CancelWrite, and when the connection
// closes.
func (st *serverStream) sendContext() context.Context {
	if st.hs != nil {
		return st.hs.Context()
	}
	return st.qs.Context()
}

// Context is cancelled when the client resets the stream or stops reading
// (cause: CodeClientCancelled), when the connection closes (cause:
// CodeClientCancelled, or CodeDraining when the server closed it), when
// Reset is called (cause: its code), and after the Handler returns (cause:
// context.Canceled).
func (st *serverStream) Context() context.Context { return st.ctx }

// Request returns the request.
func (st *serverStream) Request() *transport.Request { return &st.req }

// WriteInformational sends a 1xx response head (RFC 9114 §4.1). 101 is not
// allowed in HTTP/3.
func (st *serverStream) WriteInformational(status int, h http.Header) error {
	if st.state != stateIdle {
		return errInformationalLate
	}
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		return errBadStatus
	}
	e := getEncoder()
	e.status(status)
	e.header(h, false)
	err := st.write(e.frame())
	putEncoder(e)
	return err
}

// WriteHeader sends the final response head. contentLength, when not -1, is
// sent as Content-Length and enforced: Write refuses bytes beyond it and
// Finish resets the stream short of it. Connection-specific fields
// (RFC 9114 §4.2) in h are dropped; field names are sent lowercase and values
// as given (the transport that parsed them validated them).
func (st *serverStream) WriteHeader(status int, h http.Header, contentLength int64) error {
	if st.state != stateIdle {
		return errHeaderTwice
	}
	if status < 200 || status > 999 {
		return errBadStatus
	}
	st.noBody = st.isHead || status == http.StatusNoContent || status == http.StatusNotModified
	e := getEncoder()
	e.status(status)
	e.header(h, false)
	if contentLength >= 0 && status != http.StatusNoContent {
		e.contentLength(contentLength)
	}
	if !st.noBody {
		st.clen = contentLength
	}
	err := st.write(e.frame())
	putEncoder(e)
	st.state = stateHead
	return err
}

// Write sends p in one DATA frame. Body bytes of a response that has none
// (HEAD, 204, 304) are dropped.
func (st *serverStream) Write(p []byte) (int, error) {
	switch st.state {
	case stateIdle:
		return 0, errNoHeader
	case stateDone:
		return 0, errFinished
	}
	if st.noBody {
		return len(p), nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	if st.clen >= 0 && st.written+int64(len(p)) > st.clen {
		return 0, errBodyTooLong
	}
	fh := quicvarint.Append(st.fh[:0], frameTypeData)
	fh = quicvarint.Append(fh, uint64(len(p)))
	if err := st.write(fh); err != nil {
		return 0, err
	}
	n, err := st.qs.Write(p)
	st.written += int64(n)
	if err != nil {
		return n, st.writeFailed(err)
	}
	return n, nil
}

func (st *serverStream) write(b []byte) error {
	st.armWrite()
	if _, err := st.qs.Write(b); err != nil {
		return st.writeFailed(err)
	}
	return nil
}

// armWrite keeps the stream's write deadline WriteTimeout ahead, moving it
// at most every quarter of WriteTimeout: a write that the client's flow
// control holds up (it stopped reading) fails after at least three quarters
// of WriteTimeout. A short response moves it once.
func (st *serverStream) armWrite() {
	if now := time.Now(); now.After(st.wdl) {
		t := st.srv.cfg.WriteTimeout
		st.qs.SetWriteDeadline(now.Add(t))
		st.wdl = now.Add(t / 4)
	}
}

// writeFailed translates a failed write; a write that timed out resets the
// stream (CodeClientCancelled: the client is not reading).
func (st *serverStream) writeFailed(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		st.Reset(transport.CodeClientCancelled)
		return transport.CodeClientCancelled.Err()
	}
	return downstreamErr(err, st.resetCode())
}

// Flush returns nil: quic-go sends written data as soon as flow and
// congestion control allow, there is nothing buffered to push.
func (st *serverStream) Flush() error {
	if c := st.resetCode(); c != transport.CodeNone {
		return c.Err()
	}
	return nil
}

// Finish ends the response, with trailers in a final HEADERS frame when
// trailer has any field allowed in a trailer section.
func (st *serverStream) Finish(trailer http.Header) error {
	switch st.state {
	case stateIdle:
		st.Reset(transport.CodeInternal)
		return errNoHeader
	case stateDone:
		return errFinished
	}
	st.state = stateDone
	if c := st.resetCode(); c != transport.CodeNone {
		return c.Err()
	}
	if st.clen >= 0 && st.written != st.clen {
		st.Reset(transport.CodeInternal)
		return errBodyTooShort
	}
	if len(trailer) > 0 && !st.noBody {
		e := getEncoder()
		e.header(trailer, true)
		var err error
		if e.fields > 0 {
			err = st.write(e.frame())
		}
		putEncoder(e)
		if err != nil {
			return err
		}
	}
	st.stopWatch()
	if err := st.closeWrite(); err != nil {
		return downstreamErr(err, st.resetCode())
	}
	return nil
}

// Reset aborts both directions of the stream with the HTTP/3 code for code
// (see ResetCode) and cancels the Context with code. Only the first Reset
// counts. It may be called from any goroutine.
func (st *serverStream) Reset(code transport.Code) {
	if code == transport.CodeNone {
		code = transport.CodeInternal
	}
	if !st.resetBy.CompareAndSwap(0, uint32(code)+1) {
		return
	}
	c := ResetCode(code)
	st.cancelWrite(c)
	st.cancelRead(c)
	if st.cancel != nil {
		st.cancel(code.Err())
	}
}

func (st *serverStream) resetCode() transport.Code {
	if v := st.resetBy.Load(); v != 0 {
		return transport.Code(v - 1)
	}
	return transport.CodeNone
}

// requestBody is the request body: quic-go's, with errors translated and the
// trailers handed over at the end.
type requestBody serverStream

func (b *requestBody) Read(p []byte) (int, error) {
	st := (*serverStream)(b)
	if st.hr == nil {
		return st.readBody(p)
	}
	n, err := st.hr.Body.Read(p)
	switch err {
	case nil:
		return n, nil
	case io.EOF:
		st.takeTrailers()
		return n, io.EOF
	}
	err = downstreamErr(err, st.resetCode())
	if e, ok := err.(*transport.Error); ok && e.Remote && e.Code == transport.CodeClientCancelled {
		// The client reset the request direction; quic-go's clients also
		// stop the response direction, which cancels the context, but a
		// client need not.
		st.cancel(err)
	}
	return n, err
}

// takeTrailers moves the request trailers quic-go parsed into the request.
// quic-go keeps the announced names with nil values when none arrived.
func (st *serverStream) takeTrailers() {
	t := st.hr.Trailer
	if len(t) == 0 || st.req.Trailer != nil {
		return
	}
	for k, vv := range t {
		if len(vv) == 0 {
			delete(t, k)
		}
	}
	if len(t) > 0 {
		st.req.Trailer = t
	}
}

var _ transport.ServerStream = (*serverStream)(nil)
