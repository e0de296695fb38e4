package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/h1"
	"github.com/proxynow/proxynow/h2"
	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport"
)

// instance is one running gateway: its listeners, servers, the gateway and
// the drain coordinator that stops them together.
type instance struct {
	cfg   *gateway.Config
	log   *slog.Logger
	gw    *gateway.Gateway
	drain *transport.Coordinator

	tcp   *transport.TLSListener
	udp   net.PacketConn
	h1    *h1.Server
	h2    *h2.Server
	h3    *h3.Server
	admin *http.Server
	adLn  net.Listener

	wg   sync.WaitGroup // the serve loops
	errc chan error     // a serve loop that failed
}

// dialerFor is the gateway's DialerFactory: it makes the upstream dialer of a
// cluster from the h1, h2 and h3 packages.
func dialerFor(spec gateway.DialerSpec) (transport.Dialer, error) {
	switch spec.Protocol {
	case "h1", "":
		return h1.NewDialer(h1.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h2":
		return h2.NewDialer(h2.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h2c":
		return h2.NewDialer(h2.DialerConfig{ConnectTimeout: spec.ConnectTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h3":
		return h3.NewDialer(h3.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	}
	return nil, fmt.Errorf("unknown upstream protocol %q", spec.Protocol)
}

// startOptions are what the embedded default adds to a config.
type startOptions struct {
	// certs are served when the config names none.
	certs []tls.Certificate
}

// start opens the listeners and starts serving cfg.
func start(cfg *gateway.Config, log *slog.Logger, opts startOptions) (_ *instance, err error) {
	inst := &instance{cfg: cfg, log: log, errc: make(chan error, 4)}
	inst.drain = transport.NewCoordinator(time.Duration(cfg.DrainTimeout))
	defer func() {
		if err != nil {
			inst.closeAll()
		}
	}()

	certs := opts.certs
	for _, c := range cfg.TLS.Certificates {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("tls certificate %s: %w", c.Cert, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no TLS certificate configured (tls.certificates)")
	}
	// With several certificates, crypto/tls serves the first one whose
	// names match the client's SNI, and the first one otherwise.
	tlsConf := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s: %w", cfg.Listen, err)
	}
	tcpConf := tlsConf.Clone()
	tcpConf.NextProtos = []string{"h2", "http/1.1"}
	inst.tcp = transport.NewTLSListener(ln, tcpConf, time.Duration(cfg.TLS.HandshakeTimeout))

	h3Port := 0
	if cfg.HTTP3Enabled() {
		// The same port as TCP: when the config asked for port 0, the port
		// the kernel gave TCP.
		udpAddr := net.JoinHostPort(hostOf(cfg.Listen), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		inst.udp, err = net.ListenPacket("udp", udpAddr)
		if err != nil {
			return nil, fmt.Errorf("listen udp %s: %w", udpAddr, err)
		}
		h3Port = inst.udp.LocalAddr().(*net.UDPAddr).Port
	}

	inst.gw, err = gateway.New(gateway.Options{
		Config: cfg, Dialers: dialerFor, Logger: log, Drain: inst.drain, HTTP3Port: h3Port,
	})
	if err != nil {
		return nil, err
	}

	lim := cfg.Limits
	inst.h1 = h1.NewServer(inst.gw, h1.ServerConfig{
		MaxHeaderBytes: int(lim.MaxHeaderBytes), MaxHeaderCount: lim.MaxHeaderCount,
		MaxRequestLine: int(lim.MaxRequestLine), HeaderTimeout: time.Duration(lim.HeaderTimeout),
		IdleTimeout: time.Duration(lim.IdleTimeout), Logger: log,
	})
	inst.h2 = h2.NewServer(inst.gw, h2.ServerConfig{
		MaxHeaderBytes: int(lim.MaxHeaderBytes), MaxHeaderCount: lim.MaxHeaderCount,
		MaxConcurrentStreams: lim.MaxConcurrentStreams, IdleTimeout: time.Duration(lim.IdleTimeout),
		HeaderTimeout: time.Duration(lim.HeaderTimeout), Logger: log,
	})
	inst.drain.AddServer(inst.h1)
	inst.drain.AddServer(inst.h2)
	if inst.udp != nil {
		q := cfg.HTTP3
		var keys *h3.Keys
		if q.KeyFile != "" {
			var created bool
			keys, created, err = h3.LoadOrCreateKeys(q.KeyFile)
			if err != nil {
				return nil, err
			}
			if created {
				log.Info("created the QUIC key file; share it with every instance behind the same load balancer", "file", q.KeyFile)
			}
		}
		inst.h3, err = h3.NewServer(inst.gw, h3.ServerConfig{
			TLS:                    tlsConf,
			IdleTimeout:            time.Duration(q.IdleTimeout),
			HandshakeTimeout:       time.Duration(q.HandshakeTimeout),
			KeepAlivePeriod:        time.Duration(q.KeepAlivePeriod),
			MaxStreams:             q.MaxStreams,
			InitialStreamWindow:    int64(q.InitialStreamWindow),
			MaxStreamWindow:        int64(q.MaxStreamWindow),
			InitialConnWindow:      int64(q.InitialConnWindow),
			MaxConnWindow:          int64(q.MaxConnWindow),
			MaxHeaderBytes:         int(lim.MaxHeaderBytes),
			MaxHeaderCount:         lim.MaxHeaderCount,
			EarlyData:              q.EarlyData,
			Retry:                  q.Retry,
			RetryAbove:             q.RetryAbove,
			MaxHandshakesPerSecond: q.MaxHandshakesPerSecond,
			MaxConnsPerSource:      q.MaxConnsPerSource,
			Keys:                   keys,
			Logger:                 log,
		})
		if err != nil {
			return nil, err
		}
		inst.drain.AddServer(inst.h3)
		rep := h3.CheckUDP(inst.udp)
		if w := rep.Warning(); w != "" {
			log.Warn(w)
		}
	}
	inst.drain.AddPool(inst.gw)

	if a := cfg.Admin.Listen; a != "" && a != "off" {
		inst.adLn, err = net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("listen admin %s: %w", a, err)
		}
		inst.admin = &http.Server{Handler: inst.gw.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	}

	inst.serve("tls", inst.tcp.Run)
	inst.serve("h1", func() error { return inst.h1.Serve(inst.tcp.Listener("")) })
	inst.serve("h2", func() error { return inst.h2.Serve(inst.tcp.Listener("h2")) })
	if inst.h3 != nil {
		inst.serve("h3", func() error { return inst.h3.Serve(inst.udp) })
	}
	if inst.admin != nil {
		inst.serve("admin", func() error {
			if err := inst.admin.Serve(inst.adLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	return inst, nil
}

func (inst *instance) serve(name string, f func() error) {
	inst.wg.Go(func() {
		// The servers share the TLS listener: when one shuts down, the
		// others' Serve may see it closed.
		if err := f(); err != nil && !errors.Is(err, net.ErrClosed) && !inst.drain.Draining() {
			inst.log.Error("serve failed", "server", name, "err", err)
			select {
			case inst.errc <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	})
}

// Addr is the TCP (and UDP) address the gateway serves.
func (inst *instance) Addr() string { return inst.tcp.Addr().String() }

// AdminAddr is the admin endpoint's address, "" when off.
func (inst *instance) AdminAddr() string {
	if inst.adLn == nil {
		return ""
	}
	return inst.adLn.Addr().String()
}

// Drain runs the drain coordinator and stops the admin endpoint. It returns
// transport.ErrDrainTimeout when streams had to be cut.
func (inst *instance) Drain(ctx context.Context) error {
	err := inst.drain.Drain(ctx)
	inst.closeAll()
	inst.wg.Wait()
	return err
}

// closeAll closes whatever is open, for a failed start and after a drain.
func (inst *instance) closeAll() {
	if inst.admin != nil {
		inst.admin.Close()
	} else if inst.adLn != nil {
		inst.adLn.Close()
	}
	if inst.h1 != nil {
		inst.h1.Close()
	}
	if inst.h2 != nil {
		inst.h2.Close()
	}
	if inst.h3 != nil {
		inst.h3.Close()
	}
	if inst.tcp != nil {
		inst.tcp.Close()
	}
	if inst.udp != nil {
		inst.udp.Close()
	}
	if inst.gw != nil {
		inst.gw.Close()
	}
}

func hostOf(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return h
}
