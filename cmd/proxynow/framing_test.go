package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawTLS opens a TLS connection to the gateway speaking HTTP/1.1.
func rawTLS(t *testing.T, f *fixture) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", "127.0.0.1:"+f.port, &tls.Config{RootCAs: testRoots(t), ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRequestFraming sends requests an edge proxy must reject over a raw TLS
// socket and checks the status, that the connection is closed, and that
// nothing reached the upstream.
func TestRequestFraming(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1")+`
limits:
  max_header_bytes: 4KiB
  max_header_count: 20
  max_request_line: 1KiB
  header_timeout: 1s
`, up)
	h := "Host: localhost\r\n"
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"cl-and-te", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"bad-cl", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5x\r\n\r\nhello", 400},
		{"negative-cl", "POST / HTTP/1.1\r\n" + h + "Content-Length: -5\r\n\r\nhello", 400},
		{"differing-cl", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"differing-cl-list", "POST / HTTP/1.1\r\n" + h + "Content-Length: 5, 6\r\n\r\nhello!", 400},
		{"unknown-te", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"te-not-chunked-last", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501},
		{"ctl-in-value", "GET / HTTP/1.1\r\n" + h + "X-Bad: a\x01b\r\n\r\n", 400},
		{"nul-in-value", "GET / HTTP/1.1\r\n" + h + "X-Bad: a\x00b\r\n\r\n", 400},
		{"space-before-colon", "GET / HTTP/1.1\r\n" + h + "X-Bad : v\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\n" + h + "X-Fold: a\r\n b\r\n\r\n", 400},
		{"no-host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two-hosts", "GET / HTTP/1.1\r\n" + h + "Host: other\r\n\r\n", 400},
		{"header-too-large", "GET / HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431},
		{"too-many-headers", "GET / HTTP/1.1\r\n" + h + strings.Repeat("X-N: v\r\n", 30) + "\r\n", 431},
		{"uri-too-long", "GET /" + strings.Repeat("a", 2000) + " HTTP/1.1\r\n" + h + "\r\n", 414},
		{"bad-chunk-size", "POST / HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.requests.Load()
			c := rawTLS(t, f)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tc.req)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if tc.status == 0 {
				// A body framing error after the head was accepted: the
				// request must not complete upstream; the client sees an
				// error status or a closed connection.
				if err == nil && resp.StatusCode < 400 {
					t.Errorf("status %d for a malformed chunked body", resp.StatusCode)
				}
			} else {
				if err != nil {
					t.Fatalf("reading response: %v", err)
				}
				if resp.StatusCode != tc.status {
					t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
				}
				io.Copy(io.Discard, resp.Body)
				// The connection is closed after a rejected request.
				if _, err := br.ReadByte(); err == nil {
					t.Errorf("connection still open after a rejected request")
				}
			}
			if tc.status != 0 {
				if got := up.requests.Load() - before; got != 0 {
					t.Errorf("a rejected request reached the upstream (%d requests)", got)
				}
			}
		})
	}

	t.Run("h2c-upgrade-not-forwarded", func(t *testing.T) {
		c := rawTLS(t, f)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /echo HTTP/1.1\r\n"+h+"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		rep := decodeEcho(t, body)
		for _, k := range []string{"Upgrade", "Http2-Settings", "Connection"} {
			if _, ok := rep.Header[k]; ok {
				t.Errorf("upstream received %s", k)
			}
		}
	})

	t.Run("slow-header", func(t *testing.T) {
		before := up.requests.Load()
		c := rawTLS(t, f)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req := "GET /echo HTTP/1.1\r\n" + h + "X-Slow: 1\r\n\r\n"
		start := time.Now()
		var werr error
		for i := 0; i < len(req) && werr == nil; i++ {
			_, werr = c.Write([]byte{req[i]})
			time.Sleep(150 * time.Millisecond) // the client under test is slow on purpose
			if time.Since(start) > 3*time.Second {
				break
			}
		}
		// Whatever was written, the gateway must have given up after
		// header_timeout (1s): reading ends with EOF or a 408.
		buf := make([]byte, 512)
		n, _ := c.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
			t.Errorf("slow client was served")
		}
		if time.Since(start) > 4*time.Second {
			t.Errorf("the gateway did not close a slow client within its header timeout")
		}
		if up.requests.Load() != before {
			t.Errorf("slow request reached the upstream")
		}
	})
}
