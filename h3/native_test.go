package h3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/proxynow/proxynow/transport"
)

// Frame-level tests of the native engine, with a raw QUIC client that
// writes HTTP/3 frames itself.

// startNative runs a native-engine Server for h.
func startNative(t *testing.T, h transport.Handler, configure func(*ServerConfig)) *testServer {
	t.Helper()
	return startServer(t, h, func(c *ServerConfig) {
		c.Engine = EngineNative
		if configure != nil {
			configure(c)
		}
	})
}

// frame returns an HTTP/3 frame.
func frame(typ uint64, payload []byte) []byte {
	b := quicvarint.Append(nil, typ)
	b = quicvarint.Append(b, uint64(len(payload)))
	return append(b, payload...)
}

// fieldSection encodes name, value pairs with QPACK, as given (no checks).
func fieldSection(kv ...string) []byte {
	var buf bytes.Buffer
	enc := qpack.NewEncoder(&buf)
	for i := 0; i+1 < len(kv); i += 2 {
		enc.WriteField(qpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return buf.Bytes()
}

func headersFrame(kv ...string) []byte { return frame(frameTypeHeaders, fieldSection(kv...)) }

func getFields(path string) []string {
	return []string{":method", "GET", ":scheme", "https", ":authority", "localhost", ":path", path}
}

// rawClient is a raw HTTP/3 client connection.
type rawClient struct {
	t    *testing.T
	qc   *quic.Conn
	ctrl *quic.SendStream
}

// dialRaw connects to ts and, when settings is set, opens the client's
// control stream with an empty SETTINGS frame.
func dialRaw(t *testing.T, ts *testServer, settings bool) *rawClient {
	t.Helper()
	rc := &rawClient{t: t, qc: dialQUIC(t, ts.addr, ts.clientTLS, nil)}
	if settings {
		rc.ctrl = rc.uni(streamTypeControl, frame(frameTypeSettings, nil))
	}
	return rc
}

// uni opens a unidirectional stream of type typ and writes b on it.
func (rc *rawClient) uni(typ uint64, b []byte) *quic.SendStream {
	rc.t.Helper()
	str, err := rc.qc.OpenUniStream()
	if err != nil {
		rc.t.Fatal(err)
	}
	if _, err := str.Write(append(quicvarint.Append(nil, typ), b...)); err != nil {
		rc.t.Fatal(err)
	}
	return str
}

// request opens a request stream, writes b and, with fin, closes it.
func (rc *rawClient) request(b []byte, fin bool) *quic.Stream {
	rc.t.Helper()
	str, err := rc.qc.OpenStreamSync(testCtx(rc.t))
	if err != nil {
		rc.t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(testTimeout))
	if _, err := str.Write(b); err != nil {
		rc.t.Fatal(err)
	}
	if fin {
		str.Close()
	}
	return str
}

// connError waits for the connection to be closed by the server and
// checks the HTTP/3 error code.
func (rc *rawClient) connError(want http3.ErrCode) {
	rc.t.Helper()
	select {
	case <-rc.qc.Context().Done():
	case <-time.After(testTimeout):
		rc.t.Fatalf("connection not closed, want %v", want)
	}
	e, ok := errors.AsType[*quic.ApplicationError](context.Cause(rc.qc.Context()))
	if !ok || !e.Remote || http3.ErrCode(e.ErrorCode) != want {
		rc.t.Fatalf("connection closed with %v, want %v from the server", context.Cause(rc.qc.Context()), want)
	}
}

// rawResponse is a response read frame by frame.
type rawResponse struct {
	status  int
	header  http.Header
	body    []byte
	trailer http.Header
}

// readResponse reads a response from str up to its end.
func readResponse(str *quic.Stream) (*rawResponse, error) {
	r := bufio.NewReader(str)
	resp := &rawResponse{header: http.Header{}}
	for {
		typ, err := quicvarint.Read(r)
		if err == io.EOF {
			return resp, nil
		}
		if err != nil {
			return resp, err
		}
		l, err := quicvarint.Read(r)
		if err != nil {
			return resp, err
		}
		p := make([]byte, l)
		if _, err := io.ReadFull(r, p); err != nil {
			return resp, err
		}
		switch typ {
		case frameTypeData:
			resp.body = append(resp.body, p...)
		case frameTypeHeaders:
			h := http.Header{}
			status := 0
			dec := qpack.NewDecoder().Decode(p)
			for {
				f, err := dec()
				if err == io.EOF {
					break
				}
				if err != nil {
					return resp, err
				}
				if f.Name == ":status" {
					status, _ = strconv.Atoi(f.Value)
					continue
				}
				h.Add(f.Name, f.Value)
			}
			switch {
			case resp.status == 0 && status >= 200:
				resp.status, resp.header = status, h
			case resp.status != 0:
				resp.trailer = h
			}
		}
	}
}

// streamReset checks that err is a reset of the stream by the server with
// code want.
func streamReset(t *testing.T, what string, err error, want http3.ErrCode) {
	t.Helper()
	e, ok := errors.AsType[*quic.StreamError](err)
	if !ok || !e.Remote || http3.ErrCode(e.ErrorCode) != want {
		t.Errorf("%s: %v, want a stream reset with %v", what, err, want)
	}
}

// TestNativeSettings checks the server's SETTINGS (RFC 9114 §7.2.4, RFC 9220
// §3, RFC 9204 §5).
func TestNativeSettings(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(echo), func(c *ServerConfig) { c.MaxHeaderBytes = 12345 })
	rc := dialRaw(t, ts, true)
	str, err := rc.qc.AcceptUniStream(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	str.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(str)
	typ, _ := quicvarint.Read(r)
	ft, _ := quicvarint.Read(r)
	l, err := quicvarint.Read(r)
	if err != nil || typ != streamTypeControl || ft != frameTypeSettings {
		t.Fatalf("first uni stream: type %d, frame %d, %v", typ, ft, err)
	}
	p := make([]byte, l)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]uint64{}
	for len(p) > 0 {
		id, n, _ := quicvarint.Parse(p)
		v, m, _ := quicvarint.Parse(p[n:])
		got[id] = v
		p = p[n+m:]
	}
	want := map[uint64]uint64{settingMaxFieldSectionSize: 12345, settingEnableConnectProtocol: 1, settingQPACKMaxTableCapacity: 0, settingQPACKBlockedStreams: 0}
	for id, v := range want {
		if g, ok := got[id]; !ok || g != v {
			t.Errorf("setting %#x = %d (present %v), want %d", id, g, ok, v)
		}
	}
}

// TestNativeUnknownIgnored: unknown and reserved frame types on a request
// stream and the control stream, and unknown stream types, are ignored.
func TestNativeUnknownIgnored(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(echo), nil)
	rc := dialRaw(t, ts, true)
	// Unknown frame on the control stream, and MAX_PUSH_ID and a client
	// GOAWAY, which the server does not act on.
	rc.ctrl.Write(frame(0x21, []byte("grease")))
	rc.ctrl.Write(frame(frameTypeMaxPushID, quicvarint.Append(nil, 8)))
	rc.ctrl.Write(frame(frameTypeGoAway, quicvarint.Append(nil, 0)))
	// A reserved stream type: the server stops reading it.
	grease := rc.uni(0x1f*3+0x21, []byte("ignored"))
	// A reserved frame type before HEADERS, and another between DATA and
	// the end.
	var b []byte
	b = append(b, frame(0x1f*7+0x21, []byte("x"))...)
	b = append(b, headersFrame(append(getFields("/u"), "content-length", "5")...)...)
	b = append(b, frame(frameTypeData, []byte("he"))...)
	b = append(b, frame(0x40, []byte("yyy"))...)
	b = append(b, frame(frameTypeData, []byte("llo"))...)
	b = append(b, frame(0x21, nil)...)
	resp, err := readResponse(rc.request(b, true))
	if err != nil || resp.status != 200 || string(resp.body) != "hello" {
		t.Fatalf("response %+v, %v", resp, err)
	}
	select {
	case <-grease.Context().Done():
		streamReset(t, "unknown stream type", context.Cause(grease.Context()), http3.ErrCodeStreamCreationError)
	case <-time.After(testTimeout):
		t.Error("unknown stream type: not stopped")
	}
	if rc.qc.Context().Err() != nil {
		t.Fatalf("connection closed: %v", context.Cause(rc.qc.Context()))
	}
}

// TestNativeFrameSequence: frames out of order on a request stream are
// connection errors of type H3_FRAME_UNEXPECTED (RFC 9114 §4.1).
func TestNativeFrameSequence(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(echo), nil)
	cases := map[string][]byte{
		"data-before-headers": frame(frameTypeData, []byte("x")),
		"settings-on-request": frame(frameTypeSettings, nil),
		"goaway-on-request":   frame(frameTypeGoAway, quicvarint.Append(nil, 0)),
		"h2-frame-type":       frame(0x06, make([]byte, 8)),
		"headers-after-trailers": append(append(headersFrame(append(getFields("/"), "content-length", "1")...),
			frame(frameTypeData, []byte("x"))...), append(headersFrame("x-t", "1"), headersFrame("x-t", "2")...)...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			rc := dialRaw(t, ts, true)
			rc.request(b, true)
			rc.connError(http3.ErrCodeFrameUnexpected)
		})
	}
	t.Run("truncated-frame", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		h := headersFrame(getFields("/")...)
		rc.request(h[:len(h)-2], true)
		rc.connError(http3.ErrCodeFrameError)
	})
	t.Run("no-headers", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		_, err := readResponse(rc.request(nil, true))
		streamReset(t, "empty stream", err, http3.ErrCodeRequestIncomplete)
	})
	t.Run("bad-qpack", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		// Required Insert Count 1: a dynamic-table reference.
		rc.request(frame(frameTypeHeaders, []byte{0x01, 0x00, 0x80}), true)
		rc.connError(http3.ErrCodeQPACKDecompressionFailed)
	})
}

// TestNativeMalformed: malformed requests (RFC 9114 §4.1.2, §4.2, §4.3.1)
// are stream errors of type H3_MESSAGE_ERROR, and do not reach the Handler.
func TestNativeMalformed(t *testing.T) {
	called := make(chan string, 32)
	ts := startNative(t, transport.HandlerFunc(func(s transport.ServerStream) {
		called <- s.Request().Path
		echo(s)
	}), nil)
	rc := dialRaw(t, ts, true)
	cases := map[string][]string{
		"no-method":           {":scheme", "https", ":authority", "a", ":path", "/"},
		"no-path":             {":method", "GET", ":scheme", "https", ":authority", "a"},
		"empty-path":          {":method", "GET", ":scheme", "https", ":authority", "a", ":path", ""},
		"relative-path":       {":method", "GET", ":scheme", "https", ":authority", "a", ":path", "x"},
		"no-scheme":           {":method", "GET", ":authority", "a", ":path", "/"},
		"no-authority":        {":method", "GET", ":scheme", "https", ":path", "/"},
		"duplicate-path":      {":method", "GET", ":scheme", "https", ":authority", "a", ":path", "/", ":path", "/x"},
		"unknown-pseudo":      {":method", "GET", ":scheme", "https", ":authority", "a", ":path", "/", ":foo", "x"},
		"status-in-request":   {":method", "GET", ":scheme", "https", ":authority", "a", ":path", "/", ":status", "200"},
		"pseudo-after":        {":method", "GET", ":scheme", "https", ":authority", "a", "x-a", "1", ":path", "/"},
		"uppercase-name":      append(getFields("/"), "X-Upper", "1"),
		"bad-name":            append(getFields("/"), "x y", "1"),
		"bad-value":           append(getFields("/"), "x-a", "a\x00b"),
		"connection":          append(getFields("/"), "connection", "close"),
		"transfer-encoding":   append(getFields("/"), "transfer-encoding", "chunked"),
		"upgrade":             append(getFields("/"), "upgrade", "websocket"),
		"te-gzip":             append(getFields("/"), "te", "gzip"),
		"protocol-with-get":   append(getFields("/"), ":protocol", "websocket"),
		"authority-mismatch":  append(getFields("/"), "host", "other"),
		"two-hosts":           {":method", "GET", ":scheme", "https", ":path", "/", "host", "a", "host", "b"},
		"bad-content-length":  append(getFields("/"), "content-length", "x"),
		"two-content-lengths": append(getFields("/"), "content-length", "1", "content-length", "2"),
		"userinfo":            {":method", "GET", ":scheme", "https", ":authority", "u@a", ":path", "/"},
		"connect-with-path":   {":method", "CONNECT", ":authority", "a:443", ":path", "/"},
		"ext-connect-no-path": {":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":authority", "a"},
	}
	for name, fields := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := readResponse(rc.request(headersFrame(fields...), true))
			streamReset(t, name, err, http3.ErrCodeMessageError)
		})
	}
	// Host stands in for :authority.
	resp, err := readResponse(rc.request(headersFrame(":method", "GET", ":scheme", "https", ":path", "/h", "host", "example.com"), true))
	if err != nil || resp.status != 200 || resp.header.Get("x-authority") != "example.com" {
		t.Errorf("request with Host: %+v, %v", resp, err)
	}
	if p := <-called; p != "/h" {
		t.Errorf("handler saw %s", p)
	}
	select {
	case p := <-called:
		t.Errorf("handler called for a malformed request (%s)", p)
	default:
	}
}

// TestNativeControlStream: the client's control stream and QPACK streams
// (RFC 9114 §6.2, RFC 9204 §4.2).
func TestNativeControlStream(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(echo), nil)
	t.Run("missing-settings", func(t *testing.T) {
		rc := dialRaw(t, ts, false)
		rc.uni(streamTypeControl, frame(frameTypeGoAway, quicvarint.Append(nil, 0)))
		rc.connError(http3.ErrCodeMissingSettings)
	})
	t.Run("second-control-stream", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypeControl, frame(frameTypeSettings, nil))
		rc.connError(http3.ErrCodeStreamCreationError)
	})
	t.Run("closed", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Close()
		rc.connError(http3.ErrCodeClosedCriticalStream)
	})
	t.Run("reset", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		// A reset can discard the stream type before the server reads it
		// (then it is a stream like any unknown one): reset once it has.
		waitFor(t, "the control stream to be read", func() bool {
			nc := nativeConn(ts, rc.qc)
			return nc != nil && nc.peerControl.Load()
		})
		rc.ctrl.CancelWrite(0x100)
		rc.connError(http3.ErrCodeClosedCriticalStream)
	})
	t.Run("data", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeData, []byte("x")))
		rc.connError(http3.ErrCodeFrameUnexpected)
	})
	t.Run("headers", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(headersFrame(getFields("/")...))
		rc.connError(http3.ErrCodeFrameUnexpected)
	})
	t.Run("second-settings", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeSettings, nil))
		rc.connError(http3.ErrCodeFrameUnexpected)
	})
	t.Run("h2-setting", func(t *testing.T) {
		rc := dialRaw(t, ts, false)
		rc.uni(streamTypeControl, frame(frameTypeSettings, []byte{0x02, 0x00}))
		rc.connError(http3.ErrCodeSettingsError)
	})
	t.Run("duplicate-setting", func(t *testing.T) {
		rc := dialRaw(t, ts, false)
		rc.uni(streamTypeControl, frame(frameTypeSettings, []byte{0x06, 0x01, 0x06, 0x02}))
		rc.connError(http3.ErrCodeSettingsError)
	})
	t.Run("cancel-push", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeCancelPush, quicvarint.Append(nil, 0)))
		rc.connError(http3.ErrCodeIDError)
	})
	t.Run("max-push-id-decreases", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeMaxPushID, quicvarint.Append(nil, 8)))
		rc.ctrl.Write(frame(frameTypeMaxPushID, quicvarint.Append(nil, 4)))
		rc.connError(http3.ErrCodeIDError)
	})
	t.Run("goaway-increases", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeGoAway, quicvarint.Append(nil, 4)))
		rc.ctrl.Write(frame(frameTypeGoAway, quicvarint.Append(nil, 8)))
		rc.connError(http3.ErrCodeIDError)
	})
	t.Run("malformed-goaway", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.ctrl.Write(frame(frameTypeGoAway, []byte{0x01, 0x02}))
		rc.connError(http3.ErrCodeFrameError)
	})
	t.Run("push-stream", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypePush, quicvarint.Append(nil, 0))
		rc.connError(http3.ErrCodeStreamCreationError)
	})
	t.Run("qpack-streams", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypeQPACKEncoder, []byte{0x20}) // Set Dynamic Table Capacity 0
		rc.uni(streamTypeQPACKDecoder, nil)
		resp, err := readResponse(rc.request(headersFrame(getFields("/q")...), true))
		if err != nil || resp.status != 200 {
			t.Fatalf("response %+v, %v", resp, err)
		}
	})
	t.Run("qpack-insert", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		// Insert with Literal Name "a" = "b".
		rc.uni(streamTypeQPACKEncoder, []byte{0x41, 'a', 0x01, 'b'})
		rc.connError(errCodeQPACKEncoderStream)
	})
	t.Run("qpack-capacity", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypeQPACKEncoder, []byte{0x3f, 0xe1, 0x1f}) // capacity 4096
		rc.connError(errCodeQPACKEncoderStream)
	})
	t.Run("second-encoder-stream", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypeQPACKEncoder, nil)
		rc.uni(streamTypeQPACKEncoder, nil)
		rc.connError(http3.ErrCodeStreamCreationError)
	})
	t.Run("decoder-closed", func(t *testing.T) {
		rc := dialRaw(t, ts, true)
		rc.uni(streamTypeQPACKDecoder, nil).Close()
		rc.connError(http3.ErrCodeClosedCriticalStream)
	})
}

// TestNativeContentLength: DATA must add up to content-length (RFC 9114
// §4.1.2).
func TestNativeContentLength(t *testing.T) {
	bodyErr := make(chan error, 4)
	ts := startNative(t, transport.HandlerFunc(func(s transport.ServerStream) {
		_, err := io.Copy(io.Discard, s.Request().Body)
		bodyErr <- err
		if err != nil {
			s.Reset(transport.CodeOf(err))
			return
		}
		s.WriteHeader(200, nil, 0)
		s.Finish(nil)
	}), nil)
	rc := dialRaw(t, ts, true)
	post := func(cl string, data ...string) []byte {
		b := headersFrame(":method", "POST", ":scheme", "https", ":authority", "a", ":path", "/", "content-length", cl)
		for _, d := range data {
			b = append(b, frame(frameTypeData, []byte(d))...)
		}
		return b
	}
	for name, b := range map[string][]byte{
		"short": post("10", "hello"),
		"long":  post("3", "he", "llo"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := readResponse(rc.request(b, true))
			streamReset(t, name, err, http3.ErrCodeMessageError)
			select {
			case err := <-bodyErr:
				if transport.CodeOf(err) != transport.CodeBadRequest {
					t.Errorf("body read: %v, want CodeBadRequest", err)
				}
			case <-time.After(testTimeout):
				t.Fatal("handler did not run")
			}
		})
	}
	resp, err := readResponse(rc.request(post("5", "he", "", "llo"), true))
	if err != nil || resp.status != 200 {
		t.Errorf("matching body: %+v %v", resp, err)
	}
	if err := <-bodyErr; err != nil {
		t.Errorf("matching body: %v", err)
	}
}

// TestNativeHeaderLimits: an oversize field section (RFC 9114 §4.2.2), by
// frame length or by decoded size, and too many fields, are answered 431
// without the Handler.
func TestNativeHeaderLimits(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(func(s transport.ServerStream) {
		t.Errorf("handler called for %s", s.Request().Path)
		echo(s)
	}), func(c *ServerConfig) {
		c.MaxHeaderBytes = 4 << 10
		c.MaxHeaderCount = 10
	})
	rc := dialRaw(t, ts, true)
	many := getFields("/")
	for i := range 11 {
		many = append(many, "x-f"+strconv.Itoa(i), "v")
	}
	for name, fields := range map[string][]string{
		"frame-length": append(getFields("/"), "x-big", strings.Repeat("b", 5<<10)),
		// Decoded size above the limit, encoded below: the per-field
		// overhead of 32 bytes counts.
		"decoded-size": func() []string {
			f := getFields("/")
			for i := range 120 {
				f = append(f, "x"+strconv.Itoa(i%10), "v")
			}
			return f
		}(),
		"count": many,
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := readResponse(rc.request(headersFrame(fields...), false))
			if err != nil || resp.status != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("response %+v, %v, want 431", resp, err)
			}
		})
	}
	if n := ts.Stats().HeaderRejected; n != 1 {
		t.Errorf("HeaderRejected = %d, want 1", n)
	}
}

// TestNativeTrailers: trailers both ways, in raw frames.
func TestNativeTrailers(t *testing.T) {
	ts := startNative(t, transport.HandlerFunc(echo), nil)
	rc := dialRaw(t, ts, true)
	b := headersFrame(":method", "POST", ":scheme", "https", ":authority", "a", ":path", "/t", "trailer", "x-req-trailer")
	b = append(b, frame(frameTypeData, []byte("body"))...)
	b = append(b, headersFrame("x-req-trailer", "yes", "content-length", "1")...) // not allowed in trailers: dropped
	b = append(b, frame(0x21, nil)...)
	resp, err := readResponse(rc.request(b, true))
	if err != nil || resp.status != 200 || string(resp.body) != "body" {
		t.Fatalf("response %+v, %v", resp, err)
	}
	if got := resp.header.Get("x-got-req-trailer"); got != "yes" {
		t.Errorf("request trailer seen by the handler: %q", got)
	}
	sum := sha256.Sum256([]byte("body"))
	if got := resp.trailer.Get("x-body-sha256"); got != hex.EncodeToString(sum[:]) {
		t.Errorf("response trailer %v", resp.trailer)
	}
}

// TestNativeExtendedConnect: WebSocket over HTTP/3 (RFC 9220) in raw
// frames, and other CONNECTs answered 501.
func TestNativeExtendedConnect(t *testing.T) {
	seen := make(chan transport.Request, 1)
	ts := startNative(t, tunnelEcho(seen), nil)
	rc := dialRaw(t, ts, true)
	str := rc.request(headersFrame(":method", "CONNECT", ":protocol", "websocket", ":scheme", "https",
		":authority", "a", ":path", "/chat", "sec-websocket-version", "13"), false)
	str.Write(frame(frameTypeData, []byte("ping")))
	str.Close()
	resp, err := readResponse(str)
	if err != nil || resp.status != 200 {
		t.Fatalf("response %+v, %v", resp, err)
	}
	if !strings.Contains(string(resp.body), "ping") {
		t.Errorf("tunnel echoed %q", resp.body)
	}
	req := <-seen
	if req.Method != http.MethodConnect || req.Protocol != "websocket" || req.Path != "/chat" || req.ContentLength != 0 {
		t.Errorf("request %s %s %q cl %d", req.Method, req.Path, req.Protocol, req.ContentLength)
	}
	for _, fields := range [][]string{
		{":method", "CONNECT", ":authority", "a:443"},
		{":method", "CONNECT", ":protocol", "webtransport", ":scheme", "https", ":authority", "a", ":path", "/"},
	} {
		resp, err := readResponse(rc.request(headersFrame(fields...), true))
		if err != nil || resp.status != http.StatusNotImplemented {
			t.Errorf("%v: %+v, %v, want 501", fields, resp, err)
		}
	}
}

// TestNativeGoAway: Shutdown sends GOAWAY with the first stream not
// accepted, rejects streams above it with H3_REQUEST_REJECTED, and closes
// the connection once idle.
func TestNativeGoAway(t *testing.T) {
	entered := make(chan string, 4)
	release := make(chan struct{})
	ts := startNative(t, slowHandler(entered, release), nil)
	rc := dialRaw(t, ts, true)
	goaways := watchControlStream(t, rc.qc)
	rc.request(headersFrame(getFields("/fast")...), true) // stream 0
	<-entered
	slow := rc.request(headersFrame(getFields("/slow")...), true) // stream 4
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(testCtx(t)) }()
	select {
	case id := <-goaways:
		if id != 8 {
			t.Errorf("GOAWAY %d, want 8", id)
		}
	case <-time.After(testTimeout):
		t.Fatal("no GOAWAY")
	}
	_, err := readResponse(rc.request(headersFrame(getFields("/late")...), true))
	streamReset(t, "stream after GOAWAY", err, http3.ErrCodeRequestRejected)
	close(release)
	if resp, err := readResponse(slow); err != nil || resp.status != 200 {
		t.Errorf("request in flight: %+v, %v", resp, err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return")
	}
	rc.connError(http3.ErrCodeNoError)
}

// TestNativeEarlyFlag: a request in 0-RTT is marked EarlyData; see
// TestServerEarlyData, which TestNativeEngineSuite runs on this engine too.
func TestNativeEarlyFlag(t *testing.T) {
	if raceEnabled {
		t.Skip("a client opening streams in 0-RTT races in quic-go (quic-go/quic-go#4303)")
	}
	t.Setenv(engineEnv, "native")
	TestServerEarlyData(t)
}

// TestNativeBodyReset: a client reset of the request direction reaches the
// handler's body read as a client cancellation.
func TestNativeBodyReset(t *testing.T) {
	bodyErr := make(chan error, 1)
	entered := make(chan struct{})
	ts := startNative(t, transport.HandlerFunc(func(s transport.ServerStream) {
		close(entered)
		_, err := io.Copy(io.Discard, s.Request().Body)
		bodyErr <- err
		s.Reset(transport.CodeOf(err))
	}), nil)
	rc := dialRaw(t, ts, true)
	str := rc.request(append(headersFrame(":method", "POST", ":scheme", "https", ":authority", "a", ":path", "/"),
		frame(frameTypeData, []byte("partial"))...), false)
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("handler not called")
	}
	str.CancelWrite(quic.StreamErrorCode(http3.ErrCodeRequestCanceled))
	select {
	case err := <-bodyErr:
		if e, ok := errors.AsType[*transport.Error](err); !ok || e.Code != transport.CodeClientCancelled || !e.Remote {
			t.Errorf("body read: %v, want a remote CodeClientCancelled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("handler did not see the reset")
	}
}

// TestNativeGtlsclient talks to a native-engine server with gtlsclient
// (ngtcp2, nghttp3, GnuTLS): an independent HTTP/3 stack.
func TestNativeGtlsclient(t *testing.T) {
	bin, err := exec.LookPath("gtlsclient")
	if err != nil {
		t.Skip("gtlsclient not installed")
	}
	ts := startNative(t, transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		n, sum, err := hashBody(req.Body)
		if err != nil {
			s.Reset(transport.CodeOf(err))
			return
		}
		body := req.Method + " " + req.Path + " " + strconv.FormatInt(n, 10) + " " + sum
		s.WriteHeader(200, http.Header{"Content-Type": {"text/plain"}}, int64(len(body)))
		s.Write([]byte(body))
		s.Finish(nil)
	}), nil)
	_, port, _ := strings.Cut(ts.addr, ":")
	run := func(opts []string, uris ...string) map[string]string {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		dl := t.TempDir()
		args := append([]string{"-q", "--exit-on-all-streams-close", "--timeout=10s", "--download", dl}, opts...)
		args = append(append(args, "127.0.0.1", port), uris...)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("gtlsclient %v: %v\n%s", args, err, out)
		}
		files, _ := os.ReadDir(dl)
		bodies := map[string]string{}
		for _, f := range files {
			b, _ := os.ReadFile(filepath.Join(dl, f.Name()))
			bodies[f.Name()] = string(b)
		}
		return bodies
	}
	url := "https://localhost:" + port
	var uris []string
	for i := range 10 {
		uris = append(uris, url+"/p"+strconv.Itoa(i))
	}
	bodies := run(nil, uris...)
	for i := range 10 {
		if b := bodies["p"+strconv.Itoa(i)]; !strings.HasPrefix(b, "GET /p"+strconv.Itoa(i)+" 0 ") {
			t.Errorf("stream %d: %q", i, b)
		}
	}
	payload := bytes.Repeat([]byte("ngtcp2 "), 40000)
	file := filepath.Join(t.TempDir(), "upload")
	os.WriteFile(file, payload, 0o600)
	sum := sha256.Sum256(payload)
	want := "POST /up " + strconv.Itoa(len(payload)) + " " + hex.EncodeToString(sum[:])
	if got := run([]string{"-m", "POST", "-d", file}, url+"/up")["up"]; got != want {
		t.Errorf("upload: %q, want %q", got, want)
	}
}

// nativeConn returns the native state of the server side of qc, or nil.
func nativeConn(ts *testServer, qc *quic.Conn) *nconn {
	local := addrOf(qc.LocalAddr())
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, cs := range ts.conns {
		if cs.remote.Port() == local.Port() {
			return cs.nc
		}
	}
	return nil
}

// FuzzFieldSection fuzzes the native engine's request head parser.
func FuzzFieldSection(f *testing.F) {
	f.Add(fieldSection(getFields("/")...))
	f.Add(fieldSection(append(getFields("/p?q=1"), "content-length", "12", "cookie", "a=1", "cookie", "b=2", "x-a", "1", "x-a", "2")...))
	f.Add(fieldSection(":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":authority", "a", ":path", "/ws"))
	f.Add(fieldSection(":method", "CONNECT", ":authority", "a:443"))
	f.Add(fieldSection(":method", "OPTIONS", ":scheme", "https", ":path", "*", "host", "a"))
	f.Add(fieldSection(append(getFields("/"), "Upper", "x")...))
	f.Add([]byte{0x00, 0x00, 0xd1, 0xd7, 0x50, 0x01, 'a', 0xc1})
	f.Fuzz(func(t *testing.T, p []byte) {
		var h reqHead
		_, v := parseFieldSection(p, nil, 16<<10, 100, &h)
		if v != headOK {
			return
		}
		if h.method == "" || h.authority == "" || h.header == nil {
			t.Fatalf("accepted %+v", h)
		}
		if h.method != http.MethodConnect && h.path != "*" && !strings.HasPrefix(h.path, "/") {
			t.Fatalf("accepted path %q", h.path)
		}
		for k, vv := range h.header {
			if k != http.CanonicalHeaderKey(k) || k == "Host" || k == "Content-Length" || len(vv) == 0 {
				t.Fatalf("header %q: %q", k, vv)
			}
		}
	})
}

func TestNativeEngineConfig(t *testing.T) {
	serverTLS, _ := tlsPair(t)
	if _, err := NewServer(transport.HandlerFunc(echo), ServerConfig{TLS: serverTLS, Engine: EngineNative + 1, Logger: quietLogger()}); err == nil || !strings.HasPrefix(err.Error(), "h3: ") {
		t.Errorf("NewServer with an unknown engine = %v, want an h3 error", err)
	}
	ts := startNative(t, transport.HandlerFunc(echo), nil)
	if ts.cfg.Engine != EngineNative {
		t.Fatalf("engine %d", ts.cfg.Engine)
	}
	// quic-go's client against the native engine, with a body and trailers.
	cl := ts.client(t)
	req, _ := http.NewRequestWithContext(testCtx(t), http.MethodPost, ts.url("/x?y=1"), strings.NewReader("hello"))
	req.Trailer = http.Header{"X-Req-Trailer": {"t"}}
	req.ContentLength = -1
	resp, err := cl.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello" || resp.Header.Get("X-Path") != "/x?y=1" || resp.Header.Get("X-Got-Req-Trailer") != "t" || resp.Header.Get("X-Content-Length") != "-1" {
		t.Errorf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if n := ts.Stats().Requests; n != 1 {
		t.Errorf("Requests = %d", n)
	}
}

// TestHotPathAllocs sets allocation budgets on the per-request parsing and
// encoding of the native engine.
func TestHotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	hdr := http.Header{"Content-Type": {"text/plain"}, "Cache-Control": {"no-store"}}
	if n := testing.AllocsPerRun(100, func() {
		e := getEncoder()
		e.status(200)
		e.header(hdr, false)
		e.contentLength(123456)
		e.frame()
		putEncoder(e)
	}); n != 0 {
		t.Errorf("encoding a response head: %v allocs, want 0", n)
	}
	// A GET with two fields: the decoder's closure, the map, the value
	// array, and the strings qpack decodes (the authority, the path and
	// "bench"; static-table names and values cost nothing).
	p := fieldSection(":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", "/index.html",
		"accept", "*/*", "user-agent", "bench")
	fields := make([]qpack.HeaderField, 0, 16)
	var h reqHead
	var v headVerdict
	n := testing.AllocsPerRun(100, func() {
		fields, v = parseFieldSection(p, fields, 64<<10, 100, &h)
	})
	if v != headOK || n > 6 {
		t.Errorf("parsing a request head: verdict %d, %v allocs, want at most 6", v, n)
	}
}
