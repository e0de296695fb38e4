package h2

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/proxynow/proxynow/transport"
)

// The native engine (EngineNative) serves each conn with one read loop
// goroutine, which parses frames with x/net's http2.Framer and runs the
// RFC 9113 state machine, and one goroutine per stream, which runs the
// handler. Handlers write their frames themselves into the conn's buffered
// writer under the conn's write mutex. The frame that ends a response is
// flushed by the conn's flusher goroutine, which first yields so that the
// other handlers ready to run add theirs: responses that end together go
// out in one write syscall (with 8 clients of 16 streams each, a fifth less
// CPU per request than one write per response). Other frames are flushed by
// the last writer to leave the write section.
//
// Limits, per conn (abuse bounds of RFC 9113 §10.5 and its CVEs):
//   - Streams: at most MaxConcurrentStreams streams are open or have a handler
//     that still runs after the client reset its stream; a HEADERS beyond that
//     is refused with RST_STREAM(REFUSED_STREAM). So handlers in flight are
//     bounded by MaxConcurrentStreams even under rapid reset.
//   - Rapid reset (CVE-2023-44487): each stream the client resets before its
//     response ended, and each stream refused, costs a token from a bucket of
//     max(2×MaxConcurrentStreams, 100) tokens that refills completely every
//     10 s; an empty bucket ends the conn with GOAWAY(ENHANCE_YOUR_CALM).
//   - Control-frame floods: PING, SETTINGS, PRIORITY, empty DATA without
//     END_STREAM, WINDOW_UPDATE with an increment below 1 KiB, RST_STREAM of
//     unknown streams, frames on closed streams and unknown frame types each
//     cost a token from a bucket of 1000 that refills at 1000/s; an empty
//     bucket ends the conn with GOAWAY(ENHANCE_YOUR_CALM). The replies
//     (PING and SETTINGS ACKs) are written synchronously by the read loop, so
//     they never queue: a client that does not read stops being read.
//   - CONTINUATION flood (CVE-2024-27316): the Framer stops at the header
//     list limit (MaxHeaderBytes) and ends the conn when a client goes far
//     beyond it; a header list over the limit within that is answered 431.
//   - Memory: the receive windows (InitialStreamWindow and InitialConnWindow,
//     1 MiB and 4 MiB by default) bound the request body bytes buffered per
//     conn; the write buffer is 32 KiB.
//   - Time: HeaderTimeout bounds the preface and the first request;
//     IdleTimeout closes a conn without streams (GOAWAY NO_ERROR); a write
//     that cannot progress for WriteTimeout (a client that stops reading)
//     fails the conn, and a stream that waits that long for flow-control
//     window is reset with CANCEL; a conn that sent its last GOAWAY lingers
//     at most 1 s for the client to close.
const (
	nativeMaxFrame      = 16384 // SETTINGS_MAX_FRAME_SIZE (the default)
	nativeWriteBuf      = 32 << 10
	nativeReadBuf       = 32 << 10
	nativeLinger        = time.Second
	nativeGoAwayWait    = time.Second // how long the first GOAWAY's PING may take
	nativeFloodBurst    = 1000
	nativeFloodRate     = 1000 // tokens per second
	nativeResetMin      = 100
	nativeResetRefill   = 10 * time.Second
	nativeSmallWindowUp = 1024
	maxWindow           = 1<<31 - 1
)

// shutdownPing is the payload of the PING that follows the first GOAWAY.
var shutdownPing = [8]byte{'s', 'h', 'u', 't', 'd', 'o', 'w', 'n'}

// nativeServer is the native engine of a Server. It shares the Server's
// listener bookkeeping, stop state and handler count.
type nativeServer struct {
	s     *Server
	conns map[*nconn]struct{} // guarded by s.mu

	// workers run the handlers: a handler that starts on a goroutine that
	// ran one before finds its stack already grown (a fresh goroutine spends
	// about a tenth of a short request's CPU growing it).
	workers *transport.Workers
}

func newNativeServer(s *Server) *nativeServer {
	return &nativeServer{s: s, conns: make(map[*nconn]struct{}), workers: transport.NewWorkers(0)}
}

// startConn serves c in a goroutine of its own, unless the Server has
// stopped; then it closes c and returns false.
func (ns *nativeServer) startConn(nc net.Conn) bool {
	s := ns.s
	c := ns.newConn(nc)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		c.raw.Close()
		return false
	}
	ns.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	go c.serve()
	return true
}

// shutdown starts Server.Shutdown: GOAWAY on every conn, each conn closes
// when its streams are done. Server.Shutdown waits for them.
func (ns *nativeServer) shutdown() {
	ns.workers.Close()
	s := ns.s
	s.mu.Lock()
	for c := range ns.conns {
		c.startShutdown()
	}
	s.mu.Unlock()
}

// close is Server.Close.
func (ns *nativeServer) close() error {
	s := ns.s
	s.closed.Store(true)
	s.stop()
	ns.workers.Close()
	s.mu.Lock()
	for c := range ns.conns {
		c.raw.Close()
	}
	s.mu.Unlock()
	s.connWG.Wait()
	return nil
}

// nconn is one conn of the native engine.
type nconn struct {
	ns     *nativeServer
	s      *Server
	nc     net.Conn // the conn as accepted (*tls.Conn or plain)
	raw    net.Conn // the TCP conn
	remote netip.AddrPort
	shard  uint32
	tls    bool
	scheme string

	// Read loop only.
	br          *bufio.Reader
	fr          *http2.Framer
	maxClientID uint32
	sawSettings bool
	started     bool // a request arrived: the header deadline is off
	floodTokens float64
	floodLast   time.Time
	resetTokens int
	resetCap    int
	resetLast   time.Time
	canon       map[string]string // lowercase field name → canonical key

	// mu guards the fields below and the streams' flow and body state.
	// The lock order is mu, then wmu: nothing takes mu while holding wmu.
	mu             sync.Mutex
	streams        map[uint32]*nstream
	zombies        int   // streams reset by the client whose handler still runs
	sendWindow     int64 // conn send window
	peerInitWindow int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE
	recvWindow     int64 // what the client may still send on the conn
	recvCredit     int64 // consumed bytes not yet returned by WINDOW_UPDATE
	flowCond       sync.Cond
	goingAway      bool   // the last GOAWAY is decided: no new streams
	lastID         uint32 // the last stream id of that GOAWAY
	lastAccepted   uint32 // the last stream id the read loop accepted
	shutdownSent   bool   // the first GOAWAY of a graceful shutdown was sent
	finishing      bool   // the conn is closing: its write side is shut
	dead           bool   // the read loop ended: every stream fails
	recentRst      [8]uint32
	recentRstN     int
	idle           *time.Timer
	goAwayTimer    *time.Timer

	// peerMaxFrame is the client's SETTINGS_MAX_FRAME_SIZE.
	peerMaxFrame atomic.Uint32

	flushCh   chan struct{} // wakes flushLoop; buffered 1
	flushStop chan struct{} // closed by teardown
	flushDone chan struct{} // closed when flushLoop returns
	writers   atomic.Int32  // goroutines in or waiting for the write section
	wmu       sync.Mutex    // guards the write side below
	bw        *bufio.Writer
	wfr       *http2.Framer
	enc       *hpack.Encoder
	hbuf      bytes.Buffer
	werr      error
	wdl       time.Time // when the write deadline was last pushed
	lower     map[string]string
	numBuf    [20]byte
}

func (ns *nativeServer) newConn(nc net.Conn) *nconn {
	c := &nconn{
		ns: ns, s: ns.s, nc: nc, raw: nc, scheme: "http", shard: transport.NextShard(),
		streams:        make(map[uint32]*nstream),
		sendWindow:     65535,
		peerInitWindow: 65535,
		recvWindow:     int64(ns.s.cfg.InitialConnWindow),
		canon:          make(map[string]string),
		lower:          make(map[string]string),
		flushCh:        make(chan struct{}, 1),
		flushStop:      make(chan struct{}),
		flushDone:      make(chan struct{}),
	}
	c.flowCond.L = &c.mu
	c.peerMaxFrame.Store(16384)
	if tc, ok := nc.(*tls.Conn); ok {
		c.tls, c.scheme = true, "https"
		c.raw = tc.NetConn()
	}
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		c.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			c.remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	c.br = bufio.NewReaderSize(nc, nativeReadBuf)
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = uint32(ns.s.cfg.MaxHeaderBytes)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(nativeMaxFrame)
	c.bw = bufio.NewWriterSize(connWriter{c}, nativeWriteBuf)
	c.wfr = http2.NewFramer(c.bw, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.resetCap = max(2*ns.s.cfg.MaxConcurrentStreams, nativeResetMin)
	c.resetTokens = c.resetCap
	c.floodTokens = nativeFloodBurst
	return c
}

// connWriter is the bufio.Writer's sink: it pushes the write deadline
// forward, at most every quarter of WriteTimeout, so a client that stops
// reading fails the conn within about WriteTimeout.
type connWriter struct{ c *nconn }

func (w connWriter) Write(p []byte) (int, error) {
	c := w.c
	if now, t := time.Now(), c.ns.s.cfg.WriteTimeout; now.Sub(c.wdl) > t/4 {
		c.wdl = now
		c.nc.SetWriteDeadline(now.Add(t))
	}
	return c.nc.Write(p)
}

// lockW enters the write section.
func (c *nconn) lockW() {
	c.writers.Add(1)
	c.wmu.Lock()
}

// unlockW leaves the write section; the last writer out flushes.
func (c *nconn) unlockW() {
	if c.writers.Add(-1) == 0 && c.werr == nil && c.bw.Buffered() > 0 {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// unlockWDefer leaves the write section like unlockW, but the last writer
// out leaves the flush to the conn's flusher, which first lets the other
// goroutines that are ready to run (handlers whose upstream answered) add
// their frames: responses that end together go out in one write.
func (c *nconn) unlockWDefer() {
	need := c.writers.Add(-1) == 0 && c.werr == nil && c.bw.Buffered() > 0
	c.wmu.Unlock()
	if need {
		select {
		case c.flushCh <- struct{}{}:
		default:
		}
	}
}

// flushLoop is the conn's flusher.
func (c *nconn) flushLoop() {
	defer close(c.flushDone)
	for {
		select {
		case <-c.flushCh:
		case <-c.flushStop:
			return
		}
		runtime.Gosched()
		c.lockW()
		c.unlockW() // the last writer out flushes
	}
}

func (c *nconn) flushLocked() {
	if err := c.bw.Flush(); err != nil {
		c.writeFailedLocked(err)
	}
}

// writeFailedLocked records a write error; the conn is done: closing it ends
// the read loop, which fails the streams.
func (c *nconn) writeFailedLocked(err error) {
	if c.werr == nil {
		c.werr = err
		c.raw.Close()
	}
}

// writeOKLocked reports whether frames may be written; c.wmu is held.
func (c *nconn) writeOKLocked() bool { return c.werr == nil }

// frameErrLocked records the error of a frame write; c.wmu is held.
func (c *nconn) frameErrLocked(err error) {
	if err != nil {
		c.writeFailedLocked(err)
	}
}

// serve runs the read loop, then tears the conn down.
func (c *nconn) serve() {
	defer c.teardown()
	go c.flushLoop()
	c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.HeaderTimeout))
	// The server preface (RFC 9113 §3.4): SETTINGS, then the conn window.
	c.lockW()
	c.frameErrLocked(c.wfr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.s.cfg.MaxConcurrentStreams)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.s.cfg.MaxHeaderBytes)},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.s.cfg.InitialStreamWindow)},
		http2.Setting{ID: http2.SettingEnableConnectProtocol, Val: 1},
	))
	if up := c.s.cfg.InitialConnWindow - 65535; up > 0 {
		c.frameErrLocked(c.wfr.WriteWindowUpdate(0, uint32(up)))
	}
	c.unlockW()

	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, preface[:]); err != nil || string(preface[:]) != http2.ClientPreface {
		if err == nil {
			c.connError(http2.ErrCodeProtocol)
		}
		return
	}
	c.floodLast = time.Now()
	c.resetLast = c.floodLast
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if se, ok := errors.AsType[http2.StreamError](err); ok {
				// The Framer found a stream error (an invalid header
				// block, a bad PRIORITY or WINDOW_UPDATE); the conn goes
				// on, and the HPACK state is intact.
				c.streamError(se.StreamID, se.Code)
				if se.StreamID > c.maxClientID && se.StreamID%2 == 1 {
					c.maxClientID = se.StreamID
				}
				continue
			}
			c.readError(err)
			return
		}
		if code, ok := c.processFrame(f); !ok {
			c.connError(code)
			return
		}
	}
}

// readError handles an error of ReadFrame other than a stream error.
func (c *nconn) readError(err error) {
	if ce, ok := errors.AsType[http2.ConnectionError](err); ok {
		c.connError(http2.ErrCode(ce))
		return
	}
	if errors.Is(err, http2.ErrFrameTooLarge) {
		c.connError(http2.ErrCodeFrameSize)
	}
	// Otherwise the conn broke, timed out or closed.
}

// connError ends the conn with GOAWAY(code) (RFC 9113 §5.4.1).
func (c *nconn) connError(code http2.ErrCode) {
	c.mu.Lock()
	c.goingAway = true
	c.finishing = true
	c.mu.Unlock()
	c.lockW()
	if c.writeOKLocked() {
		c.frameErrLocked(c.wfr.WriteGoAway(c.maxClientID, code, nil))
	}
	c.unlockW()
	c.shutWrite()
	// Drain what the client still sends so that the GOAWAY is not lost to
	// a TCP reset, for a bounded time.
	c.raw.SetReadDeadline(time.Now().Add(nativeLinger))
	io.Copy(io.Discard, c.raw)
}

// shutWrite flushes and shuts the write side of the TCP conn.
func (c *nconn) shutWrite() {
	c.lockW()
	if c.werr == nil {
		c.flushLocked()
	}
	c.werr = net.ErrClosed
	c.wmu.Unlock()
	c.writers.Add(-1)
	if tc, ok := c.raw.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
}

// teardown runs when the read loop ends: every stream fails, the conn
// closes.
func (c *nconn) teardown() {
	close(c.flushStop)
	c.raw.Close()
	cause := c.s.goneCause()
	c.mu.Lock()
	c.dead = true
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.goAwayTimer != nil {
		c.goAwayTimer.Stop()
	}
	for _, st := range c.streams {
		st.inMap = false
		st.failLocked(cause)
	}
	clear(c.streams)
	c.flowCond.Broadcast()
	c.mu.Unlock()
	c.lockW()
	if c.werr == nil {
		c.werr = net.ErrClosed
	}
	c.wmu.Unlock()
	c.writers.Add(-1)
	<-c.flushDone
	c.s.mu.Lock()
	delete(c.ns.conns, c)
	c.s.mu.Unlock()
	c.s.connWG.Done()
}

// takeFloodToken charges one control frame; false means a flood.
func (c *nconn) takeFloodToken() bool {
	now := time.Now()
	c.floodTokens = min(nativeFloodBurst, c.floodTokens+now.Sub(c.floodLast).Seconds()*nativeFloodRate)
	c.floodLast = now
	if c.floodTokens < 1 {
		return false
	}
	c.floodTokens--
	return true
}

// takeResetToken charges one early reset or refused stream; false means
// rapid reset.
func (c *nconn) takeResetToken() bool {
	if now := time.Now(); now.Sub(c.resetLast) >= nativeResetRefill {
		c.resetLast = now
		c.resetTokens = c.resetCap
	}
	if c.resetTokens <= 0 {
		return false
	}
	c.resetTokens--
	return true
}

// processFrame handles one frame; false with a code is a connection error.
func (c *nconn) processFrame(f http2.Frame) (http2.ErrCode, bool) {
	if !c.sawSettings {
		// RFC 9113 §3.4: the client preface ends with SETTINGS.
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return http2.ErrCodeProtocol, false
		}
		c.sawSettings = true
		return c.processSettings(sf)
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return 0, true
		}
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			if f.Data == shutdownPing {
				c.finalGoAway()
			}
			return 0, true
		}
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		c.lockW()
		if c.writeOKLocked() {
			c.frameErrLocked(c.wfr.WritePing(true, f.Data))
		}
		c.unlockW()
		return 0, true
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.processRST(f)
	case *http2.PriorityFrame:
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		if f.StreamDep == f.StreamID {
			// RFC 9113 §5.3.1: a stream cannot depend on itself.
			c.streamError(f.StreamID, http2.ErrCodeProtocol)
		}
		return 0, true
	case *http2.GoAwayFrame:
		// The client is leaving: finish the streams it started, then close.
		c.startShutdown()
		return 0, true
	case *http2.PushPromiseFrame:
		// RFC 9113 §8.4: a client cannot push.
		return http2.ErrCodeProtocol, false
	default:
		// Unknown frame types are ignored (RFC 9113 §4.1); CONTINUATION
		// cannot arrive alone: the Framer checked the order.
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		return 0, true
	}
}

// processSettings applies a SETTINGS frame and acknowledges it. The new
// values are applied and the ACK is buffered under c.mu and the write lock,
// before the writers that a larger window wakes can write: a client sees
// the ACK before the DATA frames the new settings allowed.
func (c *nconn) processSettings(f *http2.SettingsFrame) (http2.ErrCode, bool) {
	var code http2.ErrCode
	ok := true
	c.mu.Lock()
	c.lockW()
	f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			if ce, isCE := errors.AsType[http2.ConnectionError](err); isCE {
				code = http2.ErrCode(ce)
			} else {
				code = http2.ErrCodeProtocol
			}
			ok = false
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			if !c.setInitialWindowLocked(int64(s.Val)) {
				code, ok = http2.ErrCodeFlowControl, false
				return errors.New("h2: window overflow")
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(s.Val)
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if ok && c.writeOKLocked() {
		c.frameErrLocked(c.wfr.WriteSettingsAck())
	}
	c.flowCond.Broadcast()
	c.mu.Unlock()
	c.unlockW()
	if !ok {
		return code, false
	}
	return 0, true
}

// setInitialWindowLocked applies a new SETTINGS_INITIAL_WINDOW_SIZE to every
// open stream (RFC 9113 §6.9.2); false when a window overflows. c.mu is held;
// the caller wakes the writers.
func (c *nconn) setInitialWindowLocked(v int64) bool {
	delta := v - c.peerInitWindow
	c.peerInitWindow = v
	for _, st := range c.streams {
		st.sendWindow += delta
		if st.sendWindow > maxWindow {
			return false
		}
	}
	return true
}

func (c *nconn) processWindowUpdate(f *http2.WindowUpdateFrame) (http2.ErrCode, bool) {
	if f.Increment < nativeSmallWindowUp && !c.takeFloodToken() {
		return http2.ErrCodeEnhanceYourCalm, false
	}
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.mu.Lock()
		c.sendWindow += inc
		over := c.sendWindow > maxWindow
		c.flowCond.Broadcast()
		c.mu.Unlock()
		if over {
			return http2.ErrCodeFlowControl, false
		}
		return 0, true
	}
	if f.StreamID > c.maxClientID {
		// An idle stream (RFC 9113 §5.1).
		return http2.ErrCodeProtocol, false
	}
	c.mu.Lock()
	st := c.streams[f.StreamID]
	over := false
	if st != nil {
		st.sendWindow += inc
		over = st.sendWindow > maxWindow
		c.flowCond.Broadcast()
	}
	c.mu.Unlock()
	if over {
		c.streamError(f.StreamID, http2.ErrCodeFlowControl)
	}
	return 0, true
}

func (c *nconn) processRST(f *http2.RSTStreamFrame) (http2.ErrCode, bool) {
	if f.StreamID > c.maxClientID {
		return http2.ErrCodeProtocol, false
	}
	c.mu.Lock()
	st := c.streams[f.StreamID]
	early := false
	if st != nil {
		early = !st.localClosed
		st.peerReset.Store(true)
		st.localClosed, st.remoteClosed = true, true
		if !st.handlerDone {
			st.zombie = true
			c.zombies++
		}
		st.failLocked(errClientGone)
		c.removeLocked(st)
	}
	c.mu.Unlock()
	if st == nil {
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		return 0, true
	}
	if early && !c.takeResetToken() {
		return http2.ErrCodeEnhanceYourCalm, false
	}
	return 0, true
}

// streamError resets stream id with code (RFC 9113 §5.4.2), closing it.
func (c *nconn) streamError(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	st := c.streams[id]
	if st != nil {
		st.localClosed, st.remoteClosed = true, true
		st.failLocked(errClientGone)
		c.noteResetLocked(id)
		c.removeLocked(st)
		// Once out of the map and c.mu, the stream may end and be
		// recycled: mark it done for writes before letting go of c.mu
		// (the lock order allows taking wmu under mu).
		c.lockW()
		done := st.rstSent
		st.wdone, st.rstSent = true, true
		c.mu.Unlock()
		if !done && c.writeOKLocked() {
			c.frameErrLocked(c.wfr.WriteRSTStream(id, code))
		}
		c.unlockW()
		return
	}
	c.mu.Unlock()
	c.lockW()
	if c.writeOKLocked() {
		c.frameErrLocked(c.wfr.WriteRSTStream(id, code))
	}
	c.unlockW()
}

// noteResetLocked remembers a stream this side reset, whose late frames are
// then dropped silently.
func (c *nconn) noteResetLocked(id uint32) {
	c.recentRst[c.recentRstN%len(c.recentRst)] = id
	c.recentRstN++
}

func (c *nconn) recentlyResetLocked(id uint32) bool {
	for _, r := range c.recentRst {
		if r == id {
			return true
		}
	}
	return false
}

// removeLocked takes st out of the stream map: it no longer counts towards
// the concurrency limit (unless its handler is a zombie), and its unread
// body bytes go back to the conn window.
func (c *nconn) removeLocked(st *nstream) {
	if !st.inMap {
		return
	}
	st.inMap = false
	delete(c.streams, st.id)
	if st.rlen > 0 {
		c.recvCredit += int64(st.rlen)
		st.releaseChunksLocked()
	}
	c.flowCond.Broadcast()
	if len(c.streams) == 0 {
		if c.goingAway {
			c.finishLocked()
		} else if !c.dead {
			if c.idle == nil {
				c.idle = time.AfterFunc(c.s.cfg.IdleTimeout, c.onIdle)
			} else {
				c.idle.Reset(c.s.cfg.IdleTimeout)
			}
		}
	}
}

// onIdle runs when the conn had no stream for IdleTimeout.
func (c *nconn) onIdle() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && !c.dead
	c.mu.Unlock()
	if idle {
		c.finalGoAway()
	}
}

// startShutdown begins a graceful shutdown (RFC 9113 §6.8): GOAWAY with the
// largest stream id and a PING; the PING's ACK (or nativeGoAwayWait) then
// triggers the GOAWAY with the last stream id.
func (c *nconn) startShutdown() {
	c.mu.Lock()
	if c.shutdownSent || c.goingAway || c.dead {
		c.mu.Unlock()
		return
	}
	c.shutdownSent = true
	c.goAwayTimer = time.AfterFunc(nativeGoAwayWait, c.finalGoAway)
	c.mu.Unlock()
	c.lockW()
	if c.writeOKLocked() {
		c.frameErrLocked(c.wfr.WriteGoAway(maxWindow, http2.ErrCodeNo, nil))
		c.frameErrLocked(c.wfr.WritePing(false, shutdownPing))
	}
	c.unlockW()
}

// finalGoAway sends the GOAWAY with the last stream id processed; the conn
// closes once its streams are done.
func (c *nconn) finalGoAway() {
	c.mu.Lock()
	if c.goingAway || c.dead {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	// The read loop may be reading a new stream's HEADERS right now: the
	// last id is what it has accepted by the time the GOAWAY is written,
	// which is under c.mu, and streams above it are ignored.
	c.lastID = c.lastAccepted
	last := c.lastID
	if c.goAwayTimer != nil {
		c.goAwayTimer.Stop()
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	c.lockW()
	if c.writeOKLocked() {
		c.frameErrLocked(c.wfr.WriteGoAway(last, http2.ErrCodeNo, nil))
	}
	c.unlockW()
	c.mu.Lock()
	if len(c.streams) == 0 {
		c.finishLocked()
	}
	c.mu.Unlock()
}

// finishLocked closes the conn once it has sent its last GOAWAY and its
// streams are done: it shuts the write side and gives the client
// nativeLinger to close.
func (c *nconn) finishLocked() {
	if c.finishing || c.dead {
		return
	}
	c.finishing = true
	go func() {
		c.shutWrite()
		c.raw.SetReadDeadline(time.Now().Add(nativeLinger))
	}()
}

func (c *nconn) processHeaders(f *http2.MetaHeadersFrame) (http2.ErrCode, bool) {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ErrCodeProtocol, false
	}
	c.mu.Lock()
	if c.streams[id] != nil {
		c.mu.Unlock()
		return c.processTrailers(id, f)
	}
	if id <= c.maxClientID {
		// A closed stream, or a stream id going backwards (RFC 9113 §5.1.1).
		// Frames in flight on a stream this side reset are ignored
		// (RFC 9113 §5.4.2); the Framer kept the HPACK state.
		rst := c.recentlyResetLocked(id)
		c.mu.Unlock()
		if rst {
			return 0, true
		}
		return http2.ErrCodeStreamClosed, false
	}
	c.maxClientID = id
	if c.goingAway {
		// After the last GOAWAY, new streams are ignored (RFC 9113 §6.8).
		c.mu.Unlock()
		return 0, true
	}
	c.lastAccepted = id
	full := len(c.streams)+c.zombies >= c.s.cfg.MaxConcurrentStreams
	c.mu.Unlock()

	if f.HasPriority() && f.Priority.StreamDep == id {
		c.streamError(id, http2.ErrCodeProtocol)
		return 0, true
	}
	if full {
		if !c.takeResetToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		c.streamError(id, http2.ErrCodeRefusedStream)
		return 0, true
	}
	if !c.started {
		c.started = true
		c.nc.SetReadDeadline(time.Time{})
	}
	return c.newStream(f)
}

// processTrailers handles a HEADERS frame on an open stream. The stream is
// looked up again under c.mu each time: between two critical sections, its
// handler may have ended and the stream been recycled.
func (c *nconn) processTrailers(id uint32, f *http2.MetaHeadersFrame) (http2.ErrCode, bool) {
	c.mu.Lock()
	st := c.streams[id]
	remoteClosed := st == nil || st.remoteClosed
	c.mu.Unlock()
	if remoteClosed {
		// RFC 9113 §5.1: half-closed (remote) or closed. The stream is
		// done on this side, perhaps about to leave the map: treat it
		// as closed, a connection error, as h2spec expects.
		return http2.ErrCodeStreamClosed, false
	}
	// RFC 9113 §8.1: trailers end the stream and carry no pseudo-fields.
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		c.streamError(id, http2.ErrCodeProtocol)
		return 0, true
	}
	var tr http.Header
	if !f.Truncated {
		tr = make(http.Header, len(f.RegularFields()))
		for _, hf := range f.RegularFields() {
			k := c.canonKey(hf.Name)
			tr[k] = append(tr[k], hf.Value)
		}
	}
	c.mu.Lock()
	st = c.streams[id]
	if st == nil {
		c.mu.Unlock()
		return 0, true
	}
	if st.cl >= 0 && st.received != st.cl {
		c.mu.Unlock()
		c.streamError(id, http2.ErrCodeProtocol)
		return 0, true
	}
	st.trailerIn = tr
	st.reof = true
	st.remoteClosed = true
	st.rcond.Broadcast()
	if st.localClosed {
		c.removeLocked(st)
	}
	c.mu.Unlock()
	return 0, true
}

func (c *nconn) processData(f *http2.DataFrame) (http2.ErrCode, bool) {
	id := f.StreamID
	n := int64(f.Length)
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		return http2.ErrCodeFlowControl, false
	}
	c.recvWindow -= n
	st := c.streams[id]
	if st == nil || st.remoteClosed {
		// Not for a stream that reads: give the bytes back to the conn.
		c.recvCredit += n
		idle := id > c.maxClientID
		rst := st == nil && c.recentlyResetLocked(id)
		c.mu.Unlock()
		c.maybeConnWindowUpdate()
		if idle {
			return http2.ErrCodeProtocol, false
		}
		if rst {
			return 0, true
		}
		if !c.takeFloodToken() {
			return http2.ErrCodeEnhanceYourCalm, false
		}
		c.streamError(id, http2.ErrCodeStreamClosed)
		return 0, true
	}
	if n > int64(st.recvWindow) {
		c.recvCredit += n
		c.mu.Unlock()
		c.streamError(id, http2.ErrCodeFlowControl)
		return 0, true
	}
	st.recvWindow -= int32(n)
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		c.recvCredit += pad
		st.recvWindow += int32(pad)
	}
	st.received += int64(len(data))
	if (st.cl >= 0 && st.received > st.cl) || (f.StreamEnded() && st.cl >= 0 && st.received != st.cl) {
		// RFC 9113 §8.1.1: content-length disagrees with the DATA.
		c.recvCredit += int64(len(data))
		c.mu.Unlock()
		c.streamError(id, http2.ErrCodeProtocol)
		return 0, true
	}
	st.appendLocked(data)
	if f.StreamEnded() {
		st.reof = true
		st.remoteClosed = true
		if st.localClosed {
			c.removeLocked(st)
		}
	}
	st.rcond.Broadcast()
	c.mu.Unlock()
	if len(data) == 0 && !f.StreamEnded() && !c.takeFloodToken() {
		return http2.ErrCodeEnhanceYourCalm, false
	}
	c.maybeConnWindowUpdate()
	return 0, true
}

// maybeConnWindowUpdate returns consumed bytes to the client's conn window
// once they make up an eighth of it.
func (c *nconn) maybeConnWindowUpdate() {
	c.mu.Lock()
	credit := c.takeConnCreditLocked()
	c.mu.Unlock()
	if credit > 0 {
		c.lockW()
		if c.writeOKLocked() {
			c.frameErrLocked(c.wfr.WriteWindowUpdate(0, uint32(credit)))
		}
		c.unlockW()
	}
}

func (c *nconn) takeConnCreditLocked() int64 {
	if c.recvCredit < int64(c.s.cfg.InitialConnWindow/8) || c.dead {
		return 0
	}
	credit := c.recvCredit
	c.recvCredit = 0
	c.recvWindow += credit
	return credit
}

// canonKey returns the canonical key of a lowercase field name, cached per
// conn (bounded) so that repeated names do not allocate.
func (c *nconn) canonKey(name string) string {
	if k, ok := c.canon[name]; ok {
		return k
	}
	k := http.CanonicalHeaderKey(name)
	if len(c.canon) < 512 {
		c.canon[name] = k
	}
	return k
}

// lowerKey returns the lowercase field name of a header key; c.wmu is held.
func (c *nconn) lowerKeyLocked(k string) string {
	if l, ok := commonLower[k]; ok {
		return l
	}
	if l, ok := c.lower[k]; ok {
		return l
	}
	l := strings.ToLower(k)
	if len(c.lower) < 512 {
		c.lower[k] = l
	}
	return l
}

var commonLower = func() map[string]string {
	m := make(map[string]string)
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges", "Age",
		"Access-Control-Allow-Credentials", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
		"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Max-Age", "Allow",
		"Alt-Svc", "Authorization", "Cache-Control", "Content-Disposition", "Content-Encoding",
		"Content-Language", "Content-Length", "Content-Location", "Content-Range", "Content-Type", "Cookie",
		"Date", "Etag", "Expect", "Expires", "From", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
		"If-Range", "If-Unmodified-Since", "Last-Modified", "Link", "Location", "Max-Forwards", "Origin",
		"Proxy-Authenticate", "Proxy-Authorization", "Proxy-Status", "Range", "Referer", "Refresh",
		"Retry-After", "Server", "Set-Cookie", "Strict-Transport-Security", "Trailer", "User-Agent", "Vary",
		"Via", "Www-Authenticate", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id",
	} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

// statusText holds the decimal form of every status code.
var statusText = func() (t [1000]string) {
	for i := 100; i < 1000; i++ {
		t[i] = strconv.Itoa(i)
	}
	return t
}()

// connSpecific reports a connection-specific field, which HTTP/2 forbids
// (RFC 9113 §8.2.2); name is lowercase.
func connSpecific(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// writeHeadLocked encodes a response head (status, h, and content-length
// when cl >= 0) into HEADERS and CONTINUATION frames; c.wmu is held.
func (c *nconn) writeHeadLocked(id uint32, status int, h http.Header, cl int64, endStream bool) {
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText[status]})
	c.encodeFieldsLocked(h)
	if cl >= 0 {
		// Not indexed, so that the encoder keeps no reference to numBuf.
		b := strconv.AppendInt(c.numBuf[:0], cl, 10)
		c.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: unsafeString(b), Sensitive: true})
	}
	c.writeBlockLocked(id, endStream)
}

// writeTrailersLocked encodes trailers with END_STREAM; c.wmu is held.
func (c *nconn) writeTrailersLocked(id uint32, h http.Header) {
	c.hbuf.Reset()
	c.encodeFieldsLocked(h)
	c.writeBlockLocked(id, true)
}

// encodeFieldsLocked encodes h's fields, leaving out the connection-specific
// and framing ones and those that are not valid on the wire (as x/net's
// server does); c.wmu is held.
func (c *nconn) encodeFieldsLocked(h http.Header) {
	for k, vv := range h {
		lk := c.lowerKeyLocked(k)
		if connSpecific(lk) || lk == "content-length" || lk == "te" || !httpguts.ValidHeaderFieldName(lk) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				c.enc.WriteField(hpack.HeaderField{Name: lk, Value: v})
			}
		}
	}
}

func (c *nconn) writeBlockLocked(id uint32, endStream bool) {
	block := c.hbuf.Bytes()
	maxFrame := int(c.peerMaxFrame.Load())
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		var err error
		if first {
			err = c.wfr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0,
			})
			first = false
		} else {
			err = c.wfr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			c.writeFailedLocked(err)
			return
		}
	}
}

// respondLocal answers a request without the handler (431, 501), and stops
// the client's body if it has one.
func (c *nconn) respondLocal(id uint32, status int, endStream bool) {
	c.mu.Lock()
	c.noteResetLocked(id)
	c.mu.Unlock()
	c.lockW()
	if c.writeOKLocked() {
		c.writeHeadLocked(id, status, nil, 0, true)
		if !endStream {
			c.frameErrLocked(c.wfr.WriteRSTStream(id, http2.ErrCodeNo))
		}
	}
	c.unlockW()
	c.mu.Lock()
	if len(c.streams) == 0 && c.goingAway {
		c.finishLocked()
	}
	c.mu.Unlock()
}

// newStream validates a request head (RFC 9113 §8.3) and starts its
// handler.
func (c *nconn) newStream(f *http2.MetaHeadersFrame) (http2.ErrCode, bool) {
	id := f.StreamID
	endStream := f.StreamEnded()
	if f.Truncated {
		c.respondLocal(id, http.StatusRequestHeaderFieldsTooLarge, endStream)
		return 0, true
	}
	var method, path, scheme, authority, protocol string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		case ":protocol":
			protocol = hf.Value
		default: // :status (the Framer rejects unknown ones)
			c.streamError(id, http2.ErrCodeProtocol)
			return 0, true
		}
	}
	bad := method == ""
	isConnect := method == http.MethodConnect
	switch {
	case protocol != "":
		// RFC 8441 §4: extended CONNECT has all of them.
		bad = bad || !isConnect || path == "" || scheme == "" || authority == ""
	case isConnect:
		// RFC 9113 §8.5.
		bad = bad || path != "" || scheme != "" || authority == ""
	default:
		bad = bad || path == "" || scheme == "" || (path[0] != '/' && !(path == "*" && method == http.MethodOptions))
	}
	if bad {
		c.streamError(id, http2.ErrCodeProtocol)
		return 0, true
	}

	st := getStream()
	cl := int64(-1)
	count := 0
	var cookies []string
	// The header map and the array behind its single values are the
	// request's own, sized to its fields, and never recycled with the
	// stream: an upstream HTTP/2 conn (x/net's ClientConn) may still encode
	// them on its own goroutine after a cancelled RoundTrip returned.
	fields := f.RegularFields()
	h := make(http.Header, len(fields))
	vals := make([]string, 0, len(fields))
	for _, hf := range fields {
		name := hf.Name
		switch name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			putStream(st)
			c.streamError(id, http2.ErrCodeProtocol)
			return 0, true
		case "te":
			if hf.Value != "trailers" {
				putStream(st)
				c.streamError(id, http2.ErrCodeProtocol)
				return 0, true
			}
		case "content-length":
			v, err := strconv.ParseUint(hf.Value, 10, 63)
			if err != nil || (cl >= 0 && int64(v) != cl) {
				putStream(st)
				c.streamError(id, http2.ErrCodeProtocol)
				return 0, true
			}
			cl = int64(v)
			continue
		case "host":
			if authority == "" {
				authority = hf.Value
			}
			continue
		case "cookie":
			// RFC 9113 §8.2.3: crumbs are joined back into one field.
			count++
			cookies = append(cookies, hf.Value)
			continue
		}
		count++
		k := c.canonKey(name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
			continue
		}
		vals = append(vals, hf.Value)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if endStream {
		if cl > 0 {
			putStream(st)
			c.streamError(id, http2.ErrCodeProtocol)
			return 0, true
		}
		cl = 0
	}
	if count > c.s.cfg.MaxHeaderCount {
		putStream(st)
		c.respondLocal(id, http.StatusRequestHeaderFieldsTooLarge, endStream)
		return 0, true
	}
	if isConnect && !strings.EqualFold(protocol, "websocket") {
		putStream(st)
		c.respondLocal(id, http.StatusNotImplemented, endStream)
		return 0, true
	}
	if protocol != "" {
		protocol = "websocket"
	}

	st.c = c
	st.id = id
	st.cl = cl
	st.recvWindow = int32(c.s.cfg.InitialStreamWindow)
	st.rcond.L = &c.mu
	st.head = method == http.MethodHead
	if vv := h["Expect"]; len(vv) == 1 && strings.EqualFold(vv[0], "100-continue") && !endStream {
		st.expectContinue = true
	}
	st.req = transport.Request{
		Method:        method,
		Scheme:        c.scheme,
		Authority:     authority,
		Path:          path,
		Header:        h,
		ContentLength: cl,
		Protocol:      protocol,
		Proto:         transport.ProtoHTTP2,
		RemoteAddr:    c.remote,
		TLS:           c.tls,
		Shard:         c.shard,
	}
	if vv := h["Trailer"]; len(vv) > 0 && !endStream {
		tr := make(http.Header)
		for _, v := range vv {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					tr[http.CanonicalHeaderKey(name)] = nil
				}
			}
		}
		st.req.Trailer = tr
	}
	if protocol != "" {
		st.req.ContentLength = 0
		st.req.Body = &st.body
	} else if endStream {
		st.req.Body = http.NoBody
	} else {
		st.req.Body = &st.body
	}
	st.pooled = endStream && protocol == ""
	st.body.s = st
	st.ctx, st.cancel = context.WithCancelCause(context.Background())

	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return 0, true
	}
	st.sendWindow = c.peerInitWindow
	st.remoteClosed = endStream
	st.reof = endStream
	st.inMap = true
	c.streams[id] = st
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	c.s.handlerStart()
	c.ns.workers.Go(st)
	return 0, true
}
