package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/loadtest"
	"github.com/proxynow/proxynow/loadtest/loadtesttest"
)

func TestParse(t *testing.T) {
	o, err := parse(strings.Fields(
		"run -proto h3 -c 4 -m 8 -d 2s -n 500 -warmup 0 -rate 100 -new-conn -resume -method POST "+
			"-H X-A:1 -H Host:example.test -body hi -insecure -sni example.test -timeout 3s -connect-timeout 1s "+
			"-json -html out.html -q https://127.0.0.1:8443/a https://127.0.0.1:8443/b"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := o.config()
	if err != nil {
		t.Fatal(err)
	}
	want := loadtest.Config{
		URLs:  []string{"https://127.0.0.1:8443/a", "https://127.0.0.1:8443/b"},
		Proto: loadtest.H3, Method: "POST", Conns: 4, Streams: 8, Duration: 2 * time.Second, Requests: 500,
		Rate: 100, NewConn: true, Resume: true, Insecure: true, ServerName: "example.test",
		Timeout: 3 * time.Second, ConnectTimeout: time.Second,
	}
	if cfg.Header.Get("X-A") != "1" || cfg.Header.Get("Host") != "example.test" || string(cfg.Body) != "hi" {
		t.Fatalf("header %v, body %q", cfg.Header, cfg.Body)
	}
	cfg.Header, cfg.Body = nil, nil
	if !equalConfig(cfg, want) {
		t.Fatalf("config\n got %+v\nwant %+v", cfg, want)
	}
	if !o.json || o.html != "out.html" || !o.quiet {
		t.Fatal("output flags")
	}

	// -n alone has no time limit; defaults differ between run and compare.
	o, _ = parse([]string{"run", "-n", "10", "http://x/"}, io.Discard)
	if cfg, _ := o.config(); cfg.Duration != 0 || cfg.Requests != 10 || cfg.Conns != 16 || cfg.Warmup != time.Second {
		t.Fatalf("-n alone: %+v", cfg)
	}
	o, _ = parse([]string{"run", "http://x/"}, io.Discard)
	if cfg, _ := o.config(); cfg.Duration != 10*time.Second || cfg.Proto != 0 {
		t.Fatalf("run defaults: %+v", cfg)
	}
	o, _ = parse([]string{"compare", "-protos", "h3,h1", "-baseline", "h1", "-rounds", "5", "https://x/"}, io.Discard)
	cc, err := o.compareConfig()
	if err != nil || cc.Duration != 5*time.Second || cc.Rounds != 5 || cc.Baseline != loadtest.H1 ||
		len(cc.Protos) != 2 || cc.Protos[0] != loadtest.H3 {
		t.Fatalf("compare: %+v, %v", cc, err)
	}

	dir := t.TempDir()
	bodyFile := filepath.Join(dir, "body")
	os.WriteFile(bodyFile, []byte("from a file"), 0o600)
	o, _ = parse([]string{"run", "-body-file", bodyFile, "http://x/"}, io.Discard)
	if cfg, err := o.config(); err != nil || string(cfg.Body) != "from a file" {
		t.Fatalf("-body-file: %q, %v", cfg.Body, err)
	}
	o, _ = parse([]string{"run", "-body-size", "1000", "http://x/"}, io.Discard)
	if cfg, err := o.config(); err != nil || len(cfg.Body) != 1000 || bytes.Equal(cfg.Body, make([]byte, 1000)) {
		t.Fatalf("-body-size: %d bytes, %v", len(cfg.Body), err)
	}
}

func equalConfig(a, b loadtest.Config) bool {
	return strings.Join(a.URLs, " ") == strings.Join(b.URLs, " ") && a.Proto == b.Proto && a.Method == b.Method &&
		a.Conns == b.Conns && a.Streams == b.Streams && a.Duration == b.Duration && a.Requests == b.Requests &&
		a.Warmup == b.Warmup && a.Rate == b.Rate && a.NewConn == b.NewConn && a.Resume == b.Resume &&
		a.Insecure == b.Insecure && a.ServerName == b.ServerName && a.Timeout == b.Timeout &&
		a.ConnectTimeout == b.ConnectTimeout
}

func TestParseErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bench", "http://x/"},
		{"run"},
		{"run", "-c", "x", "http://x/"},
		{"run", "-H", "no colon", "http://x/"},
		{"run", "-nosuchflag", "http://x/"},
	} {
		var out bytes.Buffer
		if _, err := parse(args, &out); err == nil || out.Len() == 0 {
			t.Errorf("%q: err %v, output %q", args, err, out.String())
		}
	}
	for _, args := range [][]string{
		{"run", "-proto", "h4", "http://x/"},
		{"run", "-c", "0", "http://x/"},
		{"run", "-body", "a", "-body-size", "3", "http://x/"},
		{"run", "-body-file", "/nonexistent/file", "http://x/"},
		{"run", "-cacert", "/nonexistent/file", "http://x/"},
		{"compare", "-protos", "h1,h9", "http://x/"},
		{"compare", "-baseline", "nope", "http://x/"},
		{"compare", "-rounds", "0", "http://x/"},
	} {
		o, err := parse(args, io.Discard)
		if err != nil {
			t.Fatalf("%q: parse: %v", args, err)
		}
		if o.cmd == "run" {
			_, err = o.config()
		} else {
			_, err = o.compareConfig()
		}
		if err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	// Exit statuses.
	if got := run(context.Background(), []string{"run", "-c", "0", "http://x/"}, io.Discard, io.Discard); got != 2 {
		t.Errorf("bad flag value: exit %d", got)
	}
	if got := run(context.Background(), []string{"compare", "-protos", "h1,h1", "https://x/"}, io.Discard, io.Discard); got != 2 {
		t.Errorf("bad comparison: exit %d", got)
	}
}

// TestHelp: "loadtest -h" documents every flag of both commands.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if got := run(context.Background(), []string{"-h"}, &out, &out); got != 0 {
		t.Fatalf("exit %d", got)
	}
	for _, want := range []string{"loadtest run", "loadtest compare", "coordinated", "-proto", "-protos", "-c ", "-m ", "-d ",
		"-n ", "-warmup", "-rate", "-new-conn", "-resume", "-method", "-H ", "-body ", "-body-file", "-body-size",
		"-insecure", "-cacert", "-sni", "-timeout", "-connect-timeout", "-json", "-html", "-rounds", "-baseline", "-q", "Exit status"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	out.Reset()
	if got := run(context.Background(), []string{"run", "-h"}, &out, &out); got != 0 || !strings.Contains(out.String(), "-proto") {
		t.Fatalf("run -h: exit %d, %q", got, out.String())
	}
}

func certFile(t *testing.T) string {
	f := filepath.Join(t.TempDir(), "ca.pem")
	c := loadtesttest.Certificate()
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func hello() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
}

func TestRunCommand(t *testing.T) {
	var n atomic.Int64
	srv := loadtesttest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.WriteString(w, "hello")
	}), loadtesttest.Options{})
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "-proto", "h3", "-c", "2", "-n", "100", "-warmup", "0",
		"-cacert", certFile(t), srv.URL + "/"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if n.Load() != 100 || !strings.Contains(stdout.String(), "h3 GET "+srv.URL) || !strings.Contains(stdout.String(), "status  200: 100") {
		t.Fatalf("server %d requests; output:\n%s", n.Load(), stdout.String())
	}
	// Not a terminal: no progress line.
	if stderr.Len() != 0 {
		t.Fatalf("stderr: %q", stderr.String())
	}
}

func TestRunCommandJSONAndHTML(t *testing.T) {
	srv := loadtesttest.NewServer(t, hello(), loadtesttest.Options{NoH3: true})
	page := filepath.Join(t.TempDir(), "report.html")
	var stdout, stderr bytes.Buffer
	// The warm-up takes the handshakes, so that the 200ms count requests
	// however slow they are (the race detector, a loaded machine).
	code := run(context.Background(), []string{"run", "-proto", "h1", "-d", "200ms", "-warmup", "300ms", "-c", "2",
		"-insecure", "-json", "-html", page, srv.URL + "/"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var res struct {
		Proto    string `json:"proto"`
		Requests int64  `json:"requests"`
		Duration int64  `json:"duration_ns"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if res.Proto != "h1" || res.Requests == 0 || res.Duration != int64(200*time.Millisecond) {
		t.Fatalf("JSON: %+v", res)
	}
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "<svg") || strings.Count(string(b), `data-proto="h1"`) != 2 {
		t.Fatal("HTML report lacks the charts")
	}
	if !strings.Contains(stderr.String(), "wrote "+page) {
		t.Fatalf("stderr: %q", stderr.String())
	}
}

func TestCompareCommand(t *testing.T) {
	srv := loadtesttest.NewServer(t, hello(), loadtesttest.Options{})
	dir := t.TempDir()
	page := filepath.Join(dir, "compare.html")
	// Runs of a count, not of a time window that slow handshakes (the race
	// detector, a loaded machine) could fill.
	args := []string{"compare", "-c", "2", "-m", "2", "-n", "40", "-warmup", "0", "-rounds", "1",
		"-cacert", certFile(t), "-html", page, srv.URL + "/"}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"2 conns × 2 streams (h1: 4 conns × 1 stream)", "h1", "h2 (base)", "h3", "requests/s", "×"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"h1", "h2", "h3"} {
		if strings.Count(string(b), `data-proto="`+p+`"`) != 2 {
			t.Errorf("HTML lacks the %s series", p)
		}
	}
	if strings.Count(string(b), "<svg") != 2 {
		t.Error("HTML lacks the two charts")
	}

	// JSON, with h1 as the baseline.
	stdout.Reset()
	args = []string{"compare", "-protos", "h1,h2", "-baseline", "h1", "-n", "20", "-warmup", "0", "-rounds", "2",
		"-insecure", "-json", srv.URL + "/"}
	if code := run(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var cmp struct {
		Baseline string                        `json:"baseline"`
		Median   map[string]map[string]float64 `json:"median"`
		Runs     map[string][]struct {
			Requests int64 `json:"requests"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &cmp); err != nil {
		t.Fatal(err)
	}
	if cmp.Baseline != "h1" || len(cmp.Runs["h2"]) != 2 || cmp.Runs["h2"][1].Requests != 20 || cmp.Median["h1"]["requests_per_s"] <= 0 {
		t.Fatalf("JSON: %s", stdout.String())
	}
}

// TestNoSuccess: exit status 1 when nothing answers.
func TestNoSuccess(t *testing.T) {
	addr := loadtesttest.FreePort(t)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "-proto", "h2", "-n", "3", "-c", "1", "-warmup", "0", "https://" + addr + "/"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stdout.String(), "connect 3") || !strings.Contains(stderr.String(), "no request succeeded") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
}

// TestInterruptReports: a cancelled run (Ctrl-C) still prints its report.
// The server cancels once it has seen more requests than the run has
// streams (16 by default): one stream has then sent its second request, so
// its first was answered and counted.
func TestInterruptReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n atomic.Int64
	srv := loadtesttest.NewServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 17 {
			cancel()
		}
		io.WriteString(w, "hello")
	}), loadtesttest.Options{NoH3: true})
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"run", "-d", "1m", "-warmup", "0", "-insecure", srv.URL + "/"}, &stdout, &stderr)
	if n.Load() < 17 {
		t.Fatalf("the server saw %d requests in 10s; exit %d\n%s\n%s", n.Load(), code, stdout.String(), stderr.String())
	}
	if code != 0 || !strings.Contains(stdout.String(), "(interrupted)") || !strings.Contains(stdout.String(), "requests/s") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
}

func TestProgressLine(t *testing.T) {
	s := progressLine("round 2/3 h3", loadtest.Progress{Proto: loadtest.H3, Elapsed: 1500 * time.Millisecond, Requests: 1234, Errors: 2, Rate: 5678})
	for _, want := range []string{"round 2/3 h3", "1.5s", "5678 req/s", "1234 requests", "2 errors"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
	if s := progressLine("", loadtest.Progress{Proto: loadtest.H1, Warmup: true}); !strings.Contains(s, "h1  warm-up") {
		t.Errorf("warm-up line %q", s)
	}
	// Not a terminal: nothing is drawn.
	var buf bytes.Buffer
	p := newProgress(&buf, false)
	p.update(loadtest.Progress{})
	p.finish()
	if buf.Len() != 0 {
		t.Fatal("progress drawn on a non-terminal")
	}
}
