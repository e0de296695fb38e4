package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/proxynow/proxynow/transport"
)

// The extended CONNECT tests of connect_test.go, against both engines.
func TestEnginesExtendedConnect(t *testing.T) { h2tEngines(t, TestServerExtendedConnect) }
func TestEnginesOtherConnect(t *testing.T)    { h2tEngines(t, TestServerOtherConnect) }

// h2tCheckFDs registers a cleanup, run after the test's later cleanups
// (register it first), that waits until the process has no more open file
// descriptors than when the test began.
func h2tCheckFDs(t *testing.T) {
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return -1
		}
		return len(ents)
	}
	before := count()
	if before < 0 {
		return
	}
	t.Cleanup(func() {
		h2tWaitFor(t, "file descriptors released", func() bool { return count() <= before })
	})
}

// h2tNative starts a native-engine server with the leak checks.
func h2tNative(t *testing.T, h transport.HandlerFunc, cfg ServerConfig) *h2tServer {
	t.Helper()
	h2tCheckLeaks(t)
	h2tCheckFDs(t)
	cfg.Engine = EngineNative
	return h2tStartServer(t, h, cfg)
}

// headers sends a request head on stream id, with END_STREAM when end is
// set.
func (r *h2tRaw) headers(id uint32, method, path string, end bool, extra ...string) {
	r.t.Helper()
	r.hbuf.Reset()
	fields := append([]string{":method", method, ":scheme", "https", ":authority", "localhost", ":path", path}, extra...)
	for i := 0; i < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// TestNativeResetCodes: Reset sends RST_STREAM with the code of the
// gateway's table, and fails a handler blocked writing (no window) or
// reading (no body yet) at once with the Reset code.
func TestNativeResetCodes(t *testing.T) {
	streams := make(chan transport.ServerStream, 1)
	errs := make(chan error, 1)
	ts := h2tNative(t, func(s transport.ServerStream) {
		path := s.Request().Path
		switch {
		case path == "/block-write":
			s.WriteHeader(200, nil, -1)
			streams <- s
			buf := make([]byte, 256<<10)
			var err error
			for err == nil {
				_, err = s.Write(buf)
			}
			errs <- err
		case path == "/block-read":
			streams <- s
			_, err := io.ReadAll(s.Request().Body)
			errs <- err
		default:
			n, _ := strconv.Atoi(strings.TrimPrefix(path, "/"))
			s.Reset(transport.Code(n))
		}
	}, ServerConfig{})
	raw := h2tDialRaw(t, ts.addr)

	rstOf := func(id uint32) http2.ErrCode {
		var code http2.ErrCode
		raw.next("RST_STREAM", func(f http2.Frame) bool {
			if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
				code = rst.ErrCode
				return true
			}
			return false
		})
		return code
	}
	want := map[transport.Code]http2.ErrCode{
		transport.CodeClientCancelled:   http2.ErrCodeCancel,
		transport.CodeBodyTooLarge:      http2.ErrCodeCancel,
		transport.CodeTooEarly:          http2.ErrCodeRefusedStream,
		transport.CodeDraining:          http2.ErrCodeRefusedStream,
		transport.CodeOverloaded:        http2.ErrCodeEnhanceYourCalm,
		transport.CodeUpstreamReset:     http2.ErrCodeInternal,
		transport.CodeNoHealthyUpstream: http2.ErrCodeInternal,
		transport.CodeInternal:          http2.ErrCodeInternal,
		transport.CodeNone:              http2.ErrCodeInternal,
	}
	id := uint32(1)
	for code, w := range want {
		raw.request(id, "/"+strconv.Itoa(int(code)))
		if got := rstOf(id); got != w {
			t.Errorf("Reset(%v): RST_STREAM %v, want %v", code, got, w)
		}
		id += 2
	}

	// A write blocked on the client's window (65535 bytes, never
	// replenished).
	raw.request(id, "/block-write")
	s := h2tRecv(t, streams, "handler")
	ctx := s.Context() // s is recycled once the handler returns
	got := 0
	raw.next("the window's worth of DATA", func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
			got += len(d.Data())
		}
		return got >= 65535
	})
	s.Reset(transport.CodeOverloaded)
	if err := h2tRecv(t, errs, "blocked write"); transport.CodeOf(err) != transport.CodeOverloaded {
		t.Errorf("blocked write: %v", err)
	}
	if c := rstOf(id); c != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("blocked write: RST_STREAM %v", c)
	}
	if c := context.Cause(ctx); transport.CodeOf(c) != transport.CodeOverloaded {
		t.Errorf("context cause %v", c)
	}
	id += 2

	// A body read waiting for DATA.
	raw.headers(id, "POST", "/block-read", false)
	s = h2tRecv(t, streams, "handler")
	s.Reset(transport.CodeBodyTooLarge)
	if err := h2tRecv(t, errs, "blocked read"); transport.CodeOf(err) != transport.CodeBodyTooLarge {
		t.Errorf("blocked read: %v", err)
	}
	if c := rstOf(id); c != http2.ErrCodeCancel {
		t.Errorf("blocked read: RST_STREAM %v", c)
	}
}

// flowPeer is a raw client that sends a request body within the server's
// windows while it reads the response, granting the server only a 64 KiB
// window, replenished in 16 KiB steps.
type flowPeer struct {
	r    *h2tRaw
	wmu  sync.Mutex // guards writes on r.fr
	mu   sync.Mutex // guards the send windows
	conn int64
	strm int64
	wake chan struct{}
}

func (p *flowPeer) grow(conn, strm int64) {
	p.mu.Lock()
	p.conn += conn
	p.strm += strm
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// send writes body on stream id as DATA frames within the windows.
func (p *flowPeer) send(id uint32, body []byte) error {
	for len(body) > 0 {
		p.mu.Lock()
		n := min(int64(len(body)), 16384, p.conn, p.strm)
		if n > 0 {
			p.conn -= n
			p.strm -= n
		}
		p.mu.Unlock()
		if n <= 0 {
			select {
			case <-p.wake:
			case <-time.After(10 * time.Second):
				return errors.New("no window from the server")
			}
			continue
		}
		p.wmu.Lock()
		err := p.r.fr.WriteData(id, int(n) == len(body), body[:n])
		p.wmu.Unlock()
		if err != nil {
			return err
		}
		body = body[n:]
	}
	return nil
}

// TestNativeFlowControlSlowBothWays: 16 MiB up and 16 MiB back on one
// stream, the handler reading 1 KiB at a time and the client granting a
// 64 KiB window in small steps; both checksums match and neither side
// ever exceeds the other's window.
func TestNativeFlowControlSlowBothWays(t *testing.T) {
	const size = 16 << 20
	sums := make(chan [32]byte, 1)
	ts := h2tNative(t, func(s transport.ServerStream) {
		body := s.Request().Body
		h := sha256.New()
		if err := s.WriteHeader(200, nil, -1); err != nil {
			return
		}
		buf := make([]byte, 1024)
		for {
			n, err := body.Read(buf)
			h.Write(buf[:n])
			if n > 0 {
				if _, werr := s.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
		}
		var sum [32]byte
		h.Sum(sum[:0])
		sums <- sum
		s.Finish(nil)
	}, ServerConfig{})
	payload := make([]byte, size)
	rand.Read(payload)
	want := sha256.Sum256(payload)

	raw := h2tDialRaw(t, ts.addr)
	p := &flowPeer{r: raw, conn: 65535, strm: 65535, wake: make(chan struct{}, 1)}
	raw.headers(1, "POST", "/", false, "content-length", strconv.Itoa(size))
	sendErr := make(chan error, 1)
	go func() { sendErr <- p.send(1, payload) }()

	const window = 65535
	recvConn, recvStrm := int64(window), int64(window)
	var unacked int64
	h := sha256.New()
	got := 0
	ended := false
	settingsSeen := false
	raw.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for !ended {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok && !settingsSeen {
				p.grow(0, int64(v)-65535)
			}
			settingsSeen = true
			p.wmu.Lock()
			raw.fr.WriteSettingsAck()
			p.wmu.Unlock()
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				p.grow(int64(f.Increment), 0)
			} else {
				p.grow(0, int64(f.Increment))
			}
		case *http2.DataFrame:
			n := int64(len(f.Data()))
			recvConn -= n
			recvStrm -= n
			if recvConn < 0 || recvStrm < 0 {
				t.Fatalf("the server exceeded the window: conn %d stream %d", recvConn, recvStrm)
			}
			h.Write(f.Data())
			got += int(n)
			unacked += n
			if unacked >= 16<<10 {
				p.wmu.Lock()
				raw.fr.WriteWindowUpdate(0, uint32(unacked))
				raw.fr.WriteWindowUpdate(1, uint32(unacked))
				p.wmu.Unlock()
				recvConn += unacked
				recvStrm += unacked
				unacked = 0
			}
			ended = f.StreamEnded()
		case *http2.MetaHeadersFrame:
			ended = f.StreamEnded()
		case *http2.RSTStreamFrame:
			t.Fatalf("RST_STREAM %v after %d bytes", f.ErrCode, got)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v after %d bytes", f.ErrCode, got)
		}
	}
	if err := h2tRecv(t, sendErr, "upload"); err != nil {
		t.Fatal(err)
	}
	if got != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("echo: %d bytes, checksum mismatch %v", got, !bytes.Equal(h.Sum(nil), want[:]))
	}
	if sum := h2tRecv(t, sums, "server checksum"); sum != want {
		t.Error("the server read a different body")
	}
}

// TestNativeInitialWindowChange: SETTINGS_INITIAL_WINDOW_SIZE changes
// apply to a stream mid-response (RFC 9113 §6.9.2), also making its window
// negative, and the server never sends beyond it.
func TestNativeInitialWindowChange(t *testing.T) {
	const size = 64 << 10
	ts := h2tNative(t, func(s transport.ServerStream) {
		s.WriteHeader(200, nil, size)
		s.Write(make([]byte, size))
		s.Finish(nil)
	}, ServerConfig{})
	raw := h2tDialRaw(t, ts.addr)
	// Start with a 16 KiB stream window and a large conn window.
	raw.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16 << 10})
	raw.fr.WriteWindowUpdate(0, 1<<20)
	window := int64(16 << 10)
	got := int64(0)
	var pendingDelta int64 // applied when the server ACKs our SETTINGS
	ended := false
	// read reads until got reaches n (or the stream ends), checking the
	// window; it acknowledges the server's SETTINGS and applies a window
	// decrease once the server has acknowledged it.
	read := func(n int64) {
		raw.next("DATA", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if f.IsAck() {
					window += pendingDelta
					pendingDelta = 0
				}
			case *http2.DataFrame:
				window -= int64(len(f.Data()))
				got += int64(len(f.Data()))
				if window < 0 {
					t.Fatalf("the server exceeded the stream window by %d", -window)
				}
				ended = f.StreamEnded()
			}
			return got >= n || ended
		})
	}
	raw.request(1, "/")
	read(16 << 10)
	// Raise the initial window by 32 KiB: the open stream gets it at once.
	raw.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 48 << 10})
	window += 32 << 10
	read(48 << 10)
	// Lower it by 40 KiB: the window goes to -40 KiB.
	raw.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 8 << 10})
	pendingDelta = -40 << 10
	raw.fr.WriteWindowUpdate(1, 40<<10) // back to 0: still nothing may come
	window += 40 << 10
	raw.fr.WriteWindowUpdate(1, 16<<10)
	window += 16 << 10
	read(size + 1) // up to END_STREAM
	if got != size || !ended {
		t.Errorf("got %d bytes, ended %v", got, ended)
	}
	if window != 0 {
		t.Errorf("window left %d", window)
	}
}

// TestNativeRapidReset: a client that opens and resets streams at once is
// sent GOAWAY(ENHANCE_YOUR_CALM), and handlers in flight never exceed
// MaxConcurrentStreams.
func TestNativeRapidReset(t *testing.T) {
	var inflight, peak atomic.Int64
	ts := h2tNative(t, func(s transport.ServerStream) {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-s.Context().Done()
		inflight.Add(-1)
	}, ServerConfig{MaxConcurrentStreams: 10})
	raw := h2tDialRaw(t, ts.addr)
	goAway := make(chan http2.ErrCode, 1)
	go func() {
		defer close(goAway)
		raw.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := raw.fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goAway <- g.ErrCode
				return
			}
		}
	}()
	for id := uint32(1); id < 2*1000; id += 2 {
		raw.hbuf.Reset()
		for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/"}} {
			raw.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		if raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: raw.hbuf.Bytes(), EndStream: true, EndHeaders: true}) != nil ||
			raw.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
	}
	if code, ok := <-goAway; !ok || code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v (received %v), want ENHANCE_YOUR_CALM", code, ok)
	}
	if p := peak.Load(); p > 10 {
		t.Errorf("%d handlers in flight, limit 10", p)
	}
}

// TestNativeHeaderListTooLarge: a header list over MaxHeaderBytes is
// answered 431 without the handler, and a CONTINUATION flood far beyond it
// ends the conn with GOAWAY.
func TestNativeHeaderListTooLarge(t *testing.T) {
	var called atomic.Int64
	ts := h2tNative(t, func(s transport.ServerStream) {
		called.Add(1)
		h2tEcho(s)
	}, ServerConfig{MaxHeaderBytes: 4096})

	raw := h2tDialRaw(t, ts.addr)
	raw.request(1, "/", "x-a", strings.Repeat("a", 2500), "x-b", strings.Repeat("b", 2500))
	var status string
	raw.next("431", func(f http2.Frame) bool {
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == 1 {
			status = mh.PseudoValue("status")
			return true
		}
		return false
	})
	if status != "431" {
		t.Errorf("status %s, want 431", status)
	}

	// The flood: one HEADERS and CONTINUATION frames of 16 KiB each,
	// 1 MiB in all, of valid HPACK.
	raw = h2tDialRaw(t, ts.addr)
	raw.hbuf.Reset()
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "localhost"}, {":path", "/"}} {
		raw.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	for i := 0; raw.hbuf.Len() < 1<<20; i++ {
		raw.enc.WriteField(hpack.HeaderField{Name: "x-flood-" + strconv.Itoa(i), Value: strings.Repeat("f", 1000)})
	}
	block := raw.hbuf.Bytes()
	goAway := make(chan http2.ErrCode, 1)
	go func() {
		defer close(goAway)
		raw.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := raw.fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goAway <- g.ErrCode
				return
			}
		}
	}()
	if err := raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:16384], EndStream: true}); err == nil {
		for block = block[16384:]; len(block) > 0; {
			chunk := block[:min(len(block), 16384)]
			block = block[len(chunk):]
			if raw.fr.WriteContinuation(1, len(block) == 0, chunk) != nil {
				break
			}
		}
	}
	if code, ok := <-goAway; !ok {
		t.Error("no GOAWAY after a CONTINUATION flood")
	} else {
		t.Logf("GOAWAY %v", code)
	}
	if n := called.Load(); n != 0 {
		t.Errorf("handler called %d times", n)
	}
}

// TestNativePingFlood: PINGs beyond the control-frame budget end the conn
// with GOAWAY(ENHANCE_YOUR_CALM).
func TestNativePingFlood(t *testing.T) {
	ts := h2tNative(t, h2tEcho, ServerConfig{})
	raw := h2tDialRaw(t, ts.addr)
	goAway := make(chan http2.ErrCode, 1)
	go func() {
		defer close(goAway)
		raw.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := raw.fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goAway <- g.ErrCode
				return
			}
		}
	}()
	for i := range 5 * nativeFloodBurst {
		if raw.fr.WritePing(false, [8]byte{byte(i)}) != nil {
			break
		}
	}
	if code, ok := <-goAway; !ok || code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v (received %v), want ENHANCE_YOUR_CALM", code, ok)
	}
}

// TestNativeExpectContinue: 100 Continue goes out when the handler first
// reads the body.
func TestNativeExpectContinue(t *testing.T) {
	read := make(chan struct{})
	ts := h2tNative(t, func(s transport.ServerStream) {
		<-read
		h2tEcho(s)
	}, ServerConfig{})
	raw := h2tDialRaw(t, ts.addr)
	raw.headers(1, "POST", "/", false, "expect", "100-continue")
	close(read)
	var status string
	raw.next("100", func(f http2.Frame) bool {
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == 1 {
			status = mh.PseudoValue("status")
			return true
		}
		return false
	})
	if status != "100" {
		t.Fatalf("first head %s", status)
	}
	raw.fr.WriteData(1, true, []byte("body"))
	raw.next("200", func(f http2.Frame) bool {
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == 1 {
			status = mh.PseudoValue("status")
			return true
		}
		return false
	})
	if status != "200" {
		t.Errorf("final status %s", status)
	}
}

// BenchmarkServerConcurrentStreams: GETs from many goroutines over one
// conn, so that up to 64 streams are in flight at once.
func BenchmarkServerConcurrentStreams(b *testing.B) {
	for _, e := range h2tEngineList {
		b.Run(e.name, func(b *testing.B) { benchmarkServerConcurrent(b, e.engine) })
	}
}

func benchmarkServerConcurrent(b *testing.B, engine Engine) {
	body := []byte("hello, world")
	hdr := http.Header{"Content-Type": {"text/plain"}}
	srv, addr := h2tBenchServer(b, transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, hdr, int64(len(body)))
		s.Write(body)
		s.Finish(nil)
	}), ServerConfig{Engine: engine})
	defer srv.Close()
	cc := h2tBenchClient(b, addr)
	defer cc.Close()
	b.ReportAllocs()
	b.SetParallelism(32) // × GOMAXPROCS goroutines
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest("GET", "http://localhost/", nil)
		for pb.Next() {
			res, err := cc.RoundTrip(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	})
}

// h2tBenchServer serves h2c on loopback until the caller closes it.
func h2tBenchServer(b *testing.B, h transport.Handler, cfg ServerConfig) (*Server, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(h, cfg)
	go srv.Serve(ln)
	return srv, ln.Addr().String()
}

// h2tBenchClient returns an x/net h2c client conn to addr.
func h2tBenchClient(b *testing.B, addr string) *http2.ClientConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		b.Fatal(err)
	}
	return cc
}

// TestNativeShutdownTwoStep: Shutdown sends GOAWAY(2^31-1) and a PING, then,
// once the PING is acknowledged, GOAWAY with the last stream id; the conn
// closes as soon as its streams are done.
func TestNativeShutdownTwoStep(t *testing.T) {
	release := make(chan struct{})
	ts := h2tNative(t, func(s transport.ServerStream) {
		if s.Request().Path == "/slow" {
			<-release
		}
		h2tEcho(s)
	}, ServerConfig{})
	raw := h2tDialRaw(t, ts.addr)
	raw.request(1, "/slow")
	h2tWaitFor(t, "the handler", func() bool { return ts.srv.handlers.Load() == 1 })

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- ts.srv.Shutdown(h2tTestCtx(t)) }()
	var steps []string
	raw.next("the final GOAWAY", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			steps = append(steps, "GOAWAY "+strconv.Itoa(int(f.LastStreamID))+" "+f.ErrCode.String())
			if f.LastStreamID != 1<<31-1 {
				return true
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				steps = append(steps, "PING")
				raw.fr.WritePing(true, f.Data)
			}
		}
		return false
	})
	if want := []string{"GOAWAY 2147483647 NO_ERROR", "PING", "GOAWAY 1 NO_ERROR"}; strings.Join(steps, ", ") != strings.Join(want, ", ") {
		t.Errorf("shutdown frames: %q, want %q", steps, want)
	}
	// A stream above the last id is ignored.
	raw.request(3, "/")
	close(release)
	ended := false
	raw.next("the response", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.DataFrame:
			ended = f.StreamID == 1 && f.StreamEnded()
		case *http2.MetaHeadersFrame:
			if f.StreamID == 3 {
				t.Error("stream 3 was served after the last GOAWAY")
			}
			ended = f.StreamID == 1 && f.StreamEnded()
		}
		return ended
	})
	raw.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := raw.fr.ReadFrame()
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				t.Error("conn still open after its last stream")
			}
			break
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == 3 {
			t.Error("stream 3 was served after the last GOAWAY")
		}
	}
	if err := h2tRecv(t, shutdownDone, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
