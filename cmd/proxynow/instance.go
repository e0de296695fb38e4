package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/h1"
	"github.com/proxynow/proxynow/h2"
	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport"
)

// instance is one running gateway: its frontend (listeners and servers), the
// gateway, the admin endpoint and the drain coordinator that stops them
// together.
type instance struct {
	path  string // the config file, "" for the embedded default
	log   *slog.Logger
	level *slog.LevelVar
	gw    *gateway.Gateway
	drain *transport.Coordinator

	builtin []tls.Certificate                 // certificates of the embedded default
	certs   atomic.Pointer[[]tls.Certificate] // served certificates; swapped by reload
	tlsConf *tls.Config                       // picks from certs by SNI

	mu    sync.Mutex // guards front and serialises reloads
	front *frontend

	admin *http.Server
	adLn  net.Listener

	wg       sync.WaitGroup // the serve loops
	errc     chan error     // a serve loop that failed
	drainReq chan struct{}  // POST /drain

	reg     *prometheus.Registry // the instance's metrics, served at /metrics
	metrics processMetrics
}

// frontend is what listens: the TCP listener with TLS for HTTP/1.1 and
// HTTP/2, the UDP socket for HTTP/3, and their servers. A reload that keeps
// the listen address keeps the frontend, its sockets and its connections.
type frontend struct {
	listen string
	tcp    *transport.TLSListener
	udp    net.PacketConn
	h1     *h1.Server
	h2     *h2.Server
	h3     *h3.Server
	limits gateway.LimitsConfig
	http2  gateway.HTTP2Config
	http3  gateway.HTTP3Config
}

// h2Engine maps http2.engine to the h2 server's engine.
func h2Engine(name string) h2.Engine {
	if name == "xnet" {
		return h2.EngineXNet
	}
	return h2.EngineNative
}

// h3Engine maps http3.engine to the h3 server's engine.
func h3Engine(name string) h3.Engine {
	if name == "quicgo" {
		return h3.EngineQuicGo
	}
	return h3.EngineNative
}

// dialerFor is the gateway's DialerFactory: it makes the upstream dialer of a
// cluster from the h1, h2 and h3 packages.
func dialerFor(spec gateway.DialerSpec) (transport.Dialer, error) {
	switch spec.Protocol {
	case "h1", "":
		return h1.NewDialer(h1.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout,
			TLSHandshakeTimeout: spec.TLSHandshakeTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h2":
		return h2.NewDialer(h2.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout,
			TLSHandshakeTimeout: spec.TLSHandshakeTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h2c":
		return h2.NewDialer(h2.DialerConfig{ConnectTimeout: spec.ConnectTimeout, ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	case "h3":
		// The QUIC handshake is the connect and the TLS handshake in one.
		return h3.NewDialer(h3.DialerConfig{TLS: spec.TLS, ConnectTimeout: spec.ConnectTimeout + spec.TLSHandshakeTimeout,
			ResponseHeaderTimeout: spec.ResponseHeaderTimeout}), nil
	}
	return nil, fmt.Errorf("unknown upstream protocol %q", spec.Protocol)
}

// startOptions are what the embedded default adds to a config.
type startOptions struct {
	// path is the config file, re-read on reload; "" disables reload.
	path string
	// certs are served in addition to the config's (the embedded default's
	// self-signed one).
	certs []tls.Certificate
	// level is the runtime log level, set from the config on reload and
	// by PUT /loglevel.
	level *slog.LevelVar
	// logs, when set, are the log writers: the access log goes to
	// logs.access and their drops are counted in the metrics.
	logs *logs
}

// start opens the listeners and starts serving cfg.
func start(cfg *gateway.Config, log *slog.Logger, opts startOptions) (_ *instance, err error) {
	inst := &instance{path: opts.path, log: log, level: opts.level, builtin: opts.certs,
		errc: make(chan error, 8), drainReq: make(chan struct{}, 1)}
	inst.drain = transport.NewDrainCoordinator(transport.DrainConfig{
		Timeout:       time.Duration(cfg.DrainTimeout),
		ShutdownDelay: time.Duration(cfg.ShutdownDelay),
		InFlight: func() int64 {
			if inst.gw == nil {
				return 0
			}
			return inst.gw.InFlight()
		},
		OnPhase: inst.logPhase,
	})
	defer func() {
		if err != nil {
			inst.closeAll()
		}
	}()
	certs, err := inst.loadCerts(cfg)
	if err != nil {
		return nil, err
	}
	inst.certs.Store(&certs)
	inst.tlsConf = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: inst.certificate}

	f, err := inst.openFrontend(cfg)
	if err != nil {
		return nil, err
	}
	inst.front = f
	inst.reg = inst.newRegistry(opts.logs)
	gopts := gateway.Options{
		Config: cfg, Dialers: dialerFor, Logger: log, Drain: inst.drain, HTTP3Port: f.h3Port(), Registerer: inst.reg,
	}
	if opts.logs != nil {
		gopts.AccessLog = opts.logs.access
	}
	inst.gw, err = gateway.New(gopts)
	if err != nil {
		f.closeSockets()
		return nil, err
	}
	if err := inst.serveFrontend(f, cfg); err != nil {
		return nil, err
	}
	inst.drain.AddPool(inst.gw)

	if a := cfg.Admin.Listen; a != "" && a != "off" {
		inst.adLn, err = net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("listen admin %s: %w", a, err)
		}
		hooks := gateway.AdminHooks{
			Drain:    inst.requestDrain,
			Phase:    func() (string, int64) { return inst.drain.Phase().String(), inst.drain.Cut() },
			Metrics:  inst.reg,
			LogLevel: inst.level, // nil without one: /loglevel 404
		}
		if inst.path != "" {
			hooks.Reload = inst.reload
		}
		inst.admin = &http.Server{Handler: inst.gw.AdminHandler(hooks), ReadHeaderTimeout: 5 * time.Second}
		inst.serve("admin", func() error {
			if err := inst.admin.Serve(inst.adLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	return inst, nil
}

// certificate serves the certificate that matches the client's SNI, the
// first one otherwise, from the set the last reload installed.
func (inst *instance) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	certs := *inst.certs.Load()
	for i := range certs {
		if hello.SupportsCertificate(&certs[i]) == nil {
			return &certs[i], nil
		}
	}
	return &certs[0], nil
}

func (inst *instance) loadCerts(cfg *gateway.Config) ([]tls.Certificate, error) {
	certs := append([]tls.Certificate(nil), inst.builtin...)
	for i, c := range cfg.TLS.Certificates {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: tls.certificates[%d]: %w", cfg.File, i, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: tls.certificates: no certificate configured", cfg.File)
	}
	return certs, nil
}

// openFrontend opens the TCP listener and, with HTTP/3 on, the UDP socket
// on the same port.
func (inst *instance) openFrontend(cfg *gateway.Config) (*frontend, error) {
	f := &frontend{listen: cfg.Listen, limits: cfg.Limits, http2: cfg.HTTP2, http3: cfg.HTTP3}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s: %w", cfg.Listen, err)
	}
	tcpConf := inst.tlsConf.Clone()
	tcpConf.NextProtos = []string{"h2", "http/1.1"}
	// Counted under TLS: the servers still get a *tls.Conn.
	counted := tcpCountListener{Listener: ln, m: &inst.metrics}
	f.tcp = transport.NewTLSListener(counted, tcpConf, time.Duration(cfg.TLS.HandshakeTimeout))
	f.tcp.OnHandshake = inst.metrics.onHandshake
	if cfg.HTTP3Enabled() {
		// The same port as TCP: when the config asked for port 0, the port
		// the kernel gave TCP.
		udpAddr := net.JoinHostPort(hostOf(cfg.Listen), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		f.udp, err = net.ListenPacket("udp", udpAddr)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen udp %s: %w", udpAddr, err)
		}
	}
	return f, nil
}

// serveFrontend makes the servers of f and starts serving.
func (inst *instance) serveFrontend(f *frontend, cfg *gateway.Config) error {
	lim := cfg.Limits
	f.h1 = h1.NewServer(inst.gw, h1.ServerConfig{
		MaxHeaderBytes: int(lim.MaxHeaderBytes), MaxHeaderCount: lim.MaxHeaderCount,
		MaxRequestLine: int(lim.MaxRequestLine), HeaderTimeout: time.Duration(lim.HeaderTimeout),
		IdleTimeout: time.Duration(lim.IdleTimeout), WriteTimeout: time.Duration(lim.WriteTimeout),
		Logger: inst.log,
	})
	f.h2 = h2.NewServer(inst.gw, h2.ServerConfig{
		MaxHeaderBytes: int(lim.MaxHeaderBytes), MaxHeaderCount: lim.MaxHeaderCount,
		MaxConcurrentStreams: lim.MaxConcurrentStreams, IdleTimeout: time.Duration(lim.IdleTimeout),
		HeaderTimeout: time.Duration(lim.HeaderTimeout), WriteTimeout: time.Duration(lim.WriteTimeout),
		InitialStreamWindow: int(cfg.HTTP2.InitialStreamWindow), InitialConnWindow: int(cfg.HTTP2.InitialConnWindow),
		Logger: inst.log, Engine: h2Engine(cfg.HTTP2.Engine),
	})
	if f.udp != nil {
		q := cfg.HTTP3
		var keys *h3.Keys
		if q.KeyFile != "" {
			var created bool
			var err error
			keys, created, err = h3.LoadOrCreateKeys(q.KeyFile)
			if err != nil {
				f.closeSockets()
				return fmt.Errorf("%s: http3.key_file: %w", cfg.File, err)
			}
			if created {
				inst.log.Info("created the QUIC key file; share it with every instance behind the same load balancer", "file", q.KeyFile)
			}
		}
		var err error
		f.h3, err = h3.NewServer(inst.gw, h3.ServerConfig{
			Engine:                 h3Engine(q.Engine),
			TLS:                    inst.tlsConf,
			IdleTimeout:            time.Duration(q.IdleTimeout),
			HandshakeTimeout:       time.Duration(q.HandshakeTimeout),
			WriteTimeout:           time.Duration(lim.WriteTimeout),
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
			Logger:                 inst.log,
		})
		if err != nil {
			f.closeSockets()
			return err
		}
		if w := h3.CheckUDP(f.udp).Warning(); w != "" {
			inst.log.Warn(w)
		}
	}
	for _, s := range f.servers() {
		inst.drain.AddServer(s)
	}
	inst.serve("tls", f.tcp.Run)
	inst.serve("h1", func() error { return f.h1.Serve(f.tcp.Listener("")) })
	inst.serve("h2", func() error { return f.h2.Serve(f.tcp.Listener("h2")) })
	if f.h3 != nil {
		inst.serve("h3", func() error { return f.h3.Serve(f.udp) })
	}
	return nil
}

func (f *frontend) servers() []transport.Shutdowner {
	ss := []transport.Shutdowner{f.h1, f.h2}
	if f.h3 != nil {
		ss = append(ss, f.h3)
	}
	return ss
}

func (f *frontend) h3Port() int {
	if f.udp == nil {
		return 0
	}
	return f.udp.LocalAddr().(*net.UDPAddr).Port
}

func (f *frontend) closeSockets() {
	if f.tcp != nil {
		f.tcp.Close()
	}
	if f.udp != nil {
		f.udp.Close()
	}
}

func (f *frontend) close() {
	if f.h1 != nil {
		f.h1.Close()
	}
	if f.h2 != nil {
		f.h2.Close()
	}
	if f.h3 != nil {
		f.h3.Close()
	}
	f.closeSockets()
}

func (inst *instance) serve(name string, fn func() error) {
	inst.wg.Go(func() {
		// The servers of a frontend share its TLS listener: when one shuts
		// down, the others' Serve may see it closed.
		if err := fn(); err != nil && !errors.Is(err, net.ErrClosed) && !inst.drain.Draining() {
			inst.log.Error("serve failed", "server", name, "err", err)
			select {
			case inst.errc <- fmt.Errorf("%s: %w", name, err):
			default:
			}
		}
	})
}

// reload re-reads the config file and switches to it. On any error the old
// config, certificates and sockets keep serving, and the error (naming the
// file, line and field) is returned.
func (inst *instance) reload() (err error) {
	defer func() { inst.metrics.countReload(err) }()
	if inst.path == "" {
		return errors.New("the embedded default has no file to reload")
	}
	inst.mu.Lock()
	defer inst.mu.Unlock()
	if inst.drain.Draining() {
		return errors.New("draining: reload refused")
	}
	err = inst.reloadLocked()
	if err != nil {
		inst.log.Error("reload failed; the previous config keeps serving", "err", err)
	}
	return err
}

func (inst *instance) reloadLocked() error {
	cfg, err := gateway.LoadConfig(inst.path)
	if err != nil {
		return err
	}
	certs, err := inst.loadCerts(cfg)
	if err != nil {
		return err
	}
	old := inst.front
	var nf *frontend
	if cfg.Listen != old.listen || cfg.HTTP3Enabled() != (old.udp != nil) {
		if nf, err = inst.openFrontend(cfg); err != nil {
			return err
		}
	}
	port := old.h3Port()
	if nf != nil {
		port = nf.h3Port()
	}
	if err := inst.gw.Reload(cfg, port); err != nil {
		if nf != nil {
			nf.closeSockets()
		}
		return err
	}
	inst.certs.Store(&certs)
	if inst.level != nil {
		inst.level.Set(parseLevel(cfg.Log.Level))
	}
	if nf == nil {
		if !reflect.DeepEqual(old.limits, cfg.Limits) || old.http2 != cfg.HTTP2 || !reflect.DeepEqual(old.http3, cfg.HTTP3) {
			inst.log.Warn("limits, http2 and http3 settings apply to new listeners: they take effect when listen changes or on restart")
		}
		return nil
	}
	if err := inst.serveFrontend(nf, cfg); err != nil {
		return err
	}
	inst.front = nf
	// The old frontend drains on its own: stop accepting, GOAWAY, finish
	// its streams within the drain timeout.
	for _, s := range old.servers() {
		inst.drain.RemoveServer(s)
	}
	timeout := time.Duration(cfg.DrainTimeout)
	inst.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, s := range old.servers() {
			wg.Go(func() {
				if s.Shutdown(ctx) != nil {
					s.Close()
				}
			})
		}
		wg.Wait()
		old.closeSockets()
		inst.log.Info("previous listeners drained", "listen", old.listen)
	})
	inst.log.Info("listening", "listen", cfg.Listen, "previous", old.listen)
	return nil
}

// requestDrain asks the main loop to drain, as SIGTERM does.
func (inst *instance) requestDrain() {
	select {
	case inst.drainReq <- struct{}{}:
	default:
	}
}

func (inst *instance) logPhase(p transport.Phase, inFlight int64) {
	switch p {
	case transport.PhaseHardClose:
		inst.log.Warn("drain timeout: cutting the streams still in flight", "phase", p.String(), "streams_cut", inFlight)
	default:
		inst.log.Info("drain phase", "phase", p.String(), "in_flight", inFlight)
	}
}

// Addr is the TCP (and UDP) address the gateway serves.
func (inst *instance) Addr() string {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.front.tcp.Addr().String()
}

// HTTP3 reports whether HTTP/3 is served.
func (inst *instance) HTTP3() bool {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return inst.front.h3 != nil
}

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
	inst.mu.Lock()
	f := inst.front
	inst.mu.Unlock()
	if f != nil {
		f.close()
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
