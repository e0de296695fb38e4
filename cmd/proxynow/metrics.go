package main

import (
	"errors"
	"net"
	"runtime"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport"
)

// processMetrics are the instruments of the process around the gateway: the
// QUIC server, downstream connections, the drain, reloads, the log writers,
// the Go runtime and the process. The gateway registers its own on the same
// registry.
type processMetrics struct {
	reloads *prometheus.CounterVec
	// tcpConns are the downstream TCP conns open, by state: in the TLS
	// handshake, then HTTP/1.1 or HTTP/2 by ALPN.
	tcpConns [numConnStates]atomic.Int64
}

// The states of a downstream TCP conn, indexes of processMetrics.tcpConns.
const (
	connHandshake int32 = iota
	connH1
	connH2
	numConnStates
	connClosed = numConnStates
)

var connStateLabels = [numConnStates]string{connHandshake: "tls_handshake", connH1: "h1", connH2: "h2"}

// newRegistry returns the registry of one instance with the process metrics
// registered: a registry per instance, so two gateways run in one test binary.
func (inst *instance) newRegistry(l *logs) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	m := &inst.metrics
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "proxynow_config_reloads_total",
		Help: "Config reloads by SIGHUP or POST /reload, by result: success, or failure (the previous config kept serving).",
	}, []string{"result"})
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.reloads,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "proxynow_build_info",
			Help:        "The version running, as labels, and the value 1.",
			ConstLabels: prometheus.Labels{"version": versionString(), "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "proxynow_drain_streams_cut_total",
			Help: "Streams cut because the drain timeout passed.",
		}, func() float64 { return float64(inst.drain.Cut()) }),
		&frontCollector{inst: inst},
	)
	for p := transport.PhaseServing; p <= transport.PhaseStopped; p++ {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "proxynow_drain_phase",
			Help:        "The drain phase: 1 for the current one, 0 for the others.",
			ConstLabels: prometheus.Labels{"phase": p.String()},
		}, func() float64 {
			if inst.drain.Phase() == p {
				return 1
			}
			return 0
		}))
	}
	if l != nil {
		for name, h := range map[string]interface{ Dropped() uint64 }{"app": l.app, "access": l.access} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "proxynow_log_records_dropped_total",
				Help:        "Log records dropped because the writer's queue was full (log.buffer), by log: app or access.",
				ConstLabels: prometheus.Labels{"log": name},
			}, func() float64 { return float64(h.Dropped()) }))
		}
	}
	return reg
}

// countReload counts the result of a reload.
func (m *processMetrics) countReload(err error) {
	if m.reloads == nil {
		return
	}
	if err != nil {
		m.reloads.WithLabelValues("failure").Inc()
	} else {
		m.reloads.WithLabelValues("success").Inc()
	}
}

// frontCollector reports the frontend's counters at scrape time: the QUIC
// server's (h3.Server.Stats) and the TCP conns open. After a reload that
// changed the listen address, the new server's counters start again from 0,
// which Prometheus reads as a counter reset.
type frontCollector struct{ inst *instance }

var (
	descConns = prometheus.NewDesc("proxynow_active_connections",
		"Downstream connections open, by protocol: h1 and h2 (by ALPN), h3, or tls_handshake (TCP conns in their TLS handshake).",
		[]string{"protocol"}, nil)
	descHandshakes = prometheus.NewDesc("proxynow_quic_handshakes_total",
		"QUIC connections accepted: handshake done, or ready for 0-RTT.", nil, nil)
	descRefused = prometheus.NewDesc("proxynow_quic_connections_refused_total",
		"QUIC connection attempts refused by http3.max_handshakes_per_second or http3.max_conns_per_source (per Initial packet).", nil, nil)
	descRetries = prometheus.NewDesc("proxynow_quic_retries_sent_total",
		"Initial packets answered with a Retry, by the http3.retry policy.", nil, nil)
	descEarly = prometheus.NewDesc("proxynow_quic_early_data_requests_total",
		"HTTP/3 requests received in 0-RTT early data and accepted.", nil, nil)
	descH3Rejected = prometheus.NewDesc("proxynow_http3_header_rejected_total",
		"HTTP/3 requests answered with 431 for too many header fields.", nil, nil)
	descZeroRTT = prometheus.NewDesc("proxynow_quic_zero_rtt_connections_total",
		"QUIC connections whose ClientHello offered 0-RTT, by result: accepted or rejected (http3.early_data off, "+
			"an unusable ticket, changed transport parameters, or a HelloRetryRequest).", []string{"result"}, nil)
	descUDPDrops = prometheus.NewDesc("proxynow_udp_receive_drops_total",
		"Datagrams for the HTTP/3 UDP socket that the kernel dropped, mostly for a full receive buffer "+
			"(net.core.rmem_max): the socket's drops in /proc/net/udp. Linux only.", nil, nil)
	descUDPSndbuf = prometheus.NewDesc("proxynow_udp_host_send_buffer_errors_total",
		"UDP datagrams the kernel could not send for lack of send buffer, for the whole network namespace "+
			"(all processes): Udp SndbufErrors in /proc/net/snmp and snmp6. Linux only.", nil, nil)
)

func (c *frontCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descHandshakes, descRefused, descRetries, descEarly, descH3Rejected,
		descZeroRTT, descUDPDrops, descUDPSndbuf} {
		ch <- d
	}
}

func (c *frontCollector) Collect(ch chan<- prometheus.Metric) {
	c.inst.mu.Lock()
	var srv *h3.Server
	if f := c.inst.front; f != nil {
		srv = f.h3
	}
	c.inst.mu.Unlock()
	for i := range c.inst.metrics.tcpConns {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(c.inst.metrics.tcpConns[i].Load()), connStateLabels[i])
	}
	var s h3.ServerStats
	if srv != nil {
		s = srv.Stats()
	}
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.ConnsOpen), "h3")
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(s.Conns))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(s.Refused))
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(s.Retries))
	ch <- prometheus.MustNewConstMetric(descEarly, prometheus.CounterValue, float64(s.EarlyRequests))
	ch <- prometheus.MustNewConstMetric(descH3Rejected, prometheus.CounterValue, float64(s.HeaderRejected))
	ch <- prometheus.MustNewConstMetric(descZeroRTT, prometheus.CounterValue, float64(s.ZeroRTTAccepted), "accepted")
	ch <- prometheus.MustNewConstMetric(descZeroRTT, prometheus.CounterValue, float64(s.ZeroRTTRejected), "rejected")
	ch <- prometheus.MustNewConstMetric(descUDPDrops, prometheus.CounterValue, float64(s.UDPReceiveDrops))
	ch <- prometheus.MustNewConstMetric(descUDPSndbuf, prometheus.CounterValue, float64(s.HostUDPSndbufErrors))
}

// tcpCountListener counts the conns it accepted that are still open, by
// state (processMetrics.tcpConns). It wraps the raw TCP listener, under TLS,
// so the servers still get *tls.Conn; the TLS listener's OnHandshake hook
// (onHandshake) moves a conn from the handshake to its protocol.
type tcpCountListener struct {
	net.Listener
	m *processMetrics
}

func (l tcpCountListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.m.tcpConns[connHandshake].Add(1)
	return &countedConn{Conn: c, m: l.m}, nil
}

// onHandshake is the TLS listener's OnHandshake hook.
func (m *processMetrics) onHandshake(raw net.Conn, proto string) {
	c, ok := raw.(*countedConn)
	if !ok {
		return
	}
	to := connH1
	if proto == "h2" {
		to = connH2
	}
	if c.state.CompareAndSwap(connHandshake, to) {
		m.tcpConns[connHandshake].Add(-1)
		m.tcpConns[to].Add(1)
	}
}

// countedConn takes itself off the count on the first Close. It passes
// CloseWrite through for the HTTP/1.1 server's lingering close.
type countedConn struct {
	net.Conn
	m     *processMetrics
	state atomic.Int32 // a conn state; connClosed after Close
}

func (c *countedConn) Close() error {
	if s := c.state.Swap(connClosed); s != connClosed {
		c.m.tcpConns[s].Add(-1)
	}
	return c.Conn.Close()
}

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
