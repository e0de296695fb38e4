package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

var fuzzSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-Many: 1\r\nX-Many: 2\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
	"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=\"y\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
	"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
	"GET http://Up.Example:8080/x?y HTTP/1.1\r\nHost: other\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"\r\n\r\nGET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
	"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
	// Invalid ones.
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nFoo : bar\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nFoo: bar\r\n baz\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nFoo: a\rb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
	"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
}

// FuzzReadRequest feeds the request parser arbitrary bytes. It must never
// panic, and what it accepts must hold the invariants a proxy relies on;
// when net/http's parser accepts the same bytes, both must agree on the
// framing and the body.
func FuzzReadRequest(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	srv := NewServer(okHandler, ServerConfig{MaxHeaderBytes: 4096, MaxHeaderCount: 20, MaxRequestLine: 1024})
	f.Fuzz(func(t *testing.T, data []byte) {
		p1, p2 := net.Pipe()
		p2.Close()
		defer p1.Close()
		c := &serverConn{srv: srv, nc: p1, raw: p1, scheme: "http"}
		c.cr.c = c
		c.cr.cond = sync.NewCond(&c.cr.mu)
		c.ctx, c.cancel = context.WithCancelCause(context.Background())
		defer c.cancel(nil)
		c.st.c = c
		c.br = bufio.NewReaderSize(bytes.NewReader(data), bufSize)
		c.bw = bufio.NewWriter(io.Discard)

		st := &c.st
		if err := c.readRequest(st); err != nil {
			if pe, ok := err.(*protoError); ok && pe.status < 400 {
				t.Fatalf("error status %d", pe.status)
			}
			return
		}
		r := &st.req
		if !isToken(r.Method) {
			t.Errorf("method %q", r.Method)
		}
		switch {
		case r.Path == "*":
			if r.Method != "OPTIONS" {
				t.Errorf("* with %s", r.Method)
			}
		case !strings.HasPrefix(r.Path, "/"):
			t.Errorf("path %q", r.Path)
		}
		if r.Authority == "" && !st.http10 || r.Authority != "" && !validHost([]byte(r.Authority)) {
			t.Errorf("authority %q (HTTP/1.0 %v)", r.Authority, st.http10)
		}
		for k, vv := range r.Header {
			if !isToken(k) || http.CanonicalHeaderKey(k) != k {
				t.Errorf("key %q", k)
			}
			switch k {
			case "Host", "Content-Length", "Transfer-Encoding", "Expect":
				t.Errorf("%s in Header", k)
			}
			for _, v := range vv {
				if !validFieldValue(v) || strings.Trim(v, " \t") != v {
					t.Errorf("value %q", v)
				}
			}
		}
		switch {
		case r.ContentLength < -1:
			t.Errorf("ContentLength %d", r.ContentLength)
		case r.ContentLength == 0 && r.Body != http.NoBody,
			r.ContentLength != 0 && (st.body == nil || r.Body != st.body),
			r.ContentLength == -1 && !st.body.chunked,
			r.ContentLength > 0 && st.body.chunked:
			t.Errorf("ContentLength %d with body %T", r.ContentLength, r.Body)
		}
		body, berr := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		c.cr.abortPendingRead()

		// Differential check with net/http, on the same bytes without the
		// empty lines it does not skip.
		trimmed := data
		for bytes.HasPrefix(trimmed, []byte("\r\n")) {
			trimmed = trimmed[2:]
		}
		greq, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(trimmed)))
		if err != nil {
			return
		}
		if greq.Method != r.Method {
			t.Errorf("method %q, net/http %q", r.Method, greq.Method)
		}
		chunked := len(greq.TransferEncoding) > 0
		if chunked != (r.ContentLength == -1) || !chunked && greq.ContentLength != r.ContentLength {
			t.Errorf("framing: ContentLength %d, net/http %d %v", r.ContentLength, greq.ContentLength, greq.TransferEncoding)
		}
		gbody, gerr := io.ReadAll(io.LimitReader(greq.Body, 1<<20))
		if berr == nil && gerr == nil && !bytes.Equal(body, gbody) {
			t.Errorf("body %q, net/http %q", body, gbody)
		}
	})
}
