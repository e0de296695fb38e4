package h2

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// Errors of the native engine's ServerStream; preallocated.
var (
	errBodyNotAllowed = transport.NewError(transport.CodeInternal, false, errors.New("h2: body not allowed for this status"))
	errLongBody       = transport.NewError(transport.CodeInternal, false, errors.New("h2: body longer than its Content-Length"))
)

// ResetCode returns the RST_STREAM error code (RFC 9113 §7) that the native
// engine's Reset with transport code c sends, as the h2 column of the
// gateway's error table has it (the gateway's tests check that they agree).
func ResetCode(c transport.Code) http2.ErrCode {
	switch c {
	case transport.CodeClientCancelled, transport.CodeBodyTooLarge:
		return http2.ErrCodeCancel
	case transport.CodeTooEarly, transport.CodeDraining:
		return http2.ErrCodeRefusedStream
	case transport.CodeOverloaded:
		return http2.ErrCodeEnhanceYourCalm
	}
	return http2.ErrCodeInternal
}

// bodyChunk is one pooled piece of a request body's receive buffer.
type bodyChunk struct {
	b    [nativeMaxFrame]byte
	r, w int
}

var chunkPool = sync.Pool{New: func() any { return new(bodyChunk) }}

// writeBuf is a stream's pooled response body buffer: small writes gather
// in it so that the head and a short body go out in one flush.
type writeBuf [nativeMaxFrame]byte

var writeBufPool = sync.Pool{New: func() any { return new(writeBuf) }}

var streamPool = sync.Pool{New: func() any { return new(nstream) }}

func getStream() *nstream { return streamPool.Get().(*nstream) }

// putStream recycles a stream. Only streams whose request had no body are
// recycled: a body may be read by another goroutine (an upstream conn's
// writer) after the handler returned, and must then fail rather than read
// another request's bytes.
func putStream(st *nstream) {
	*st = nstream{}
	streamPool.Put(st)
}

// nstream is one stream of the native engine and its transport.ServerStream.
//
// A stream whose request has no body is pooled: its Request and ServerStream
// must not be used after ServeStream returns (as with net/http's
// ResponseWriter), and Reset must not be called then. Its header map is
// not recycled (newStream).
type nstream struct {
	c      *nconn
	id     uint32
	req    transport.Request
	body   nbody
	ctx    context.Context
	cancel context.CancelCauseFunc
	pooled bool // recycled when the handler returns

	// The handler's goroutine only.
	state    uint8
	status   int
	rh       http.Header
	rcl      int64 // the content-length to send, or -1
	declared int64 // the body length promised, or -1
	written  int64
	head     bool // a HEAD request
	noBody   bool // the response has no body (HEAD, 204, 304)
	wbuf     *writeBuf
	wn       int

	expectContinue bool // set before the handler starts

	// Guarded by c.mu.
	inMap        bool
	localClosed  bool // END_STREAM or RST_STREAM sent, or RST_STREAM received
	remoteClosed bool // END_STREAM received, or RST_STREAM either way
	zombie       bool // reset by the client while the handler runs
	handlerDone  bool
	sendWindow   int64
	recvWindow   int32
	recvCredit   int64
	chunks       []*bodyChunk
	rlen         int
	reof         bool
	rerr         error // why body reads fail
	wfail        error // why writes fail
	received     int64
	cl           int64
	trailerIn    http.Header
	rcond        sync.Cond

	// Guarded by c.wmu.
	headSent     bool
	wdone        bool // END_STREAM or RST_STREAM sent, or RST_STREAM received
	rstSent      bool
	continueSent bool

	reset     atomic.Bool
	rcode     atomic.Uint32
	peerReset atomic.Bool
	rmu       sync.Mutex // serializes Reset with the handler's end
	ended     bool       // guarded by rmu
}

var _ transport.ServerStream = (*nstream)(nil)

// Run serves the stream with the server's handler, on a worker.
func (st *nstream) Run() {
	defer st.end()
	st.c.s.h.ServeStream(st)
}

// end runs when the handler returns. It recovers a panic and resets the
// stream when the handler panicked or returned without Finish: a proxied
// response must not look complete when it is not. It stops the client's
// request body when the response ended before it (RST_STREAM NO_ERROR, RFC
// 9113 §8.1).
func (st *nstream) end() {
	p := recover()
	c := st.c
	if p != nil && p != http.ErrAbortHandler {
		c.s.logger.Error("h2: panic serving stream",
			"remote", c.remote, "method", st.req.Method, "path", st.req.Path,
			"panic", p, "stack", string(debug.Stack()))
	}
	// A stream still open on this side after Finish had its last write
	// fail; it must leave the stream map before it can be recycled.
	c.mu.Lock()
	open := st.inMap && !st.localClosed
	c.mu.Unlock()
	if p != nil || st.state != stateFinished || open {
		st.Reset(transport.CodeInternal)
	}
	st.rmu.Lock()
	st.ended = true
	st.rmu.Unlock()
	st.cancel(nil)

	c.mu.Lock()
	st.handlerDone = true
	if st.zombie {
		st.zombie = false
		c.zombies--
	}
	stopBody := st.inMap && st.localClosed && !st.remoteClosed
	if stopBody {
		st.remoteClosed = true
		c.noteResetLocked(st.id)
		c.removeLocked(st)
	}
	if st.rerr == nil {
		st.rerr = errClientGone
	}
	st.rcond.Broadcast()
	c.mu.Unlock()
	if stopBody {
		c.lockW()
		if c.writeOKLocked() {
			c.frameErrLocked(c.wfr.WriteRSTStream(st.id, http2.ErrCodeNo))
		}
		c.unlockW()
	}
	if st.wbuf != nil {
		writeBufPool.Put(st.wbuf)
		st.wbuf = nil
	}
	c.s.handlerEnd()
	if st.pooled {
		putStream(st)
	}
}

// failLocked fails the stream's reads and writes with cause and ends its
// context; c.mu is held.
func (st *nstream) failLocked(cause error) {
	if st.rerr == nil {
		st.rerr = cause
	}
	if st.wfail == nil {
		st.wfail = cause
	}
	if st.cancel != nil {
		st.cancel(cause)
	}
	st.rcond.Broadcast()
}

// Context returns the stream's context. It ends when the client resets the
// stream or the conn closes (cause CodeClientCancelled, or CodeDraining after
// Server.Close), when Reset is called (cause: its code), or when the handler
// returns.
func (st *nstream) Context() context.Context { return st.ctx }

// Request returns the request.
func (st *nstream) Request() *transport.Request { return &st.req }

func (st *nstream) resetErr() error {
	c := transport.Code(st.rcode.Load())
	if c == transport.CodeNone {
		c = transport.CodeInternal
	}
	return c.Err()
}

// writeFailure returns why a write cannot proceed, or nil.
func (st *nstream) writeFailure() error {
	if st.reset.Load() {
		return st.resetErr()
	}
	c := st.c
	c.mu.Lock()
	err := st.wfail
	c.mu.Unlock()
	return err
}

// WriteInformational sends a 1xx response at once. 100 Continue is a no-op:
// the stream sends it on its own when the handler first reads the body of
// a request with Expect: 100-continue.
func (st *nstream) WriteInformational(status int, h http.Header) error {
	if st.reset.Load() {
		return st.resetErr()
	}
	if st.state != stateNew {
		return errInfoAfterHdr
	}
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		return errBadStatus
	}
	if status == http.StatusContinue {
		return nil
	}
	c := st.c
	c.lockW()
	ok := !st.wdone && !st.peerReset.Load() && c.writeOKLocked()
	if ok {
		c.writeHeadLocked(st.id, status, h, -1, false)
	}
	c.unlockW()
	if !ok {
		if err := st.writeFailure(); err != nil {
			return err
		}
		return c.s.goneCause()
	}
	return nil
}

// WriteHeader records the final response head; it is sent with the first
// body bytes, on Flush, or by Finish, so that a short response goes out in
// one write.
func (st *nstream) WriteHeader(status int, h http.Header, contentLength int64) error {
	if st.reset.Load() {
		return st.resetErr()
	}
	if st.state != stateNew {
		return errHeaderTwice
	}
	if status < 200 || status > 999 {
		return errBadStatus
	}
	st.state = stateHeader
	st.status, st.rh = status, h
	st.declared, st.rcl = -1, -1
	if contentLength >= 0 && bodyAllowed(status) {
		st.rcl = contentLength
		if !st.head {
			st.declared = contentLength
		}
	}
	st.noBody = st.head || !bodyAllowed(status)
	return nil
}

// Write writes body bytes. Small writes are buffered until the buffer
// fills, Flush or Finish; a write to a HEAD response is dropped.
func (st *nstream) Write(p []byte) (int, error) {
	if st.reset.Load() {
		return 0, st.resetErr()
	}
	switch st.state {
	case stateNew:
		return 0, errNoHeader
	case stateFinished:
		return 0, errAfterFinish
	}
	if st.noBody {
		if st.head {
			return len(p), nil
		}
		return 0, errBodyNotAllowed
	}
	if st.declared >= 0 && st.written+int64(len(p)) > st.declared {
		return 0, errLongBody
	}
	total := len(p)
	for len(p) > 0 {
		if st.wn == 0 && len(p) >= len(writeBuf{}) {
			// A large write goes out without a copy.
			if err := st.sendData(p, false); err != nil {
				return total - len(p), err
			}
			st.written += int64(len(p))
			return total, nil
		}
		if st.wbuf == nil {
			st.wbuf = writeBufPool.Get().(*writeBuf)
		}
		n := copy(st.wbuf[st.wn:], p)
		st.wn += n
		st.written += int64(n)
		p = p[n:]
		if st.wn == len(st.wbuf) {
			if err := st.sendData(st.wbuf[:st.wn], false); err != nil {
				st.wn = 0
				return total - len(p), err
			}
			st.wn = 0
		}
	}
	return total, nil
}

// sendData sends the head when it is not sent yet, then p as DATA frames
// within the flow-control windows, the last with END_STREAM when end is set.
// It waits for window without holding the write section, for WriteTimeout
// at most: a client that stops granting window (it stopped reading) gets
// the stream reset, as CodeClientCancelled.
func (st *nstream) sendData(p []byte, end bool) error {
	c := st.c
	var stall *time.Timer // wakes the wait below at WriteTimeout
	var stallEnd time.Time
	defer func() {
		if stall != nil {
			stall.Stop()
		}
	}()
	for {
		n := 0
		if len(p) > 0 {
			c.mu.Lock()
			var win int64
			for {
				if st.reset.Load() {
					c.mu.Unlock()
					return st.resetErr()
				}
				if st.wfail != nil {
					err := st.wfail
					c.mu.Unlock()
					return err
				}
				win = min(st.sendWindow, c.sendWindow, int64(c.peerMaxFrame.Load()))
				if win > 0 {
					break
				}
				if stall == nil {
					t := c.ns.s.cfg.WriteTimeout
					stallEnd = time.Now().Add(t)
					stall = time.AfterFunc(t, func() {
						c.mu.Lock()
						c.flowCond.Broadcast()
						c.mu.Unlock()
					})
				} else if !time.Now().Before(stallEnd) {
					c.mu.Unlock()
					st.Reset(transport.CodeClientCancelled)
					return transport.CodeClientCancelled.Err()
				}
				c.flowCond.Wait()
			}
			if stall != nil {
				// Window came: the next wait has a WriteTimeout of its own.
				stall.Stop()
				stall = nil
			}
			n = min(len(p), int(win))
			st.sendWindow -= int64(n)
			c.sendWindow -= int64(n)
			c.mu.Unlock()
		}
		last := end && n == len(p)
		if err := st.lockWrite(); err != nil {
			return err
		}
		st.writeHeadOnceLocked(false)
		c.frameErrLocked(c.wfr.WriteData(st.id, last, p[:n]))
		if last {
			st.wdone = true
		}
		c.unlockWDefer()
		p = p[n:]
		if last {
			st.closeLocal()
			return nil
		}
		if len(p) == 0 {
			return nil
		}
	}
}

// failErr is the error of a write that found the stream or conn closed.
func (st *nstream) failErr() error {
	if err := st.writeFailure(); err != nil {
		return err
	}
	return st.c.s.goneCause()
}

// closeLocal records that END_STREAM was sent.
func (st *nstream) closeLocal() {
	c := st.c
	c.mu.Lock()
	st.localClosed = true
	if st.remoteClosed {
		c.removeLocked(st)
	}
	c.mu.Unlock()
}

// lockWrite takes the conn's write section for a frame of st. It fails,
// without the section, when the stream or the conn can take no more frames.
func (st *nstream) lockWrite() error {
	c := st.c
	c.lockW()
	if st.wdone || st.peerReset.Load() || !c.writeOKLocked() {
		c.unlockW()
		return st.failErr()
	}
	return nil
}

// writeHeadOnceLocked writes the head, with END_STREAM when end is set,
// unless it went out before; it reports whether it wrote it.
func (st *nstream) writeHeadOnceLocked(end bool) bool {
	if st.headSent {
		return false
	}
	st.headSent = true
	st.c.writeHeadLocked(st.id, st.status, st.rh, st.rcl, end)
	return true
}

// sendHead sends the head alone, if not sent yet.
func (st *nstream) sendHead() error {
	if err := st.lockWrite(); err != nil {
		return err
	}
	st.writeHeadOnceLocked(false)
	st.c.unlockW()
	return nil
}

// Flush sends the head, if not yet sent, and the buffered body bytes.
func (st *nstream) Flush() error {
	if st.reset.Load() {
		return st.resetErr()
	}
	if st.state == stateNew {
		return errNoHeader
	}
	if st.state == stateFinished {
		return nil
	}
	var err error
	if st.wn > 0 {
		err = st.sendData(st.wbuf[:st.wn], false)
		st.wn = 0
	} else {
		err = st.sendHead()
	}
	return err
}

// Finish ends the response (END_STREAM), with trailer when it is not empty.
// When the body written is shorter than the Content-Length given to
// WriteHeader, Finish resets the stream instead and returns a CodeInternal
// error: a truncated response must not look complete.
func (st *nstream) Finish(trailer http.Header) error {
	if st.reset.Load() {
		return st.resetErr()
	}
	switch st.state {
	case stateNew:
		return errNoHeader
	case stateFinished:
		return errAfterFinish
	}
	if st.declared >= 0 && st.written != st.declared {
		st.Reset(transport.CodeInternal)
		return errShortBody
	}
	st.state = stateFinished
	var err error
	if len(trailer) > 0 {
		if st.wn > 0 {
			err = st.sendData(st.wbuf[:st.wn], false)
			st.wn = 0
		} else {
			err = st.sendHead()
		}
		if err == nil {
			c := st.c
			if err := st.lockWrite(); err != nil {
				return err
			}
			c.writeTrailersLocked(st.id, trailer)
			st.wdone = true
			c.unlockW()
			st.closeLocal()
		}
	} else if st.wn > 0 {
		err = st.sendData(st.wbuf[:st.wn], true)
		st.wn = 0
	} else {
		err = st.endEmpty()
	}
	return err
}

// endEmpty ends the stream with the head and END_STREAM, or with an empty
// DATA frame when the head went out before.
func (st *nstream) endEmpty() error {
	c := st.c
	if err := st.lockWrite(); err != nil {
		return err
	}
	if !st.writeHeadOnceLocked(true) {
		c.frameErrLocked(c.wfr.WriteData(st.id, true, nil))
	}
	st.wdone = true
	c.unlockWDefer()
	st.closeLocal()
	return nil
}

// Reset aborts the stream with RST_STREAM carrying the code mapped from
// code (CANCEL, REFUSED_STREAM, ENHANCE_YOUR_CALM or INTERNAL_ERROR, as the
// gateway's error table). It may be called from any goroutine while the
// handler runs, also while the handler is blocked writing or reading the
// body: those calls fail at once, with code's error, as do later ones.
func (st *nstream) Reset(code transport.Code) {
	st.rmu.Lock()
	defer st.rmu.Unlock()
	if st.ended || !st.reset.CompareAndSwap(false, true) {
		return
	}
	st.rcode.Store(uint32(code))
	if code == transport.CodeNone {
		code = transport.CodeInternal
	}
	st.cancel(code.Err())
	c := st.c
	c.mu.Lock()
	send := st.inMap
	if send {
		st.localClosed, st.remoteClosed = true, true
		c.noteResetLocked(st.id)
		c.removeLocked(st)
	}
	if st.rerr == nil {
		st.rerr = code.Err()
	}
	st.rcond.Broadcast()
	c.flowCond.Broadcast()
	c.mu.Unlock()
	if send {
		c.lockW()
		if !st.rstSent && c.writeOKLocked() {
			st.wdone, st.rstSent = true, true
			c.frameErrLocked(c.wfr.WriteRSTStream(st.id, ResetCode(code)))
		}
		c.unlockW()
	}
}

// nbody is the request body of a native stream.
type nbody struct{ s *nstream }

// Read reads the request body. Its errors other than io.EOF are
// CodeClientCancelled (the client reset the stream, went away, or sent a
// body that disagrees with its Content-Length), CodeDraining after
// Server.Close, or the Reset code. The first Read of a request with
// Expect: 100-continue sends 100 Continue.
func (b *nbody) Read(p []byte) (int, error) {
	st := b.s
	c := st.c
	if st.expectContinue {
		c.lockW()
		if !st.continueSent && !st.headSent && !st.wdone && c.writeOKLocked() {
			c.writeHeadLocked(st.id, http.StatusContinue, nil, -1, false)
		}
		st.continueSent = true
		c.unlockW()
	}
	c.mu.Lock()
	for st.rlen == 0 && !st.reof && st.rerr == nil && !st.reset.Load() {
		st.rcond.Wait()
	}
	if st.reset.Load() {
		c.mu.Unlock()
		return 0, st.resetErr()
	}
	if st.rlen == 0 {
		if st.reof {
			if st.trailerIn != nil {
				if st.req.Trailer == nil {
					st.req.Trailer = st.trailerIn
				} else {
					for k, vv := range st.trailerIn {
						st.req.Trailer[k] = vv
					}
				}
				st.trailerIn = nil
			}
			c.mu.Unlock()
			return 0, io.EOF
		}
		err := st.rerr
		c.mu.Unlock()
		return 0, err
	}
	n := st.readLocked(p)
	st.recvCredit += int64(n)
	c.recvCredit += int64(n)
	var sc int64
	if st.inMap && !st.reof && st.recvCredit >= int64(c.s.cfg.InitialStreamWindow/4) {
		sc = st.recvCredit
		st.recvCredit = 0
		st.recvWindow += int32(sc)
	}
	cc := c.takeConnCreditLocked()
	c.mu.Unlock()
	if sc > 0 || cc > 0 {
		c.lockW()
		if c.writeOKLocked() {
			if sc > 0 {
				c.frameErrLocked(c.wfr.WriteWindowUpdate(st.id, uint32(sc)))
			}
			if cc > 0 {
				c.frameErrLocked(c.wfr.WriteWindowUpdate(0, uint32(cc)))
			}
		}
		c.unlockW()
	}
	return n, nil
}

// appendLocked buffers received body bytes.
func (st *nstream) appendLocked(data []byte) {
	for len(data) > 0 {
		var last *bodyChunk
		if k := len(st.chunks); k > 0 {
			last = st.chunks[k-1]
		}
		if last == nil || last.w == len(last.b) {
			last = chunkPool.Get().(*bodyChunk)
			last.r, last.w = 0, 0
			st.chunks = append(st.chunks, last)
		}
		n := copy(last.b[last.w:], data)
		last.w += n
		st.rlen += n
		data = data[n:]
	}
}

// readLocked copies buffered body bytes into p.
func (st *nstream) readLocked(p []byte) int {
	total := 0
	for len(p) > 0 && len(st.chunks) > 0 {
		ch := st.chunks[0]
		n := copy(p, ch.b[ch.r:ch.w])
		ch.r += n
		p = p[n:]
		total += n
		if ch.r == ch.w {
			chunkPool.Put(ch)
			copy(st.chunks, st.chunks[1:])
			st.chunks[len(st.chunks)-1] = nil
			st.chunks = st.chunks[:len(st.chunks)-1]
		}
	}
	st.rlen -= total
	return total
}

func (st *nstream) releaseChunksLocked() {
	for i, ch := range st.chunks {
		chunkPool.Put(ch)
		st.chunks[i] = nil
	}
	st.chunks = st.chunks[:0]
	st.rlen = 0
}

// unsafeString views b as a string; the caller keeps b unchanged while the
// string is in use.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
