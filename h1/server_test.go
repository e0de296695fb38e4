package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// TestServerRejects sends requests that break a framing rule: each is
// answered with its status and Connection: close, the conn closes, and the
// handler never runs.
func TestServerRejects(t *testing.T) {
	var called atomic.Int32
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		called.Add(1)
		okHandler(s)
	})
	_, addr := startServer(t, h, ServerConfig{MaxRequestLine: 256, MaxHeaderBytes: 2048, MaxHeaderCount: 10})

	long := strings.Repeat("a", 300)
	tests := []struct {
		name   string
		req    string
		status int
	}{
		// Request line.
		{"request line too long", "GET /" + long + " HTTP/1.1\nHost: a\n\n", 414},
		{"no version", "GET /\nHost: a\n\n", 400},
		{"double space", "GET  / HTTP/1.1\nHost: a\n\n", 400},
		{"trailing space", "GET / HTTP/1.1 \nHost: a\n\n", 400},
		{"tab separator", "GET\t/ HTTP/1.1\nHost: a\n\n", 400},
		{"method not token", "G(T / HTTP/1.1\nHost: a\n\n", 400},
		{"empty method", " / HTTP/1.1\nHost: a\n\n", 400},
		{"HTTP/2.0", "GET / HTTP/2.0\nHost: a\n\n", 400},
		{"HTTP/2 preface", "PRI * HTTP/2.0\n\nSM\n\n", 400},
		{"HTTP/0.9-ish version", "GET / HTTP/1\nHost: a\n\n", 400},
		{"lower-case version", "GET / http/1.1\nHost: a\n\n", 400},
		{"HTTP/3.0", "GET / HTTP/3.0\nHost: a\n\n", 400},
		{"relative target", "GET foo HTTP/1.1\nHost: a\n\n", 400},
		{"asterisk with GET", "GET * HTTP/1.1\nHost: a\n\n", 400},
		{"fragment", "GET /a#b HTTP/1.1\nHost: a\n\n", 400},
		{"non-ASCII target", "GET /caf\xc3\xa9 HTTP/1.1\nHost: a\n\n", 400},
		{"control in target", "GET /a\x01b HTTP/1.1\nHost: a\n\n", 400},
		{"absolute-form userinfo", "GET http://user@a/ HTTP/1.1\nHost: a\n\n", 400},
		{"absolute-form bad host", "GET http://a_b!/ HTTP/1.1\nHost: a\n\n", 400},
		{"absolute-form empty authority", "GET http:///x HTTP/1.1\nHost: a\n\n", 400},
		{"unknown scheme", "GET ftp://a/ HTTP/1.1\nHost: a\n\n", 400},
		{"CONNECT", "CONNECT a:443 HTTP/1.1\nHost: a:443\n\n", 501},

		// Limits.
		{"header too large", "GET / HTTP/1.1\nHost: a\nX: " + strings.Repeat("b", 2100) + "\n\n", 431},
		{"too many fields", "GET / HTTP/1.1\nHost: a\n" + strings.Repeat("X: 1\n", 10) + "\n", 431},

		// Field syntax.
		{"space before colon", "GET / HTTP/1.1\nHost: a\nFoo : bar\n\n", 400},
		{"tab before colon", "GET / HTTP/1.1\nHost: a\nFoo\t: bar\n\n", 400},
		{"space in name", "GET / HTTP/1.1\nHost: a\nFo o: bar\n\n", 400},
		{"name not token", "GET / HTTP/1.1\nHost: a\nFo{o: bar\n\n", 400},
		{"empty name", "GET / HTTP/1.1\nHost: a\n: bar\n\n", 400},
		{"no colon", "GET / HTTP/1.1\nHost: a\nFoo bar\n\n", 400},
		{"obs-fold", "GET / HTTP/1.1\nHost: a\nFoo: bar\n baz\n\n", 400},
		{"obs-fold tab", "GET / HTTP/1.1\nHost: a\nFoo: bar\n\tbaz\n\n", 400},
		{"space before first field", "GET / HTTP/1.1\n Host: a\n\n", 400},
		{"NUL in value", "GET / HTTP/1.1\nHost: a\nFoo: a\x00b\n\n", 400},
		{"CTL in value", "GET / HTTP/1.1\nHost: a\nFoo: a\x01b\n\n", 400},
		{"DEL in value", "GET / HTTP/1.1\nHost: a\nFoo: a\x7fb\n\n", 400},
		{"ESC in value", "GET / HTTP/1.1\nHost: a\nFoo: a\x1bb\n\n", 400},
		{"bare CR in value", "GET / HTTP/1.1\nHost: a\nFoo: a\rb\n\n", 400},
		{"bare LF request line", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"[:14] + "\nHost: a\r\n\r\n", 400},
		{"bare LF field line", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400},
		{"bare LF end of head", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400},

		// Framing.
		{"CL and TE", "POST / HTTP/1.1\nHost: a\nContent-Length: 3\nTransfer-Encoding: chunked\n\n0\n\n", 400},
		{"TE and CL", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 3\n\n0\n\n", 400},
		{"CL not digits", "POST / HTTP/1.1\nHost: a\nContent-Length: abc\n\n", 400},
		{"CL negative", "POST / HTTP/1.1\nHost: a\nContent-Length: -1\n\n", 400},
		{"CL plus", "POST / HTTP/1.1\nHost: a\nContent-Length: +5\n\nhello", 400},
		{"CL hex", "POST / HTTP/1.1\nHost: a\nContent-Length: 0x5\n\nhello", 400},
		{"CL inner space", "POST / HTTP/1.1\nHost: a\nContent-Length: 1 2\n\n", 400},
		{"CL empty", "POST / HTTP/1.1\nHost: a\nContent-Length: \n\n", 400},
		{"CL overflow", "POST / HTTP/1.1\nHost: a\nContent-Length: 99999999999999999999\n\n", 400},
		{"CL list differs", "POST / HTTP/1.1\nHost: a\nContent-Length: 5, 6\n\nhello", 400},
		{"CL fields differ", "POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 6\n\nhello", 400},
		{"CL trailing comma", "POST / HTTP/1.1\nHost: a\nContent-Length: 5,\n\nhello", 400},
		{"TE gzip", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip\n\n", 501},
		{"TE gzip, chunked", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n0\n\n", 501},
		{"TE chunked, gzip", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, gzip\n\n0\n\n", 501},
		{"TE identity", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: identity\n\n", 501},
		{"TE split fields gzip last", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: gzip\n\n0\n\n", 501},
		{"TE chunked twice", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, chunked\n\n0\n\n", 400},
		{"TE chunked twice in fields", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n0\n\n", 400},
		{"TE trailing comma", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked,\n\n0\n\n", 400},
		{"TE empty", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: \n\n", 400},
		{"TE chunked with params", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked;q=1\n\n0\n\n", 501},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\nHost: a\nTransfer-Encoding: chunked\n\n0\n\n", 400},

		// Host.
		{"no Host", "GET / HTTP/1.1\nX: y\n\n", 400},
		{"two Host", "GET / HTTP/1.1\nHost: a\nHost: b\n\n", 400},
		{"two Host in 1.0", "GET / HTTP/1.0\nHost: a\nHost: b\n\n", 400},
		{"empty Host", "GET / HTTP/1.1\nHost: \n\n", 400},
		{"Host with space", "GET / HTTP/1.1\nHost: a b\n\n", 400},
		{"Host with slash", "GET / HTTP/1.1\nHost: a/b\n\n", 400},
		{"Host with userinfo", "GET / HTTP/1.1\nHost: u@a\n\n", 400},
		{"Host list", "GET / HTTP/1.1\nHost: a, b\n\n", 400},
		{"Host bad port", "GET / HTTP/1.1\nHost: a:x\n\n", 400},
		{"Host long port", "GET / HTTP/1.1\nHost: a:123456\n\n", 400},
		{"Host empty port", "GET / HTTP/1.1\nHost: a:\n\n", 400},
		{"Host unclosed literal", "GET / HTTP/1.1\nHost: [::1\n\n", 400},
		{"absolute-form without Host", "GET http://a/ HTTP/1.1\n\n", 400},

		// Expect.
		{"Expect other", "POST / HTTP/1.1\nHost: a\nExpect: foo\nContent-Length: 1\n\nx", 417},
		{"Expect list", "POST / HTTP/1.1\nHost: a\nExpect: 100-continue, foo\nContent-Length: 1\n\nx", 417},
		{"Expect twice", "POST / HTTP/1.1\nHost: a\nExpect: 100-continue\nExpect: 100-continue\nContent-Length: 1\n\nx", 417},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			req := tt.req
			if !strings.Contains(tt.name, "bare LF") {
				req = crlf(req)
			}
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, body := readResp(t, br, "GET")
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d (body %q)", resp.StatusCode, tt.status, body)
			}
			if !resp.Close {
				t.Error("no Connection: close")
			}
			expectClosed(t, br)
		})
	}
	if n := called.Load(); n != 0 {
		t.Errorf("handler called %d times", n)
	}
}

// TestServerAccepts sends requests near the rules' edges that are valid, and
// checks what the handler sees.
func TestServerAccepts(t *testing.T) {
	type seen struct {
		req  transport.Request
		body string
	}
	got := make(chan seen, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		r := s.Request()
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading body: %v", err)
		}
		got <- seen{*r, string(b)}
		okHandler(s)
	})
	_, addr := startServer(t, h, ServerConfig{})

	tests := []struct {
		name  string
		req   string
		check func(t *testing.T, r transport.Request, body string)
	}{
		{"origin-form with query", "GET /a/b?c=d&e HTTP/1.1\nHost: example.com\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Method != "GET" || r.Path != "/a/b?c=d&e" || r.Authority != "example.com" || r.Scheme != "http" {
				t.Errorf("got %s %s %s %s", r.Method, r.Scheme, r.Authority, r.Path)
			}
			if r.ContentLength != 0 || r.Body != http.NoBody || r.Proto != transport.ProtoHTTP1 || r.TLS {
				t.Errorf("ContentLength %d Body %T Proto %v TLS %v", r.ContentLength, r.Body, r.Proto, r.TLS)
			}
			if !r.RemoteAddr.Addr().Is4() || !r.RemoteAddr.Addr().IsLoopback() {
				t.Errorf("RemoteAddr %v", r.RemoteAddr)
			}
		}},
		{"leading empty lines", "\n\nGET / HTTP/1.1\nHost: a\n\n", nil},
		{"absolute-form wins over Host", "GET http://Up.Example:8080?q=1 HTTP/1.1\nHost: other\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Authority != "Up.Example:8080" || r.Path != "/?q=1" {
				t.Errorf("authority %q path %q", r.Authority, r.Path)
			}
		}},
		{"absolute-form https no path", "GET HTTPS://a HTTP/1.1\nHost: a\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Authority != "a" || r.Path != "/" {
				t.Errorf("authority %q path %q", r.Authority, r.Path)
			}
		}},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\nHost: a\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Path != "*" || r.Method != "OPTIONS" {
				t.Errorf("%s %s", r.Method, r.Path)
			}
		}},
		{"extension method", "PURGE /x HTTP/1.1\nHost: a\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Method != "PURGE" {
				t.Errorf("method %q", r.Method)
			}
		}},
		{"HTTP/1.0 without Host", "GET / HTTP/1.0\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Authority != "" {
				t.Errorf("authority %q", r.Authority)
			}
		}},
		{"HTTP/1.2 as 1.1", "GET / HTTP/1.2\nHost: a\n\n", nil},
		{"IPv6 host with port", "GET / HTTP/1.1\nHost: [::1]:8443\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.Authority != "[::1]:8443" {
				t.Errorf("authority %q", r.Authority)
			}
		}},
		{"identical CL list", "POST / HTTP/1.1\nHost: a\nContent-Length: 5, 5\n\nhello", func(t *testing.T, r transport.Request, body string) {
			if r.ContentLength != 5 || body != "hello" {
				t.Errorf("ContentLength %d body %q", r.ContentLength, body)
			}
		}},
		{"identical CL fields", "POST / HTTP/1.1\nHost: a\nContent-Length: 5\nContent-Length: 005\n\nhello", func(t *testing.T, r transport.Request, body string) {
			if r.ContentLength != 5 || body != "hello" {
				t.Errorf("ContentLength %d body %q", r.ContentLength, body)
			}
		}},
		{"TE case-insensitive", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: Chunked\n\n5\nhello\n0\n\n", func(t *testing.T, r transport.Request, body string) {
			if r.ContentLength != -1 || body != "hello" {
				t.Errorf("ContentLength %d body %q", r.ContentLength, body)
			}
		}},
		{"chunk extensions", "POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n5;a=b;c=\"d\\\"e\" ; f\nhello\n0;x\n\n", func(t *testing.T, r transport.Request, body string) {
			if body != "hello" {
				t.Errorf("body %q", body)
			}
		}},
		{"header canonicalised, framing removed", "POST / HTTP/1.1\nhost: a\nx-foo-BAR:  v1 \nX-Foo-Bar: v2\ncontent-length: 2\nConnection: keep-alive, Foo\nFoo: 1\nKeep-Alive: timeout=5\nValue: \x80\xff\tok\n\nhi",
			func(t *testing.T, r transport.Request, body string) {
				h := r.Header
				if v := h["X-Foo-Bar"]; len(v) != 2 || v[0] != "v1" || v[1] != "v2" {
					t.Errorf("X-Foo-Bar %q", v)
				}
				for _, k := range []string{"Host", "Content-Length", "Transfer-Encoding"} {
					if _, ok := h[k]; ok {
						t.Errorf("%s in Header", k)
					}
				}
				for _, k := range []string{"Connection", "Foo", "Keep-Alive"} {
					if _, ok := h[k]; !ok {
						t.Errorf("%s not in Header", k)
					}
				}
				if h.Get("Value") != "\x80\xff\tok" {
					t.Errorf("Value %q", h.Get("Value"))
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			io.WriteString(c, crlf(tt.req))
			br := bufio.NewReader(c)
			resp, _ := readResp(t, br, "GET")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			s := waitFor(t, got, "handler")
			if tt.check != nil {
				tt.check(t, s.req, s.body)
			}
		})
	}
}

func TestServerKeepAlive(t *testing.T) {
	var n atomic.Int32
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		b := []byte(strconv.Itoa(int(n.Add(1))) + s.Request().Path)
		s.WriteHeader(200, nil, int64(len(b)))
		s.Write(b)
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	br := bufio.NewReader(c)
	for i := 1; i <= 5; i++ {
		fmt.Fprintf(c, "GET /r%d HTTP/1.1\r\nHost: a\r\n\r\n", i)
		resp, body := readResp(t, br, "GET")
		if want := fmt.Sprintf("%d/r%d", i, i); body != want || resp.Close {
			t.Fatalf("request %d: body %q close %v", i, body, resp.Close)
		}
		if resp.Header.Get("Date") == "" {
			t.Error("no Date")
		}
	}
	// Connection: close ends it.
	io.WriteString(c, "GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	resp, _ := readResp(t, br, "GET")
	if !resp.Close {
		t.Error("no Connection: close in answer to one")
	}
	expectClosed(t, br)
}

func TestServerPipelined(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		b, _ := io.ReadAll(s.Request().Body)
		b = append([]byte(s.Request().Path+":"), b...)
		s.WriteHeader(200, nil, int64(len(b)))
		s.Write(b)
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, crlf("GET /1 HTTP/1.1\nHost: a\n\n"+
		"POST /2 HTTP/1.1\nHost: a\nContent-Length: 3\n\nabc"+
		"POST /3 HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n2\nde\n0\n\n"+
		"GET /4 HTTP/1.1\nHost: a\n\n"))
	br := bufio.NewReader(c)
	for _, want := range []string{"/1:", "/2:abc", "/3:de", "/4:"} {
		_, body := readResp(t, br, "GET")
		if body != want {
			t.Fatalf("body %q, want %q", body, want)
		}
	}
}

func TestServerChunkedRequestTrailers(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		r := s.Request()
		if r.ContentLength != -1 {
			t.Errorf("ContentLength %d", r.ContentLength)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read: %v", err)
		}
		if _, ok := r.Header["Trailer"]; !ok {
			t.Error("Trailer field missing from Header")
		}
		out := string(b) + "|" + r.Trailer.Get("X-Sum") + "|" + strconv.Itoa(len(r.Trailer))
		s.WriteHeader(200, nil, int64(len(out)))
		io.WriteString(s, out)
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, crlf("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTrailer: X-Sum\n\n"+
		"5\nhello\n1;ext=1\n \n0\nx-sum: 42\nContent-Length: 5\n\n"))
	_, body := readResp(t, bufio.NewReader(c), "POST")
	if body != "hello |42|1" {
		t.Errorf("got %q", body)
	}
}

func TestServerMalformedChunkedBody(t *testing.T) {
	tests := map[string]string{
		"0x prefix":       "0x5\nhello\n0\n\n",
		"leading space":   " 5\nhello\n0\n\n",
		"trailing space":  "5 \nhello\n0\n\n",
		"not hex":         "g\nhello\n0\n\n",
		"overflow":        "fffffffffffffffff\nhello\n0\n\n",
		"no CRLF at end":  "5\nhelloX\n0\n\n",
		"bad extension":   "5;=x\nhello\n0\n\n",
		"bare LF":         "5\r\nhello\n0\r\n\r\n",
		"bad trailer":     "5\nhello\n0\nX : y\n\n",
		"extension quote": "5;a=\"b\nhello\n0\n\n",
		"negative":        "-5\nhello\n0\n\n",
		"empty size":      "\nhello\n0\n\n",
	}
	for name, chunks := range tests {
		t.Run(name, func(t *testing.T) {
			errc := make(chan error, 1)
			h := transport.HandlerFunc(func(s transport.ServerStream) {
				_, err := io.ReadAll(s.Request().Body)
				errc <- err
				okHandler(s)
			})
			_, addr := startServer(t, h, ServerConfig{})
			c := dial(t, addr)
			if name != "bare LF" {
				chunks = crlf(chunks)
			}
			io.WriteString(c, crlf("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n")+chunks)
			err := waitFor(t, errc, "handler")
			if !errors.Is(err, transport.CodeBadRequest.Err()) {
				t.Errorf("read error %v, want CodeBadRequest", err)
			}
			br := bufio.NewReader(c)
			resp, _ := readResp(t, br, "POST")
			if !resp.Close {
				t.Error("no Connection: close")
			}
			expectClosed(t, br)
		})
	}
}

func TestServerExpectContinue(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		r := s.Request()
		if _, ok := r.Header["Expect"]; ok {
			t.Error("Expect left in Header")
		}
		if r.Path == "/read" {
			b, _ := io.ReadAll(r.Body)
			s.WriteHeader(200, nil, int64(len(b)))
			s.Write(b)
		} else {
			s.WriteHeader(403, nil, 0)
		}
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})

	t.Run("read", func(t *testing.T) {
		c := dial(t, addr)
		br := bufio.NewReader(c)
		io.WriteString(c, crlf("POST /read HTTP/1.1\nHost: a\nExpect: 100-Continue\nContent-Length: 5\n\n"))
		line, err := br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
			t.Fatalf("got %q, %v", line, err)
		}
		if line, _ := br.ReadString('\n'); line != "\r\n" {
			t.Fatalf("got %q after 100", line)
		}
		io.WriteString(c, "hello")
		resp, body := readResp(t, br, "POST")
		if resp.StatusCode != 200 || body != "hello" || resp.Close {
			t.Fatalf("status %d body %q close %v", resp.StatusCode, body, resp.Close)
		}
		// Keep-alive goes on.
		io.WriteString(c, crlf("POST /read HTTP/1.1\nHost: a\nContent-Length: 2\n\nhi"))
		if _, body := readResp(t, br, "POST"); body != "hi" {
			t.Fatalf("second body %q", body)
		}
	})
	t.Run("not read", func(t *testing.T) {
		c := dial(t, addr)
		br := bufio.NewReader(c)
		io.WriteString(c, crlf("POST /deny HTTP/1.1\nHost: a\nExpect: 100-continue\nContent-Length: 5\n\n"))
		resp, _ := readResp(t, br, "POST")
		if resp.StatusCode != 403 {
			t.Fatalf("status %d (a 100 was sent?)", resp.StatusCode)
		}
		if !resp.Close {
			t.Error("no Connection: close")
		}
		expectClosed(t, br)
	})
	t.Run("HTTP/1.0 ignored", func(t *testing.T) {
		c := dial(t, addr)
		br := bufio.NewReader(c)
		io.WriteString(c, crlf("POST /read HTTP/1.0\nExpect: 100-continue\nContent-Length: 5\n\nhello"))
		resp, body := readResp(t, br, "POST")
		if resp.StatusCode != 200 || body != "hello" {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	})
}

func TestServerBodylessFraming(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		switch s.Request().Path {
		case "/head":
			s.WriteHeader(200, nil, 10)
			s.Write([]byte("0123456789"))
		case "/204":
			s.WriteHeader(204, nil, 10)
			s.Write([]byte("ignored"))
		case "/304":
			s.WriteHeader(304, http.Header{"Etag": {`"x"`}}, -1)
		case "/head-unknown":
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("data"))
		}
		s.Finish(http.Header{"X-T": {"dropped"}})
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, crlf("HEAD /head HTTP/1.1\nHost: a\n\nGET /204 HTTP/1.1\nHost: a\n\n"+
		"GET /304 HTTP/1.1\nHost: a\n\nHEAD /head-unknown HTTP/1.1\nHost: a\n\nGET /204 HTTP/1.1\nHost: a\n\n"))
	br := bufio.NewReader(c)

	resp, body := readResp(t, br, "HEAD")
	if resp.ContentLength != 10 || body != "" {
		t.Errorf("HEAD: ContentLength %d body %q", resp.ContentLength, body)
	}
	resp, _ = readResp(t, br, "GET")
	if resp.StatusCode != 204 || resp.Header.Get("Content-Length") != "" || len(resp.TransferEncoding) > 0 {
		t.Errorf("204: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = readResp(t, br, "GET")
	if resp.StatusCode != 304 || resp.Header.Get("Content-Length") != "" || len(resp.TransferEncoding) > 0 || resp.Header.Get("Etag") != `"x"` {
		t.Errorf("304: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = readResp(t, br, "HEAD")
	if resp.Header.Get("Content-Length") != "" || len(resp.TransferEncoding) > 0 {
		t.Errorf("HEAD unknown: %v %v", resp.Header, resp.TransferEncoding)
	}
	// The stream of responses is still in step.
	if resp, _ = readResp(t, br, "GET"); resp.StatusCode != 204 {
		t.Errorf("last: %d", resp.StatusCode)
	}
}

func TestServerChunkedResponse(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, http.Header{
			"Trailer":           {"X-Checksum"},
			"Content-Length":    {"999"},     // ignored
			"Transfer-Encoding": {"gzip"},    // ignored
			"Connection":        {"upgrade"}, // ignored
			"X-Bad":             {"a\r\nInjected: 1"},
			"Bad Name":          {"x"},
		}, -1)
		s.Write([]byte("hello "))
		s.Flush()
		s.Write([]byte("world"))
		s.Finish(http.Header{"X-Checksum": {"abc"}, "Content-Length": {"5"}})
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, body := readResp(t, bufio.NewReader(c), "GET")
	if body != "hello world" || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("body %q TE %v", body, resp.TransferEncoding)
	}
	if resp.Trailer.Get("X-Checksum") != "abc" || resp.Trailer.Get("Content-Length") != "" {
		t.Errorf("trailer %v", resp.Trailer)
	}
	if resp.Header.Get("Injected") != "" || resp.Header.Get("X-Bad") != "" || resp.Header.Get("Connection") != "" {
		t.Errorf("header %v", resp.Header)
	}
}

func TestServerResetMidBody(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, nil, -1)
		s.Write([]byte("partial"))
		s.Flush()
		s.Reset(transport.CodeUpstreamReset)
		if _, err := s.Write([]byte("more")); err == nil {
			t.Error("Write after Reset succeeded")
		}
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if string(b) != "partial" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("body %q err %v, want truncated", b, err)
	}
}

func TestServerContentLengthMismatch(t *testing.T) {
	errc := make(chan [2]error, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, nil, 10)
		_, err1 := s.Write([]byte("0123456789X"))
		errc <- [2]error{err1, nil}
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	_, body := readResp(t, bufio.NewReader(c), "GET")
	if errs := waitFor(t, errc, "handler"); errs[0] == nil || body != "0123456789" {
		t.Errorf("overlong write: err %v body %q", errs[0], body)
	}

	// Short: the conn closes after the bytes written.
	h2 := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, nil, 10)
		s.Write([]byte("01234"))
		if err := s.Finish(nil); err == nil {
			t.Error("Finish of a short body succeeded")
		}
	})
	_, addr = startServer(t, h2, ServerConfig{})
	c = dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if string(b) != "01234" || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short body %q err %v", b, err)
	}
}

func TestServerHTTP10(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		cl := int64(-1)
		if s.Request().Path == "/known" {
			cl = 5
		}
		if err := s.WriteInformational(103, http.Header{"Link": {"</a>"}}); err != nil {
			t.Errorf("WriteInformational: %v", err)
		}
		s.WriteHeader(200, nil, cl)
		s.Write([]byte("hello"))
		s.Finish(http.Header{"X-T": {"1"}})
	})
	_, addr := startServer(t, h, ServerConfig{})

	c := dial(t, addr)
	io.WriteString(c, "GET /known HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	br := bufio.NewReader(c)
	resp, body := readResp(t, br, "GET")
	if resp.StatusCode != 200 || body != "hello" || resp.Header.Get("Connection") != "keep-alive" {
		t.Fatalf("keep-alive: status %d body %q header %v", resp.StatusCode, body, resp.Header)
	}
	io.WriteString(c, "GET /unknown HTTP/1.0\r\n\r\n")
	raw, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	if !strings.HasPrefix(s, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(s, "\r\n\r\nhello") ||
		strings.Contains(s, "Transfer-Encoding") || strings.Contains(s, "Content-Length") ||
		!strings.Contains(s, "Connection: close\r\n") || strings.Contains(s, "103") {
		t.Errorf("close-delimited response:\n%s", s)
	}
}

func TestServerInformational(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		if err := s.WriteInformational(103, http.Header{"Link": {"</style.css>; rel=preload"}}); err != nil {
			t.Errorf("103: %v", err)
		}
		if err := s.WriteInformational(101, nil); err == nil {
			t.Error("101 accepted")
		}
		okHandler(s)
		if err := s.WriteInformational(103, nil); err == nil {
			t.Error("1xx after the head accepted")
		}
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	var head strings.Builder
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		head.WriteString(l)
		if l == "\r\n" {
			break
		}
	}
	if head.String() != "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" {
		t.Errorf("1xx: %q", head.String())
	}
	if resp, body := readResp(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("final: %d %q", resp.StatusCode, body)
	}
}

func TestServerUnreadBody(t *testing.T) {
	h := transport.HandlerFunc(okHandler)
	_, addr := startServer(t, h, ServerConfig{})

	// A small unread body is drained: the conn lives on.
	c := dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, crlf("POST / HTTP/1.1\nHost: a\nContent-Length: 1000\n\n")+strings.Repeat("x", 1000))
	if resp, _ := readResp(t, br, "POST"); resp.Close {
		t.Error("closed after a small unread body")
	}
	io.WriteString(c, crlf("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n"))
	if resp, _ := readResp(t, br, "POST"); resp.Close {
		t.Error("closed after a small unread chunked body")
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, body := readResp(t, br, "GET"); body != "ok" || resp.Close {
		t.Error("conn out of step")
	}

	// A large one closes the conn.
	c = dial(t, addr)
	br = bufio.NewReader(c)
	io.WriteString(c, crlf("POST / HTTP/1.1\nHost: a\nContent-Length: 10000000\n\n"))
	go c.Write(make([]byte, 300<<10))
	if resp, _ := readResp(t, br, "POST"); !resp.Close {
		t.Error("no Connection: close for a large unread body")
	}
	expectClosed(t, br)
}

func TestServerHandlerMisbehaves(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		switch s.Request().Path {
		case "/panic":
			panic("boom")
		case "/nothing":
		case "/nofinish":
			s.WriteHeader(200, nil, -1)
			s.Write([]byte("abc"))
		case "/nofinish-cl":
			s.WriteHeader(200, nil, 3)
			s.Write([]byte("abc"))
		}
	})
	_, addr := startServer(t, h, ServerConfig{})

	c := dial(t, addr)
	io.WriteString(c, "GET /panic HTTP/1.1\r\nHost: a\r\n\r\n")
	expectClosed(t, bufio.NewReader(c))

	c = dial(t, addr)
	io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, _ := readResp(t, br, "GET"); resp.StatusCode != 502 || !resp.Close {
		t.Errorf("no answer: %d close %v", resp.StatusCode, resp.Close)
	}
	expectClosed(t, br)

	c = dial(t, addr)
	io.WriteString(c, "GET /nofinish HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("chunked body without Finish: %v, want truncated", err)
	}

	c = dial(t, addr)
	br = bufio.NewReader(c)
	io.WriteString(c, "GET /nofinish-cl HTTP/1.1\r\nHost: a\r\n\r\nGET /nofinish-cl HTTP/1.1\r\nHost: a\r\n\r\n")
	for range 2 {
		if _, body := readResp(t, br, "GET"); body != "abc" {
			t.Errorf("body %q", body)
		}
	}
}

// TestServerBodyReaderOutlivesHandler checks that a body still being read
// by another goroutine (an upstream conn copying it) when the handler panics
// or resets fails that read instead of touching the conn's pooled buffers.
func TestServerBodyReaderOutlivesHandler(t *testing.T) {
	for _, how := range []string{"panic", "reset", "return"} {
		t.Run(how, func(t *testing.T) {
			readErr := make(chan error, 1)
			h := transport.HandlerFunc(func(s transport.ServerStream) {
				if s.Request().Path != "/bad" {
					okHandler(s)
					return
				}
				started := make(chan struct{})
				body := s.Request().Body
				go func() {
					buf := make([]byte, 10)
					body.Read(buf) // "part"
					close(started)
					_, err := io.ReadAll(body)
					readErr <- err
				}()
				<-started
				switch how {
				case "panic":
					panic("boom")
				case "reset":
					s.Reset(transport.CodeInternal)
				default:
					okHandler(s)
				}
			})
			_, addr := startServer(t, h, ServerConfig{})
			c := dial(t, addr)
			io.WriteString(c, crlf("POST /bad HTTP/1.1\nHost: a\nExpect: 100-continue\nContent-Length: 100\n\n")+"part")
			if err := waitFor(t, readErr, "body read"); err == nil {
				t.Error("body read succeeded")
			}
			// The server is fine: another conn is served.
			c2 := dial(t, addr)
			io.WriteString(c2, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
			if _, body := readResp(t, bufio.NewReader(c2), "GET"); body != "ok" {
				t.Errorf("body %q", body)
			}
		})
	}
}

func TestServerHeaderTimeout(t *testing.T) {
	_, addr := startServer(t, okHandler, ServerConfig{HeaderTimeout: 500 * time.Millisecond})
	c := dial(t, addr)
	start := time.Now()
	closed := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(c)
		closed <- err
	}()
	req := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(req); i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			break
		}
		select {
		case <-closed:
			i = len(req)
			closed <- nil
		case <-tick.C:
		}
	}
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("slow client not disconnected")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("disconnected after %v", d)
	}
}

func TestServerIdleTimeout(t *testing.T) {
	_, addr := startServer(t, okHandler, ServerConfig{IdleTimeout: 300 * time.Millisecond})
	c := dial(t, addr)
	// The server arms the idle deadline once it has written the response,
	// which is after this: the close comes 300 ms after start or later,
	// however late this goroutine reads the response (250: some slack).
	start := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	readResp(t, br, "GET")
	expectClosed(t, br)
	if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
		t.Errorf("closed after %v", d)
	}
}

func TestServerShutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		if s.Request().Path == "/slow" {
			close(entered)
			<-release
		}
		okHandler(s)
	})
	s, addr := startServer(t, h, ServerConfig{})

	// An idle keep-alive conn.
	idle := dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	idleBR := bufio.NewReader(idle)
	readResp(t, idleBR, "GET")

	// An in-flight slow request.
	slow := dial(t, addr)
	io.WriteString(slow, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	waitFor(t, entered, "slow handler")

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()

	expectClosed(t, idleBR) // closed at once
	if !s.Draining() {
		t.Error("not Draining")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned before the in-flight request: %v", err)
	default:
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still accepting")
	}
	close(release)
	br := bufio.NewReader(slow)
	resp, body := readResp(t, br, "GET")
	if body != "ok" || !resp.Close {
		t.Errorf("in-flight: body %q close %v", body, resp.Close)
	}
	expectClosed(t, br)
	if err := waitFor(t, done, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestServerShutdownTimeout(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		close(entered)
		select {
		case <-release:
		case <-s.Context().Done():
		}
		okHandler(s)
	})
	s, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	waitFor(t, entered, "handler")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	s.Close()
	expectClosed(t, bufio.NewReader(c))
	close(release)
}

func TestServerContextCancelledOnClientClose(t *testing.T) {
	causes := make(chan error, 2)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		if s.Request().ContentLength > 0 {
			io.ReadAll(s.Request().Body)
		}
		select {
		case <-s.Context().Done():
			causes <- context.Cause(s.Context())
		case <-time.After(testTimeout):
			causes <- errors.New("context not cancelled")
		}
		okHandler(s)
	})
	_, addr := startServer(t, h, ServerConfig{})
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
	} {
		c := dial(t, addr)
		io.WriteString(c, req)
		time.AfterFunc(50*time.Millisecond, func() { c.Close() })
		if err := waitFor(t, causes, "cancellation"); !errors.Is(err, transport.CodeClientCancelled.Err()) {
			t.Errorf("cause %v", err)
		}
	}
}

func TestServerClientGoneMidBody(t *testing.T) {
	errc := make(chan error, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		_, err := io.ReadAll(s.Request().Body)
		errc <- err
		okHandler(s)
	})
	_, addr := startServer(t, h, ServerConfig{})
	c := dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
	c.Close()
	if err := waitFor(t, errc, "read error"); !errors.Is(err, transport.CodeClientCancelled.Err()) {
		t.Errorf("got %v, want CodeClientCancelled", err)
	}
}

func TestServerTLS(t *testing.T) {
	conf, pool := selfSigned(t)
	conf.NextProtos = []string{"http/1.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := transport.NewTLSListener(ln, conf, time.Second)
	go tl.Run()
	seen := make(chan transport.Request, 1)
	s := NewServer(transport.HandlerFunc(func(s transport.ServerStream) {
		seen <- *s.Request()
		okHandler(s)
	}), ServerConfig{})
	done := make(chan error, 1)
	go func() { done <- s.Serve(tl.Listener("")) }()
	defer func() {
		s.Close()
		tl.Close()
		waitFor(t, done, "Serve")
	}()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: testTimeout}
	defer client.CloseIdleConnections()
	for range 2 {
		resp, err := client.Get("https://" + ln.Addr().String() + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Errorf("body %q", b)
		}
		r := <-seen
		if r.Scheme != "https" || !r.TLS || r.Path != "/x" {
			t.Errorf("scheme %q TLS %v path %q", r.Scheme, r.TLS, r.Path)
		}
	}
}

// TestServerNetHTTPClient runs net/http's client against the server, body
// sizes and framings mixed, on reused conns.
func TestServerNetHTTPClient(t *testing.T) {
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		b, err := io.ReadAll(s.Request().Body)
		if err != nil {
			s.Reset(transport.CodeBadRequest)
			return
		}
		cl := int64(len(b))
		if s.Request().Header.Get("X-Chunked") != "" {
			cl = -1
		}
		s.WriteHeader(200, nil, cl)
		s.Write(b)
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{})
	client := &http.Client{Timeout: testTimeout}
	defer client.CloseIdleConnections()
	for i, size := range []int{0, 1, 100, 5000, 70000, 300000} {
		body := strings.Repeat(string(rune('a'+i)), size)
		var r io.Reader = strings.NewReader(body)
		if i%2 == 1 {
			r = io.MultiReader(r) // unknown length: chunked
		}
		req, _ := http.NewRequest("POST", "http://"+addr+"/", r)
		if i%3 == 0 {
			req.Header.Set("X-Chunked", "1")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != body {
			t.Fatalf("size %d: got %d bytes, %v", size, len(got), err)
		}
	}
}

// TestServerWriteTimeout: a client that stops reading a response fails the
// handler's writes after WriteTimeout without progress, and loses its conn.
func TestServerWriteTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	failed := make(chan error, 1)
	h := transport.HandlerFunc(func(s transport.ServerStream) {
		s.WriteHeader(200, http.Header{}, -1)
		chunk := make([]byte, 64<<10)
		for range 1024 { // 64 MiB at most: far beyond the socket buffers
			if _, err := s.Write(chunk); err != nil {
				failed <- err
				return
			}
		}
		failed <- nil
		s.Finish(nil)
	})
	_, addr := startServer(t, h, ServerConfig{WriteTimeout: timeout})
	c := dial(t, addr)
	start := time.Now()
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	select {
	case err := <-failed:
		if !errors.Is(err, transport.CodeClientCancelled.Err()) {
			t.Fatalf("handler's write: %v, want CodeClientCancelled", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the handler's writes to a client that does not read never failed")
	}
	if d := time.Since(start); d < timeout*3/4 {
		t.Errorf("writes failed after %v, before three quarters of WriteTimeout %v", d, timeout)
	}
	// The conn is closed: reading drains the buffered bytes, then ends.
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Errorf("conn not closed after the write timeout: %v", err)
	}
}
