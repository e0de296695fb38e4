package main

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// demoUpstream is the built-in upstream of the embedded default config. It
// answers every request with what it received: method, path, the protocol the
// client spoke at the edge (from the gateway's Via field) and the headers.
type demoUpstream struct {
	srv *http.Server
	ln  net.Listener
}

func startDemoUpstream() (*demoUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &demoUpstream{ln: ln, srv: &http.Server{Handler: http.HandlerFunc(demoHandler)}}
	go d.srv.Serve(ln)
	return d, nil
}

func (d *demoUpstream) Addr() string { return d.ln.Addr().String() }

func (d *demoUpstream) Shutdown(ctx context.Context) error { return d.srv.Shutdown(ctx) }
func (d *demoUpstream) Close() error                       { return d.srv.Close() }

func demoHandler(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	b.WriteString("Hello from the ProxyNow demo upstream.\n\n")
	b.WriteString("method:        " + r.Method + "\n")
	b.WriteString("path:          " + r.URL.RequestURI() + "\n")
	b.WriteString("host:          " + r.Host + "\n")
	b.WriteString("edge protocol: " + edgeProtocol(r.Header.Get("Via")) + "\n")
	b.WriteString("upstream:      " + r.Proto + "\n")
	if r.ContentLength != 0 {
		n, _ := drain(r)
		b.WriteString("body bytes:    " + strconv.FormatInt(n, 10) + "\n")
	}
	b.WriteString("\nheaders:\n")
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			b.WriteString("  " + k + ": " + v + "\n")
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte(b.String()))
}

func drain(r *http.Request) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := r.Body.Read(buf)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
}

// edgeProtocol reads the received-protocol of the last Via entry
// (RFC 9110 §7.6.3): "1.1", "2" or "3".
func edgeProtocol(via string) string {
	if i := strings.LastIndexByte(via, ','); i >= 0 {
		via = via[i+1:]
	}
	proto, _, _ := strings.Cut(strings.TrimSpace(via), " ")
	switch proto {
	case "1.1", "1.0":
		return "HTTP/" + proto
	case "2", "3":
		return "HTTP/" + proto
	case "":
		return "unknown"
	}
	return proto
}
