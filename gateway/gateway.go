// Package gateway is ProxyNow itself: the configuration, routing, upstream
// clusters, the proxy that moves one exchange from a downstream stream to an
// upstream conn and back, the Alt-Svc policy and the admin endpoint.
//
// It sees the protocols only through the transport package: cmd hands it the
// upstream dialers (a DialerFactory) and feeds it the streams that the h1, h2
// and h3 servers yield.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/proxynow/proxynow/transport"
)

// DialerSpec describes the upstream transport of one cluster.
type DialerSpec struct {
	// Protocol is "h1", "h2", "h2c" or "h3".
	Protocol string
	// TLS is the client TLS config; nil for cleartext h1 and for h2c.
	TLS                   *tls.Config
	ConnectTimeout        time.Duration // the TCP connect
	TLSHandshakeTimeout   time.Duration // the TLS handshake after it
	ResponseHeaderTimeout time.Duration
}

// DialerFactory makes the Dialer for a cluster. cmd implements it with the h1,
// h2 and h3 packages, which the gateway does not import.
type DialerFactory func(DialerSpec) (transport.Dialer, error)

// Options configure a Gateway.
type Options struct {
	// Config is the validated configuration (see ParseConfig). Required.
	Config *Config
	// Dialers makes upstream dialers. Required.
	Dialers DialerFactory
	// Logger receives the gateway's logs; nil discards them.
	Logger *slog.Logger
	// Drain reports whether a drain has begun (a *transport.Coordinator).
	// Nil: never.
	Drain interface{ Draining() bool }
	// HTTP3Port is the UDP port HTTP/3 is served on, 0 when HTTP/3 is off.
	// Alt-Svc advertises it unless the config names another port.
	HTTP3Port int
	// Registerer receives the gateway's Prometheus metrics; one registry
	// per Gateway. Nil: no metrics, and requests are not counted.
	Registerer prometheus.Registerer
	// AccessLog receives the access log's records, one per request logged
	// (an *AsyncHandler, so that no request waits for the output). Nil: no
	// access log, whatever the config says.
	AccessLog slog.Handler
}

// Gateway proxies the streams servers yield to upstream clusters. It is a
// transport.Handler. Create it with New; stop it with Shutdown or Close, which
// drain and close the upstream pools.
type Gateway struct {
	log     *slog.Logger
	drain   interface{ Draining() bool }
	dialers DialerFactory
	h3Port  int
	state   atomic.Pointer[state]

	active  atomic.Int64  // streams being served, across configs
	panics  atomic.Uint64 // panics recovered at the stream boundary
	reloads atomic.Uint64 // successful reloads

	metrics *metrics     // nil without Options.Registerer
	access  slog.Handler // Options.AccessLog
	// streams are the streams being served by downstream protocol,
	// counted only with metrics.
	streams [numProtos]atomic.Int64
	spans   traceCounters

	mu       sync.Mutex     // serialises Reload
	closing  chan struct{}  // closed by Close: retiring pools close at once
	closeOne sync.Once      // closes closing
	retiring sync.WaitGroup // goroutines draining the pools of replaced configs
}

// state is everything derived from one Config. Requests load it once and use
// it to the end, so a reload never changes a request midway.
type state struct {
	cfg      *Config
	router   *router
	clusters []*cluster
	trusted  trustedProxies
	altSvc   []string // the Alt-Svc value advertising HTTP/3; nil when off
	maxBody  int64
	loadedAt time.Time
	routes   []*route

	// Observability, compiled from the config. none is the metric children
	// of requests that match no route, nil when metrics are off; access
	// and tracer are nil when off; timed is set when one of them needs the
	// time a request took.
	none   *routeMetrics
	access *accessLog
	tracer *tracer
	timed  bool

	// refs counts the requests using this state; once a reload retired it
	// and refs reaches zero, idle is closed and the pools of clusters the
	// new config dropped are drained.
	refs     atomic.Int64
	retired  atomic.Bool
	idle     chan struct{}
	idleOnce sync.Once
}

// acquire returns the current state, counted as in use until release. A
// state retired between the load and the count is not used: the loop takes
// the new one, so a retired state's count only falls.
func (g *Gateway) acquire() *state {
	for {
		st := g.state.Load()
		st.refs.Add(1)
		if !st.retired.Load() {
			return st
		}
		st.release()
	}
}

func (st *state) release() {
	if st.refs.Add(-1) == 0 && st.retired.Load() {
		st.idleOnce.Do(func() { close(st.idle) })
	}
}

// retire marks st replaced; idle closes once its last request ends.
func (st *state) retire() {
	st.retired.Store(true)
	if st.refs.Load() == 0 {
		st.idleOnce.Do(func() { close(st.idle) })
	}
}

// cluster is one compiled ClusterConfig.
type cluster struct {
	name      string
	servers   []*upstreamServer
	leastReq  bool
	pool      *transport.Pool
	rr        atomic.Uint64
	protocol  string
	tls       bool
	configRef *ClusterConfig
	log       *slog.Logger
	budget    *retryBudget

	inflight atomic.Int64 // requests in flight, for max_concurrent_requests
	pending  atomic.Int64 // requests waiting for a conn, for max_pending_requests

	stopChecks context.CancelFunc
	checks     sync.WaitGroup // active health checkers
}

// shutdown stops the health checks and drains the pool.
func (c *cluster) shutdown(ctx context.Context) error {
	c.stopHealthChecks()
	return c.pool.Shutdown(ctx)
}

// close stops the health checks and closes the pool.
func (c *cluster) close() {
	c.stopHealthChecks()
	c.pool.Close()
}

// New compiles opts.Config and returns a Gateway.
func New(opts Options) (*Gateway, error) {
	if opts.Config == nil || opts.Dialers == nil {
		return nil, errors.New("gateway: Options.Config and Options.Dialers are required")
	}
	g := &Gateway{log: opts.Logger, drain: opts.Drain, dialers: opts.Dialers, h3Port: opts.HTTP3Port,
		access: opts.AccessLog, closing: make(chan struct{})}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer != nil {
		var err error
		if g.metrics, err = newMetrics(opts.Registerer); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
		if err := opts.Registerer.Register(newGatewayCollector(g)); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	st, err := g.compile(opts.Config, nil)
	if err != nil {
		return nil, err
	}
	g.state.Store(st)
	return g, nil
}

// compile builds the state of cfg. Clusters whose config is unchanged from
// old are reused with their pools, so a reload keeps warm upstream conns.
func (g *Gateway) compile(cfg *Config, old *state) (*state, error) {
	st := &state{cfg: cfg, maxBody: int64(cfg.Limits.MaxBodyBytes), loadedAt: time.Now(), idle: make(chan struct{})}
	h3Port := g.h3Port
	for _, s := range cfg.TrustedProxies {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("gateway: trusted_proxies: %q is neither a CIDR nor an address", s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		st.trusted = append(st.trusted, p.Masked())
	}
	if cfg.HTTP3Enabled() && h3Port > 0 {
		port := h3Port
		if cfg.AltSvc.Port > 0 {
			port = cfg.AltSvc.Port
		}
		ma := int64(time.Duration(cfg.AltSvc.MaxAge) / time.Second)
		st.altSvc = []string{`h3=":` + strconv.Itoa(port) + `"; ma=` + strconv.FormatInt(ma, 10)}
	}
	byName := make(map[string]*cluster, len(cfg.Clusters))
	var created []*cluster
	for i := range cfg.Clusters {
		cc := &cfg.Clusters[i]
		c := old.cluster(cc)
		if c == nil {
			var err error
			if c, err = g.newCluster(cc); err != nil {
				for _, c := range created {
					c.close()
				}
				return nil, err
			}
			created = append(created, c)
		}
		st.clusters = append(st.clusters, c)
		byName[cc.Name] = c
	}
	var routes []*route
	for _, rc := range cfg.Routes {
		c := byName[rc.Cluster]
		if c == nil {
			return nil, fmt.Errorf("gateway: route %s%s: unknown cluster %q", rc.Host, rc.PathPrefix, rc.Cluster)
		}
		alt := cfg.AltSvcEnabled()
		if rc.AltSvc != nil {
			alt = *rc.AltSvc
		}
		prefix := rc.PathPrefix
		if prefix == "" {
			prefix = "/"
		}
		routes = append(routes, &route{host: rc.Host, prefix: prefix, cluster: c, altSvc: alt && st.altSvc != nil, name: rc.Host + prefix})
	}
	st.router = newRouter(routes)
	st.routes = routes
	g.compileObservability(cfg, st, old)
	return st, nil
}

// compileObservability resolves the metric children of the routes and
// clusters of st and sets up its access log and tracer. The trace exporter of
// old is kept when the tracing config did not change. It is called last in
// compile: nothing after it can fail.
func (g *Gateway) compileObservability(cfg *Config, st, old *state) {
	if g.metrics != nil && cfg.MetricsEnabled() {
		st.none = g.metrics.none
		byCluster := make(map[*cluster]*clusterMetrics)
		for _, rt := range st.routes {
			cm := byCluster[rt.cluster]
			if cm == nil {
				cm = g.metrics.cluster(rt.cluster.name)
				byCluster[rt.cluster] = cm
			}
			rt.m, rt.cm = g.metrics.route(rt.name, rt.cluster.name), cm
		}
	}
	if g.access != nil && cfg.AccessLogEnabled() {
		ratio, errs := 1.0, true
		if r := cfg.AccessLog.SampleRatio; r != nil {
			ratio = *r
		}
		if e := cfg.AccessLog.Errors; e != nil {
			errs = *e
		}
		st.access = newAccessLog(g.access, ratio, errs)
	}
	if t := cfg.Tracing; t.Endpoint != "" {
		ratio := 0.01
		if t.SampleRatio != nil {
			ratio = *t.SampleRatio
		}
		tr := &tracer{sampler: newSampler(ratio, t.ParentBased), sampleErrors: t.SampleErrors}
		if old != nil && old.tracer != nil && reflect.DeepEqual(old.cfg.Tracing, t) {
			tr.exp, tr.otlp = old.tracer.exp, old.tracer.otlp
		} else {
			tr.otlp = newOTLPExporter(exporterConfig{
				endpoint: t.Endpoint, serviceName: t.ServiceName, queueSize: t.QueueSize, batchSize: t.BatchSize,
				interval: time.Duration(t.FlushInterval), timeout: time.Duration(t.Timeout), log: g.log, counters: &g.spans,
			})
			tr.exp = tr.otlp
		}
		st.tracer = tr
	}
	st.timed = st.none != nil || st.access != nil || (st.tracer != nil && st.tracer.sampleErrors)
}

// exporter returns the trace exporter st owns, or nil.
func (st *state) exporter() *otlpExporter {
	if st == nil || st.tracer == nil {
		return nil
	}
	return st.tracer.otlp
}

// dialBackoff converts pool.dial_backoff: 0 (off) is negative for the pool.
func dialBackoff(d *Duration) time.Duration {
	switch {
	case d == nil:
		return 0 // the pool's default
	case *d == 0:
		return -1
	}
	return d.D()
}

func (g *Gateway) newCluster(cc *ClusterConfig) (*cluster, error) {
	spec := DialerSpec{
		Protocol:              cc.Protocol,
		ConnectTimeout:        time.Duration(cc.ConnectTimeout),
		TLSHandshakeTimeout:   time.Duration(cc.TLSHandshakeTimeout),
		ResponseHeaderTimeout: time.Duration(cc.ResponseHeaderTimeout),
	}
	if cc.Protocol == "h2" || cc.Protocol == "h3" || (cc.Protocol == "h1" && cc.TLS.Enabled) {
		tc := &tls.Config{ServerName: cc.TLS.ServerName, InsecureSkipVerify: cc.TLS.InsecureSkipVerify}
		if cc.TLS.CAFile != "" {
			pem, err := os.ReadFile(cc.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("gateway: cluster %s: tls.ca_file: %w", cc.Name, err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("gateway: cluster %s: tls.ca_file %s: no PEM certificates", cc.Name, cc.TLS.CAFile)
			}
		}
		spec.TLS = tc
	}
	d, err := g.dialers(spec)
	if err != nil {
		return nil, fmt.Errorf("gateway: cluster %s: %w", cc.Name, err)
	}
	c := &cluster{
		name:      cc.Name,
		leastReq:  cc.Balancing == "least_request",
		protocol:  cc.Protocol,
		tls:       spec.TLS != nil,
		configRef: cc,
		log:       g.log,
		budget:    newRetryBudget(cc.Retries),
		pool: transport.NewPool(d, transport.PoolConfig{
			MaxConnsPerUpstream: cc.Pool.MaxConns,
			MaxIdlePerUpstream:  cc.Pool.MaxIdle,
			IdleTimeout:         time.Duration(cc.Pool.IdleTimeout),
			MaxRequestsPerConn:  cc.Pool.MaxRequests,
			MaxConnLifetime:     time.Duration(cc.Pool.MaxLifetime),
			DialBackoff:         dialBackoff(cc.Pool.DialBackoff),
			DialBackoffMax:      time.Duration(cc.Pool.DialBackoffMax),
			Unsharded:           cc.Pool.Unsharded,
		}),
	}
	for _, s := range cc.Servers {
		c.servers = append(c.servers, &upstreamServer{addr: s})
	}
	c.startHealthChecks()
	return c, nil
}

// cluster returns the cluster of st whose config equals cc, or nil.
func (st *state) cluster(cc *ClusterConfig) *cluster {
	if st == nil {
		return nil
	}
	for _, c := range st.clusters {
		if reflect.DeepEqual(c.configRef, cc) {
			return c
		}
	}
	return nil
}

// Reload switches to cfg (already validated by ParseConfig or LoadConfig);
// h3Port is the UDP port HTTP/3 is now served on (0 when off), for Alt-Svc.
// Requests in flight finish on the config they started with; new requests
// use cfg. Clusters whose settings did not change keep their pools; the pools
// of removed or changed clusters drain once the last request of the old
// config has ended, bounded by the new drain timeout, and close. On error the
// old config keeps serving.
func (g *Gateway) Reload(cfg *Config, h3Port int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.state.Load()
	prevPort := g.h3Port
	g.h3Port = h3Port
	st, err := g.compile(cfg, old)
	if err != nil {
		g.h3Port = prevPort
		return err
	}
	g.state.Store(st)
	g.reloads.Add(1)
	for _, c := range st.clusters {
		c.pool.SetShards(0) // a kept pool reads GOMAXPROCS again
	}
	old.retire()
	if g.metrics != nil {
		g.metrics.forget(old, st)
	}
	var dropped []*cluster
	for _, c := range old.clusters {
		if !slices.Contains(st.clusters, c) {
			dropped = append(dropped, c)
		}
	}
	// The old exporter, if replaced, sends the spans of the old config's
	// last requests and closes.
	oldExp := old.exporter()
	if oldExp == st.exporter() {
		oldExp = nil
	}
	timeout := time.Duration(cfg.DrainTimeout)
	g.retiring.Go(func() {
		select {
		case <-old.idle:
		case <-g.closing:
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		go func() {
			select {
			case <-g.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		for _, c := range dropped {
			if err := c.shutdown(ctx); err != nil {
				c.close()
			}
		}
		if oldExp != nil {
			oldExp.Close(ctx)
		}
	})
	g.log.Info("config reloaded", "file", cfg.File, "hash", cfg.Hash()[:12],
		"clusters", len(st.clusters), "clusters_replaced", len(dropped), "routes", len(cfg.Routes))
	return nil
}

// Status is a snapshot of the gateway for the admin endpoint.
type Status struct {
	ConfigFile string    `json:"config_file"`
	ConfigHash string    `json:"config_hash"`
	LoadedAt   time.Time `json:"loaded_at"`
	Reloads    uint64    `json:"reloads"`
	InFlight   int64     `json:"in_flight"`
	Draining   bool      `json:"draining"`
	Panics     uint64    `json:"panics_recovered"`
}

// Status returns the gateway's status.
func (g *Gateway) Status() Status {
	st := g.state.Load()
	return Status{
		ConfigFile: st.cfg.File, ConfigHash: st.cfg.Hash(), LoadedAt: st.loadedAt,
		Reloads: g.reloads.Load(), InFlight: g.active.Load(), Draining: g.Draining(), Panics: g.panics.Load(),
	}
}

// InFlight returns the number of streams being served.
func (g *Gateway) InFlight() int64 { return g.active.Load() }

// Config returns the config in force.
func (g *Gateway) Config() *Config { return g.state.Load().cfg }

// Draining reports whether a drain has begun.
func (g *Gateway) Draining() bool { return g.drain != nil && g.drain.Draining() }

// Panics returns the number of panics recovered while serving streams.
func (g *Gateway) Panics() uint64 { return g.panics.Load() }

// Shutdown drains the upstream pools: streams in flight finish unless ctx
// ends first. It implements transport.Shutdowner with Close.
func (g *Gateway) Shutdown(ctx context.Context) error {
	var errs []error
	for _, c := range g.state.Load().clusters {
		errs = append(errs, c.shutdown(ctx))
	}
	done := make(chan struct{})
	go func() { g.retiring.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, ctx.Err())
	}
	// Last: the spans of the requests that just finished.
	if e := g.state.Load().exporter(); e != nil {
		errs = append(errs, e.Close(ctx))
	}
	return errors.Join(errs...)
}

// Close closes the upstream pools at once, those of replaced configs too.
func (g *Gateway) Close() error {
	g.closeOne.Do(func() { close(g.closing) })
	for _, c := range g.state.Load().clusters {
		c.close()
	}
	g.retiring.Wait()
	if e := g.state.Load().exporter(); e != nil {
		// At once: an export in progress is aborted, queued spans dropped.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		e.Close(ctx)
	}
	return nil
}

// PoolStats returns the upstream pool counters of a cluster, for tests and the
// admin endpoint.
func (g *Gateway) PoolStats(cluster string) (transport.PoolStats, bool) {
	for _, c := range g.state.Load().clusters {
		if c.name == cluster {
			return c.pool.Stats(), true
		}
	}
	return transport.PoolStats{}, false
}
