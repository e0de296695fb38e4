package main

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rawUpstream is a TCP listener that answers every connection with fn.
func rawUpstream(t *testing.T, fn func(c net.Conn)) string {
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
				fn(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// readRequestHead reads one request head from c.
func readRequestHead(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil || line == "\r\n" {
			return
		}
	}
}

// fullBacklogAddr returns a loopback address whose listener never accepts and
// whose accept queue is full, so a new connection attempt times out.
func fullBacklogAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue.
	for i := 0; i < 8; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr // full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill a listener's accept queue on this kernel")
	return ""
}

func closedPortAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestErrorResponses checks every error the gateway answers itself: status,
// Proxy-Status and that the request did or did not reach the upstream.
func TestErrorResponses(t *testing.T) {
	plain := startUpstream(t, "h1")
	resetAddr := rawUpstream(t, func(c net.Conn) { readRequestHead(c) })
	garbageAddr := rawUpstream(t, func(c net.Conn) {
		readRequestHead(c)
		c.Write([]byte("HTTP/1.1 2xx NOT A STATUS\r\nContent-Length: 0\r\n\r\n"))
	})
	timeoutAddr := fullBacklogAddr(t)
	refusedAddr := closedPortAddr(t)
	f := startGateway(t, `
limits:
  max_body_bytes: 1KiB
  max_header_count: 50
routes:
  - {path_prefix: /refused, cluster: refused}
  - {path_prefix: /timeout, cluster: timeout}
  - {path_prefix: /tls, cluster: tls}
  - {path_prefix: /reset, cluster: reset}
  - {path_prefix: /garbage, cluster: garbage}
  - {path_prefix: /, cluster: app}
clusters:
  - {name: refused, servers: ["`+refusedAddr+`"], outlier_detection: {consecutive_failures: -1}}
  - {name: timeout, servers: ["`+timeoutAddr+`"], connect_timeout: 300ms, outlier_detection: {consecutive_failures: -1}}
  - {name: tls, servers: ["@UP@"], tls: {enabled: true, insecure_skip_verify: true}, outlier_detection: {consecutive_failures: -1}}
  - {name: reset, servers: ["`+resetAddr+`"], outlier_detection: {consecutive_failures: -1}}
  - {name: garbage, servers: ["`+garbageAddr+`"], outlier_detection: {consecutive_failures: -1}}
  - {name: app, servers: ["@UP@"], response_header_timeout: 300ms, outlier_detection: {consecutive_failures: -1}}
`, plain)

	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		for _, tc := range []struct {
			name        string
			path        string
			method      string
			body        string
			headers     int
			status      int
			proxyStatus string
			reaches     bool
		}{
			{"refused", "/refused", "GET", "", 0, 502, "connection_refused", false},
			{"connect-timeout", "/timeout", "GET", "", 0, 504, "connection_timeout", false},
			{"tls", "/tls", "GET", "", 0, 502, "tls_protocol_error", false},
			{"reset", "/reset", "GET", "", 0, 502, "connection_terminated", false},
			{"garbage", "/garbage", "GET", "", 0, 502, "http_protocol_error", false},
			{"response-timeout", "/slow?d=5s", "GET", "", 0, 504, "http_response_timeout", true},
			{"body-too-large", "/echo", "POST", strings.Repeat("x", 2048), 0, 413, "http_request_error", false},
			{"too-many-headers", "/echo", "GET", "", 60, 431, "", false},
		} {
			before := plain.requests.Load()
			var body *bytes.Reader
			if tc.body != "" {
				body = bytes.NewReader([]byte(tc.body))
			}
			var req *http.Request
			if body != nil {
				req, _ = http.NewRequest(tc.method, f.url(tc.path), body)
			} else {
				req, _ = http.NewRequest(tc.method, f.url(tc.path), nil)
			}
			for i := 0; i < tc.headers; i++ {
				req.Header.Set("X-Many-"+strconv.Itoa(i), "v")
			}
			start := time.Now()
			resp, respBody := do(t, c, req)
			if resp.StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d (%s)", tc.name, resp.StatusCode, tc.status, respBody)
			}
			if tc.proxyStatus != "" {
				if got, want := resp.Header.Get("Proxy-Status"), "proxynow; error="+tc.proxyStatus; got != want {
					t.Errorf("%s: Proxy-Status %q, want %q", tc.name, got, want)
				}
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("%s: took %v", tc.name, d)
			}
			if tc.reaches {
				// The gateway may answer (504 at its response timeout)
				// before the upstream's server dispatched the request:
				// wait for it, or it would count in the next case.
				waitFor(t, 5*time.Second, tc.name+": the request to reach the upstream", func() bool {
					return plain.requests.Load() > before
				})
			} else if got := plain.requests.Load() - before; got > 0 {
				t.Errorf("%s: upstream received %d requests", tc.name, got)
			}
		}
	})
}
