package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// h2tEcho answers GET with the request's facts in headers and POST with
// the body echoed and its SHA-256 in a header.
func h2tEcho(s transport.ServerStream) {
	req := s.Request()
	h := http.Header{}
	h.Set("X-Method", req.Method)
	h.Set("X-Scheme", req.Scheme)
	h.Set("X-Authority", req.Authority)
	h.Set("X-Path", req.Path)
	h.Set("X-Proto", req.Proto.String())
	h.Set("X-TLS", strconv.FormatBool(req.TLS))
	h.Set("X-Remote", req.RemoteAddr.String())
	h.Set("X-CL", strconv.FormatInt(req.ContentLength, 10))
	_, hasCL := req.Header["Content-Length"]
	_, hasHost := req.Header["Host"]
	h.Set("X-Has-Framing", strconv.FormatBool(hasCL || hasHost))
	body, err := io.ReadAll(req.Body)
	if err != nil {
		s.Reset(transport.CodeClientCancelled)
		return
	}
	sum := sha256.Sum256(body)
	h.Set("X-Sum", hex.EncodeToString(sum[:]))
	if err := s.WriteHeader(http.StatusOK, h, int64(len(body))); err != nil {
		return
	}
	if _, err := s.Write(body); err != nil {
		return
	}
	s.Finish(nil)
}

func h2tGet(t *testing.T, cc *http2.ClientConn, method, path string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(h2tTestCtx(t), method, "https://localhost"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

func TestServerGetPost(t *testing.T) { h2tEngines(t, testServerGetPost) }

func testServerGetPost(t *testing.T) {
	h2tCheckLeaks(t)
	ts := h2tStartServer(t, transport.HandlerFunc(h2tEcho), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	res := h2tGet(t, cc, "GET", "/a/b%2Fc?x=1&y=%20", nil)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || len(body) != 0 {
		t.Fatalf("GET: %d %q", res.StatusCode, body)
	}
	want := map[string]string{
		"X-Method": "GET", "X-Scheme": "https", "X-Authority": "localhost",
		"X-Path": "/a/b%2Fc?x=1&y=%20", "X-Proto": "h2", "X-TLS": "true", "X-CL": "0",
		"X-Has-Framing": "false",
	}
	for k, v := range want {
		if got := res.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if r := res.Header.Get("X-Remote"); !strings.HasPrefix(r, "127.0.0.1:") {
		t.Errorf("remote %q", r)
	}
	if ct, ok := res.Header["Content-Type"]; ok {
		t.Errorf("Content-Type sniffed: %q", ct)
	}

	payload := make([]byte, 1<<20+123)
	rand.Read(payload)
	sum := sha256.Sum256(payload)
	res = h2tGet(t, cc, "POST", "/upload", bytes.NewReader(payload))
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || !bytes.Equal(body, payload) {
		t.Fatalf("POST: %d, %d bytes back", res.StatusCode, len(body))
	}
	if got := res.Header.Get("X-Sum"); got != hex.EncodeToString(sum[:]) {
		t.Errorf("server checksum %s", got)
	}
	if res.ContentLength != int64(len(payload)) || res.Header.Get("X-CL") != strconv.Itoa(len(payload)) {
		t.Errorf("content length: response %d, request seen as %s", res.ContentLength, res.Header.Get("X-CL"))
	}

	// A body of unknown length.
	res = h2tGet(t, cc, "POST", "/upload", io.MultiReader(bytes.NewReader(payload[:1000])))
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if !bytes.Equal(body, payload[:1000]) || res.Header.Get("X-CL") != "-1" {
		t.Fatalf("chunked POST: %d bytes, X-CL %s", len(body), res.Header.Get("X-CL"))
	}
}

func TestServerH2C(t *testing.T) { h2tEngines(t, testServerH2C) }

func testServerH2C(t *testing.T) {
	h2tCheckLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(transport.HandlerFunc(h2tEcho), ServerConfig{Engine: h2tEngine(t)})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := h2tRecv(t, errc, "Serve"); err != nil {
			t.Error(err)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "http://localhost/x", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.Header.Get("X-Scheme") != "http" || res.Header.Get("X-TLS") != "false" {
		t.Errorf("scheme %q tls %q", res.Header.Get("X-Scheme"), res.Header.Get("X-TLS"))
	}
}

func TestServerConcurrentStreams(t *testing.T) { h2tEngines(t, testServerConcurrentStreams) }

func testServerConcurrentStreams(t *testing.T) {
	h2tCheckLeaks(t)
	const n = 100
	var arrived atomic.Int64
	all := make(chan struct{})
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		if arrived.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			s.Reset(transport.CodeInternal)
			return
		}
		h2tEcho(s)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			payload := bytes.Repeat([]byte{byte(i)}, 1000+i)
			req, _ := http.NewRequestWithContext(h2tTestCtx(t), "POST", "https://localhost/"+strconv.Itoa(i), bytes.NewReader(payload))
			res, err := cc.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || !bytes.Equal(body, payload) {
				errs <- errors.New("stream " + strconv.Itoa(i) + ": bad echo")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// h2tTrailerBody yields data and then sets the request trailer, as a
// streaming client does.
type h2tTrailerBody struct {
	r   io.Reader
	req *http.Request
	set func(http.Header)
}

func (b *h2tTrailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.set(b.req.Trailer)
	}
	return n, err
}

func TestServerRequestTrailers(t *testing.T) { h2tEngines(t, testServerRequestTrailers) }

func testServerRequestTrailers(t *testing.T) {
	h2tCheckLeaks(t)
	got := make(chan http.Header, 1)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		req := s.Request()
		io.Copy(io.Discard, req.Body)
		got <- req.Trailer.Clone()
		s.WriteHeader(204, nil, -1)
		s.Finish(nil)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "POST", "https://localhost/t", nil)
	req.Trailer = http.Header{"X-Checksum": nil}
	req.Body = io.NopCloser(&h2tTrailerBody{r: strings.NewReader("some body"), req: req,
		set: func(h http.Header) { h.Set("X-Checksum", "abc") }})
	req.ContentLength = -1
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	tr := h2tRecv(t, got, "handler")
	if tr.Get("X-Checksum") != "abc" {
		t.Errorf("request trailer: %v", tr)
	}
}

func TestServerResponseTrailers(t *testing.T) { h2tEngines(t, testServerResponseTrailers) }

func testServerResponseTrailers(t *testing.T) {
	h2tCheckLeaks(t)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, http.Header{"Content-Type": {"text/plain"}}, -1)
		s.Write([]byte("part one,"))
		s.Flush()
		s.Write([]byte("part two"))
		s.Finish(http.Header{"X-Status": {"ok"}, "X-Count": {"2"}})
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)
	res := h2tGet(t, cc, "GET", "/", nil)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || string(body) != "part one,part two" {
		t.Fatalf("body %q, %v", body, err)
	}
	if res.Trailer.Get("X-Status") != "ok" || res.Trailer.Get("X-Count") != "2" {
		t.Errorf("trailers: %v", res.Trailer)
	}
	if res.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("headers: %v", res.Header)
	}
}

func TestServerInformational(t *testing.T) { h2tEngines(t, testServerInformational) }

func testServerInformational(t *testing.T) {
	h2tCheckLeaks(t)
	errc := make(chan error, 3)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		errc <- s.WriteInformational(100, nil) // a no-op
		errc <- s.WriteInformational(103, http.Header{"Link": {"</style.css>; rel=preload"}})
		s.WriteHeader(200, http.Header{"X-Final": {"1"}}, 2)
		s.Write([]byte("ok"))
		s.Finish(nil)
		errc <- s.WriteInformational(103, nil)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	type info struct {
		code int
		h    textproto.MIMEHeader
	}
	var infos []info
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		infos = append(infos, info{code, h})
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(h2tTestCtx(t), trace), "GET", "https://localhost/", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if len(infos) != 1 || infos[0].code != 103 || infos[0].h.Get("Link") != "</style.css>; rel=preload" {
		t.Fatalf("1xx seen: %+v", infos)
	}
	if res.Header.Get("Link") != "" || res.Header.Get("X-Final") != "1" {
		t.Errorf("final header: %v", res.Header)
	}
	for i, wantErr := range []bool{false, false, true} {
		if err := h2tRecv(t, errc, "WriteInformational"); (err != nil) != wantErr {
			t.Errorf("WriteInformational #%d: %v", i, err)
		}
	}
}

func TestServerHeadAndBodilessStatus(t *testing.T) { h2tEngines(t, testServerHeadAndBodilessStatus) }

func testServerHeadAndBodilessStatus(t *testing.T) {
	h2tCheckLeaks(t)
	writeErr := make(chan error, 3)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		switch s.Request().Path {
		case "/head":
			s.WriteHeader(200, http.Header{"Content-Type": {"text/html"}}, 1234)
		case "/204":
			s.WriteHeader(204, nil, 0)
			_, err := s.Write([]byte("x"))
			writeErr <- err
		case "/304":
			s.WriteHeader(304, http.Header{"Etag": {`"v1"`}}, 1234)
		}
		s.Finish(nil)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	res := h2tGet(t, cc, "HEAD", "/head", nil)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || len(body) != 0 || res.ContentLength != 1234 {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %d", res.StatusCode, len(body), res.ContentLength)
	}
	for _, code := range []int{204, 304} {
		res := h2tGet(t, cc, "GET", "/"+strconv.Itoa(code), nil)
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != code || len(body) != 0 {
			t.Errorf("%d: got %d, %d bytes", code, res.StatusCode, len(body))
		}
		if _, ok := res.Header["Content-Length"]; ok {
			t.Errorf("%d: has Content-Length %q", code, res.Header["Content-Length"])
		}
	}
	if err := h2tRecv(t, writeErr, "204 write"); err == nil {
		t.Error("a body write on a 204 succeeded")
	}
}

func TestServerHeaderCountLimit(t *testing.T) { h2tEngines(t, testServerHeaderCountLimit) }

func testServerHeaderCountLimit(t *testing.T) {
	h2tCheckLeaks(t)
	var called atomic.Int64
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		called.Add(1)
		h2tEcho(s)
	}), ServerConfig{MaxHeaderCount: 10})
	cc := h2tDialClient(t, ts.addr)

	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/", nil)
	for i := range 20 {
		req.Header.Set("X-H"+strconv.Itoa(i), "v")
	}
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", res.StatusCode)
	}
	if called.Load() != 0 {
		t.Error("handler called")
	}
	// Within the limit it works.
	res = h2tGet(t, cc, "GET", "/", nil)
	res.Body.Close()
	if res.StatusCode != 200 || called.Load() != 1 {
		t.Errorf("status %d, %d calls", res.StatusCode, called.Load())
	}
}

func TestServerMaxHeaderBytes(t *testing.T) { h2tEngines(t, testServerMaxHeaderBytes) }

func testServerMaxHeaderBytes(t *testing.T) {
	h2tCheckLeaks(t)
	var called atomic.Int64
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		called.Add(1)
		h2tEcho(s)
	}), ServerConfig{MaxHeaderBytes: 4096})

	// The limit is advertised exactly.
	raw := h2tDialRaw(t, ts.addr)
	var advertised uint32
	raw.next("server SETTINGS", func(f http2.Frame) bool {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return false
		}
		advertised, _ = sf.Value(http2.SettingMaxHeaderListSize)
		return true
	})
	if advertised != 4096 {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want 4096", advertised)
	}
	// x/net's client respects it.
	cc := h2tDialClient(t, ts.addr)
	if err := cc.Ping(h2tTestCtx(t)); err != nil { // the server's SETTINGS have arrived
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/", nil)
	for i := range 10 {
		req.Header.Set("X-Big-"+strconv.Itoa(i), strings.Repeat("a", 500))
	}
	if res, err := cc.RoundTrip(req); err == nil {
		res.Body.Close()
		t.Error("x/net client sent a header list over the advertised limit")
	}
	// And the server enforces it on a client that does not.
	// (Ten fields of 500 bytes: one string longer than the whole limit
	// would be a connection error, COMPRESSION_ERROR, in x/net's HPACK
	// decoder.)
	var big []string
	for i := range 10 {
		big = append(big, "x-big-"+strconv.Itoa(i), strings.Repeat("a", 500))
	}
	raw.request(1, "/", big...)
	var status string
	raw.next("response", func(f http2.Frame) bool {
		mh, ok := f.(*http2.MetaHeadersFrame)
		if ok && mh.StreamID == 1 {
			status = mh.PseudoValue("status")
			return true
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
			status = "RST " + rst.ErrCode.String()
			return true
		}
		return false
	})
	if status != "431" {
		t.Errorf("oversized header list: %s, want 431", status)
	}
	// Just under the limit is fine (the pseudo-fields count too).
	raw.request(3, "/", "x-big", strings.Repeat("a", 3800))
	raw.next("response", func(f http2.Frame) bool {
		mh, ok := f.(*http2.MetaHeadersFrame)
		if ok && mh.StreamID == 3 {
			status = mh.PseudoValue("status")
			return true
		}
		return false
	})
	if status != "200" || called.Load() != 1 {
		t.Errorf("header list within the limit: %s, %d calls", status, called.Load())
	}
}

func TestServerReset(t *testing.T) { h2tEngines(t, testServerReset) }

func testServerReset(t *testing.T) {
	h2tCheckLeaks(t)
	causes := make(chan error, 2)
	writeErrs := make(chan error, 2)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		switch s.Request().Path {
		case "/reset-mid-body":
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("partial"))
			s.Flush()
			// Reset from another goroutine while this one is blocked.
			go s.Reset(transport.CodeUpstreamReset)
			<-s.Context().Done()
			causes <- context.Cause(s.Context())
			_, err := s.Write([]byte("more"))
			writeErrs <- err
		case "/reset-before-head":
			s.Reset(transport.CodeNoHealthyUpstream)
			causes <- context.Cause(s.Context())
			writeErrs <- s.WriteHeader(200, nil, 0)
		default:
			h2tEcho(s)
		}
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	res := h2tGet(t, cc, "GET", "/reset-mid-body", nil)
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if _, ok := errors.AsType[http2.StreamError](err); !ok {
		t.Errorf("mid-body reset: body %q, err %v", body, err)
	}
	if c := h2tRecv(t, causes, "cause"); transport.CodeOf(c) != transport.CodeUpstreamReset {
		t.Errorf("context cause %v", c)
	}
	if err := h2tRecv(t, writeErrs, "write"); transport.CodeOf(err) != transport.CodeUpstreamReset {
		t.Errorf("write after reset: %v", err)
	}

	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/reset-before-head", nil)
	res, err = cc.RoundTrip(req)
	if err == nil {
		res.Body.Close()
		t.Fatalf("reset before the head: got status %d", res.StatusCode)
	}
	if _, ok := errors.AsType[http2.StreamError](err); !ok {
		t.Errorf("reset before the head: %v", err)
	}
	if c := h2tRecv(t, causes, "cause"); transport.CodeOf(c) != transport.CodeNoHealthyUpstream {
		t.Errorf("context cause %v", c)
	}
	if err := h2tRecv(t, writeErrs, "write"); err == nil {
		t.Error("WriteHeader after Reset succeeded")
	}

	// The conn keeps serving.
	res = h2tGet(t, cc, "GET", "/ok", nil)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Errorf("after resets: %d", res.StatusCode)
	}
}

func TestServerResetConcurrentWithOtherStreams(t *testing.T) {
	h2tEngines(t, testServerResetConcurrentWithOtherStreams)
}

func testServerResetConcurrentWithOtherStreams(t *testing.T) {
	h2tCheckLeaks(t)
	release := make(chan struct{})
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		if s.Request().Path == "/slow" {
			<-release
		}
		if s.Request().Path == "/reset" {
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("x"))
			s.Flush()
			s.Reset(transport.CodeInternal)
			return
		}
		h2tEcho(s)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	slow := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(h2tTestCtx(t), "POST", "https://localhost/slow", strings.NewReader("slow body"))
		res, err := cc.RoundTrip(req)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(res.Body)
			res.Body.Close()
			if err == nil && string(b) != "slow body" {
				err = errors.New("bad slow body " + string(b))
			}
		}
		slow <- err
	}()
	res := h2tGet(t, cc, "GET", "/reset", nil)
	_, err := io.ReadAll(res.Body)
	res.Body.Close()
	if _, ok := errors.AsType[http2.StreamError](err); !ok {
		t.Errorf("reset stream: %v", err)
	}
	close(release)
	if err := h2tRecv(t, slow, "slow stream"); err != nil {
		t.Errorf("concurrent stream: %v", err)
	}
}

type h2tLogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *h2tLogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *h2tLogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestServerHandlerPanic(t *testing.T) { h2tEngines(t, testServerHandlerPanic) }

func testServerHandlerPanic(t *testing.T) {
	h2tCheckLeaks(t)
	var logs h2tLogBuf
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		switch s.Request().Path {
		case "/panic":
			panic("boom")
		case "/panic-mid-body":
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("x"))
			s.Flush()
			panic("boom mid-body")
		case "/no-finish":
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("truncated"))
			return // without Finish: must not look complete
		}
		h2tEcho(s)
	}), ServerConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	cc := h2tDialClient(t, ts.addr)

	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/panic", nil)
	if res, err := cc.RoundTrip(req); err == nil {
		res.Body.Close()
		t.Errorf("panic: got status %d", res.StatusCode)
	} else if _, ok := errors.AsType[http2.StreamError](err); !ok {
		t.Errorf("panic: %v", err)
	}
	for _, path := range []string{"/panic-mid-body", "/no-finish"} {
		req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost"+path, nil)
		res, err := cc.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		if _, ok := errors.AsType[http2.StreamError](err); !ok {
			t.Errorf("%s: error %v, want a stream reset", path, err)
		}
	}
	res := h2tGet(t, cc, "GET", "/ok", nil)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Errorf("after panics: %d", res.StatusCode)
	}
	if l := logs.String(); !strings.Contains(l, "boom") || !strings.Contains(l, "panic serving stream") {
		t.Errorf("panic not logged: %s", l)
	}
}

func TestServerContextCancelledByClient(t *testing.T) {
	h2tEngines(t, testServerContextCancelledByClient)
}

func testServerContextCancelledByClient(t *testing.T) {
	h2tCheckLeaks(t)
	started := make(chan struct{})
	causes := make(chan error, 1)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, nil, -1)
		s.Flush()
		close(started)
		select {
		case <-s.Context().Done():
			causes <- context.Cause(s.Context())
		case <-time.After(5 * time.Second):
			causes <- errors.New("context not cancelled")
		}
		s.Finish(nil)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)

	ctx, cancel := context.WithCancel(h2tTestCtx(t))
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://localhost/", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	h2tRecv(t, started, "handler")
	cancel()
	res.Body.Close()
	cause := h2tRecv(t, causes, "cause")
	if transport.CodeOf(cause) != transport.CodeClientCancelled {
		t.Errorf("cause %v, want client_cancelled", cause)
	}
}

func TestServerShutdown(t *testing.T) { h2tEngines(t, testServerShutdown) }

func testServerShutdown(t *testing.T) {
	h2tCheckLeaks(t)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		started <- struct{}{}
		<-release
		body := bytes.Repeat([]byte("z"), 100<<10)
		s.WriteHeader(200, nil, int64(len(body)))
		for i := 0; i < len(body); i += 10 << 10 {
			s.Write(body[i : i+10<<10])
			s.Flush()
		}
		s.Finish(nil)
	}), ServerConfig{})

	raw := h2tDialRaw(t, ts.addr)
	raw.request(1, "/slow")
	h2tRecv(t, started, "handler start")

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- ts.srv.Shutdown(h2tTestCtx(t)) }()

	var goAway *http2.GoAwayFrame
	raw.next("GOAWAY", func(f http2.Frame) bool {
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			raw.fr.WritePing(true, p.Data)
		}
		goAway, _ = f.(*http2.GoAwayFrame)
		// The native engine shuts down in two steps (RFC 9113 §6.8): first
		// a GOAWAY with the largest stream id and a PING.
		return goAway != nil && goAway.LastStreamID != 1<<31-1
	})
	if goAway.ErrCode != http2.ErrCodeNo || goAway.LastStreamID != 1 {
		t.Errorf("GOAWAY %v last stream %d", goAway.ErrCode, goAway.LastStreamID)
	}
	// New conns are refused once Shutdown has begun: the listener closed.
	h2tWaitFor(t, "listener closed", func() bool {
		c, err := net.Dial("tcp", ts.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned with a stream in flight: %v", err)
	default:
	}

	close(release)
	var got int
	var ended bool
	raw.next("the whole response", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamID == 1 {
				got += len(f.Data())
				raw.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
				raw.fr.WriteWindowUpdate(1, uint32(len(f.Data())))
				ended = f.StreamEnded()
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		}
		return ended
	})
	if got != 100<<10 {
		t.Errorf("got %d body bytes", got)
	}
	if err := h2tRecv(t, shutdownDone, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	// The server closed the conn.
	raw.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := raw.fr.ReadFrame(); err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				t.Error("conn still open after Shutdown")
			}
			break
		}
	}
	if err := h2tRecv(t, ts.errc, "Serve"); err != nil {
		t.Errorf("Serve: %v", err)
	}
	ts.errc <- nil // for the cleanup
}

func TestServerShutdownTimeout(t *testing.T) { h2tEngines(t, testServerShutdownTimeout) }

func testServerShutdownTimeout(t *testing.T) {
	h2tCheckLeaks(t)
	started := make(chan struct{})
	release := make(chan struct{})
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		close(started)
		select {
		case <-release:
		case <-s.Context().Done():
		}
		s.Reset(transport.CodeDraining)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/", nil)
		res, err := cc.RoundTrip(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	h2tRecv(t, started, "handler")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	// Close cuts the stream; its context ends with CodeDraining.
	ts.srv.Close()
	if err := h2tRecv(t, done, "request"); err == nil {
		t.Error("request succeeded after Close")
	}
	close(release)
}

func TestServerHeaderAndIdleTimeout(t *testing.T) { h2tEngines(t, testServerHeaderAndIdleTimeout) }

func testServerHeaderAndIdleTimeout(t *testing.T) {
	h2tCheckLeaks(t)
	ts := h2tStartServer(t, transport.HandlerFunc(h2tEcho), ServerConfig{HeaderTimeout: 100 * time.Millisecond})

	// A client that connects and sends no request is cut off after
	// HeaderTimeout (x/net's own limits are 10s and more).
	raw := h2tDialRaw(t, ts.addr)
	start := time.Now()
	raw.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, err := raw.fr.ReadFrame()
		if err == nil {
			continue
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			t.Fatal("conn without a request not closed")
		}
		break
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %v", d)
	}

	// Once a request came, the header timeout is off and the idle timeout
	// applies: the server sends GOAWAY when the conn has been idle. The
	// request must come within HeaderTimeout of the handshake, so that one
	// is not short here; the idle timeout is longer, so that a header
	// timeout left on would cut the conn well before the GOAWAY.
	ts = h2tStartServer(t, transport.HandlerFunc(h2tEcho), ServerConfig{
		HeaderTimeout: time.Second,
		IdleTimeout:   1500 * time.Millisecond,
	})
	raw = h2tDialRaw(t, ts.addr)
	raw.request(1, "/")
	var sawEnd, sawGoAway bool
	raw.next("GOAWAY after idle", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.DataFrame:
			sawEnd = sawEnd || (f.StreamID == 1 && f.StreamEnded())
		case *http2.MetaHeadersFrame:
			sawEnd = sawEnd || (f.StreamID == 1 && f.StreamEnded())
		case *http2.GoAwayFrame:
			sawGoAway = f.ErrCode == http2.ErrCodeNo
			return true
		}
		return false
	})
	if !sawEnd || !sawGoAway {
		t.Errorf("response ended %v, graceful GOAWAY %v", sawEnd, sawGoAway)
	}
}

func BenchmarkServerGET(b *testing.B) {
	for _, e := range h2tEngineList {
		b.Run(e.name, func(b *testing.B) { benchmarkServerGET(b, e.engine) })
	}
}

func benchmarkServerGET(b *testing.B, engine Engine) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	body := []byte("hello, world")
	srv := NewServer(transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, http.Header{"Content-Type": {"text/plain"}}, int64(len(body)))
		s.Write(body)
		s.Finish(nil)
	}), ServerConfig{Engine: engine})
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	req, _ := http.NewRequest("GET", "http://localhost/", nil)
	b.ReportAllocs()
	for b.Loop() {
		res, err := cc.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
}

func TestServerShortBodyReset(t *testing.T) { h2tEngines(t, testServerShortBodyReset) }

func testServerShortBodyReset(t *testing.T) {
	h2tCheckLeaks(t)
	finishErr := make(chan error, 1)
	ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, nil, 100)
		s.Write([]byte("only ten b"))
		finishErr <- s.Finish(nil)
	}), ServerConfig{})
	cc := h2tDialClient(t, ts.addr)
	req, _ := http.NewRequestWithContext(h2tTestCtx(t), "GET", "https://localhost/", nil)
	res, err := cc.RoundTrip(req)
	if err == nil {
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
	}
	if err == nil {
		t.Error("a body shorter than its Content-Length looked complete")
	}
	if err := h2tRecv(t, finishErr, "Finish"); transport.CodeOf(err) != transport.CodeInternal {
		t.Errorf("Finish: %v", err)
	}
}

func TestServerShutdownIdleConns(t *testing.T) { h2tEngines(t, testServerShutdownIdleConns) }

func testServerShutdownIdleConns(t *testing.T) {
	h2tCheckLeaks(t)
	ts := h2tStartServer(t, transport.HandlerFunc(h2tEcho), ServerConfig{})
	var ccs []*http2.ClientConn
	for range 3 {
		cc := h2tDialClient(t, ts.addr)
		res := h2tGet(t, cc, "GET", "/", nil)
		res.Body.Close()
		ccs = append(ccs, cc)
	}
	if err := ts.srv.Shutdown(h2tTestCtx(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for i, cc := range ccs {
		h2tWaitFor(t, "client conn closed", func() bool { return cc.State().Closed })
		if cc.CanTakeNewRequest() {
			t.Errorf("conn %d still takes requests", i)
		}
	}
}

// TestServerWriteTimeout: a client that grants flow-control credit but stops
// reading fails the conn once its writes make no progress for WriteTimeout;
// the handler's writes fail.
func TestServerWriteTimeout(t *testing.T) {
	h2tEngines(t, func(t *testing.T) {
		failed := make(chan error, 1)
		h := transport.HandlerFunc(func(s transport.ServerStream) {
			s.WriteHeader(200, http.Header{}, -1)
			chunk := make([]byte, 16<<10)
			for range 4096 { // 64 MiB at most: far beyond the socket buffers
				if _, err := s.Write(chunk); err != nil {
					failed <- err
					return
				}
			}
			failed <- nil
			s.Finish(nil)
		})
		ts := h2tStartServer(t, h, ServerConfig{WriteTimeout: 300 * time.Millisecond})
		r := h2tDialRaw(t, ts.addr)
		if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1}); err != nil {
			t.Fatal(err)
		}
		if err := r.fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
			t.Fatal(err)
		}
		r.request(1, "/big")
		select {
		case err := <-failed:
			if err == nil {
				t.Fatal("64 MiB written to a client that does not read")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the handler's writes to a client that does not read never failed")
		}
	})
}

// TestNativeFlowControlStall: a client that stops granting flow-control
// window holds up a response's DATA; after WriteTimeout the native engine
// resets the stream, and the handler's write fails with CodeClientCancelled.
func TestNativeFlowControlStall(t *testing.T) {
	const timeout = 300 * time.Millisecond
	failed := make(chan error, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, http.Header{}, -1)
		_, err := s.Write(make([]byte, 1<<20)) // beyond the 64 KiB window granted
		failed <- err
	})
	ts := h2tStartServer(t, h, ServerConfig{Engine: EngineNative, WriteTimeout: timeout})
	r := h2tDialRaw(t, ts.addr)
	start := time.Now()
	r.request(1, "/big")
	select {
	case err := <-failed:
		if !errors.Is(err, transport.CodeClientCancelled.Err()) {
			t.Fatalf("handler's write: %v, want CodeClientCancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write held up by flow control never failed")
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("the write failed after %v, before WriteTimeout %v", d, timeout)
	}
	r.next("RST_STREAM", func(f http2.Frame) bool {
		rst, ok := f.(*http2.RSTStreamFrame)
		if ok && (rst.StreamID != 1 || rst.ErrCode != ResetCode(transport.CodeClientCancelled)) {
			t.Errorf("RST_STREAM %d %v", rst.StreamID, rst.ErrCode)
		}
		return ok
	})
}

// TestServerWindows: the flow-control windows the server grants are the
// configured ones: SETTINGS_INITIAL_WINDOW_SIZE per stream, and the conn's
// window raised from 65535 by its first WINDOW_UPDATE.
func TestServerWindows(t *testing.T) {
	h2tEngines(t, func(t *testing.T) {
		ts := h2tStartServer(t, transport.HandlerFunc(func(s transport.ServerStream) {
			s.WriteHeader(200, http.Header{}, 0)
			s.Finish(nil)
		}), ServerConfig{InitialStreamWindow: 100000, InitialConnWindow: 300000})
		r := h2tDialRaw(t, ts.addr)
		var stream, conn uint32
		r.next("the server's SETTINGS and conn WINDOW_UPDATE", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
						stream = v
					}
				}
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 {
					conn = 65535 + f.Increment
				}
			}
			return stream != 0 && conn != 0
		})
		if stream != 100000 || conn != 300000 {
			t.Errorf("stream window %d, conn window %d; want 100000 and 300000", stream, conn)
		}
	})
}
