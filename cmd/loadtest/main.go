// Command loadtest measures an HTTP server over HTTP/1.1, HTTP/2 and HTTP/3,
// and compares the three on the same workload.
//
//	loadtest run [flags] URL [URL...]       one protocol
//	loadtest compare [flags] URL [URL...]   h1, h2 and h3 in interleaved rounds
//
// Run "loadtest -h" for the flags. It is a black-box client of any server
// (ProxyNow or another): see package loadtest.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/proxynow/proxynow/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal the run stops and reports; a second one kills.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usageHead = `loadtest measures an HTTP server over HTTP/1.1, HTTP/2 and HTTP/3.

Usage:
  loadtest run [flags] URL [URL...]      run one workload over one protocol (-proto)
  loadtest compare [flags] URL [URL...]  run it over h1, h2 and h3, interleaved in rounds
                                         (h1 h2 h3 h1 h2 h3 ...), and print each figure's
                                         median over the rounds and its ratio to -baseline

Several URLs of one origin are requested in turn. Flags go before the URLs.

The workload:
  a closed loop (default): -c connections, each with -m concurrent requests
    (streams) on HTTP/2 and HTTP/3; HTTP/1.1 has one request in flight per
    connection, so it opens c×m connections and the concurrency is the same;
  an open loop (-rate): requests at a constant rate whatever the server does,
    latency measured from each request's intended send time (coordinated
    omission corrected, as in wrk2);
  -new-conn: every request on a fresh connection (TCP+TLS or QUIC handshake),
    with -resume to resume TLS sessions and send HTTP/3 GETs in 0-RTT.
It runs for -d after a -warmup that is not counted, or for exactly -n requests.

Figures: requests/s, body bytes/s, latency p50/p90/p99/p99.9/max (request start,
or intended send time, to the last body byte), TTFB (to the response header),
connection setup, status codes, errors by kind (connect, tls, reset, timeout,
protocol, other), resumed and 0-RTT connections, and the client's own CPU time:
near 100% per core, the client, not the server, is the limit.

On a terminal a progress line shows on stderr; Ctrl-C stops early and still
reports (a second Ctrl-C quits at once).

Exit status: 0, 1 if no request succeeded or a report could not be written,
2 for a usage error.
`

// options are the command line.
type options struct {
	cmd      string
	proto    string
	protos   string
	conns    int
	streams  int
	duration time.Duration
	requests int64
	warmup   time.Duration
	rate     float64
	newConn  bool
	resume   bool
	method   string
	headers  headerFlag
	body     string
	bodyFile string
	bodySize int
	insecure bool
	cacert   string
	sni      string
	timeout  time.Duration
	connTO   time.Duration
	json     bool
	html     string
	rounds   int
	baseline string
	quiet    bool
	urls     []string
	durSet   bool // -d given explicitly
}

// headerFlag collects repeated -H "Name: value".
type headerFlag []string

func (h *headerFlag) String() string { return strings.Join(*h, ", ") }
func (h *headerFlag) Set(v string) error {
	name, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(name, " \t") {
		return fmt.Errorf("want \"Name: value\", got %q", v)
	}
	*h = append(*h, v)
	return nil
}

func flagSet(cmd string, o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("loadtest "+cmd, flag.ContinueOnError)
	fs.SetOutput(out)
	defDur := 10 * time.Second
	if cmd == "compare" {
		defDur = 5 * time.Second
		fs.StringVar(&o.protos, "protos", "h1,h2,h3", "protocols to compare, comma-separated, in round order")
		fs.IntVar(&o.rounds, "rounds", 3, "runs per protocol; each figure is the median over them")
		fs.StringVar(&o.baseline, "baseline", "h2", "protocol the others are divided by in the ratios")
	} else {
		fs.StringVar(&o.proto, "proto", "", "protocol: h1, h2 or h3 (default h2 for https, h1 for http)")
	}
	fs.IntVar(&o.conns, "c", 16, "connections (`C`)")
	fs.IntVar(&o.streams, "m", 1, "concurrent requests per connection (`M`); HTTP/1.1 opens C×M connections instead")
	fs.DurationVar(&o.duration, "d", defDur, "measured `duration` of a run (with -n: an upper bound)")
	fs.Int64Var(&o.requests, "n", 0, "stop after exactly `N` requests after the warm-up (no time limit unless -d)")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "warm-up before each run, not counted")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: total `requests/s`, spread over the C×M streams (0: closed loop)")
	fs.BoolVar(&o.newConn, "new-conn", false, "a new connection for every request (measures handshakes)")
	fs.BoolVar(&o.resume, "resume", false, "keep TLS session caches: resume sessions and use 0-RTT (HTTP/3 GET/HEAD) on new connections")
	fs.StringVar(&o.method, "method", "GET", "request `method`")
	fs.Var(&o.headers, "H", "request header \"Name: value\"; repeatable; \"Host: x\" sets the authority")
	fs.StringVar(&o.body, "body", "", "request body, inline")
	fs.StringVar(&o.bodyFile, "body-file", "", "request body from a `file`")
	fs.IntVar(&o.bodySize, "body-size", 0, "request body of `N` random bytes")
	fs.BoolVar(&o.insecure, "insecure", false, "do not verify the server's certificate")
	fs.StringVar(&o.cacert, "cacert", "", "trust the PEM certificates in `file` (instead of the system roots)")
	fs.StringVar(&o.sni, "sni", "", "TLS server name (SNI) and name to verify (default: the URL's host)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of one request, connection setup included")
	fs.DurationVar(&o.connTO, "connect-timeout", 5*time.Second, "timeout of connection setup (TCP+TLS, or the QUIC handshake)")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of the table")
	fs.StringVar(&o.html, "html", "", "also write a self-contained HTML report (latency curves, throughput over time) to `file`")
	fs.BoolVar(&o.quiet, "q", false, "no progress line")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: loadtest %s [flags] URL [URL...]\n\nFlags:\n", cmd)
		fs.PrintDefaults()
	}
	return fs
}

// errUsage marks command-line errors (exit status 2); errHelp is -h.
var (
	errUsage = errors.New("usage")
	errHelp  = errors.New("help")
)

// parse parses the command line; help text and errors go to out.
func parse(args []string, out io.Writer) (*options, error) {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		io.WriteString(out, usageHead)
		for _, cmd := range []string{"run", "compare"} {
			fmt.Fprintf(out, "\nFlags of %s:\n", cmd)
			fs := flagSet(cmd, &options{}, out)
			fs.PrintDefaults()
		}
		if len(args) == 0 {
			return nil, errUsage
		}
		return nil, errHelp
	}
	o := &options{cmd: args[0]}
	if o.cmd != "run" && o.cmd != "compare" {
		fmt.Fprintf(out, "loadtest: unknown command %q: want run or compare (loadtest -h for help)\n", o.cmd)
		return nil, errUsage
	}
	fs := flagSet(o.cmd, o, out)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, errUsage
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "d" {
			o.durSet = true
		}
	})
	o.urls = fs.Args()
	if len(o.urls) == 0 {
		fmt.Fprintf(out, "loadtest %s: no URL\n", o.cmd)
		return nil, errUsage
	}
	return o, nil
}

// config turns the options into a workload; errors are the user's.
func (o *options) config() (loadtest.Config, error) {
	cfg := loadtest.Config{
		URLs:           o.urls,
		Method:         o.method,
		Insecure:       o.insecure,
		ServerName:     o.sni,
		Conns:          o.conns,
		Streams:        o.streams,
		Duration:       o.duration,
		Requests:       o.requests,
		Warmup:         o.warmup,
		Rate:           o.rate,
		NewConn:        o.newConn,
		Resume:         o.resume,
		Timeout:        o.timeout,
		ConnectTimeout: o.connTO,
	}
	if o.requests > 0 && !o.durSet {
		cfg.Duration = 0 // -n alone: no time limit
	}
	if o.conns < 1 || o.streams < 1 {
		return cfg, errors.New("-c and -m must be at least 1")
	}
	if o.proto != "" {
		p, err := loadtest.ParseProto(o.proto)
		if err != nil {
			return cfg, err
		}
		cfg.Proto = p
	}
	if len(o.headers) > 0 {
		cfg.Header = http.Header{}
		for _, h := range o.headers {
			name, value, _ := strings.Cut(h, ":")
			cfg.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
	}
	n := 0
	for _, set := range []bool{o.body != "", o.bodyFile != "", o.bodySize > 0} {
		if set {
			n++
		}
	}
	if n > 1 {
		return cfg, errors.New("-body, -body-file and -body-size exclude each other")
	}
	switch {
	case o.body != "":
		cfg.Body = []byte(o.body)
	case o.bodyFile != "":
		b, err := os.ReadFile(o.bodyFile)
		if err != nil {
			return cfg, err
		}
		cfg.Body = b
	case o.bodySize > 0:
		cfg.Body = make([]byte, o.bodySize)
		rand.Read(cfg.Body)
	}
	if o.cacert != "" {
		pem, err := os.ReadFile(o.cacert)
		if err != nil {
			return cfg, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("%s: no PEM certificate", o.cacert)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool}
	}
	return cfg, nil
}

func (o *options) compareConfig() (loadtest.CompareConfig, error) {
	cfg, err := o.config()
	cc := loadtest.CompareConfig{Config: cfg, Rounds: o.rounds}
	if err != nil {
		return cc, err
	}
	if o.rounds < 1 {
		return cc, errors.New("-rounds must be at least 1")
	}
	for _, s := range strings.Split(o.protos, ",") {
		p, err := loadtest.ParseProto(s)
		if err != nil {
			return cc, err
		}
		cc.Protos = append(cc.Protos, p)
	}
	b, err := loadtest.ParseProto(o.baseline)
	if err != nil {
		return cc, err
	}
	cc.Baseline = b
	return cc, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	switch {
	case errors.Is(err, errHelp):
		return 0
	case err != nil:
		return 2
	}
	prog := newProgress(stderr, o.quiet)
	defer prog.finish()

	var (
		report interface {
			WriteText(io.Writer) error
			WriteJSON(io.Writer) error
			WriteHTML(io.Writer) error
		}
		ok bool // some request succeeded
	)
	if o.cmd == "run" {
		cfg, err := o.config()
		if err != nil {
			fmt.Fprintf(stderr, "loadtest run: %v\n", err)
			return 2
		}
		cfg.Progress = prog.update
		res, err := loadtest.Run(ctx, cfg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		report, ok = res, res.Requests > 0
	} else {
		cfg, err := o.compareConfig()
		if err != nil {
			fmt.Fprintf(stderr, "loadtest compare: %v\n", err)
			return 2
		}
		cfg.Progress = prog.update
		cfg.OnRun = func(round int, p loadtest.Proto) { prog.setLabel(fmt.Sprintf("round %d/%d %v", round+1, o.rounds, p)) }
		cmp, err := loadtest.Compare(ctx, cfg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		for _, rs := range cmp.Runs {
			for _, r := range rs {
				ok = ok || r.Requests > 0
			}
		}
		report = cmp
	}
	prog.finish()

	status := 0
	if o.json {
		err = report.WriteJSON(stdout)
	} else {
		err = report.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		status = 1
	}
	if o.html != "" {
		if err := writeFile(o.html, report.WriteHTML); err != nil {
			fmt.Fprintln(stderr, "loadtest:", err)
			status = 1
		} else {
			fmt.Fprintf(stderr, "loadtest: wrote %s\n", o.html)
		}
	}
	if !ok {
		fmt.Fprintln(stderr, "loadtest: no request succeeded")
		status = 1
	}
	return status
}

func writeFile(name string, write func(io.Writer) error) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// progress draws the live progress line on a terminal.
type progress struct {
	w  io.Writer // nil: not a terminal, or -q
	mu sync.Mutex
	// label and drawn are guarded by mu.
	label string
	drawn bool
}

func newProgress(stderr io.Writer, quiet bool) *progress {
	p := &progress{}
	if f, ok := stderr.(*os.File); ok && !quiet && isTerminal(f) {
		p.w = f
	}
	return p
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (p *progress) setLabel(s string) {
	p.mu.Lock()
	p.label = s
	p.mu.Unlock()
}

func (p *progress) update(s loadtest.Progress) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	line := progressLine(p.label, s)
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
	p.drawn = true
}

func progressLine(label string, s loadtest.Progress) string {
	var b strings.Builder
	if label != "" {
		b.WriteString(label + "  ")
	} else {
		b.WriteString(s.Proto.String() + "  ")
	}
	if s.Warmup {
		fmt.Fprintf(&b, "warm-up %4.1fs", s.Elapsed.Seconds())
	} else {
		fmt.Fprintf(&b, "%5.1fs", s.Elapsed.Seconds())
	}
	fmt.Fprintf(&b, "  %9.0f req/s  %d requests  %d errors", s.Rate, s.Requests, s.Errors)
	return b.String()
}

// finish erases the progress line.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w != nil && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}
