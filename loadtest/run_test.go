package loadtest

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/loadtest/loadtesttest"
)

// counter is a test handler that counts requests and bytes of request body,
// and answers "hello" (or, with ?size=N, N bytes).
type counter struct {
	requests atomic.Int64
	body     atomic.Int64
	protos   [4]atomic.Int64 // by ProtoMajor
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.requests.Add(1)
	if r.ProtoMajor < len(c.protos) {
		c.protos[r.ProtoMajor].Add(1)
	}
	n, _ := io.Copy(io.Discard, r.Body)
	c.body.Add(n)
	if s := r.URL.Query().Get("size"); s != "" {
		size, _ := strconv.Atoi(s)
		w.Header().Set("Content-Length", s)
		w.Write(make([]byte, size))
		return
	}
	io.WriteString(w, "hello")
}

// base is a workload against srv over p, bounded in time.
func base(srv *loadtesttest.Server, p Proto) Config {
	return Config{
		URLs:           []string{srv.URL + "/"},
		Proto:          p,
		TLSConfig:      srv.ClientTLS(),
		Timeout:        5 * time.Second,
		ConnectTimeout: 2 * time.Second,
		Duration:       10 * time.Second, // a bound; the tests stop on a count
	}
}

// forEachProto runs f as a subtest per protocol.
func forEachProto(t *testing.T, f func(t *testing.T, p Proto)) {
	for _, p := range Protos() {
		t.Run(p.String(), func(t *testing.T) { f(t, p) })
	}
}

func runOK(t *testing.T, cfg Config) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestCountExact(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		h := &counter{}
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Conns, cfg.Streams, cfg.Requests = 2, 3, 200
		res := runOK(t, cfg)
		if res.Requests != 200 || h.requests.Load() != 200 || res.Status[200] != 200 {
			t.Fatalf("requests: result %d, server %d, status %v; want 200", res.Requests, h.requests.Load(), res.Status)
		}
		if e := res.TotalErrors(); e != 0 {
			t.Fatalf("errors: %v", res.Errors)
		}
		major := map[Proto]int{H1: 1, H2: 2, H3: 3}[p]
		if got := h.protos[major].Load(); got != 200 {
			t.Fatalf("server saw %d requests over HTTP/%d, want 200", got, major)
		}
		wantConns := 2
		if p == H1 {
			wantConns = 6 // one stream per HTTP/1.1 connection: C×M connections
		}
		if res.Dials != int64(wantConns) || res.Conns != wantConns {
			t.Fatalf("dials %d, conns %d; want %d", res.Dials, res.Conns, wantConns)
		}
		if res.Latency.Count() != 200 || res.TTFB.Count() != 200 || res.Setup.Count() != uint64(wantConns) {
			t.Fatalf("histogram counts: latency %d, ttfb %d, setup %d", res.Latency.Count(), res.TTFB.Count(), res.Setup.Count())
		}
		if res.BytesIn != 200*5 {
			t.Fatalf("bytes in %d, want %d", res.BytesIn, 200*5)
		}
		var sum int64
		for _, n := range res.Timeline {
			sum += n
		}
		if sum != 200 {
			t.Fatalf("timeline sums to %d, want 200", sum)
		}
	})
}

// TestConnShape checks that C connections × M streams is the shape the
// server sees: exactly C connections, with M requests in flight on each.
func TestConnShape(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		const c, m = 3, 4
		var inflight, peak atomic.Int64
		release := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := inflight.Add(1)
			defer inflight.Add(-1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			if n == c*m {
				close(release) // all streams in flight at once: the shape holds
			}
			select {
			case <-release:
			case <-time.After(5 * time.Second):
			}
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Conns, cfg.Streams, cfg.Requests = c, m, c*m
		res := runOK(t, cfg)
		if peak.Load() != c*m {
			t.Fatalf("peak concurrency %d, want %d", peak.Load(), c*m)
		}
		want := int64(c)
		if p == H1 {
			want = c * m
		}
		if res.Dials != want || res.Requests != c*m {
			t.Fatalf("dials %d (want %d), requests %d", res.Dials, want, res.Requests)
		}
	})
}

func TestDurationAndWarmup(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		h := &counter{}
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Duration, cfg.Warmup = 300*time.Millisecond, 100*time.Millisecond
		cfg.Conns = 2
		start := time.Now()
		res := runOK(t, cfg)
		el := time.Since(start)
		if res.Duration != 300*time.Millisecond || res.Interrupted {
			t.Fatalf("duration %v, interrupted %v", res.Duration, res.Interrupted)
		}
		if el < 400*time.Millisecond || el > 3*time.Second {
			t.Fatalf("run took %v, want about 400ms", el)
		}
		if res.Requests == 0 || res.TotalErrors() != 0 {
			t.Fatalf("requests %d, errors %v", res.Requests, res.Errors)
		}
		// The warm-up's requests reached the server but are not counted.
		if h.requests.Load() <= res.Requests {
			t.Fatalf("server saw %d requests, result counts %d: warm-up not excluded", h.requests.Load(), res.Requests)
		}
		if len(res.Timeline) != 30 || res.Step != 10*time.Millisecond { // Step: Duration/100, at least 10ms
			t.Fatalf("timeline has %d steps of %v, want 30 of 10ms", len(res.Timeline), res.Step)
		}
	})
}

func TestInterrupt(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{})
	cfg := base(srv, H2)
	cfg.Duration = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	cfg.ProgressInterval = 20 * time.Millisecond
	cfg.Progress = func(p Progress) {
		if p.Requests > 0 && p.Elapsed > 100*time.Millisecond {
			cancel()
		}
	}
	done := make(chan *Result)
	go func() {
		res, err := Run(ctx, cfg)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	select {
	case res := <-done:
		if res == nil {
			return
		}
		if !res.Interrupted || res.Requests == 0 || res.Duration < 100*time.Millisecond || res.Duration > 5*time.Second {
			t.Fatalf("interrupted %v, requests %d, duration %v", res.Interrupted, res.Requests, res.Duration)
		}
		if res.TotalErrors() != 0 {
			t.Fatalf("cut-off requests counted as errors: %v", res.Errors)
		}
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("Run did not stop on cancel")
	}
}

func TestBodyMethodHeaders(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		var got atomic.Value
		var bodyBytes atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			bodyBytes.Add(n)
			got.Store([3]string{r.Method, r.Header.Get("X-Test"), r.Host + " " + r.URL.Path})
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Method = http.MethodPost
		cfg.Header = http.Header{"X-Test": {"yes"}, "Host": {"example.test"}}
		cfg.Body = make([]byte, 1000)
		cfg.URLs = []string{srv.URL + "/a", srv.URL + "/a"}
		cfg.Requests = 10
		res := runOK(t, cfg)
		if res.Requests != 10 || res.BytesOut != 10000 || bodyBytes.Load() != 10000 {
			t.Fatalf("requests %d, bytes out %d, server read %d", res.Requests, res.BytesOut, bodyBytes.Load())
		}
		if v := got.Load().([3]string); v != [3]string{"POST", "yes", "example.test /a"} {
			t.Fatalf("server saw %q", v)
		}
	})
}

func TestURLsInTurn(t *testing.T) {
	var a, b atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/a" {
			a.Add(1)
		} else {
			b.Add(1)
		}
	})
	srv := loadtesttest.NewServer(t, h, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H2)
	cfg.URLs = []string{srv.URL + "/a", srv.URL + "/b"}
	cfg.Requests = 20
	runOK(t, cfg)
	if a.Load() != 10 || b.Load() != 10 {
		t.Fatalf("a %d, b %d; want 10 each", a.Load(), b.Load())
	}
}

func TestPlainHTTP(t *testing.T) {
	for _, p := range []Proto{H1, H2} {
		t.Run(p.String(), func(t *testing.T) {
			h := &counter{}
			u := loadtesttest.NewPlainServer(t, h)
			res := runOK(t, Config{URLs: []string{u}, Proto: p, Requests: 20, Conns: 2})
			major := map[Proto]int{H1: 1, H2: 2}[p]
			if res.Requests != 20 || h.protos[major].Load() != 20 {
				t.Fatalf("requests %d, server saw %d over HTTP/%d", res.Requests, h.protos[major].Load(), major)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{URLs: []string{"ftp://x/"}},
		{URLs: []string{"https:///x"}},
		{URLs: []string{"https://a/", "https://b/"}},
		{URLs: []string{"http://a/"}, Proto: H3},
		{URLs: []string{"https://a/"}, Conns: -1},
		{URLs: []string{"https://a/"}, Method: "BAD METHOD"},
	} {
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

func TestParseProto(t *testing.T) {
	for s, want := range map[string]Proto{"h1": H1, "HTTP/1.1": H1, "h2": H2, "2": H2, "h3": H3, "http/3": H3} {
		if got, err := ParseProto(s); err != nil || got != want {
			t.Errorf("ParseProto(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseProto("h4"); err == nil {
		t.Error("h4 parsed")
	}
}

// TestConnectionClose: an HTTP/1.1 server that closes every connection after
// its response costs a new connection per request, never an error.
func TestConnectionClose(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	srv := loadtesttest.NewServer(t, h, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H1)
	cfg.Requests, cfg.Conns = 30, 2
	res := runOK(t, cfg)
	if res.Requests != 30 || res.TotalErrors() != 0 || res.Dials != 30 {
		t.Fatalf("requests %d, errors %v, dials %d", res.Requests, res.Errors, res.Dials)
	}
}

// TestNoLeak: Run leaves no goroutine behind once the server is gone.
func TestNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{})
		for _, p := range Protos() {
			cfg := base(srv, p)
			cfg.Requests, cfg.Conns, cfg.Streams = 50, 2, 2
			runOK(t, cfg)
			cfg.NewConn, cfg.Requests = true, 5
			runOK(t, cfg)
		}
		srv.Close()
	}()
	// Goroutines end asynchronously after their connections close: poll,
	// bounded.
	deadline := time.Now().Add(5 * time.Second)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		<-tk.C
	}
}
