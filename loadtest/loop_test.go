package loadtest

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/loadtest/loadtesttest"
)

// TestLatencyPercentiles: the server delays exactly every tenth request by
// 40ms; one stream, 100 requests. Ranks 91-100 are the slow ones.
//
// The checks are on ranks rather than on single samples: the ten slow
// requests take at least 40ms whatever the machine, but on a loaded one any
// fast request may stall too.
func TestLatencyPercentiles(t *testing.T) {
	const slow = 40 * time.Millisecond
	// A reported quantile is its bucket's midpoint, within 0.4% of the value.
	const atLeastSlow = slow - slow/100
	forEachProto(t, func(t *testing.T, p Proto) {
		var n atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1)%10 == 0 {
				time.Sleep(slow)
			}
			io.WriteString(w, "ok")
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Requests = 100
		res := runOK(t, cfg)
		if res.Requests != 100 {
			t.Fatalf("requests %d, errors %v", res.Requests, res.Errors)
		}
		for _, hist := range []*Histogram{&res.Latency, &res.TTFB} {
			// At least the ten injected delays are at the top.
			if p91 := hist.Quantile(0.91); p91 < atLeastSlow {
				t.Errorf("p91 %v: want at least the injected %v (10 of 100 requests)", p91, slow)
			}
			if hist.Max() < slow {
				t.Errorf("max %v < %v", hist.Max(), slow)
			}
			if mean := hist.Mean(); mean < slow/10 {
				t.Errorf("mean %v < %v: 10 of 100 requests take %v", mean, slow/10, slow)
			}
			// And the fast ones below them. They take well under a
			// millisecond, but a loaded machine (the race detector, other
			// tests) stalled a fifth of them for 20ms and more at times: the
			// check is that most of them, half the requests, are fast.
			if p50 := hist.Quantile(0.50); p50 >= slow/2 {
				t.Errorf("p50 %v, want below %v: 90 of 100 requests are fast", p50, slow/2)
			}
		}
	})
}

// TestTTFB: the server sends its header at once and its body 30ms later.
// Every latency includes the pause; the time to first byte does not, which
// the median shows (any single request may stall on a loaded machine).
func TestTTFB(t *testing.T) {
	const pause = 30 * time.Millisecond
	forEachProto(t, func(t *testing.T, p Proto) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
			time.Sleep(pause)
			io.WriteString(w, "body")
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Requests = 10
		res := runOK(t, cfg)
		if res.Requests != 10 || res.TTFB.Count() != 10 || res.Latency.Min() < pause {
			t.Fatalf("requests %d, ttfb count %d, latency min %v", res.Requests, res.TTFB.Count(), res.Latency.Min())
		}
		if p50 := res.TTFB.Quantile(0.5); p50 >= pause {
			t.Fatalf("ttfb p50 %v, want below the body's %v pause (latency p50 %v)", p50, pause, res.Latency.Quantile(0.5))
		}
	})
}

// TestOpenLoopRate: 400 requests/s for 500ms is 200 requests, whatever the
// protocol; the schedule fixes the count, the server only its latency.
func TestOpenLoopRate(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		h := &counter{}
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Rate, cfg.Duration, cfg.Conns, cfg.Streams = 400, 500*time.Millisecond, 2, 2
		res := runOK(t, cfg)
		// 200 are due within the window. Each is sent and answered in it,
		// or never sent (Unsent), or, at most one per stream, cut off by
		// the end of the run (in flight, or its stream woke for it only
		// then): neither.
		if res.Requests+res.Unsent > 200 || res.Requests+res.Unsent < 200-4 || res.Requests == 0 || res.TotalErrors() != 0 {
			t.Fatalf("requests %d, unsent %d, errors %v; want 196-200 due", res.Requests, res.Unsent, res.Errors)
		}
		if rate := res.RequestsPerSecond(); rate > 400 {
			t.Fatalf("rate %.1f/s, above the 400/s asked for", rate)
		}
		if raceEnabled || testing.Short() {
			return // the speed floors below need an unhindered client
		}
		if res.Requests < 180 {
			t.Fatalf("requests %d, unsent %d: want about 200", res.Requests, res.Unsent)
		}
		if rate := res.RequestsPerSecond(); rate < 360 {
			t.Fatalf("rate %.1f/s, want 400 within 10%%", rate)
		}
	})
}

// TestOpenLoopCount: a count in an open loop takes count/rate seconds.
func TestOpenLoopCount(t *testing.T) {
	h := &counter{}
	srv := loadtesttest.NewServer(t, h, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H2)
	cfg.Rate, cfg.Requests, cfg.Conns, cfg.Warmup = 1000, 100, 2, 50*time.Millisecond
	res := runOK(t, cfg)
	if res.Requests != 100 || h.requests.Load() != 150 {
		t.Fatalf("requests %d, server %d; want 100 measured after 50 in the warm-up", res.Requests, h.requests.Load())
	}
	// The 100th is due 99ms after the measurement starts.
	if res.Duration < 99*time.Millisecond || res.Duration > time.Second {
		t.Fatalf("duration %v, want about 100ms", res.Duration)
	}
}

// TestCoordinatedOmission: the server stalls once for 200ms. A closed loop
// waits politely and records one slow request; the open loop at 200/s
// records the 40 requests that were due during the stall as late as they
// were, as wrk2 does.
func TestCoordinatedOmission(t *testing.T) {
	const stall = 200 * time.Millisecond
	newServer := func() *loadtesttest.Server {
		var n atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) == 20 {
				time.Sleep(stall)
			}
		})
		return loadtesttest.NewServer(t, h, loadtesttest.Options{NoH3: true})
	}
	srv := newServer()
	cfg := base(srv, H2)
	cfg.Duration = 600 * time.Millisecond
	cfg.Rate = 200
	open := runOK(t, cfg)
	srv = newServer()
	cfg = base(srv, H2)
	cfg.Duration = 600 * time.Millisecond
	closed := runOK(t, cfg)

	// Open: about 20 of 120 samples are over 100ms: p90 is.
	if p := open.Latency.Quantile(0.9); p < 100*time.Millisecond {
		t.Errorf("open loop p90 %v: the stall is hidden", p)
	}
	if open.Latency.Max() < stall {
		t.Errorf("open loop max %v", open.Latency.Max())
	}
	// Closed: one slow sample among many.
	if closed.Requests < 100 && !raceEnabled && !testing.Short() { // a speed floor
		t.Fatalf("closed loop: only %d requests", closed.Requests)
	}
	if p := closed.Latency.Quantile(0.9); p > 50*time.Millisecond {
		t.Errorf("closed loop p90 %v", p)
	}
	if closed.Latency.Max() < stall {
		t.Errorf("closed loop max %v", closed.Latency.Max())
	}
}

// TestNewConn: one connection per request, with and without session
// resumption; with 0-RTT on HTTP/3 when the server allows it.
func TestNewConn(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		h := &counter{}
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{Allow0RTT: true})
		cfg := base(srv, p)
		cfg.NewConn, cfg.Conns, cfg.Requests = true, 2, 20
		cfg.Warmup = 30 * time.Millisecond // its connections are not counted
		res := runOK(t, cfg)
		if h.requests.Load() <= 20 {
			t.Fatalf("server saw %d requests: no warm-up", h.requests.Load())
		}
		if res.Requests != 20 || res.Dials != 20 || res.Setup.Count() != 20 || res.Resumed != 0 || res.ZeroRTT != 0 {
			t.Fatalf("requests %d, dials %d, setups %d, resumed %d, 0-RTT %d, errors %v",
				res.Requests, res.Dials, res.Setup.Count(), res.Resumed, res.ZeroRTT, res.Errors)
		}
		if res.Latency.Min() < res.Setup.Min() {
			t.Fatalf("latency %v below setup %v: it must include the handshake", res.Latency.Min(), res.Setup.Min())
		}

		if p == H3 && raceEnabled {
			// quic-go#4303: a data race on peerParams in 0-RTT connections.
			return
		}
		cfg.Resume = true
		res = runOK(t, cfg)
		// The first connection of each of the 2 streams may find the cache empty.
		if res.Requests != 20 || res.Dials != 20 || res.Resumed < 18 {
			t.Fatalf("resume: requests %d, dials %d, resumed %d, errors %v", res.Requests, res.Dials, res.Resumed, res.Errors)
		}
		if p == H3 && res.ZeroRTT < 18 {
			t.Fatalf("0-RTT: %d of 20", res.ZeroRTT)
		}
		if p != H3 && res.ZeroRTT != 0 {
			t.Fatalf("0-RTT over TCP: %d", res.ZeroRTT)
		}
	})
}

// TestNewConnNo0RTT: a server that does not allow 0-RTT still resumes.
func TestNewConnNo0RTT(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{})
	cfg := base(srv, H3)
	cfg.NewConn, cfg.Resume, cfg.Requests = true, true, 10
	res := runOK(t, cfg)
	if res.Requests != 10 || res.Resumed < 9 || res.ZeroRTT != 0 {
		t.Fatalf("requests %d, resumed %d, 0-RTT %d, errors %v", res.Requests, res.Resumed, res.ZeroRTT, res.Errors)
	}
}

func TestProgress(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H1)
	cfg.Duration, cfg.Warmup = 200*time.Millisecond, 100*time.Millisecond
	cfg.ProgressInterval = 20 * time.Millisecond
	var calls, warm, measured atomic.Int64
	cfg.Progress = func(p Progress) {
		calls.Add(1)
		if p.Warmup {
			warm.Add(1)
		} else if p.Requests > 0 && p.Rate > 0 {
			measured.Add(1)
		}
	}
	res := runOK(t, cfg)
	n := calls.Load()
	if warm.Load() == 0 || measured.Load() == 0 {
		t.Fatalf("progress calls %d, in warm-up %d, measuring %d", n, warm.Load(), measured.Load())
	}
	// 15 ticks are due; a starved process drops some (seen: 4 under -race
	// on a loaded machine).
	if n < 5 && !raceEnabled && !testing.Short() {
		t.Fatalf("progress calls %d, want one per 20ms of the 300ms run", n)
	}
	if calls.Load() != n {
		t.Fatal("Progress called after Run returned")
	}
	if res.Requests == 0 {
		t.Fatal("no requests")
	}
}

// TestOpenLoopNewConn: an open loop of new connections, one per request.
func TestOpenLoopNewConn(t *testing.T) {
	if raceEnabled {
		t.Skip("quic-go#4303: a data race on peerParams in 0-RTT connections")
	}
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{Allow0RTT: true})
	cfg := base(srv, H3)
	cfg.Rate, cfg.Duration, cfg.Conns, cfg.NewConn, cfg.Resume = 200, 300*time.Millisecond, 4, true, true
	res := runOK(t, cfg)
	// 60 arrivals are scheduled; how many a QUIC handshake per request can
	// serve depends on the machine (the race detector slows it several
	// times), so the check is the accounting: every arrival is either sent
	// on its own connection or counted unsent.
	if res.Requests < 10 || res.Requests+res.Unsent < 55 || res.Requests+res.Unsent > 61 || res.Dials != res.Requests || res.TotalErrors() != 0 {
		t.Fatalf("requests %d, unsent %d (want 60 arrivals), dials %d, errors %v", res.Requests, res.Unsent, res.Dials, res.Errors)
	}
	if res.ZeroRTT < res.Requests-4 {
		t.Fatalf("0-RTT on %d of %d connections", res.ZeroRTT, res.Requests)
	}
}
