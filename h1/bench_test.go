package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

var benchBody = []byte("hello, world\n")

var benchHandler = transport.HandlerFunc(func(s transport.ServerStream) {
	h := make(http.Header, 1)
	h["Content-Type"] = textPlainValue
	s.WriteHeader(200, h, int64(len(benchBody)))
	s.Write(benchBody)
	s.Finish(nil)
})

var textPlainValue = []string{"text/plain"}

// BenchmarkServerKeepAlive sends requests one after the other over one
// loopback conn to a handler that answers a small body. The client side
// allocates nothing (it reads fixed-size responses), so allocs/op are the
// server's.
func BenchmarkServerKeepAlive(b *testing.B) {
	_, addr := startServer(b, benchHandler, ServerConfig{})
	c := dial(b, addr)
	c.SetDeadline(time.Time{})
	req := []byte("GET /bench/path?q=1 HTTP/1.1\r\nHost: bench.example\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
	br := bufio.NewReaderSize(c, 4096)

	// The first response gives the size of every one (Date has a fixed
	// width).
	c.Write(req)
	n := responseSize(b, br)
	buf := make([]byte, n)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !bytes.HasSuffix(buf, benchBody) {
		b.Fatalf("response %q", buf)
	}
}

// responseSize reads one response and returns its size.
func responseSize(b *testing.B, br *bufio.Reader) int {
	n, cl := 0, -1
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			b.Fatal(err)
		}
		n += len(l)
		if v, ok := bytes.CutPrefix([]byte(l), []byte("Content-Length: ")); ok {
			cl, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
		if l == "\r\n" {
			break
		}
	}
	io.CopyN(io.Discard, br, int64(cl))
	return n + cl
}

// BenchmarkClientServer runs this package's client against its server: one
// upstream conn, GETs with a small response.
func BenchmarkClientServer(b *testing.B) {
	_, addr := startServer(b, benchHandler, ServerConfig{})
	c, err := NewDialer(DialerConfig{}).Dial(context.Background(), addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := &transport.Request{Method: "GET", Authority: "bench.example", Path: "/bench",
		Header: http.Header{"Accept": {"*/*"}}, Body: http.NoBody}
	buf := make([]byte, 512)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c.Reserve()
		resp, err := c.RoundTrip(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, err := resp.Body.Read(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		resp.Body.Close()
	}
}
