package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// countingServer is an httptest server that counts the conns it accepted.
func countingServer(t *testing.T, h http.Handler, useTLS bool) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	if useTLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, &n
}

// dialerFor returns a dialer for srv, trusting its certificate when TLS.
func dialerFor(srv *httptest.Server, cfg DialerConfig) *Dialer {
	if srv.TLS != nil {
		roots := x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		cfg.TLS = &tls.Config{RootCAs: roots}
	}
	return NewDialer(cfg)
}

func dialT(t *testing.T, d *Dialer, addr string) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c, err := d.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func getReq(path string) *transport.Request {
	return &transport.Request{Method: "GET", Scheme: "http", Authority: "upstream.test", Path: path,
		Header: http.Header{}, Body: http.NoBody}
}

// do runs one exchange on c and returns the response and its body.
func do(t *testing.T, c transport.Conn, req *transport.Request) (*transport.Response, string) {
	t.Helper()
	if !c.Reserve() {
		t.Fatalf("Reserve failed: Err %v", c.Err())
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	resp, err := c.RoundTrip(ctx, req)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	resp.Body.Close()
	return resp, string(b)
}

func TestClientKeepAlive(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		if useTLS {
			name = "TLS"
		}
		t.Run(name, func(t *testing.T) {
			seen := make(chan http.Header, 1)
			srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case seen <- r.Header.Clone():
				default:
				}
				if r.Host != "upstream.test" {
					t.Errorf("Host %q", r.Host)
				}
				io.WriteString(w, "hello "+r.URL.RequestURI())
			}), useTLS)
			c := dialT(t, dialerFor(srv, DialerConfig{}), srv.Listener.Addr().String())
			for i := range 100 {
				req := getReq("/n?i=" + string(rune('a'+i%26)))
				req.Header.Set("X-Req", "1")
				resp, body := do(t, c, req)
				if resp.Status != 200 || body != "hello "+req.Path {
					t.Fatalf("exchange %d: %d %q", i, resp.Status, body)
				}
				if resp.ContentLength != int64(len(body)) {
					t.Fatalf("ContentLength %d", resp.ContentLength)
				}
				if _, ok := resp.Header["Content-Length"]; ok {
					t.Fatal("Content-Length in Header")
				}
			}
			if n := conns.Load(); n != 1 {
				t.Errorf("%d conns for 100 sequential exchanges", n)
			}
			// Nothing the caller did not give: no User-Agent, no
			// Accept-Encoding.
			h := <-seen
			if len(h) != 1 || h.Get("X-Req") != "1" {
				t.Errorf("upstream saw %v", h)
			}
		})
	}
}

func TestClientReserve(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	if c.Available() != 1 || !c.Idle() || c.Err() != nil {
		t.Fatalf("fresh: Available %d Idle %v Err %v", c.Available(), c.Idle(), c.Err())
	}
	if !c.Reserve() {
		t.Fatal("Reserve failed")
	}
	if c.Reserve() {
		t.Fatal("second Reserve succeeded: capacity is 1")
	}
	if c.Available() != 0 || c.Idle() {
		t.Fatalf("reserved: Available %d Idle %v", c.Available(), c.Idle())
	}
	c.Release()
	if c.Available() != 1 || !c.Idle() {
		t.Fatalf("released: Available %d Idle %v", c.Available(), c.Idle())
	}
	// The slot is busy until the response body is closed.
	if !c.Reserve() {
		t.Fatal("Reserve failed")
	}
	resp, err := c.RoundTrip(t.Context(), getReq("/"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Reserve() || c.Idle() {
		t.Fatal("slot free before Body.Close")
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body.Close() // a second Close frees nothing more
	if !c.Idle() || c.Available() != 1 {
		t.Fatal("slot not freed by Body.Close")
	}
}

// trailerBody is a request body whose trailers are set at EOF, as a server
// sets them.
type trailerBody struct {
	r   io.Reader
	req *transport.Request
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.req.Trailer = http.Header{"X-Upload-Sum": {"99"}}
	}
	return n, err
}

func TestClientChunkedUpload(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if len(r.TransferEncoding) != 1 || r.TransferEncoding[0] != "chunked" {
			t.Errorf("TE %v", r.TransferEncoding)
		}
		w.Header().Set("Trailer", "X-Echo-Sum")
		w.Write(b)
		w.Header().Set("X-Echo-Sum", r.Trailer.Get("X-Upload-Sum"))
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	for _, size := range []int{0, 5, 100 << 10} {
		req := getReq("/up")
		req.Method = "POST"
		req.ContentLength = -1
		payload := strings.Repeat("z", size)
		req.Body = &trailerBody{r: strings.NewReader(payload), req: req}
		resp, body := do(t, c, req)
		if body != payload {
			t.Errorf("size %d: echoed %d bytes", size, len(body))
		}
		if resp.ContentLength != -1 || resp.Trailer.Get("X-Echo-Sum") != "99" {
			t.Errorf("ContentLength %d Trailer %v", resp.ContentLength, resp.Trailer)
		}
	}
}

// TestClientProbesUnknownLength: a request body of unknown length that turns
// out empty goes as no body at all, not as a chunked one; one whose first
// bytes are late goes chunked once the probe stops waiting.
func TestClientProbesUnknownLength(t *testing.T) {
	type seen struct {
		te   []string
		cl   int64
		body string
	}
	got := make(chan seen, 1)
	headIn := make(chan struct{}, 1)
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case headIn <- struct{}{}:
		default:
		}
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.TransferEncoding, r.ContentLength, string(b)}
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	check := func(name string, req *transport.Request, want seen) {
		t.Helper()
		resp, _ := do(t, c, req)
		if resp.Status != 200 {
			t.Fatalf("%s: status %d", name, resp.Status)
		}
		s := <-got
		if len(s.te) != len(want.te) || s.cl != want.cl || s.body != want.body {
			t.Errorf("%s: upstream saw TE %v, Content-Length %d, body %q; want TE %v, %d, %q", name, s.te, s.cl, s.body, want.te, want.cl, want.body)
		}
	}

	// Ends without a byte: an HTTP/3 GET whose FIN followed its HEADERS.
	// The end is there before the probe reads: closed on another goroutine,
	// it would have to come within probeWait, which a loaded machine may
	// not give.
	pr, pw := io.Pipe()
	pw.Close()
	req := getReq("/empty")
	req.ContentLength, req.Body = -1, pr
	check("empty", req, seen{nil, 0, ""})

	// Its first bytes come only after the head has reached the upstream.
	<-headIn // the empty one's
	pr, pw = io.Pipe()
	go func() {
		<-headIn
		io.WriteString(pw, "late")
		pw.Close()
	}()
	req = getReq("/late")
	req.Method, req.ContentLength, req.Body = "POST", -1, pr
	check("late", req, seen{[]string{"chunked"}, -1, "late"})

	// Bytes at once.
	req = getReq("/now")
	req.Method, req.ContentLength, req.Body = "POST", -1, strings.NewReader("now")
	check("at once", req, seen{[]string{"chunked"}, -1, "now"})
}

func TestClientInformational(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.ReadAll(r.Body) // sends 100 Continue
		io.WriteString(w, "done")
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	req := getReq("/")
	req.Method = "POST"
	req.Header.Set("Expect", "100-continue")
	req.Body = strings.NewReader("body")
	req.ContentLength = 4
	var got []string
	req.OnInformational = func(status int, h http.Header) error {
		got = append(got, http.StatusText(status)+"|"+h.Get("Link"))
		return nil
	}
	resp, body := do(t, c, req)
	if resp.Status != 200 || body != "done" {
		t.Fatalf("%d %q", resp.Status, body)
	}
	if len(got) != 2 || got[0] != "Early Hints|</a.css>; rel=preload" || got[1] != "Continue|" {
		t.Errorf("informational: %q", got)
	}
	if resp.Header.Get("Link") != "" {
		t.Error("Link of the 103 in the final header")
	}

	// A failing callback fails the round trip with its code.
	req = getReq("/")
	req.OnInformational = func(int, http.Header) error { return transport.CodeClientCancelled.Err() }
	c.Reserve()
	if _, err := c.RoundTrip(t.Context(), req); !errors.Is(err, transport.CodeClientCancelled.Err()) {
		t.Errorf("callback error: %v", err)
	}
}

// rawServer accepts conns on a loopback listener and runs serve on each.
func rawServer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(testTimeout))
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// readHead reads a request head off br and returns it.
func readHead(br *bufio.Reader) string {
	var b strings.Builder
	for {
		l, err := br.ReadString('\n')
		b.WriteString(l)
		if err != nil || l == "\r\n" {
			return b.String()
		}
	}
}

func TestClientRequestOnTheWire(t *testing.T) {
	heads := make(chan string, 1)
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			head := readHead(br)
			if head == "" {
				return
			}
			var body string
			switch {
			case strings.Contains(head, "Content-Length: 5\r\n"):
				b := make([]byte, 5)
				io.ReadFull(br, b)
				body = string(b)
			case strings.Contains(head, "chunked"):
				for {
					l, _ := br.ReadString('\n')
					body += l
					if l == "\r\n" || l == "" {
						break
					}
				}
			}
			heads <- head + body
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		}
	})
	c := dialT(t, NewDialer(DialerConfig{}), addr)

	tests := []struct {
		name string
		req  *transport.Request
		want string
	}{
		{"GET", &transport.Request{Method: "GET", Authority: "up:8080", Path: "/p?q=1", Header: http.Header{"X-A": {"1"}}, Body: http.NoBody},
			"GET /p?q=1 HTTP/1.1\r\nHost: up:8080\r\nX-A: 1\r\n\r\n"},
		{"framing fields dropped", &transport.Request{Method: "GET", Authority: "up", Path: "/",
			Header: http.Header{"Host": {"evil"}, "Content-Length": {"9"}, "Transfer-Encoding": {"chunked"}}, Body: http.NoBody},
			"GET / HTTP/1.1\r\nHost: up\r\n\r\n"},
		{"GET with ContentLength 0 and a body", &transport.Request{Method: "GET", Authority: "up", Path: "/", Body: strings.NewReader("ignored")},
			"GET / HTTP/1.1\r\nHost: up\r\n\r\n"},
		{"POST empty", &transport.Request{Method: "POST", Authority: "up", Path: "/", Body: http.NoBody},
			"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n"},
		{"POST sized", &transport.Request{Method: "POST", Authority: "up", Path: "/", Body: strings.NewReader("hello"), ContentLength: 5},
			"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 5\r\n\r\nhello"},
		{"POST chunked with trailers", &transport.Request{Method: "POST", Authority: "up", Path: "*", Body: strings.NewReader("hello"), ContentLength: -1,
			Trailer: http.Header{"X-T": {"v"}, "Content-Length": {"5"}}},
			"POST * HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := do(t, c, tt.req)
			if resp.Status != 204 || resp.ContentLength != 0 {
				t.Errorf("response %d %d", resp.Status, resp.ContentLength)
			}
			if got := waitFor(t, heads, "request"); got != tt.want {
				t.Errorf("sent\n%q\nwant\n%q", got, tt.want)
			}
		})
	}

	// Requests that cannot be written fail with CodeBadRequest.
	for _, req := range []*transport.Request{
		{Method: "G T", Authority: "up", Path: "/", Body: http.NoBody},
		{Method: "GET", Authority: "up", Path: "/a b", Body: http.NoBody},
		{Method: "GET", Authority: "up\r\nX: y", Path: "/", Body: http.NoBody},
		{Method: "GET", Authority: "up", Path: "/", Header: http.Header{"X": {"a\r\nInjected: 1"}}, Body: http.NoBody},
		{Method: "GET", Authority: "up", Path: "/", Header: http.Header{"Bad Name": {"1"}}, Body: http.NoBody},
	} {
		c := dialT(t, NewDialer(DialerConfig{}), addr)
		c.Reserve()
		if _, err := c.RoundTrip(t.Context(), req); !errors.Is(err, transport.CodeBadRequest.Err()) {
			t.Errorf("%q %q %v: err %v", req.Method, req.Path, req.Header, err)
		}
		if !c.Idle() {
			t.Error("slot not freed")
		}
	}
}

func TestClientResponseFraming(t *testing.T) {
	responses := map[string]string{
		"/close":     "HTTP/1.1 200 OK\r\nX: 1\r\n\r\nuntil close",
		"/head":      "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
		"/304":       "HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nEtag: \"e\"\r\n\r\n",
		"/204":       "HTTP/1.1 204 No Content\r\n\r\n",
		"/conn":      "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok",
		"/http10":    "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"/connclose": "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
		"/noreason":  "HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n",
		"/trailers":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\nContent-Length: 9\r\n\r\n",
	}
	addr := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		head := readHead(br)
		path := strings.Fields(head)[1]
		io.WriteString(c, responses[path])
	})
	d := NewDialer(DialerConfig{})
	check := func(path, method string, f func(resp *transport.Response, body string, c transport.Conn)) {
		t.Run(path, func(t *testing.T) {
			c := dialT(t, d, addr)
			req := getReq(path)
			req.Method = method
			resp, body := do(t, c, req)
			f(resp, body, c)
		})
	}
	check("/close", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "until close" || resp.ContentLength != -1 || c.Err() == nil {
			t.Errorf("body %q ContentLength %d Err %v", body, resp.ContentLength, c.Err())
		}
	})
	check("/head", "HEAD", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "" || resp.ContentLength != 1234 || c.Err() != nil {
			t.Errorf("body %q ContentLength %d Err %v", body, resp.ContentLength, c.Err())
		}
	})
	check("/304", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "" || resp.Status != 304 || resp.Header.Get("Etag") != `"e"` || c.Err() != nil {
			t.Errorf("body %q status %d Err %v", body, resp.Status, c.Err())
		}
	})
	check("/204", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if resp.Status != 204 || resp.ContentLength != 0 || c.Err() != nil {
			t.Errorf("status %d ContentLength %d Err %v", resp.Status, resp.ContentLength, c.Err())
		}
	})
	check("/conn", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		h := resp.Header
		if _, ok := h["Connection"]; ok || h.Get("X-Hop") != "" || h.Get("Keep-Alive") != "" || h.Get("X-End") != "2" {
			t.Errorf("header %v", h)
		}
	})
	check("/http10", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "ok" || c.Err() == nil {
			t.Errorf("body %q, Err %v (an HTTP/1.0 conn is not reused)", body, c.Err())
		}
	})
	check("/connclose", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "ok" || c.Err() == nil {
			t.Errorf("body %q, Err %v (Connection: close)", body, c.Err())
		}
	})
	check("/noreason", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if resp.Status != 299 {
			t.Errorf("status %d", resp.Status)
		}
	})
	check("/trailers", "GET", func(resp *transport.Response, body string, c transport.Conn) {
		if body != "ok" || resp.Trailer.Get("X-T") != "1" || resp.Trailer.Get("Content-Length") != "" {
			t.Errorf("body %q trailer %v", body, resp.Trailer)
		}
	})
}

func TestClientMalformedResponse(t *testing.T) {
	responses := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
		"HTTP/1.1 abc OK\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		"HTTP/1.1 099 Low\r\n\r\n",
		"HTTP/1.1 200OK\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxResponseHeaderBytes) + "\r\n\r\n",
		"garbage\r\n\r\n",
	}
	for i, r := range responses {
		addr := rawServer(t, func(c net.Conn) {
			readHead(bufio.NewReader(c))
			io.WriteString(c, r)
		})
		c := dialT(t, NewDialer(DialerConfig{}), addr)
		c.Reserve()
		_, err := c.RoundTrip(t.Context(), getReq("/"))
		if !errors.Is(err, transport.CodeUpstreamProtocol.Err()) {
			t.Errorf("response %d %.40q: err %v, want CodeUpstreamProtocol", i, r, err)
		}
		if c.Err() == nil || !c.Idle() {
			t.Errorf("response %d: conn Err %v Idle %v", i, c.Err(), c.Idle())
		}
	}

	// A malformed chunked body fails the body's read.
	addr := rawServer(t, func(c net.Conn) {
		readHead(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n")
	})
	c := dialT(t, NewDialer(DialerConfig{}), addr)
	c.Reserve()
	resp, err := c.RoundTrip(t.Context(), getReq("/"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, transport.CodeUpstreamProtocol.Err()) {
		t.Errorf("malformed chunk: %v", err)
	}
	resp.Body.Close()
	if c.Err() == nil {
		t.Error("conn reusable after a malformed body")
	}
}

func TestClientUpstreamReset(t *testing.T) {
	t.Run("closed before the response", func(t *testing.T) {
		addr := rawServer(t, func(c net.Conn) { readHead(bufio.NewReader(c)) })
		c := dialT(t, NewDialer(DialerConfig{}), addr)
		c.Reserve()
		_, err := c.RoundTrip(t.Context(), getReq("/"))
		var te *transport.Error
		if !errors.As(err, &te) || te.Code != transport.CodeUpstreamReset || !te.Remote {
			t.Errorf("err %v, want remote CodeUpstreamReset", err)
		}
	})
	t.Run("closed mid-body", func(t *testing.T) {
		for _, r := range []string{
			"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
		} {
			addr := rawServer(t, func(c net.Conn) {
				readHead(bufio.NewReader(c))
				io.WriteString(c, r)
			})
			c := dialT(t, NewDialer(DialerConfig{}), addr)
			c.Reserve()
			resp, err := c.RoundTrip(t.Context(), getReq("/"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			var te *transport.Error
			if string(b) != "partial" || !errors.As(err, &te) || te.Code != transport.CodeUpstreamReset || !te.Remote {
				t.Errorf("read %q err %v, want remote CodeUpstreamReset", b, err)
			}
			resp.Body.Close()
			if c.Err() == nil || !c.Idle() {
				t.Errorf("conn Err %v Idle %v", c.Err(), c.Idle())
			}
		}
	})
}

func TestClientResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), false)
	c := dialT(t, NewDialer(DialerConfig{ResponseHeaderTimeout: 200 * time.Millisecond}), srv.Listener.Addr().String())
	for _, withBody := range []bool{false, true} {
		c := c
		if withBody {
			c = dialT(t, NewDialer(DialerConfig{ResponseHeaderTimeout: 200 * time.Millisecond}), srv.Listener.Addr().String())
		}
		req := getReq("/")
		if withBody {
			req.Method, req.Body, req.ContentLength = "POST", strings.NewReader("body"), 4
		}
		c.Reserve()
		start := time.Now()
		_, err := c.RoundTrip(t.Context(), req)
		if !errors.Is(err, transport.CodeResponseTimeout.Err()) {
			t.Errorf("body %v: err %v, want CodeResponseTimeout", withBody, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("timed out after %v", d)
		}
	}
}

func TestClientCancel(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	entered := make(chan struct{}, 1)
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	c.Reserve()
	bounded, stop := context.WithTimeout(t.Context(), testTimeout)
	defer stop()
	ctx, cancel := context.WithCancelCause(bounded)
	defer cancel(nil)
	// Cancel once the request is at the upstream, so that RoundTrip waits
	// for the head (a cancel before it starts leaves the conn usable).
	go func() {
		select {
		case <-entered:
			cancel(transport.CodeDraining.Err())
		case <-ctx.Done():
		}
	}()
	_, err := c.RoundTrip(ctx, getReq("/"))
	if !errors.Is(err, transport.CodeDraining.Err()) {
		t.Errorf("err %v, want the cause CodeDraining", err)
	}
	if !c.Idle() || c.Err() == nil {
		t.Errorf("after cancel: Idle %v Err %v", c.Idle(), c.Err())
	}

	c = dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	c.Reserve()
	ctx, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if _, err := c.RoundTrip(ctx, getReq("/")); !errors.Is(err, transport.CodeClientCancelled.Err()) {
		t.Errorf("err %v, want CodeClientCancelled", err)
	}
	if c.Err() != nil || c.Available() != 1 {
		t.Errorf("a round trip cancelled before it started broke the conn: %v", c.Err())
	}
}

// TestClientRequestBodyFails checks that a request body that fails (the
// client went away) fails the round trip with the body's error.
func TestClientRequestBodyFails(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	req := getReq("/")
	req.Method = "POST"
	req.ContentLength = 100
	req.Body = io.MultiReader(strings.NewReader("some"), errReader{transport.CodeClientCancelled.Err()})
	c.Reserve()
	if _, err := c.RoundTrip(t.Context(), req); !errors.Is(err, transport.CodeClientCancelled.Err()) {
		t.Errorf("err %v", err)
	}
	if !c.Idle() || c.Err() == nil {
		t.Errorf("Idle %v Err %v", c.Idle(), c.Err())
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestClientDialErrors(t *testing.T) {
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	ln.Close()

	plain, _ := countingServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), false)
	tlsSrv, _ := countingServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), true)
	expired, cancelExpired := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancelExpired()

	tests := []struct {
		name string
		ctx  context.Context
		d    *Dialer
		addr string
		code transport.Code
	}{
		{"refused", t.Context(), NewDialer(DialerConfig{}), closedAddr, transport.CodeConnectRefused},
		{"TLS to a plaintext server", t.Context(), NewDialer(DialerConfig{TLS: &tls.Config{}}), plain.Listener.Addr().String(), transport.CodeUpstreamTLS},
		{"untrusted certificate", t.Context(), NewDialer(DialerConfig{TLS: &tls.Config{}}), tlsSrv.Listener.Addr().String(), transport.CodeUpstreamTLS},
		{"wrong name", t.Context(), dialerFor(tlsSrv, DialerConfig{}), "localhost" + tlsSrv.Listener.Addr().String()[len("127.0.0.1"):], transport.CodeUpstreamTLS},
		{"deadline", expired, NewDialer(DialerConfig{}), plain.Listener.Addr().String(), transport.CodeConnectTimeout},
		{"bad address", t.Context(), NewDialer(DialerConfig{}), "no-port", transport.CodeUpstreamUnreachable},
		{"DNS", t.Context(), NewDialer(DialerConfig{ConnectTimeout: 2 * time.Second}), "nonexistent.invalid:80", transport.CodeUpstreamUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.d.Dial(tt.ctx, tt.addr)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var te *transport.Error
			if tt.name == "DNS" && errors.As(err, &te) && te.Code == transport.CodeConnectTimeout {
				t.Skip("no DNS here")
			}
			if !errors.As(err, &te) || te.Code != tt.code {
				t.Errorf("err %v, want code %v", err, tt.code)
			}
		})
	}

	// A peer that accepts TCP but never answers the TLS handshake:
	// TLSHandshakeTimeout ends the dial, well before ConnectTimeout.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	_, err = NewDialer(DialerConfig{TLS: &tls.Config{}, ConnectTimeout: time.Minute, TLSHandshakeTimeout: 100 * time.Millisecond}).
		Dial(t.Context(), silent.Addr().String())
	if te, ok := errors.AsType[*transport.Error](err); !ok || te.Code != transport.CodeConnectTimeout {
		t.Errorf("silent TLS peer: err %v, want CodeConnectTimeout", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("silent TLS peer: the dial took %v: ConnectTimeout, not TLSHandshakeTimeout, ended it", d)
	}

	// The certificate error keeps its type.
	_, err = NewDialer(DialerConfig{TLS: &tls.Config{}}).Dial(t.Context(), tlsSrv.Listener.Addr().String())
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); !ok {
		t.Errorf("untrusted certificate: %v is not a *tls.CertificateVerificationError", err)
	}
	// A cancelled ctx with a transport cause returns the cause.
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(transport.CodeDraining.Err())
	if _, err := NewDialer(DialerConfig{}).Dial(ctx, plain.Listener.Addr().String()); !errors.Is(err, transport.CodeDraining.Err()) {
		t.Errorf("cancelled dial: %v", err)
	}
}

// TestClientRedialsDeadConn checks that a conn the upstream closed while idle
// is redialed before the next request, which succeeds.
func TestClientRedialsDeadConn(t *testing.T) {
	var accepted atomic.Int32
	closed := make(chan struct{}, 2)
	addr := rawServer(t, func(c net.Conn) {
		accepted.Add(1)
		readHead(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.Close() // without Connection: close, as a keep-alive timeout does
		closed <- struct{}{}
	})
	cc := dialT(t, NewDialer(DialerConfig{}), addr)
	if _, body := do(t, cc, getReq("/")); body != "ok" {
		t.Fatalf("body %q", body)
	}
	waitFor(t, closed, "server close")
	c := cc.(*conn)
	deadline := time.Now().Add(testTimeout)
	for !connDead(c.raw, true) {
		if time.Now().After(deadline) {
			t.Fatal("the closed conn never looked dead")
		}
		time.Sleep(time.Millisecond) // the FIN crosses loopback
	}
	c.idleSince = time.Now().Add(-time.Minute) // idle long enough to be checked
	if _, body := do(t, cc, getReq("/")); body != "ok" {
		t.Fatalf("body %q", body)
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d conns accepted, want 2", n)
	}
}

func TestClientShutdown(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), false)
	c := dialT(t, NewDialer(DialerConfig{}), srv.Listener.Addr().String())
	c.Reserve()
	resp, err := c.RoundTrip(t.Context(), getReq("/"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Shutdown(t.Context()) }()
	// Shutdown runs on its own goroutine: wait for it to begin.
	pollUntil(t, "Err() after Shutdown", func() bool {
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v with an exchange in flight", err)
		default:
		}
		return c.Err() != nil
	})
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with an exchange in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if c.Reserve() {
		c.Release()
		t.Error("shutting-down conn takes new streams")
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := waitFor(t, done, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestClientServer runs the client against the server of this package.
func TestClientServer(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		r := s.Request()
		b, _ := io.ReadAll(r.Body)
		h := http.Header{"X-Path": {r.Path}, "X-Host": {r.Authority}, "X-Trailer": {r.Trailer.Get("X-Upload-Sum")}}
		s.WriteHeader(200, h, -1)
		s.Write(b)
		s.Finish(http.Header{"X-Len": {string(rune('0' + len(b)%10))}})
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dialT(t, NewDialer(DialerConfig{}), addr)
	for i := range 10 {
		req := getReq("/x")
		req.Method = "PUT"
		req.ContentLength = -1
		body := strings.Repeat("b", i)
		req.Body = &trailerBody{r: strings.NewReader(body), req: req}
		req.Trailer = nil
		resp, got := do(t, c, req)
		if got != body || resp.Header.Get("X-Path") != "/x" || resp.Header.Get("X-Host") != "upstream.test" {
			t.Fatalf("got %q header %v", got, resp.Header)
		}
		if resp.Trailer.Get("X-Len") != string(rune('0'+i)) {
			t.Errorf("trailer %v", resp.Trailer)
		}
		if i > 0 && resp.Header.Get("X-Trailer") != "99" {
			t.Errorf("request trailer not seen: %v", resp.Header)
		}
	}
}
