package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/proxynow/proxynow/gateway"
	"github.com/quic-go/quic-go/http3"
)

// fixture is a running gateway for one test.
type fixture struct {
	inst *instance
	port string
}

// startGateway runs a gateway on 127.0.0.1 with the config text, after
// replacing "@UP@" with up's address (and "@CA@" with its certificate file).
// The listen address, admin address and TLS certificate are filled in.
func startGateway(t *testing.T, yaml string, ups ...*testUpstream) *fixture {
	t.Helper()
	return startGatewayWith(t, yaml, startOptions{}, ups...)
}

// startGatewayWith is startGateway with start options (opts.certs gets the
// test certificate).
func startGatewayWith(t *testing.T, yaml string, opts startOptions, ups ...*testUpstream) *fixture {
	t.Helper()
	for i, u := range ups {
		tag := "@UP@"
		if i > 0 {
			tag = "@UP" + string(rune('0'+i)) + "@"
		}
		yaml = strings.ReplaceAll(yaml, tag, u.addr)
		yaml = strings.ReplaceAll(yaml, "@CA@", u.certFile)
	}
	if !strings.Contains(yaml, "listen:") {
		yaml = "listen: \"127.0.0.1:0\"\n" + yaml
	}
	if !strings.Contains(yaml, "admin:") {
		yaml += "admin:\n  listen: \"127.0.0.1:0\"\n"
	}
	cfg, err := gateway.ParseConfig(t.Name()+".yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yaml)
	}
	cert, _ := testCert(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() && os.Getenv("PROXYNOW_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts.certs = append(opts.certs, cert)
	inst, err := start(cfg, log, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		inst.Drain(ctx)
	})
	_, port, _ := net.SplitHostPort(inst.Addr())
	return &fixture{inst: inst, port: port}
}

func (f *fixture) url(path string) string { return "https://127.0.0.1:" + f.port + path }

// modes are the downstream protocols every behaviour runs in.
var modes = []string{"h1", "h2", "h3"}

// clientFor returns an HTTP client that speaks exactly proto to the gateway.
func clientFor(t *testing.T, proto string) *http.Client {
	t.Helper()
	tc := &tls.Config{RootCAs: testRoots(t), ServerName: "localhost"}
	var rt http.RoundTripper
	switch proto {
	case "h1", "h2":
		tr := &http.Transport{TLSClientConfig: tc, DisableCompression: true, ForceAttemptHTTP2: proto == "h2"}
		var p http.Protocols
		if proto == "h1" {
			p.SetHTTP1(true)
		} else {
			p.SetHTTP2(true)
		}
		tr.Protocols = &p
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	case "h3":
		tr := &http3.Transport{TLSClientConfig: tc, DisableCompression: true}
		t.Cleanup(func() { tr.Close() })
		rt = tr
	}
	return &http.Client{Transport: rt, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// forEachMode runs f once per downstream protocol.
func forEachMode(t *testing.T, f func(t *testing.T, proto string, c *http.Client)) {
	for _, m := range modes {
		t.Run(m, func(t *testing.T) { f(t, m, clientFor(t, m)) })
	}
}

// wantProto is the Proto string a Go client reports for each mode.
var wantProto = map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2.0", "h3": "HTTP/3.0"}

func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, c, req)
}

// simpleConfig routes everything to one cluster of protocol proto at @UP@.
func simpleConfig(proto string) string {
	tls := ""
	switch proto {
	case "h1tls":
		proto = "h1"
		tls = "    tls: {enabled: true, ca_file: \"@CA@\", server_name: localhost}\n"
	case "h2", "h3":
		tls = "    tls: {ca_file: \"@CA@\", server_name: localhost}\n"
	}
	return `
routes:
  - path_prefix: /
    cluster: app
clusters:
  - name: app
    protocol: ` + proto + `
    servers: ["@UP@"]
` + tls
}
