package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/proxynow/proxynow/loadtest/loadtesttest"
)

func TestCompare(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{})
	var order []string
	cfg := CompareConfig{
		Config: base(srv, 0),
		Rounds: 2,
		OnRun:  func(round int, p Proto) { order = append(order, p.String()) },
	}
	// Runs of a count, not of a time window that slow handshakes (the race
	// detector, a loaded machine) could fill: each run does exactly 40.
	cfg.Requests, cfg.Conns = 40, 2
	cmp, err := Compare(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Interleaved: h1 h2 h3 h1 h2 h3.
	if got := strings.Join(order, " "); got != "h1 h2 h3 h1 h2 h3" {
		t.Fatalf("order %q", got)
	}
	if cmp.Baseline != H2 || len(cmp.Runs) != 3 || cmp.Interrupted {
		t.Fatalf("baseline %v, %d protos, interrupted %v", cmp.Baseline, len(cmp.Runs), cmp.Interrupted)
	}
	for i, rs := range cmp.Runs {
		if len(rs) != 2 {
			t.Fatalf("%v: %d runs", cmp.Protos[i], len(rs))
		}
		for _, r := range rs {
			if r.Proto != cmp.Protos[i] || r.Requests != 40 || r.TotalErrors() != 0 {
				t.Fatalf("%v run: proto %v, requests %d, errors %v", cmp.Protos[i], r.Proto, r.Requests, r.Errors)
			}
		}
		rps := cmp.Median(cmp.Protos[i], (*Result).RequestsPerSecond)
		want := (rs[0].RequestsPerSecond() + rs[1].RequestsPerSecond()) / 2
		if rps != want {
			t.Fatalf("median of two %v, want their mean %v", rps, want)
		}
		m := cmp.Merged(cmp.Protos[i])
		if m.Requests != rs[0].Requests+rs[1].Requests || m.Latency.Count() != uint64(m.Requests) {
			t.Fatal("merged counts")
		}
	}

	// The three report formats.
	var text, js, page bytes.Buffer
	if err := cmp.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"h1", "h2 (base)", "h3", "requests/s", "latency p99.9", "×", "2 rounds", "status  200:"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	if err := cmp.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Baseline string                        `json:"baseline"`
		Median   map[string]map[string]float64 `json:"median"`
		Ratio    map[string]map[string]float64 `json:"ratio_to_baseline"`
		Runs     map[string][]struct {
			Requests int64 `json:"requests"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(js.Bytes(), &parsed); err != nil {
		t.Fatal(err)
	}
	if parsed.Baseline != "h2" || len(parsed.Median) != 3 || parsed.Ratio["h2"]["requests_per_s"] != 1 ||
		len(parsed.Runs["h3"]) != 2 || parsed.Median["h1"]["requests_per_s"] <= 0 {
		t.Fatalf("JSON: %s", js.String())
	}
	if err := cmp.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	checkHTML(t, page.String(), []string{"h1", "h2", "h3"})
}

// checkHTML checks a report page: self-contained, both charts, one series
// per protocol on each.
func checkHTML(t *testing.T, page string, protos []string) {
	t.Helper()
	for _, want := range []string{"<!doctype html>", `<svg id="latency"`, `<svg id="throughput"`, "</html>"} {
		if !strings.Contains(page, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	for _, p := range protos {
		if n := strings.Count(page, `data-proto="`+p+`"`); n != 2 {
			t.Errorf("HTML has %d series for %s, want 2 (one per chart)", n, p)
		}
	}
	for _, bad := range []string{"<script", "src=", "href=", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("HTML is not self-contained: has %q", bad)
		}
	}
	if strings.Contains(page, "NaN") || strings.Contains(page, "Inf") {
		t.Error("HTML has NaN or Inf")
	}
}

func TestCompareErrors(t *testing.T) {
	for _, cfg := range []CompareConfig{
		{Config: Config{URLs: []string{"http://127.0.0.1:1/"}}},                           // h3 over http
		{Config: Config{URLs: []string{"https://127.0.0.1:1/"}}, Protos: []Proto{H1, H1}}, // twice
		{Config: Config{URLs: []string{"https://127.0.0.1:1/"}}, Protos: []Proto{H1, H3}, Baseline: H2},
	} {
		if _, err := Compare(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

func TestCompareInterrupted(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{NoH3: true})
	ctx, cancel := context.WithCancel(context.Background())
	cfg := CompareConfig{Config: base(srv, 0), Protos: []Proto{H1, H2}, Rounds: 5, Baseline: H1}
	cfg.Duration = 50 * time.Millisecond
	runs := 0
	cfg.OnRun = func(int, Proto) {
		if runs++; runs == 3 {
			cancel()
		}
	}
	cmp, err := Compare(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Interrupted || len(cmp.Runs[0]) != 1 || len(cmp.Runs[1]) != 1 {
		t.Fatalf("interrupted %v, runs %d %d", cmp.Interrupted, len(cmp.Runs[0]), len(cmp.Runs[1]))
	}
	var text bytes.Buffer
	cmp.WriteText(&text)
	if !strings.Contains(text.String(), "interrupted") {
		t.Fatalf("text: %s", text.String())
	}
}

func TestRunReports(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H1)
	cfg.Requests = 50
	res := runOK(t, cfg)
	var text, js, page bytes.Buffer
	if err := res.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"h1 GET " + srv.URL, "1 conns × 1 stream, closed loop", "requests/s", "latency p50", "status  200: 50"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
	if err := res.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Proto    string           `json:"proto"`
		Requests int64            `json:"requests"`
		Status   map[string]int64 `json:"status"`
		Errors   map[string]int64 `json:"errors"`
		Latency  struct {
			Count uint64 `json:"count"`
			P99   int64  `json:"p99_ns"`
			Curve []struct {
				Q float64 `json:"q"`
			} `json:"curve"`
		} `json:"latency"`
	}
	if err := json.Unmarshal(js.Bytes(), &parsed); err != nil {
		t.Fatal(err)
	}
	if parsed.Proto != "h1" || parsed.Requests != 50 || parsed.Status["200"] != 50 || parsed.Latency.Count != 50 ||
		parsed.Latency.P99 <= 0 || len(parsed.Latency.Curve) == 0 || len(parsed.Errors) != int(numErrorKinds) {
		t.Fatalf("JSON: %s", js.String())
	}
	if err := res.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	checkHTML(t, page.String(), []string{"h1"})
}

func TestFormats(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1234: "1.23µs", 123456: "123µs", 1.5e6: "1.50ms", 25e6: "25.0ms", 2.5e9: "2.50s"} {
		if got := fmtNanos(v); got != want {
			t.Errorf("fmtNanos(%v) = %q, want %q", v, got, want)
		}
	}
	for v, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := groupDigits(v); got != want {
			t.Errorf("groupDigits(%d) = %q, want %q", v, got, want)
		}
	}
	if fmtRatio(3, 2) != "×1.50" || fmtRatio(1, 0) != "" {
		t.Error("fmtRatio")
	}
	ts, top := niceTicks(87, fmtRate)
	if top != 100 || len(ts) != 6 {
		t.Errorf("niceTicks(87): %v, %v", ts, top)
	}
}
