package h3

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"

	"github.com/proxynow/proxynow/transport"
)

// The request side of a native-engine stream (EngineNative): the request
// stream's frames (RFC 9114 §4.1, §7.2) are read by the worker that runs the
// Handler, first the HEADERS frame, decoded with QPACK's static table
// straight into a transport.Request, then, through Request.Body, the DATA
// frames and a trailing HEADERS frame with the trailers.
//
// A stream is pooled when its request has no body: as the ServerStream
// lifetime rule allows, it is recycled once ServeStream returned. A stream
// with a body is not, since an upstream conn may still read the body after
// that; its read buffer is recycled when the body ends.

// HTTP/3 frame types other than DATA and HEADERS (RFC 9114 §7.2, §11.2.1).
const (
	frameTypeCancelPush  = 0x03
	frameTypeSettings    = 0x04
	frameTypePushPromise = 0x05
	frameTypeGoAway      = 0x07
	frameTypeMaxPushID   = 0x0d
)

// frameReserved reports whether typ is an HTTP/2 frame type reserved in
// HTTP/3, whose receipt is a connection error of type H3_FRAME_UNEXPECTED
// (RFC 9114 §7.2.8).
func frameReserved(typ uint64) bool {
	return typ == 0x02 || typ == 0x06 || typ == 0x08 || typ == 0x09
}

// notOnRequestStream reports whether a frame of type typ is not allowed on a
// request stream (RFC 9114 §7.2: control-stream frames, PUSH_PROMISE from a
// client, HTTP/2's types).
func notOnRequestStream(typ uint64) bool {
	switch typ {
	case frameTypeCancelPush, frameTypeSettings, frameTypePushPromise, frameTypeGoAway, frameTypeMaxPushID:
		return true
	}
	return frameReserved(typ)
}

// nativeReadBuf is the size of a stream's pooled read buffer. A HEADERS
// frame larger than it gets a larger buffer of its own.
const nativeReadBuf = 4 << 10

// readBuf is a stream's pooled read buffer and field scratch space.
type readBuf struct {
	b      []byte
	fields []qpack.HeaderField
}

var readBufPool = sync.Pool{New: func() any {
	return &readBuf{b: make([]byte, nativeReadBuf), fields: make([]qpack.HeaderField, 0, 16)}
}}

var nstreamPool = sync.Pool{New: func() any { return new(serverStream) }}

// nativeIn is the request-reading state of a native stream. It is used by
// the handler's goroutine, or by whoever reads the request body.
type nativeIn struct {
	buf     *readBuf // nil once released
	r, w    int      // the unread bytes are buf.b[r:w]
	eof     bool     // the stream's FIN was read
	rerr    error    // a read error other than io.EOF
	data    uint64   // bytes left in the DATA frame being read
	got     int64    // DATA payload bytes received
	cl      int64    // the declared content-length, or -1 (none, or a tunnel)
	hasBody bool     // Body reads frames (not http.NoBody)
	done    error    // the body's final result, io.EOF or an error, once known

	stop   func() bool // stops the send-context watch; nil once stopped
	fired  bool        // the send-context watch ran or may run
	onDone func()      // st.onStreamDone, made once per pooled stream
}

// Errors of the native request side; preallocated.
var (
	errUnexpectedEOF = errors.New("h3: stream ended inside a frame")
	errMessage       = transport.NewError(transport.CodeBadRequest, true, errors.New("h3: malformed request message"))
	errTrailerLarge  = transport.NewError(transport.CodeHeaderTooLarge, true, errors.New("h3: request trailers too large"))
	errConnFailed    = transport.NewError(transport.CodeBadRequest, true, errors.New("h3: connection error on a request stream"))
)

// nativeStream runs a native stream as a transport.Task.
type nativeStream serverStream

func getNativeStream() *serverStream { return nstreamPool.Get().(*serverStream) }

func putNativeStream(st *serverStream) {
	onDone := st.nat.onDone
	*st = serverStream{}
	st.nat.onDone = onDone
	nstreamPool.Put(st)
}

// Run reads the request head and serves the request, on a worker.
func (ns *nativeStream) Run() {
	st := (*serverStream)(ns)
	cs := st.cs
	in := &st.nat
	in.buf = readBufPool.Get().(*readBuf)
	pool := false
	if st.readHeadSafe() {
		pool = st.serveNative()
	}
	if !in.hasBody {
		in.release()
	}
	cs.nc.streamDone()
	if pool {
		putNativeStream(st)
	}
}

// readHeadSafe is readHead with a panic, a bug, confined to the stream.
func (st *serverStream) readHeadSafe() (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			st.srv.log.Error("h3: panic reading a request head", "remote", st.cs.remote, "panic", p, "stack", string(debug.Stack()))
			st.streamError(http3.ErrCodeInternalError)
			st.nat.hasBody = false
			ok = false
		}
	}()
	return st.readHead()
}

// serveNative hands the parsed request to the Handler. It reports whether
// the stream may be recycled.
func (st *serverStream) serveNative() bool {
	s := st.srv
	s.nRequests.Add(1)
	if st.req.EarlyData {
		s.nEarly.Add(1)
	}
	st.ctx, st.cancel = context.WithCancelCause(context.Background())
	if st.nat.onDone == nil {
		st.nat.onDone = st.onStreamDone // kept across recycling: one closure per pooled stream
	}
	st.nat.stop = context.AfterFunc(st.qs.Context(), st.nat.onDone)
	st.serve(s.handler)
	st.stopWatch()
	st.cancel(nil)
	return !st.nat.hasBody && !st.nat.fired
}

// stopWatch stops the send-context watch of a native stream, before its
// Finish closes the stream (which cancels the send context, and would start
// the watch's goroutine for nothing). With EngineQuicGo it does nothing.
func (st *serverStream) stopWatch() {
	if in := &st.nat; in.stop != nil {
		if !in.stop() {
			in.fired = true
		}
		in.stop = nil
	}
}

func (in *nativeIn) release() {
	if b := in.buf; b != nil {
		in.buf = nil
		if cap(b.b) == nativeReadBuf {
			clear(b.fields[:cap(b.fields)])
			b.fields = b.fields[:0]
			readBufPool.Put(b)
		}
	}
}

// fill reads more of the stream into the buffer.
func (in *nativeIn) fill(qs *quic.Stream) error {
	if in.rerr != nil {
		return in.rerr
	}
	if in.eof {
		return io.EOF
	}
	b := in.buf.b
	if in.r == in.w {
		in.r, in.w = 0, 0
	} else if in.w == len(b) {
		in.w = copy(b, b[in.r:in.w])
		in.r = 0
	}
	n, err := qs.Read(b[in.w:])
	in.w += n
	switch {
	case err == io.EOF:
		in.eof = true
	case err != nil:
		in.rerr = err
	}
	if n > 0 {
		return nil
	}
	if err == nil {
		return io.ErrNoProgress
	}
	return err
}

// ensure makes n bytes available in the buffer. It returns io.EOF when the
// stream ended with none buffered, errUnexpectedEOF when it ended with
// fewer.
func (in *nativeIn) ensure(qs *quic.Stream, n int) error {
	if n > len(in.buf.b) {
		nb := make([]byte, n)
		in.w = copy(nb, in.buf.b[in.r:in.w])
		in.r = 0
		// Not from the pool: release drops it and the pooled one goes
		// back to the GC.
		in.buf = &readBuf{b: nb, fields: in.buf.fields}
	}
	for in.w-in.r < n {
		if err := in.fill(qs); err != nil {
			if err == io.EOF && in.w > in.r {
				return errUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

func (in *nativeIn) varint(qs *quic.Stream) (uint64, error) {
	if err := in.ensure(qs, 1); err != nil {
		return 0, err
	}
	if err := in.ensure(qs, 1<<(in.buf.b[in.r]>>6)); err != nil {
		return 0, err
	}
	v, n, _ := quicvarint.Parse(in.buf.b[in.r:in.w])
	in.r += n
	return v, nil
}

// frameHeader reads a frame's type and length. io.EOF means the stream ended
// cleanly, at a frame boundary.
func (in *nativeIn) frameHeader(qs *quic.Stream) (typ, length uint64, err error) {
	if typ, err = in.varint(qs); err != nil {
		return 0, 0, err
	}
	if length, err = in.varint(qs); err == io.EOF {
		err = errUnexpectedEOF
	}
	return typ, length, err
}

// payload returns the next n bytes, valid until the next read.
func (in *nativeIn) payload(qs *quic.Stream, n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	if err := in.ensure(qs, n); err != nil {
		if err == io.EOF {
			err = errUnexpectedEOF
		}
		return nil, err
	}
	p := in.buf.b[in.r : in.r+n]
	in.r += n
	return p, nil
}

// skip discards n bytes.
func (in *nativeIn) skip(qs *quic.Stream, n uint64) error {
	for n > 0 {
		if in.r == in.w {
			if err := in.fill(qs); err != nil {
				if err == io.EOF {
					err = errUnexpectedEOF
				}
				return err
			}
		}
		k := uint64(in.w - in.r)
		k = min(k, n)
		in.r += int(k)
		n -= k
	}
	return nil
}

// connError closes the connection with an HTTP/3 connection error.
func (st *serverStream) connError(code http3.ErrCode) {
	st.cs.qc.CloseWithError(quic.ApplicationErrorCode(code), "")
}

// streamError resets both directions of the stream with code.
func (st *serverStream) streamError(code http3.ErrCode) {
	st.qs.CancelRead(quic.StreamErrorCode(code))
	st.qs.CancelWrite(quic.StreamErrorCode(code))
}

// readFailed handles a failed read of the request stream.
func (st *serverStream) readFailed(err error) {
	switch err {
	case errUnexpectedEOF:
		st.connError(http3.ErrCodeFrameError) // RFC 9114 §7.1
	default:
		// The stream ended, or was reset, before a complete request
		// (RFC 9114 §4.1.2); after a connection error, this is moot.
		st.streamError(http3.ErrCodeRequestIncomplete)
	}
}

// readHead reads the request's HEADERS frame and fills st.req. It reports
// whether the request goes to the Handler; when not, it has answered or
// reset the stream, or closed the connection.
func (st *serverStream) readHead() bool {
	in, qs := &st.nat, st.qs
	for {
		typ, l, err := in.frameHeader(qs)
		if err != nil {
			st.readFailed(err)
			return false
		}
		switch {
		case typ == frameTypeHeaders:
			// An encoded field section is never larger than its size as
			// RFC 9114 §4.2.2 counts it (32 bytes per field).
			if l > uint64(st.srv.cfg.MaxHeaderBytes) {
				st.reject(http.StatusRequestHeaderFieldsTooLarge, http3.ErrCodeExcessiveLoad)
				return false
			}
			p, err := in.payload(qs, int(l))
			if err != nil {
				st.readFailed(err)
				return false
			}
			return st.parseHead(p)
		case typ == frameTypeData || notOnRequestStream(typ):
			// The first frame must be HEADERS (RFC 9114 §4.1).
			st.connError(http3.ErrCodeFrameUnexpected)
			return false
		default:
			// Unknown and reserved (grease) types are skipped (RFC 9114
			// §9).
			if err := in.skip(qs, l); err != nil {
				st.readFailed(err)
				return false
			}
		}
	}
}

// qpackDecoder decodes with QPACK's static table only: the server advertises
// SETTINGS_QPACK_MAX_TABLE_CAPACITY 0, so a reference to the dynamic table is
// an error. It is stateless.
var qpackDecoder = qpack.NewDecoder()

// Pseudo-header bits, for duplicates.
const (
	pseudoMethod = 1 << iota
	pseudoScheme
	pseudoAuthority
	pseudoPath
	pseudoProtocol
)

// headVerdict is what parsing a request field section found.
type headVerdict uint8

const (
	headOK             headVerdict = iota
	headMalformed                  // a stream error of type H3_MESSAGE_ERROR
	headTooLarge                   // over MaxHeaderBytes: 431
	headTooMany                    // over MaxHeaderCount: 431
	headQPACK                      // a connection error of type QPACK_DECOMPRESSION_FAILED
	headNotImplemented             // a CONNECT other than WebSocket's: 501
)

// reqHead is a parsed request head.
type reqHead struct {
	method, authority, path, protocol string
	contentLength                     int64 // -1 when absent
	header                            http.Header
}

// parseFieldSection decodes the request field section p and validates it
// (RFC 9114 §4.2, §4.3.1; RFC 9220 §3 for :protocol). fields is scratch
// space, returned for reuse (its strings are referenced by the header).
// The field names of the header map are canonical; content-length and host
// travel in contentLength and authority; the values of several cookie
// fields are joined (RFC 9114 §4.2.1).
func parseFieldSection(p []byte, fields []qpack.HeaderField, maxBytes, maxCount int, h *reqHead) ([]qpack.HeaderField, headVerdict) {
	dec := qpackDecoder.Decode(p)
	fields = fields[:0]
	var method, scheme, authority, path, protocol, host, clText string
	var seen, hosts int
	regular, count := false, 0
	size := 0
	for {
		f, err := dec()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fields, headQPACK // RFC 9204 §2.2.3
		}
		size += len(f.Name) + len(f.Value) + 32
		if size > maxBytes {
			return fields, headTooLarge
		}
		if !validFieldName(f.Name) || !httpguts.ValidHeaderFieldValue(f.Value) {
			return fields, headMalformed
		}
		if f.Name[0] == ':' {
			if regular {
				return fields, headMalformed // pseudo-header after a regular field
			}
			var bit int
			switch f.Name {
			case ":method":
				bit, method = pseudoMethod, f.Value
			case ":scheme":
				bit, scheme = pseudoScheme, f.Value
			case ":authority":
				bit, authority = pseudoAuthority, f.Value
			case ":path":
				bit, path = pseudoPath, f.Value
			case ":protocol":
				bit, protocol = pseudoProtocol, f.Value
			default:
				return fields, headMalformed // unknown, or a response pseudo-header
			}
			if seen&bit != 0 {
				return fields, headMalformed
			}
			seen |= bit
			continue
		}
		regular = true
		count++
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return fields, headMalformed // connection-specific (RFC 9114 §4.2)
		case "te":
			if f.Value != "trailers" {
				return fields, headMalformed
			}
		case "content-length":
			if clText != "" && clText != f.Value {
				return fields, headMalformed
			}
			clText = f.Value
			continue
		case "host":
			hosts++
			host = f.Value
			continue
		}
		fields = append(fields, f)
	}

	if method == "" || !httpguts.ValidHeaderFieldName(method) || hosts > 1 {
		return fields, headMalformed
	}
	hasAuthority := seen&pseudoAuthority != 0
	if hasAuthority && hosts > 0 && authority != host {
		return fields, headMalformed
	}
	connect := method == http.MethodConnect
	if !hasAuthority {
		authority = host
	}
	switch {
	case connect && seen&pseudoProtocol != 0:
		if !httpguts.ValidHeaderFieldName(protocol) || scheme == "" || path == "" || authority == "" {
			return fields, headMalformed
		}
	case connect:
		if seen&(pseudoScheme|pseudoPath) != 0 || authority == "" {
			return fields, headMalformed
		}
	default:
		if seen&pseudoProtocol != 0 || scheme == "" || path == "" || authority == "" {
			return fields, headMalformed
		}
	}
	if !connect || protocol != "" {
		if path[0] != '/' && (method != http.MethodOptions || path != "*") {
			return fields, headMalformed
		}
	}
	if strings.IndexByte(authority, '@') >= 0 {
		return fields, headMalformed // userinfo (RFC 9114 §4.3.1)
	}
	cl := int64(-1)
	if clText != "" {
		n, err := strconv.ParseUint(clText, 10, 63)
		if err != nil {
			return fields, headMalformed
		}
		cl = int64(n)
	}
	if count > maxCount {
		return fields, headTooMany
	}
	if connect {
		// Only the extended CONNECT of WebSocket (RFC 9220).
		if !strings.EqualFold(protocol, "websocket") {
			return fields, headNotImplemented
		}
		protocol = "websocket"
	}

	// One map, and one backing array for the first value of every field.
	hdr := make(http.Header, len(fields))
	vals := make([]string, len(fields))
	for i, f := range fields {
		k := canonicalKey(f.Name)
		if vv, ok := hdr[k]; ok {
			hdr[k] = append(vv, f.Value)
			continue
		}
		vals[i] = f.Value
		hdr[k] = vals[i : i+1 : i+1]
	}
	if c := hdr["Cookie"]; len(c) > 1 {
		hdr["Cookie"] = []string{strings.Join(c, "; ")}
	}
	*h = reqHead{method: method, authority: authority, path: path, protocol: protocol, contentLength: cl, header: hdr}
	return fields, headOK
}

// parseHead parses the request field section p into st.req. It reports
// whether the request goes to the Handler; when not, it has answered or
// reset the stream, or closed the connection.
func (st *serverStream) parseHead(p []byte) bool {
	s := st.srv
	in := &st.nat
	var h reqHead
	fields, v := parseFieldSection(p, in.buf.fields, s.cfg.MaxHeaderBytes, s.cfg.MaxHeaderCount, &h)
	clear(fields)
	in.buf.fields = fields[:0]
	switch v {
	case headMalformed:
		return st.malformed()
	case headTooLarge:
		st.reject(http.StatusRequestHeaderFieldsTooLarge, http3.ErrCodeExcessiveLoad)
		return false
	case headTooMany:
		s.n431.Add(1)
		st.reject(http.StatusRequestHeaderFieldsTooLarge, http3.ErrCodeExcessiveLoad)
		return false
	case headQPACK:
		st.connError(http3.ErrCodeQPACKDecompressionFailed)
		return false
	case headNotImplemented:
		st.reject(http.StatusNotImplemented, http3.ErrCodeNoError)
		return false
	}

	cl := h.contentLength
	in.cl = cl
	in.hasBody = true
	var body io.Reader = (*requestBody)(st)
	switch {
	case h.protocol != "":
		in.cl, cl = -1, 0 // the tunnel's bytes are not content
	case cl == 0:
		in.hasBody, body = false, http.NoBody
	case cl < 0 && st.nativeBodyless():
		in.hasBody, cl, body = false, 0, http.NoBody
	}
	early := false
	select {
	case <-st.cs.qc.HandshakeComplete():
	default:
		early = true // see initRequest
	}
	st.isHead = h.method == http.MethodHead
	st.clen = -1
	st.req = transport.Request{
		Method:        h.method,
		Scheme:        "https",
		Authority:     h.authority,
		Path:          h.path,
		Header:        h.header,
		ContentLength: cl,
		Body:          body,
		Protocol:      h.protocol,
		Proto:         transport.ProtoHTTP3,
		RemoteAddr:    st.cs.remote,
		TLS:           true,
		EarlyData:     early,
		Shard:         st.cs.shard,
	}
	return true
}

// malformed resets the stream of a malformed request (RFC 9114 §4.1.2).
func (st *serverStream) malformed() bool {
	st.streamError(http3.ErrCodeMessageError)
	return false
}

// nativeBodyless is bodyless for the native engine: nothing is buffered
// beyond the head.
func (st *serverStream) nativeBodyless() bool {
	in := &st.nat
	if in.r < in.w {
		return false
	}
	if in.eof {
		return true
	}
	return st.bodyless()
}

// validFieldName reports whether name is a lowercase field name, or a
// pseudo-header name (RFC 9114 §4.2).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	n := name
	if n[0] == ':' {
		n = n[1:]
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return httpguts.ValidHeaderFieldName(n)
}

// canonicalKey returns the canonical key of a lowercase field name,
// without allocating for the common ones.
func canonicalKey(name string) string {
	if k, ok := commonCanonical[name]; ok {
		return k
	}
	return http.CanonicalHeaderKey(name)
}

var commonCanonical = func() map[string]string {
	m := make(map[string]string, len(commonLower))
	for k, l := range commonLower {
		m[l] = k
	}
	return m
}()

// readBody reads the request body of a native stream: the payload of its
// DATA frames, then the trailers, checked against the declared
// content-length (RFC 9114 §4.1.2).
func (st *serverStream) readBody(p []byte) (int, error) {
	in, qs := &st.nat, st.qs
	if in.done != nil {
		return 0, in.done
	}
	if len(p) == 0 {
		return 0, nil
	}
	for in.data == 0 {
		typ, l, err := in.frameHeader(qs)
		if err == io.EOF {
			if in.cl >= 0 && in.got != in.cl {
				return 0, st.bodyFailed(http3.ErrCodeMessageError, errMessage)
			}
			return 0, st.bodyDone(io.EOF)
		}
		if err != nil {
			return 0, st.bodyReadErr(err)
		}
		switch {
		case typ == frameTypeData:
			if in.cl >= 0 && uint64(in.cl-in.got) < l {
				return 0, st.bodyFailed(http3.ErrCodeMessageError, errMessage)
			}
			in.data = l
		case typ == frameTypeHeaders:
			return 0, st.readTrailers(l)
		case notOnRequestStream(typ):
			st.connError(http3.ErrCodeFrameUnexpected)
			return 0, st.bodyDone(errConnFailed)
		default:
			if err := in.skip(qs, l); err != nil {
				return 0, st.bodyReadErr(err)
			}
		}
	}
	n := int(min(uint64(len(p)), in.data))
	var err error
	if in.r < in.w {
		n = copy(p[:n], in.buf.b[in.r:in.w])
		in.r += n
	} else {
		// Straight from the stream into p.
		n, err = qs.Read(p[:n])
		switch {
		case err == io.EOF:
			in.eof = true
			if uint64(n) < in.data {
				err = errUnexpectedEOF
			} else {
				err = nil
			}
		case err != nil:
			in.rerr = err
		}
	}
	in.data -= uint64(n)
	in.got += int64(n)
	if err != nil {
		return n, st.bodyReadErr(err)
	}
	return n, nil
}

// readTrailers reads the trailing HEADERS frame of length l and what may
// follow it: only unknown frames, up to the end of the stream.
func (st *serverStream) readTrailers(l uint64) error {
	in, qs := &st.nat, st.qs
	if in.cl >= 0 && in.got != in.cl {
		return st.bodyFailed(http3.ErrCodeMessageError, errMessage)
	}
	if l > uint64(st.srv.cfg.MaxHeaderBytes) {
		return st.bodyFailed(http3.ErrCodeExcessiveLoad, errTrailerLarge)
	}
	p, err := in.payload(qs, int(l))
	if err != nil {
		return st.bodyReadErr(err)
	}
	dec := qpackDecoder.Decode(p)
	var t http.Header
	size := 0
	for {
		f, err := dec()
		if err == io.EOF {
			break
		}
		if err != nil {
			st.connError(http3.ErrCodeQPACKDecompressionFailed)
			return st.bodyDone(errConnFailed)
		}
		size += len(f.Name) + len(f.Value) + 32
		if size > st.srv.cfg.MaxHeaderBytes {
			return st.bodyFailed(http3.ErrCodeExcessiveLoad, errTrailerLarge)
		}
		if !validFieldName(f.Name) || f.Name[0] == ':' || !httpguts.ValidHeaderFieldValue(f.Value) {
			return st.bodyFailed(http3.ErrCodeMessageError, errMessage)
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return st.bodyFailed(http3.ErrCodeMessageError, errMessage)
		}
		if !httpguts.ValidTrailerHeader(f.Name) {
			continue // not allowed in trailers (RFC 9110 §6.5.1): dropped, not forwarded
		}
		if t == nil {
			t = make(http.Header)
		}
		t.Add(f.Name, f.Value)
	}
	// Nothing but unknown frames may follow (RFC 9114 §4.1).
	for {
		typ, l, err := in.frameHeader(qs)
		if err == io.EOF {
			break
		}
		if err != nil {
			return st.bodyReadErr(err)
		}
		if typ == frameTypeData || typ == frameTypeHeaders || notOnRequestStream(typ) {
			st.connError(http3.ErrCodeFrameUnexpected)
			return st.bodyDone(errConnFailed)
		}
		if err := in.skip(qs, l); err != nil {
			return st.bodyReadErr(err)
		}
	}
	if len(t) > 0 {
		st.req.Trailer = t
	}
	return st.bodyDone(io.EOF)
}

// bodyDone ends the body with err and recycles the read buffer.
func (st *serverStream) bodyDone(err error) error {
	st.nat.done = err
	st.nat.release()
	return err
}

// bodyFailed resets the stream with code for a malformed body, and ends the
// body and the stream's Context with err.
func (st *serverStream) bodyFailed(code http3.ErrCode, err error) error {
	st.streamError(code)
	if st.resetBy.CompareAndSwap(0, uint32(transport.CodeBadRequest)+1) && st.cancel != nil {
		st.cancel(err)
	}
	return st.bodyDone(err)
}

// bodyReadErr translates a failed read of the request stream.
func (st *serverStream) bodyReadErr(err error) error {
	if err == errUnexpectedEOF {
		st.connError(http3.ErrCodeFrameError)
		return st.bodyDone(errConnFailed)
	}
	err = downstreamErr(err, st.resetCode())
	if e, ok := err.(*transport.Error); ok && e.Remote && e.Code == transport.CodeClientCancelled && st.cancel != nil {
		st.cancel(err) // as requestBody.Read
	}
	return st.bodyDone(err)
}
