package h3

import (
	"bufio"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// The native engine (EngineNative) serves each QUIC connection with:
//   - one goroutine, the connection's own (serve), that opens our control
//     stream, sends SETTINGS, and accepts request streams; each accepted
//     stream goes to a pooled transport.Workers goroutine, which reads the
//     request head (native_stream.go), runs the Handler and writes the
//     response frames (stream.go, shared with EngineQuicGo);
//   - one goroutine accepting the client's unidirectional streams, and one
//     per such stream that it recognises (control, QPACK encoder and
//     decoder: three per connection), for the connection's life.
//
// No lock is shared across connections; per connection, a mutex taken once
// per accepted stream orders the accept loop with GOAWAY.
//
// The engine uses QPACK's static table only: it advertises a dynamic table
// capacity of 0 and 0 blocked streams (RFC 9204 §5), so the client's encoder
// stream carries nothing but a capacity of 0, and the decoder stream nothing
// the server needs. Server push is not supported (no MAX_PUSH_ID use).
//
// Drain (Shutdown): GOAWAY names the first client bidirectional stream not
// accepted yet (RFC 9114 §5.2); streams at or above it are reset with
// H3_REQUEST_REJECTED, and the connection is closed with H3_NO_ERROR once
// its accepted streams are done.
//
// Limits, per connection: request streams in flight are bounded by
// MaxStreams (QUIC MAX_STREAMS; a stream counts from its acceptance until
// its handler returned and both directions ended), unidirectional streams
// by quic-go's default of 100; a request field section by MaxHeaderBytes
// (the HEADERS frame is refused with 431 before it is read when longer);
// the control-stream frames the server parses by 16 KiB; unknown frames
// and the QPACK decoder stream are read and dropped without being held.

// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
const (
	streamTypeControl      = 0x00
	streamTypePush         = 0x01
	streamTypeQPACKEncoder = 0x02
	streamTypeQPACKDecoder = 0x03
)

// Settings identifiers (RFC 9114 §7.2.4.1, RFC 9204 §5, RFC 9220 §3).
const (
	settingQPACKMaxTableCapacity = 0x01
	settingMaxFieldSectionSize   = 0x06
	settingQPACKBlockedStreams   = 0x07
	settingEnableConnectProtocol = 0x08
)

// QPACK connection error codes (RFC 9204 §6).
const (
	errCodeQPACKEncoderStream http3.ErrCode = 0x201
	errCodeQPACKDecoderStream http3.ErrCode = 0x202
)

// maxControlFrame bounds the payload of a control-stream frame the server
// parses (SETTINGS, GOAWAY, MAX_PUSH_ID, CANCEL_PUSH); others are skipped
// without being held.
const maxControlFrame = 16 << 10

// nconn is a connection of the native engine.
type nconn struct {
	cs *connState

	mu        sync.Mutex // guards ctrl, nextID, goingAway and goAwayID
	ctrl      *quic.SendStream
	nextID    quic.StreamID // the first client bidi stream not accepted yet
	goingAway bool
	goAwayID  quic.StreamID

	wmu sync.Mutex // serializes writes to ctrl

	uni     sync.WaitGroup // the unidirectional stream goroutines
	streams sync.WaitGroup // request streams accepted and not done

	peerControl, peerEncoder, peerDecoder atomic.Bool // the client opened one
}

// fail closes the connection with an HTTP/3 connection error.
func (nc *nconn) fail(code http3.ErrCode) {
	nc.cs.qc.CloseWithError(quic.ApplicationErrorCode(code), "")
}

// serve serves the connection until it closes, and returns once all its
// streams are done.
func (nc *nconn) serve() error {
	qc := nc.cs.qc
	s := nc.cs.srv
	ctrl, err := qc.OpenUniStream()
	if err != nil {
		return err
	}
	nc.wmu.Lock()
	nc.mu.Lock()
	nc.ctrl = ctrl
	b := appendSettings(make([]byte, 0, 32), s.cfg.MaxHeaderBytes)
	if nc.goingAway {
		b = appendGoAway(b, nc.goAwayID)
	}
	nc.mu.Unlock()
	_, err = ctrl.Write(b)
	nc.wmu.Unlock()
	if err != nil {
		return err
	}

	nc.uni.Add(1)
	go nc.acceptUni()
	for {
		str, err := qc.AcceptStream(context.Background())
		if err != nil {
			break
		}
		nc.mu.Lock()
		if nc.goingAway && str.StreamID() >= nc.goAwayID {
			nc.mu.Unlock()
			// Unprocessed: the client may retry it (RFC 9114 §5.2).
			str.CancelRead(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestRejected))
			continue
		}
		nc.nextID = str.StreamID() + 4
		nc.cs.inflight.Add(1) // before a GOAWAY can look at it
		nc.mu.Unlock()
		nc.streams.Add(1)
		st := getNativeStream()
		st.srv, st.cs, st.qs = s, nc.cs, str
		s.workers.Go((*nativeStream)(st))
	}
	nc.streams.Wait()
	nc.uni.Wait()
	return nil
}

// streamDone notes that a request stream is done.
func (nc *nconn) streamDone() {
	cs := nc.cs
	if cs.inflight.Add(-1) == 0 && cs.srv.draining.Load() {
		cs.closeWhenIdle()
	}
	nc.streams.Done()
}

// goAway sends GOAWAY (RFC 9114 §5.2) once. The write may wait for the
// client's flow control; it returns at the latest when the connection
// closes.
func (nc *nconn) goAway() {
	nc.mu.Lock()
	if nc.goingAway {
		nc.mu.Unlock()
		return
	}
	nc.goingAway = true
	nc.goAwayID = nc.nextID
	ctrl := nc.ctrl
	var buf [16]byte
	b := appendGoAway(buf[:0], nc.goAwayID)
	nc.mu.Unlock()
	if ctrl == nil {
		return // serve sends it after SETTINGS
	}
	nc.wmu.Lock()
	ctrl.Write(b)
	nc.wmu.Unlock()
}

func appendSettings(b []byte, maxFieldSection int) []byte {
	var p [32]byte
	pl := quicvarint.Append(p[:0], settingMaxFieldSectionSize)
	pl = quicvarint.Append(pl, uint64(maxFieldSection))
	pl = quicvarint.Append(pl, settingEnableConnectProtocol)
	pl = quicvarint.Append(pl, 1)
	pl = quicvarint.Append(pl, settingQPACKMaxTableCapacity)
	pl = quicvarint.Append(pl, 0)
	pl = quicvarint.Append(pl, settingQPACKBlockedStreams)
	pl = quicvarint.Append(pl, 0)
	b = quicvarint.Append(b, streamTypeControl)
	b = quicvarint.Append(b, frameTypeSettings)
	b = quicvarint.Append(b, uint64(len(pl)))
	return append(b, pl...)
}

func appendGoAway(b []byte, id quic.StreamID) []byte {
	b = quicvarint.Append(b, frameTypeGoAway)
	b = quicvarint.Append(b, uint64(quicvarint.Len(uint64(id))))
	return quicvarint.Append(b, uint64(id))
}

// acceptUni accepts the client's unidirectional streams.
func (nc *nconn) acceptUni() {
	defer nc.uni.Done()
	for {
		str, err := nc.cs.qc.AcceptUniStream(context.Background())
		if err != nil {
			return
		}
		nc.uni.Add(1)
		go nc.serveUni(str)
	}
}

// serveUni serves one unidirectional stream from the client (RFC 9114 §6.2).
func (nc *nconn) serveUni(str *quic.ReceiveStream) {
	defer nc.uni.Done()
	r := bufio.NewReaderSize(str, 512)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return // the stream or the connection ended before its type
	}
	switch typ {
	case streamTypeControl:
		if !nc.peerControl.CompareAndSwap(false, true) {
			nc.fail(http3.ErrCodeStreamCreationError) // §6.2.1: only one
			return
		}
		nc.criticalEnd(nc.readControl(r))
	case streamTypePush:
		nc.fail(http3.ErrCodeStreamCreationError) // §6.2.2: only servers push
	case streamTypeQPACKEncoder:
		if !nc.peerEncoder.CompareAndSwap(false, true) {
			nc.fail(http3.ErrCodeStreamCreationError) // RFC 9204 §4.2
			return
		}
		nc.criticalEnd(nc.readEncoder(r))
	case streamTypeQPACKDecoder:
		if !nc.peerDecoder.CompareAndSwap(false, true) {
			nc.fail(http3.ErrCodeStreamCreationError)
			return
		}
		// With no dynamic table, its instructions concern nothing the
		// server keeps.
		_, err := io.Copy(io.Discard, r)
		nc.criticalEnd(err)
	default:
		// Unknown and reserved types: not read (RFC 9114 §6.2).
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// errProtocol reports that a critical stream's reader closed the connection.
var errProtocol = errors.New("h3: connection error")

// criticalEnd handles the end of a critical stream, with err as its reader
// returned it: the client must not close one (RFC 9114 §6.2.1, RFC 9204
// §4.2), but it ends with the connection.
func (nc *nconn) criticalEnd(err error) {
	if err == errProtocol || nc.cs.qc.Context().Err() != nil {
		return
	}
	if err == nil || err == io.EOF || err == io.ErrUnexpectedEOF || isType[*quic.StreamError](err) {
		nc.fail(http3.ErrCodeClosedCriticalStream)
	}
}

// readControl reads the client's control stream (RFC 9114 §6.2.1, §7.2).
func (nc *nconn) readControl(r *bufio.Reader) error {
	first := true
	var payload []byte
	maxPushID, goAwayID := int64(-1), int64(-1) // the last received, -1 for none
	for {
		typ, err := quicvarint.Read(r)
		if err != nil {
			return err
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return unexpected(err)
		}
		if first && typ != frameTypeSettings {
			nc.fail(http3.ErrCodeMissingSettings)
			return errProtocol
		}
		switch {
		case typ == frameTypeData || typ == frameTypeHeaders || typ == frameTypePushPromise || frameReserved(typ):
			nc.fail(http3.ErrCodeFrameUnexpected)
			return errProtocol
		case typ == frameTypeSettings && !first:
			nc.fail(http3.ErrCodeFrameUnexpected) // §7.2.4: only once
			return errProtocol
		case typ == frameTypeSettings, typ == frameTypeGoAway, typ == frameTypeMaxPushID, typ == frameTypeCancelPush:
			if l > maxControlFrame {
				nc.fail(http3.ErrCodeExcessiveLoad)
				return errProtocol
			}
			if cap(payload) < int(l) {
				payload = make([]byte, l)
			}
			payload = payload[:l]
			if _, err := io.ReadFull(r, payload); err != nil {
				return unexpected(err)
			}
			if code := checkControlFrame(typ, payload); code != 0 {
				nc.fail(code)
				return errProtocol
			}
			// MAX_PUSH_ID must not decrease (§7.2.7), nor the push ID of a
			// client's GOAWAY increase (§5.2).
			id, _, _ := quicvarint.Parse(payload)
			switch {
			case typ == frameTypeMaxPushID && int64(id) < maxPushID,
				typ == frameTypeGoAway && goAwayID >= 0 && int64(id) > goAwayID:
				nc.fail(http3.ErrCodeIDError)
				return errProtocol
			case typ == frameTypeMaxPushID:
				maxPushID = int64(id)
			case typ == frameTypeGoAway:
				goAwayID = int64(id)
			}
		default:
			// Unknown types (PRIORITY_UPDATE among them) are skipped (§9).
			if _, err := io.CopyN(io.Discard, r, int64(l)); err != nil {
				return unexpected(err)
			}
		}
		first = false
	}
}

// unexpected turns the end of a stream inside a frame into
// io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// checkControlFrame validates a control-stream frame the server parses and
// returns the connection error code it calls for, or 0.
func checkControlFrame(typ uint64, p []byte) http3.ErrCode {
	switch typ {
	case frameTypeSettings:
		var seen [8]bool // the identifiers below 8, for duplicates
		var others map[uint64]bool
		for len(p) > 0 {
			id, n, err := quicvarint.Parse(p)
			if err != nil {
				return http3.ErrCodeFrameError
			}
			p = p[n:]
			_, n, err = quicvarint.Parse(p)
			if err != nil {
				return http3.ErrCodeFrameError
			}
			p = p[n:]
			switch {
			case id >= 0x02 && id <= 0x05: // HTTP/2's (§7.2.4.1)
				return http3.ErrCodeSettingsError
			case id < uint64(len(seen)):
				if seen[id] {
					return http3.ErrCodeSettingsError
				}
				seen[id] = true
			default:
				if others == nil {
					others = make(map[uint64]bool)
				}
				if others[id] {
					return http3.ErrCodeSettingsError
				}
				others[id] = true
			}
		}
	case frameTypeGoAway, frameTypeMaxPushID, frameTypeCancelPush:
		_, n, err := quicvarint.Parse(p)
		if err != nil || n != len(p) {
			return http3.ErrCodeFrameError
		}
		if typ == frameTypeCancelPush {
			// The server never promised a push (§7.2.3).
			return http3.ErrCodeIDError
		}
		// GOAWAY from a client names a push ID: with no pushes it asks
		// nothing of the server. MAX_PUSH_ID allows pushes the server
		// does not make.
	}
	return 0
}

// readEncoder reads the client's QPACK encoder stream. With a dynamic table
// capacity of 0, the only instruction allowed is Set Dynamic Table Capacity
// to 0 (RFC 9204 §4.3.1); any other is a connection error of type
// QPACK_ENCODER_STREAM_ERROR.
func (nc *nconn) readEncoder(r *bufio.Reader) error {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		if b&0xe0 != 0x20 {
			nc.fail(errCodeQPACKEncoderStream) // an insert or a duplicate
			return errProtocol
		}
		capacity, err := readPrefixInt(b, 5, r)
		if err != nil {
			return unexpected(err)
		}
		if capacity != 0 {
			nc.fail(errCodeQPACKEncoderStream)
			return errProtocol
		}
	}
}

var errIntOverflow = errors.New("h3: qpack integer overflow")

// readPrefixInt reads an integer with an n-bit prefix (RFC 7541 §5.1) whose
// first byte is b.
func readPrefixInt(b byte, n uint, r io.ByteReader) (uint64, error) {
	mask := byte(1<<n - 1)
	v := uint64(b & mask)
	if v < uint64(mask) {
		return v, nil
	}
	for m := uint(0); ; m += 7 {
		if m > 56 {
			return 0, errIntOverflow
		}
		c, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		v += uint64(c&0x7f) << m
		if c&0x80 == 0 {
			return v, nil
		}
	}
}

// shutdownNative drains the native engine's connections: GOAWAY on each,
// then close each once idle; at ctx's end, close what is left.
func (s *Server) shutdownNative(ctx context.Context, conns []*connState) error {
	var gw sync.WaitGroup // the GOAWAY writes
	for _, cs := range conns {
		gw.Go(cs.nc.goAway)
		cs.closeWhenIdle()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		left := make([]*connState, 0, len(s.conns))
		for _, cs := range s.conns {
			left = append(left, cs)
		}
		s.mu.Unlock()
		for _, cs := range left {
			cs.qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
		}
		<-done
	}
	gw.Wait()
	return err
}
