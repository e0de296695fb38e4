package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultUpstream is a raw TCP upstream that reads each request head (and a
// Content-Length body) and then misbehaves as fn says. It counts requests.
type faultUpstream struct {
	addr     string
	requests atomic.Int64
}

func startFault(t *testing.T, fn func(c net.Conn, br *bufio.Reader)) *faultUpstream {
	t.Helper()
	f := &faultUpstream{}
	f.addr = rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			f.requests.Add(1)
			fn(c, br)
			return
		}
	})
	return f
}

// TestFaults injects upstream faults and checks, in every downstream mode,
// the client's outcome and how often the upstream was asked.
func TestFaults(t *testing.T) {
	checkLeaks(t)
	good := startUpstream(t, "h1")
	refused := closedPortAddr(t)
	silent := startFault(t, func(c net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	headersThenHang := startFault(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		io.Copy(io.Discard, br)
	})
	resetMidBody := startFault(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("x", 5000))
		c.(*net.TCPConn).SetLinger(0) // RST
	})
	closeAfterHeaders := startFault(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	})
	resetBeforeAnswer := startFault(t, func(c net.Conn, br *bufio.Reader) {
		c.(*net.TCPConn).SetLinger(0)
	})
	f := startGateway(t, `
routes:
  - {path_prefix: /failover, cluster: failover}
  - {path_prefix: /silent, cluster: silent}
  - {path_prefix: /hang, cluster: hang}
  - {path_prefix: /midreset, cluster: midreset}
  - {path_prefix: /early-close, cluster: early-close}
  - {path_prefix: /reset, cluster: reset}
clusters:
  - {name: failover, servers: ["`+refused+`", "@UP@"], outlier_detection: {consecutive_failures: -1}}
  - {name: silent, servers: ["`+silent.addr+`"], response_header_timeout: 300ms, outlier_detection: {consecutive_failures: -1}}
  - {name: hang, servers: ["`+headersThenHang.addr+`"], body_idle_timeout: 300ms, outlier_detection: {consecutive_failures: -1}}
  - {name: midreset, servers: ["`+resetMidBody.addr+`"], outlier_detection: {consecutive_failures: -1}}
  - {name: early-close, servers: ["`+closeAfterHeaders.addr+`"], outlier_detection: {consecutive_failures: -1}}
  - {name: reset, servers: ["`+resetBeforeAnswer.addr+`"], outlier_detection: {consecutive_failures: -1}}
`, good)

	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		// A refused upstream: every request, POST included (nothing was
		// sent), is retried on the other server.
		for i := 0; i < 6; i++ {
			method := []string{"GET", "POST"}[i%2]
			req, _ := http.NewRequest(method, f.url("/failover"), strings.NewReader("payload"))
			resp, body := do(t, c, req)
			if resp.StatusCode != 200 || !strings.Contains(string(body), `"method":"`+method+`"`) {
				t.Errorf("failover %s: %d %s", method, resp.StatusCode, body)
			}
		}

		// Accepts and never answers: 504 after the response header
		// timeout, not retried (the upstream may be working on it).
		before := silent.requests.Load()
		resp, _ := get(t, c, f.url("/silent"))
		if resp.StatusCode != 504 || resp.Header.Get("Proxy-Status") != "proxynow; error=http_response_timeout" {
			t.Errorf("silent: %d %q", resp.StatusCode, resp.Header.Get("Proxy-Status"))
		}
		waitFor(t, 2*time.Second, "the silent upstream's request count", func() bool { return silent.requests.Load() > before })
		if n := silent.requests.Load() - before; n != 1 {
			t.Errorf("silent: upstream asked %d times, want 1", n)
		}

		// Headers, then a stalled body: cut after body_idle_timeout; the
		// client must not see a complete body.
		for _, path := range []string{"/hang", "/midreset", "/early-close"} {
			start := time.Now()
			resp, err := c.Get(f.url(path))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if err == nil {
				t.Errorf("%s: the client read a complete body from a broken upstream", path)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("%s: took %v", path, time.Since(start))
			}
		}

		// Reset before any answer: an idempotent GET is retried (3
		// attempts with retries.max 2); a POST is never sent twice.
		before = resetBeforeAnswer.requests.Load()
		resp, _ = get(t, c, f.url("/reset"))
		if resp.StatusCode != 502 || resp.Header.Get("Proxy-Status") != "proxynow; error=connection_terminated" {
			t.Errorf("reset GET: %d %q", resp.StatusCode, resp.Header.Get("Proxy-Status"))
		}
		if n := resetBeforeAnswer.requests.Load() - before; n != 3 {
			t.Errorf("reset GET: upstream asked %d times, want 3 (1 + 2 retries)", n)
		}
		before = resetBeforeAnswer.requests.Load()
		req, _ := http.NewRequest("POST", f.url("/reset"), strings.NewReader("order #1"))
		resp, _ = do(t, c, req)
		if resp.StatusCode != 502 {
			t.Errorf("reset POST: %d", resp.StatusCode)
		}
		if n := resetBeforeAnswer.requests.Load() - before; n != 1 {
			t.Errorf("reset POST: upstream received it %d times, want exactly 1", n)
		}
	})
}

func healthOf(t *testing.T, f *fixture, upstream string) string {
	t.Helper()
	for _, h := range f.inst.gw.Health() {
		if h.Upstream == upstream {
			return h.State
		}
	}
	t.Fatalf("no upstream %s", upstream)
	return ""
}

// TestHealthChecks: an upstream whose health endpoint flaps is taken out of
// and put back into rotation; with none healthy the gateway answers 503 at
// once.
func TestHealthChecks(t *testing.T) {
	checkLeaks(t)
	var sick atomic.Bool
	var flappy, steady atomic.Int64
	flap := rawHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if sick.Load() {
				w.WriteHeader(503)
			}
			return
		}
		flappy.Add(1)
	})
	ok := rawHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			steady.Add(1)
		}
	})
	f := startGateway(t, `
routes:
  - {path_prefix: /, cluster: app}
clusters:
  - name: app
    servers: ["`+flap+`", "`+ok+`"]
    health_check: {path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2}
`)
	c := clientFor(t, "h2")
	sick.Store(true)
	waitFor(t, 5*time.Second, "the flapping upstream to turn unhealthy", func() bool { return healthOf(t, f, flap) == "unhealthy" })
	before := flappy.Load()
	for i := 0; i < 20; i++ {
		if resp, _ := get(t, c, f.url("/x")); resp.StatusCode != 200 {
			t.Fatalf("status %d with one healthy upstream", resp.StatusCode)
		}
	}
	if flappy.Load() != before {
		t.Errorf("an unhealthy upstream received %d requests", flappy.Load()-before)
	}
	sick.Store(false)
	waitFor(t, 5*time.Second, "the flapping upstream to recover", func() bool { return healthOf(t, f, flap) == "healthy" })
	for i := 0; i < 20; i++ {
		get(t, c, f.url("/x"))
	}
	if flappy.Load() == before {
		t.Errorf("a recovered upstream received no requests")
	}

	// None healthy: 503 at once, destination_unavailable.
	g := startGateway(t, `
routes:
  - {path_prefix: /, cluster: app}
clusters:
  - name: app
    servers: ["`+flap+`"]
    health_check: {path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 1}
`)
	sick.Store(true)
	waitFor(t, 5*time.Second, "the only upstream to turn unhealthy", func() bool { return healthOf(t, g, flap) == "unhealthy" })
	start := time.Now()
	resp, _ := get(t, clientFor(t, "h1"), g.url("/x"))
	if resp.StatusCode != 503 || resp.Header.Get("Proxy-Status") != "proxynow; error=destination_unavailable" || time.Since(start) > time.Second {
		t.Errorf("no healthy upstream: %d %q after %v", resp.StatusCode, resp.Header.Get("Proxy-Status"), time.Since(start))
	}
}

// TestOutlierEjection: consecutive failures eject an upstream; traffic goes
// to the others.
func TestOutlierEjection(t *testing.T) {
	checkLeaks(t)
	var bad, goodN atomic.Int64
	failing := rawHTTP(t, func(w http.ResponseWriter, r *http.Request) { bad.Add(1); w.WriteHeader(503) })
	fine := rawHTTP(t, func(w http.ResponseWriter, r *http.Request) { goodN.Add(1) })
	f := startGateway(t, `
routes:
  - {path_prefix: /, cluster: app}
clusters:
  - name: app
    servers: ["`+failing+`", "`+fine+`"]
    outlier_detection: {consecutive_failures: 3, base_ejection: 1m}
`)
	c := clientFor(t, "h3")
	for i := 0; i < 10; i++ {
		get(t, c, f.url("/x"))
	}
	if healthOf(t, f, failing) != "ejected" {
		t.Fatalf("after %d 503s in a row the upstream is %s", bad.Load(), healthOf(t, f, failing))
	}
	before := bad.Load()
	for i := 0; i < 20; i++ {
		if resp, _ := get(t, c, f.url("/x")); resp.StatusCode != 200 {
			t.Errorf("status %d while the failing upstream is ejected", resp.StatusCode)
		}
	}
	if bad.Load() != before {
		t.Errorf("an ejected upstream received %d requests", bad.Load()-before)
	}
}

// TestClusterLimits: max_concurrent_requests and max_pending_requests answer
// 503 beyond them.
func TestClusterLimits(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, `
routes:
  - {path_prefix: /, cluster: app}
clusters:
  - {name: app, servers: ["@UP@"], max_concurrent_requests: 2}
`, up)
	c := clientFor(t, "h2")
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", f.url("/slow?d=10s"), nil)
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	waitFor(t, 10*time.Second, "two slow requests upstream", func() bool { return up.requests.Load() >= 2 })
	resp, _ := get(t, c, f.url("/echo"))
	if resp.StatusCode != 503 || resp.Header.Get("Proxy-Status") != "proxynow; error=connection_limit_reached" {
		t.Errorf("third concurrent request: %d %q", resp.StatusCode, resp.Header.Get("Proxy-Status"))
	}
	cancel()
	wg.Wait()
}

// rawHTTP runs a plain HTTP/1.1 upstream with handler h and returns its
// address.
func rawHTTP(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// checkLeaks fails the test if, once its cleanups (gateway drain, upstreams,
// clients) have run, goroutines or file descriptors are left behind. It must
// be called first, so that its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	goroutines, fds := runtime.NumGoroutine(), openFDs()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			g, f := runtime.NumGoroutine(), openFDs()
			if g <= goroutines && f <= fds {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("leaked: goroutines %d -> %d, file descriptors %d -> %d\n%s", goroutines, g, fds, f, buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}
