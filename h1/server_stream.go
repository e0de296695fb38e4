package h1

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// stream is the transport.ServerStream of one request. A conn has one and
// reuses it for each request, so a handler must not keep it (or its Request)
// after ServeStream returns.
type stream struct {
	c    *serverConn
	req  transport.Request
	body *body // nil when the request has no body

	// Request facts.
	http10         bool
	keepAlive      bool // Connection: keep-alive
	reqClose       bool // the request asked to close (or is HTTP/1.0 without keep-alive)
	isHead         bool
	expectContinue bool // the client waits for 100 Continue before the body

	// cont tracks 100 Continue: the body's reader sends it on first read,
	// under contMu, which the handler's writes before WriteHeader take too.
	cont   atomic.Int32
	contMu sync.Mutex

	// Response state, owned by the handler's goroutine.
	wroteHeader bool
	finished    bool
	closeAfter  bool // the conn closes after this response
	mode        uint8
	cl, written int64
	werr        error

	resetCode atomic.Uint32 // Code+1 once Reset was called
	switched  atomic.Bool   // an upgrade was accepted: the body is the tunnel
	scratch   [24]byte
}

var _ transport.ServerStream = (*stream)(nil)

const (
	contNone     int32 = iota
	contPending        // the client expects 100 Continue
	contSent           // 100 Continue was sent
	contDisabled       // the response started before the body was read
)

// Response body modes.
const (
	modeNone    uint8 = iota // no body: HEAD, 204, 304
	modeLength               // Content-Length
	modeChunked              // Transfer-Encoding: chunked
	modeClose                // delimited by closing the conn (HTTP/1.0)
	modeTunnel               // after 101: raw bytes, ended by a half-close
)

// The errors of the stream's methods.
var (
	errHeaderWritten = errors.New("h1: response header already written")
	errNoHeader      = errors.New("h1: response header not written")
	errFinished      = errors.New("h1: response already finished")
	errBadStatus     = errors.New("h1: invalid status code")
	errBodyTooLong   = errors.New("h1: response body longer than its Content-Length")
	errBodyTooShort  = errors.New("h1: response body shorter than its Content-Length")
	errStreamReset   = transport.CodeClientCancelled.Err()
	errWrite         = transport.CodeClientCancelled.Err()
)

// reset prepares the stream for a new request.
func (s *stream) reset() {
	s.req = transport.Request{}
	s.body = nil
	s.http10, s.keepAlive, s.reqClose, s.isHead, s.expectContinue = false, false, false, false, false
	s.cont.Store(contNone)
	s.wroteHeader, s.finished, s.closeAfter = false, false, false
	s.mode, s.cl, s.written, s.werr = modeNone, 0, 0, nil
	s.resetCode.Store(0)
	s.switched.Store(false)
}

// Context is cancelled, with cause CodeClientCancelled, when the client goes
// away (noticed by a read of the body or, once the body is read, by a
// background read), and when the conn closes.
func (s *stream) Context() context.Context { return s.c.ctx }

// Request returns the request; it is valid until ServeStream returns.
func (s *stream) Request() *transport.Request { return &s.req }

// WriteInformational sends a 1xx response other than 101. A 100 is sent
// only to a client that expects it, once; nothing is sent to an HTTP/1.0
// client (RFC 9110 §15.2).
func (s *stream) WriteInformational(status int, h http.Header) error {
	if s.wroteHeader {
		return errHeaderWritten
	}
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		return errBadStatus
	}
	if s.resetCode.Load() != 0 {
		return errStreamReset
	}
	if s.http10 {
		return nil
	}
	if status == http.StatusContinue {
		s.sendContinue()
		return nil
	}
	if s.expectContinue {
		s.contMu.Lock()
		defer s.contMu.Unlock()
	}
	bw := s.c.bw
	bw.Write(statusLine(status))
	s.writeFields(h)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		return s.writeFailed()
	}
	return nil
}

// sendContinue writes 100 Continue if the client waits for it.
func (s *stream) sendContinue() {
	if s.cont.Load() != contPending {
		return
	}
	s.contMu.Lock()
	if s.cont.Load() == contPending {
		bw := s.c.bw
		bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		bw.Flush() // an error shows in the body's read
		s.cont.Store(contSent)
	}
	s.contMu.Unlock()
}

// WriteHeader writes the response head and derives the framing from
// contentLength and the request: no body for HEAD (with Content-Length when
// known), 204 and 304; Content-Length when known; chunked for HTTP/1.1;
// close-delimited for HTTP/1.0. Framing fields and Connection in h are
// ignored (a "close" token in Connection closes the conn after the
// response). Date is added unless h has it.
//
// For an upgrade request (Request.Protocol set), status 101 accepts the
// upgrade: the head is sent at once with Upgrade and Connection fields of
// its own (those in h are ignored) and contentLength is ignored; from then
// on Write sends raw tunnel bytes, the request body reads the client's, and
// Finish half-closes the conn. Any other status declines the upgrade and
// closes the conn after the response.
func (s *stream) WriteHeader(status int, h http.Header, contentLength int64) error {
	if s.wroteHeader {
		return errHeaderWritten
	}
	upgrade := s.req.Protocol != ""
	if (status < 200 || status > 999) && !(status == http.StatusSwitchingProtocols && upgrade) {
		return errBadStatus
	}
	if s.resetCode.Load() != 0 {
		return errStreamReset
	}
	s.wroteHeader = true
	c := s.c
	if status == http.StatusSwitchingProtocols {
		return s.switchProtocols(h)
	}
	if upgrade {
		s.closeAfter = true // the client may have counted on the switch
	}
	if s.expectContinue {
		s.contMu.Lock()
		if s.cont.CompareAndSwap(contPending, contDisabled) {
			// The client still waits to send the body, which the handler
			// did not want: close after the response (RFC 9110 §10.1.1).
			s.closeAfter = true
		}
		s.contMu.Unlock()
	}

	bodyless := s.isHead || status == http.StatusNoContent || status == http.StatusNotModified
	switch {
	case bodyless:
		s.mode = modeNone
	case contentLength >= 0:
		s.mode = modeLength
		s.cl = contentLength
	case !s.http10:
		s.mode = modeChunked
	default:
		s.mode = modeClose
		s.closeAfter = true
	}
	if s.reqClose || c.srv.draining() || c.ctx.Err() != nil || s.body != nil && s.body.lost() {
		s.closeAfter = true
	}

	bw := c.bw
	bw.Write(statusLine(status))
	hasDate, connClose := s.writeFields(h)
	if connClose {
		s.closeAfter = true
	}
	if !hasDate {
		bw.Write(c.srv.date.get(time.Now()))
	}
	switch {
	case s.mode == modeLength || s.isHead && contentLength >= 0 && status != http.StatusNoContent && status != http.StatusNotModified:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(s.scratch[:0], contentLength, 10))
		bw.WriteString("\r\n")
	case s.mode == modeChunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	switch {
	case s.closeAfter:
		bw.WriteString("Connection: close\r\n\r\n")
	case s.http10:
		bw.WriteString("Connection: keep-alive\r\n\r\n")
	default:
		bw.WriteString("\r\n")
	}
	if s.mode == modeNone {
		// A bodyless response is complete: send it now rather than at
		// Finish, so a handler that forgets Finish still answers.
		if err := bw.Flush(); err != nil {
			return s.writeFailed()
		}
	}
	return nil
}

// switchProtocols sends the 101 response to an upgrade request and turns the
// stream into the tunnel. The conn never serves another request.
func (s *stream) switchProtocols(h http.Header) error {
	c := s.c
	s.mode = modeTunnel
	s.closeAfter = true
	// The tunnel's bytes are read through c.br from now on: the watch for
	// the client going away must not take one.
	c.cr.abortPendingRead()
	s.switched.Store(true)
	bw := c.bw
	bw.Write(statusLine(http.StatusSwitchingProtocols))
	s.writeFields(h)
	bw.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	if err := bw.Flush(); err != nil {
		return s.writeFailed()
	}
	return nil
}

// writeFields writes the fields of h, leaving out framing fields, Connection,
// and any field that is not valid on the wire (a name that is not a token, a
// value with CR, LF or another control character), so that nothing a handler
// passes on can split a response. A 101 response leaves out Upgrade too: the
// stream writes its own.
func (s *stream) writeFields(h http.Header) (hasDate, connClose bool) {
	bw := s.c.bw
	for k, vv := range h {
		switch fieldKind(k) {
		case kindContentLength, kindTransferEncoding:
			continue
		case kindUpgrade:
			if s.mode == modeTunnel {
				continue
			}
		case kindConnection:
			for _, v := range vv {
				if hasTokenString(v, "close") {
					connClose = true
				}
			}
			continue
		case kindDate:
			hasDate = len(vv) > 0
		}
		if !isToken(k) {
			continue
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	return hasDate, connClose
}

// kindDate marks Date for writeFields.
const kindDate uint8 = 1 << 7

// fieldKind classifies a header key of a handler's header, ignoring case.
func fieldKind(k string) uint8 {
	switch len(k) {
	case 4:
		if equalFoldString(k, "date") {
			return kindDate
		}
		if equalFoldString(k, "host") {
			return kindHost
		}
	case 7:
		if equalFoldString(k, "upgrade") {
			return kindUpgrade
		}
	case 10:
		if equalFoldString(k, "connection") {
			return kindConnection
		}
	case 14:
		if equalFoldString(k, "content-length") {
			return kindContentLength
		}
	case 17:
		if equalFoldString(k, "transfer-encoding") {
			return kindTransferEncoding
		}
	}
	return kindOther
}

func equalFoldString(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// Write writes body bytes, in chunks when the response is chunked. Bytes
// beyond the Content-Length are not sent (errBodyTooLong); bytes of a
// bodyless response are discarded. After 101 it writes tunnel bytes as
// they are.
func (s *stream) Write(p []byte) (int, error) {
	if !s.wroteHeader {
		return 0, errNoHeader
	}
	if s.finished {
		return 0, errFinished
	}
	if s.werr != nil {
		return 0, s.werr
	}
	if s.resetCode.Load() != 0 {
		return 0, errStreamReset
	}
	bw := s.c.bw
	switch s.mode {
	case modeNone:
		return len(p), nil
	case modeLength:
		var tooLong error
		if left := s.cl - s.written; int64(len(p)) > left {
			p = p[:left]
			tooLong = errBodyTooLong
		}
		n, err := bw.Write(p)
		s.written += int64(n)
		if err != nil {
			return n, s.writeFailed()
		}
		return n, tooLong
	case modeChunked:
		if len(p) == 0 {
			return 0, nil
		}
		b := strconv.AppendInt(s.scratch[:0], int64(len(p)), 16)
		b = append(b, '\r', '\n')
		bw.Write(b)
		n, _ := bw.Write(p)
		if _, err := bw.WriteString("\r\n"); err != nil {
			return 0, s.writeFailed()
		}
		s.written += int64(n)
		return n, nil
	default: // modeClose, modeTunnel
		n, err := bw.Write(p)
		s.written += int64(n)
		if err != nil {
			return n, s.writeFailed()
		}
		return n, nil
	}
}

func (s *stream) writeFailed() error {
	s.werr = errWrite
	s.closeAfter = true
	return s.werr
}

// Flush sends the buffered response bytes.
func (s *stream) Flush() error {
	if !s.wroteHeader {
		return errNoHeader
	}
	return s.flush()
}

func (s *stream) flush() error {
	if s.werr != nil {
		return s.werr
	}
	if err := s.c.bw.Flush(); err != nil {
		return s.writeFailed()
	}
	return nil
}

// Finish ends the response: the last chunk and the trailer fields for a
// chunked body (trailers are dropped for other framings); for a
// Content-Length body shorter than declared, the conn is closed after the
// bytes written, so the client sees the truncation (errBodyTooShort). After
// 101 it flushes and half-closes the conn: the client reads the end of the
// tunnel, and the request body still reads what the client sends until it
// closes its side too.
func (s *stream) Finish(trailer http.Header) error {
	if !s.wroteHeader {
		return errNoHeader
	}
	if s.finished {
		return errFinished
	}
	if s.resetCode.Load() != 0 {
		return errStreamReset
	}
	s.finished = true
	var short error
	switch s.mode {
	case modeChunked:
		bw := s.c.bw
		bw.WriteString("0\r\n")
		for k, vv := range trailer {
			if fieldKind(k) != kindOther || !isToken(k) {
				continue
			}
			for _, v := range vv {
				if validFieldValue(v) {
					bw.WriteString(k)
					bw.WriteString(": ")
					bw.WriteString(v)
					bw.WriteString("\r\n")
				}
			}
		}
		bw.WriteString("\r\n")
	case modeLength:
		if s.written < s.cl {
			s.closeAfter = true
			short = errBodyTooShort
		}
	}
	if err := s.flush(); err != nil {
		return err
	}
	if s.mode == modeTunnel {
		s.c.closeWrite()
	}
	return short
}

// Reset closes the conn without a valid end of the response. It may be
// called from any goroutine.
func (s *stream) Reset(code transport.Code) {
	if !s.resetCode.CompareAndSwap(0, uint32(code)+1) {
		return
	}
	cause := code.Err()
	if cause == nil {
		cause = transport.CodeInternal.Err()
	}
	s.c.cancel(cause)
	s.c.raw.Close()
}

// body is a request body. Its reads may come from any goroutine (an
// upstream conn copying it); the server finishes it when the exchange ends,
// after which reads fail.
type body struct {
	st *stream

	mu        sync.Mutex // guards everything below; held during a read
	chunked   bool
	remaining int64 // Content-Length bytes left
	ch        chunkedReader
	done      bool  // read to the end
	closed    bool  // the exchange ended
	err       error // sticky read error

	// tunnel marks the body of an upgrade request: empty until the
	// protocols switch, then the client's tunnel bytes until it closes.
	tunnel bool
}

// maxDrain is how much of an unread request body the server reads and
// discards after the response to keep the conn alive.
const maxDrain = 256 << 10

// Read reads the body. Its errors: io.EOF at the end (the trailers, if any,
// are then in the Request), CodeBadRequest for a malformed chunked body, and
// CodeClientCancelled when the client disconnects before the end. The body
// of an upgrade request reads io.EOF until the protocols switch, then the
// client's bytes, and io.EOF once it half-closes.
func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return 0, errBodyClosed
	case b.err != nil:
		return 0, b.err
	case b.done:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	st := b.st
	if b.tunnel {
		return b.readTunnel(p)
	}
	st.sendContinue()
	var n int
	var err error
	if b.chunked {
		n, err = b.ch.Read(p)
	} else {
		if int64(len(p)) > b.remaining {
			p = p[:b.remaining]
		}
		n, err = st.c.br.Read(p)
		b.remaining -= int64(n)
		if b.remaining == 0 {
			err = io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		b.done = true
		if b.chunked && b.ch.trailer != nil {
			st.req.Trailer = b.ch.trailer
		}
		st.c.cr.startBackgroundRead()
		return n, io.EOF
	default:
		if _, ok := err.(*protoError); ok {
			b.err = transport.CodeBadRequest.Err()
		} else {
			b.err = transport.CodeClientCancelled.Err()
			st.c.cancel(b.err)
		}
		return n, b.err
	}
}

// readTunnel reads the client's tunnel bytes; b.mu is held.
func (b *body) readTunnel(p []byte) (int, error) {
	st := b.st
	if !st.switched.Load() {
		return 0, io.EOF // no content before the switch
	}
	n, err := st.c.br.Read(p)
	switch err {
	case nil:
		return n, nil
	case io.EOF:
		b.done = true
		return n, io.EOF
	}
	b.err = transport.CodeClientCancelled.Err()
	st.c.cancel(b.err)
	return n, b.err
}

// close fails the body's reads from now on, interrupting one in progress
// (which loses the conn).
func (b *body) close() {
	if !b.mu.TryLock() {
		b.st.c.nc.SetReadDeadline(aLongTimeAgo)
		b.mu.Lock()
	}
	b.closed = true
	b.mu.Unlock()
}

// lost reports, when no read is in progress, whether the conn cannot
// outlive the body: it failed, or more of it is unread than finish would
// drain. The response then says Connection: close.
func (b *body) lost() bool {
	if b.tunnel {
		return false // the conn closes after an upgrade request anyway
	}
	if !b.mu.TryLock() {
		return false // unknown yet: finish decides
	}
	defer b.mu.Unlock()
	return !b.done && (b.err != nil || !b.chunked && b.remaining > maxDrain)
}

// finish ends the body after the exchange and reports whether the conn can
// serve another request: the body was read to its end, or the rest (at most
// maxDrain bytes) could be read and discarded now. The conn of an upgrade
// request never serves another.
func (b *body) finish() bool {
	if b.tunnel {
		b.close()
		return false
	}
	c := b.st.c
	if !b.mu.TryLock() {
		// A read is blocked in another goroutine (an upstream conn still
		// copying the body): interrupt it; the conn is lost.
		b.close()
		return false
	}
	defer b.mu.Unlock()
	b.closed = true
	if b.done {
		return true
	}
	if b.err != nil {
		return false
	}
	if st := b.st.cont.Load(); st == contPending || st == contDisabled {
		return false // the client never got 100 Continue
	}
	c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.HeaderTimeout))
	if b.chunked {
		b.done = b.ch.discard(maxDrain)
	} else if b.remaining <= maxDrain {
		_, err := c.br.Discard(int(b.remaining))
		b.done = err == nil
	}
	c.nc.SetReadDeadline(time.Time{})
	return b.done
}

// statusLines holds "HTTP/1.1 NNN Reason\r\n" for the known statuses.
var statusLines = func() (t [600][]byte) {
	for i := 100; i < 600; i++ {
		if txt := http.StatusText(i); txt != "" {
			t[i] = []byte("HTTP/1.1 " + strconv.Itoa(i) + " " + txt + "\r\n")
		}
	}
	return t
}()

func statusLine(status int) []byte {
	if status >= 0 && status < len(statusLines) && statusLines[status] != nil {
		return statusLines[status]
	}
	return []byte("HTTP/1.1 " + strconv.Itoa(status) + " \r\n")
}
