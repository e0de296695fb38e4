package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/transport"
)

// BenchmarkGatewayUpstreamPool proxies small GETs from 64 concurrent
// downstream HTTP/1.1 keep-alive connections through the gateway to one
// HTTP/1.1 upstream, once with the sharded pool and once with the previous
// unsharded one, in the same run. It reports requests per second and the
// upstream conns the upstream accepted while measured (per 1000 requests),
// after a warm-up in which every downstream conn made a few requests.
// Run it with a fixed count, each sub-benchmark then starts its gateway once:
//
//	go test -run '^$' -bench BenchmarkGatewayUpstreamPool -benchtime 20000x ./cmd/proxynow/
func BenchmarkGatewayUpstreamPool(b *testing.B) {
	for _, pool := range []string{"sharded", "unsharded"} {
		b.Run("pool="+pool, func(b *testing.B) {
			up := startBenchUpstream(b)
			addr, stats := startBenchGateway(b, up.addr, pool == "unsharded")
			const downstream = 64
			clients := make([]*benchClient, downstream)
			for i := range clients {
				clients[i] = dialBenchClient(b, addr)
			}
			// Warm-up: the pool opens what this load needs.
			var wg sync.WaitGroup
			for _, c := range clients {
				wg.Go(func() {
					for range 100 {
						if err := c.get(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			connsBefore := up.conns.Load()

			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for _, c := range clients {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if err := c.get(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			opened := up.conns.Load() - connsBefore
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(opened)*1000/float64(b.N), "upconns/1000req")
			b.ReportMetric(float64(up.conns.Load()), "upconns-total")
			if s, ok := stats(); ok {
				b.ReportMetric(s.ReuseRatio(), "reuse")
			}
		})
	}
}

// benchUpstream is a plain HTTP/1.1 upstream on loopback that answers every
// request with a small body and counts the conns it accepted.
type benchUpstream struct {
	addr  string
	conns atomic.Int64
}

func startBenchUpstream(tb testing.TB) *benchUpstream {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &benchUpstream{addr: ln.Addr().String()}
	body := []byte("hello from the upstream\n")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = []string{"text/plain"}
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(countingListener{ln, &u.conns})
	tb.Cleanup(func() { srv.Close() })
	return u
}

// startBenchGateway runs a gateway on 127.0.0.1 that routes everything to
// the HTTP/1.1 upstream at upAddr, with the previous pool when unsharded. It
// returns the gateway's address and its pool's counters.
func startBenchGateway(tb testing.TB, upAddr string, unsharded bool) (string, func() (transport.PoolStats, bool)) {
	tb.Helper()
	yaml := "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nhttp3:\n  enabled: false\n" +
		strings.ReplaceAll(simpleConfig("h1"), "@UP@", upAddr)
	cfg, err := gateway.ParseConfig("bench.yaml", []byte(yaml))
	if err != nil {
		tb.Fatalf("config: %v\n%s", err, yaml)
	}
	cfg.Clusters[0].Pool.Unsharded = unsharded
	cert := benchCert(tb)
	inst, err := start(cfg, slog.New(slog.DiscardHandler), startOptions{certs: []tls.Certificate{cert}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		inst.Drain(ctx)
	})
	return inst.Addr(), func() (transport.PoolStats, bool) { return inst.gw.PoolStats("app") }
}

// benchCert is testCert for a benchmark.
func benchCert(tb testing.TB) tls.Certificate {
	tb.Helper()
	certOnce.Do(func() {
		certVal, _, certErr = selfSigned()
		if certErr == nil {
			certPEMV = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certVal.Certificate[0]})
		}
	})
	if certErr != nil {
		tb.Fatal(certErr)
	}
	return certVal
}

// benchClient is one downstream HTTP/1.1 keep-alive connection.
type benchClient struct {
	c  *tls.Conn
	br *bufio.Reader
}

var benchRequest = []byte("GET /bench HTTP/1.1\r\nHost: localhost\r\n\r\n")

func dialBenchClient(tb testing.TB, addr string) *benchClient {
	tb.Helper()
	cert := benchCert(tb)
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &benchClient{c: c, br: bufio.NewReader(c)}
}

// get sends one request and reads the whole response.
func (bc *benchClient) get() error {
	if _, err := bc.c.Write(benchRequest); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bc.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = &statusError{resp.StatusCode}
	}
	return err
}

type statusError struct{ code int }

func (e *statusError) Error() string { return "bench: status " + http.StatusText(e.code) }
