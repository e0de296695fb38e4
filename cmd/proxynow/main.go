// Command proxynow runs the ProxyNow gateway.
//
//	proxynow                  run the embedded default: TLS on :8443 (TCP for
//	                          HTTP/1.1 and HTTP/2, UDP for HTTP/3) with a
//	                          self-signed certificate, in front of a built-in
//	                          demo upstream
//	proxynow -config FILE     run a config file
//	proxynow validate FILE    check a config file; exit 1 with the error
//	proxynow version          print the version
//
// SIGINT, SIGTERM or POST /drain on the admin endpoint drains: /readyz turns
// 503, listeners close, HTTP/1.1 answers with Connection: close, HTTP/2 and
// HTTP/3 send GOAWAY, responses carry Alt-Svc: clear, in-flight requests
// finish within drain_timeout, then the process exits 0 (1 if streams had to be
// cut). A second signal skips to the hard close. SIGHUP or POST /reload
// re-reads the config file; an invalid one is reported and the old config keeps
// serving.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/transport"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Fprintln(stdout, "proxynow", versionString())
			return 0
		case "validate":
			if len(args) != 2 {
				fmt.Fprintln(stderr, "usage: proxynow validate FILE")
				return 2
			}
			cfg, err := gateway.LoadConfig(args[1])
			if err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			fmt.Fprintf(stdout, "%s: ok (%d routes, %d clusters, hash %.12s)\n", args[1], len(cfg.Routes), len(cfg.Clusters), cfg.Hash())
			return 0
		}
	}
	fs := flag.NewFlagSet("proxynow", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "run this config `file` instead of the embedded default")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "proxynow: unexpected argument %q\n", fs.Arg(0))
		return 2
	}

	var (
		cfg  *gateway.Config
		opts startOptions
		demo *demoUpstream
		fp   string
		err  error
	)
	if *configPath != "" {
		opts.path = *configPath
		if cfg, err = gateway.LoadConfig(*configPath); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	} else {
		if demo, err = startDemoUpstream(); err != nil {
			fmt.Fprintln(stderr, "proxynow: demo upstream:", err)
			return 1
		}
		defer demo.Close()
		if cfg, err = gateway.ParseConfig("(embedded default)", defaultConfig(demo.Addr())); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		var cert tls.Certificate
		if cert, fp, err = selfSigned(); err != nil {
			fmt.Fprintln(stderr, "proxynow: self-signed certificate:", err)
			return 1
		}
		opts.certs = []tls.Certificate{cert}
	}

	lv := new(slog.LevelVar)
	lv.Set(parseLevel(cfg.Log.Level))
	logs := newLogs(stderr, cfg.Log.Format, lv, cfg.Log.Buffer)
	defer logs.close() // last: what the shutdown logged is written
	log := logs.log
	opts.level = lv
	opts.logs = logs

	inst, err := start(cfg, log, opts)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	log.Info("proxynow serving", "version", versionString(), "listen", inst.Addr(),
		"http3", inst.HTTP3(), "admin", inst.AdminAddr(), "config", cfg.File, "hash", cfg.Hash()[:12])
	if demo != nil {
		printBanner(stdout, inst, fp)
	}

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
wait:
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				log.Info("reloading", "signal", s.String(), "config", opts.path)
				inst.reload()
				continue
			}
			log.Info("draining", "signal", s.String(), "drain_timeout", inst.drain.Timeout().String())
			break wait
		case <-inst.drainReq:
			log.Info("draining", "requested_by", "admin", "drain_timeout", inst.drain.Timeout().String())
			break wait
		case err := <-inst.errc:
			log.Error("a server failed; draining", "err", err)
			break wait
		}
	}
	hard, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for s := range sig {
			if s == syscall.SIGHUP {
				continue
			}
			log.Warn("second signal: closing now", "signal", s.String())
			cancel()
			return
		}
	}()
	if err := inst.Drain(hard); err != nil {
		if errors.Is(err, transport.ErrDrainTimeout) {
			log.Warn("drain timed out: streams were cut")
		} else {
			log.Error("drain", "err", err)
		}
		return 1
	}
	log.Info("drained; exiting")
	return 0
}

func versionString() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// defaultConfig is the embedded default: every request on :8443 goes to the
// demo upstream.
func defaultConfig(upstream string) []byte {
	return []byte(`# ProxyNow embedded default
listen: ":8443"
admin:
  listen: "127.0.0.1:9901"
routes:
  - path_prefix: /
    cluster: demo
clusters:
  - name: demo
    protocol: h1
    servers: ["` + upstream + `"]
`)
}

func printBanner(w io.Writer, inst *instance, fingerprint string) {
	_, p, _ := net.SplitHostPort(inst.Addr())
	fmt.Fprintf(w, `
ProxyNow %s is serving the embedded default on port %s:
  TCP  HTTP/1.1 and HTTP/2 over TLS
  UDP  HTTP/3 over QUIC%s
in front of a demo upstream that echoes what it receives.

Self-signed certificate for localhost, SHA-256 fingerprint:
  %s

Try it:
  curl -k https://localhost:%s/hello                 # HTTP/1.1 or HTTP/2 (ALPN)
  curl -k --http1.1 https://localhost:%s/hello       # HTTP/1.1
  curl -k --http2 -i https://localhost:%s/hello      # HTTP/2: see the Alt-Svc header
  curl -k --http3-only https://localhost:%s/hello    # HTTP/3, with a curl built with HTTP/3
  gtlsclient -q --exit-on-all-streams-close 127.0.0.1 %s https://localhost:%s/hello   # HTTP/3 (Debian ngtcp2-client)

Admin: http://%s/healthz  http://%s/readyz
Stop with Ctrl-C (in-flight requests finish first).
`, versionString(), p, h3Note(inst), fingerprint, p, p, p, p, p, p, inst.AdminAddr(), inst.AdminAddr())
}

func h3Note(inst *instance) string {
	if !inst.HTTP3() {
		return " (off)"
	}
	return ""
}
