package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// loadResult is one request of a load run.
type loadResult struct {
	proto      string
	path       string
	start, end time.Time
	err        error
}

// load runs workers per protocol, each looping over one path, until stop is
// closed; every request is recorded. Each protocol's workers share one client,
// so HTTP/2 and HTTP/3 multiplex on one connection.
type load struct {
	mu      sync.Mutex
	results []loadResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startLoad(t *testing.T, clients map[string]*http.Client, url func(string) string, workers map[string]int) *load {
	l := &load{stop: make(chan struct{})}
	for proto, c := range clients {
		for path, n := range workers {
			for range n {
				l.wg.Go(func() {
					for {
						select {
						case <-l.stop:
							return
						default:
						}
						r := loadResult{proto: proto, path: path, start: time.Now()}
						r.err = fetch(c, url(path))
						r.end = time.Now()
						l.mu.Lock()
						l.results = append(l.results, r)
						l.mu.Unlock()
					}
				})
			}
		}
	}
	return l
}

func (l *load) finish() []loadResult {
	close(l.stop)
	l.wg.Wait()
	return l.results
}

// fetch GETs url and checks the whole body arrived.
func fetch(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return errors.New("status " + resp.Status)
	}
	switch {
	case strings.Contains(url, "/slow"):
		if string(body) != "slow done\n" {
			return errors.New("truncated slow body")
		}
	case !strings.HasSuffix(string(body), "}\n"):
		return errors.New("truncated echo body")
	}
	return nil
}

// TestSIGTERMUnderLoad: under concurrent short and slow requests over h1, h2
// and h3, SIGTERM lets every request that started before it finish with its
// full body, refuses new connections, and exits 0 as soon as the last stream
// ended, long before the drain timeout.
func TestSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary under load")
	}
	up := startUpstream(t, "h1")
	p := startProc(t, strings.ReplaceAll(simpleConfig("h1"), "@UP@", up.addr)+"drain_timeout: 30s\n")
	clients := map[string]*http.Client{"h1": clientFor(t, "h1"), "h2": clientFor(t, "h2"), "h3": clientFor(t, "h3")}
	workers := map[string]int{"/echo": 3, "/slow?d=2s": 2}
	// Every h1 worker keeps its connection: with the default of 2 idle
	// connections per host the others would keep dialing, and a request
	// that began just before the signal could still be in its handshake
	// when the listener closes.
	for _, proto := range []string{"h1", "h2"} {
		clients[proto].Transport.(*http.Transport).MaxIdleConnsPerHost = workers["/echo"] + workers["/slow?d=2s"]
	}
	l := startLoad(t, clients, p.url, workers)

	time.Sleep(700 * time.Millisecond) // let the load run before the signal
	sigAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused once the listeners closed, while the
	// drain still runs: the admin endpoint, which closes only when the
	// drain is over, answers after.
	waitFor(t, 5*time.Second, "the listener to refuse new connections", func() bool {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+p.port, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	admin := &http.Client{Timeout: 5 * time.Second}
	if resp, err := admin.Get("http://" + p.admin + "/readyz"); err != nil {
		t.Errorf("the listener refused connections only once the drain was over: /readyz: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("/readyz while draining: %s, want 503", resp.Status)
		}
	}
	code := p.wait(t, 10*time.Second)
	exitAfter := time.Since(sigAt)
	results := l.finish()

	if code != 0 {
		t.Errorf("exit code %d, want 0\n%s", code, p.logs.String())
	}
	// The slowest request takes 2s; the drain timeout is 30s.
	if exitAfter > 5*time.Second {
		t.Errorf("exited %v after SIGTERM; the last stream ended within 2s", exitAfter)
	}
	var before, failed, slow int
	perProto := map[string]int{}
	for _, r := range results {
		// A request that began within a few milliseconds of the signal
		// races the listener's close; anything older was in flight.
		if !r.start.Before(sigAt.Add(-20 * time.Millisecond)) {
			continue
		}
		before++
		perProto[r.proto]++
		if strings.Contains(r.path, "slow") {
			slow++
		}
		if r.err != nil {
			failed++
			t.Errorf("%s %s started %v before SIGTERM and failed after %v: %v", r.proto, r.path, sigAt.Sub(r.start), r.end.Sub(r.start), r.err)
		}
	}
	t.Logf("%d requests started before SIGTERM (%v), %d of them slow; %d failed; exit %d after %v", before, perProto, slow, failed, code, exitAfter.Round(time.Millisecond))
	if slow < 6 || perProto["h1"] == 0 || perProto["h2"] == 0 || perProto["h3"] == 0 {
		t.Errorf("the load did not cover every protocol with slow requests: %v, %d slow", perProto, slow)
	}
	if !strings.Contains(p.logs.String(), `"phase":"draining"`) || !strings.Contains(p.logs.String(), `"phase":"stopped"`) {
		t.Errorf("drain phases not logged:\n%s", p.logs.String())
	}
}

// TestDrainTimeoutCuts: a stream still running at drain_timeout is cut,
// counted and logged, and the exit code says so.
func TestDrainTimeoutCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	up := startUpstream(t, "h1")
	p := startProc(t, strings.ReplaceAll(simpleConfig("h1"), "@UP@", up.addr)+"drain_timeout: 1s\n")
	for _, proto := range []string{"h1", "h2", "h3"} {
		go fetch(clientFor(t, proto), p.url("/slow?d=20s"))
	}
	waitFor(t, 5*time.Second, "three slow requests upstream", func() bool { return up.requests.Load() >= 3 })
	sigAt := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	code := p.wait(t, 10*time.Second)
	if el := time.Since(sigAt); el < time.Second || el > 4*time.Second {
		t.Errorf("exited %v after SIGTERM, want about the 1s drain timeout", el)
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1 (streams cut)", code)
	}
	if !strings.Contains(p.logs.String(), `"streams_cut":3`) {
		t.Errorf("the cut streams were not counted:\n%s", p.logs.String())
	}
	waitFor(t, 5*time.Second, "the upstream requests to be cancelled", func() bool { return up.aborted.Load() >= 3 })
}

// TestReloadUnderLoad: SIGHUP swaps the config under load with no failed
// request; the QUIC connection opened before keeps serving after; an invalid
// config is refused with its line and the old one keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary under load")
	}
	a, b := startUpstream(t, "h1"), startUpstream(t, "h1")
	cfg := func(newUp string) string {
		return `
drain_timeout: 10s
routes:
  - {path_prefix: /new, cluster: new}
  - {path_prefix: /, cluster: app}
clusters:
  - {name: app, servers: ["` + a.addr + `"]}
  - {name: new, servers: ["` + newUp + `"]}
`
	}
	p := startProc(t, cfg(a.addr))
	var dials int
	var dialMu sync.Mutex
	h3c := &http.Client{Timeout: 20 * time.Second, Transport: &http3.Transport{
		TLSClientConfig: clientFor(t, "h3").Transport.(*http3.Transport).TLSClientConfig,
		Dial: func(ctx context.Context, addr string, tc *tlsConfig, qc *quic.Config) (*quic.Conn, error) {
			dialMu.Lock()
			dials++
			dialMu.Unlock()
			return quic.DialAddrEarly(ctx, addr, tc, qc)
		},
	}}
	clients := map[string]*http.Client{"h1": clientFor(t, "h1"), "h2": clientFor(t, "h2"), "h3": h3c}
	l := startLoad(t, clients, p.url, map[string]int{"/echo": 2, "/slow?d=500ms": 1, "/new/x": 1})
	time.Sleep(500 * time.Millisecond)

	// Route /new to upstream b.
	config, _ := readFile(p.config)
	writeFile(t, p.config, strings.Replace(config, `name: new, servers: ["`+a.addr+`"]`, `name: new, servers: ["`+b.addr+`"]`, 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "requests to reach the new upstream", func() bool { return b.requests.Load() > 0 })
	time.Sleep(500 * time.Millisecond)

	// An invalid config is refused and reported with its line.
	good, _ := readFile(p.config)
	writeFile(t, p.config, good+"bogus_field: 1\n")
	resp, err := http.Post("http://"+p.admin+"/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(msg), p.config+":") || !strings.Contains(string(msg), "bogus_field") {
		t.Errorf("invalid reload: %d %s", resp.StatusCode, msg)
	}
	time.Sleep(300 * time.Millisecond)
	results := l.finish()

	var n int
	for _, r := range results {
		n++
		if r.err != nil {
			t.Errorf("%s %s failed across the reload: %v", r.proto, r.path, r.err)
		}
	}
	if err := fetch(h3c, p.url("/echo")); err != nil {
		t.Errorf("after reloads: %v", err)
	}
	dialMu.Lock()
	if dials != 1 {
		t.Errorf("the HTTP/3 client dialed %d QUIC connections; the one opened before the reload should keep serving", dials)
	}
	dialMu.Unlock()
	st, _ := http.Get("http://" + p.admin + "/status")
	status, _ := io.ReadAll(st.Body)
	st.Body.Close()
	if !strings.Contains(string(status), `"reloads": 1`) {
		t.Errorf("status after one good and one bad reload:\n%s", status)
	}
	t.Logf("%d requests across the reloads, upstream a %d, b %d", n, a.requests.Load(), b.requests.Load())
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestSecondSignal: a second SIGTERM during the drain skips to the hard close.
func TestSecondSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	up := startUpstream(t, "h1")
	p := startProc(t, strings.ReplaceAll(simpleConfig("h1"), "@UP@", up.addr)+"drain_timeout: 30s\n")
	go fetch(clientFor(t, "h2"), p.url("/slow?d=20s"))
	waitFor(t, 5*time.Second, "the slow request upstream", func() bool { return up.requests.Load() >= 1 })
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "the drain to begin", func() bool { return strings.Contains(p.logs.String(), `"phase":"draining"`) })
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	code := p.wait(t, 5*time.Second)
	if el := time.Since(start); el > 2*time.Second || code != 1 {
		t.Errorf("after the second signal: exit %d after %v, want 1 at once", code, el)
	}
	if !strings.Contains(p.logs.String(), `"streams_cut":1`) {
		t.Errorf("cut stream not counted:\n%s", p.logs.String())
	}
}
