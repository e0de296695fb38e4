package gateway

import (
	"time"
)

// Config is the gateway's configuration, as read from a YAML file by
// ParseConfig or LoadConfig. The zero value of every field takes the default
// documented on it; ParseConfig fills defaults into the Config it returns.
type Config struct {
	// Listen is the address for TCP (HTTP/1.1 and HTTP/2 over TLS) and,
	// when HTTP/3 is on, UDP (QUIC) on the same port. Default ":8443".
	Listen string `yaml:"listen"`

	// TLS holds the server certificates.
	TLS TLSConfig `yaml:"tls"`

	// HTTP2 configures the HTTP/2 server.
	HTTP2 HTTP2Config `yaml:"http2"`

	// HTTP3 configures QUIC and HTTP/3 on Listen's UDP port.
	HTTP3 HTTP3Config `yaml:"http3"`

	// AltSvc configures the Alt-Svc header that advertises HTTP/3 on
	// HTTP/1.1 and HTTP/2 responses.
	AltSvc AltSvcConfig `yaml:"alt_svc"`

	// Limits bound what one client may send.
	Limits LimitsConfig `yaml:"limits"`

	// TrustedProxies lists the CIDRs (or single addresses) whose
	// X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host the gateway
	// keeps and appends to. From any other client they are replaced.
	// Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`

	// DrainTimeout bounds a graceful shutdown: in-flight requests get this
	// long to finish before they are cut. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout"`

	// ShutdownDelay keeps the gateway accepting for this long after a drain
	// began and /readyz turned 503, for load balancers that poll readiness
	// slowly. Default 0.
	ShutdownDelay Duration `yaml:"shutdown_delay"`

	// Admin configures the admin HTTP endpoint.
	Admin AdminConfig `yaml:"admin"`

	// Log configures logging.
	Log LogConfig `yaml:"log"`

	// AccessLog configures the access log: one line per request.
	AccessLog AccessLogConfig `yaml:"access_log"`

	// Metrics configures the Prometheus metrics of the admin endpoint.
	Metrics MetricsConfig `yaml:"metrics"`

	// Tracing configures W3C Trace Context propagation and the export of
	// spans to an OpenTelemetry collector.
	Tracing TracingConfig `yaml:"tracing"`

	// Routes map requests to clusters. The most specific host wins (exact,
	// then the longest "*." wildcard, then routes without host), then the
	// longest path prefix. A route without host and with path prefix "/" is
	// the default route.
	Routes []RouteConfig `yaml:"routes"`

	// Clusters are the upstream groups that routes name.
	Clusters []ClusterConfig `yaml:"clusters"`

	// File is the path the config was read from, for messages. Not in YAML.
	File string `yaml:"-"`
}

// TLSConfig holds the server's certificates.
type TLSConfig struct {
	// Certificates are PEM certificate and key file pairs. The one whose
	// names match the client's SNI is served; the first is the fallback.
	// Required unless the embedded default generates one.
	Certificates []CertificateConfig `yaml:"certificates"`

	// HandshakeTimeout bounds the TLS handshake of a TCP client. Default 10s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
}

// CertificateConfig is one certificate chain and its private key, PEM files.
type CertificateConfig struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// HTTP2Config configures the HTTP/2 server. Its limits are in Limits.
type HTTP2Config struct {
	// Engine is the HTTP/2 server implementation: "native", ProxyNow's own
	// (h2spec-clean, one write per short response, RST_STREAM codes from
	// the error table), or "xnet", golang.org/x/net/http2's server, the
	// engine of earlier releases, kept as a fallback. Like Envoy's switch
	// between its nghttp2 and oghttp2 codecs, it changes nothing else.
	// Default "native".
	Engine string `yaml:"engine"`

	// InitialStreamWindow and InitialConnWindow are the flow-control
	// windows granted to a client's request bodies, per stream and per
	// connection; they bound the body bytes buffered per connection.
	// Between 65535 and 2 GiB - 1 bytes; defaults 1 MiB and 4 MiB.
	InitialStreamWindow ByteSize `yaml:"initial_stream_window"`
	InitialConnWindow   ByteSize `yaml:"initial_conn_window"`
}

// HTTP3Config configures QUIC and HTTP/3.
type HTTP3Config struct {
	// Enabled turns HTTP/3 on, on Listen's UDP port. Default true.
	Enabled *bool `yaml:"enabled"`

	// Engine is the HTTP/3 server implementation on quic-go's QUIC
	// connections: "native", ProxyNow's own HTTP/3 framing (no
	// http.Request or goroutine per request besides the handler's), or
	// "quicgo", quic-go's http3.Server, kept as a fallback. Like
	// http2.engine, it changes nothing else. Default "native".
	Engine string `yaml:"engine"`

	// IdleTimeout closes a QUIC connection without activity. Default 30s.
	IdleTimeout Duration `yaml:"idle_timeout"`

	// HandshakeTimeout bounds the QUIC handshake. Default 10s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`

	// MaxStreams is the number of concurrent bidirectional streams a client
	// may open per connection. Default 250.
	MaxStreams int `yaml:"max_streams"`

	// InitialStreamWindow and MaxStreamWindow are the per-stream flow-control
	// windows in bytes. Defaults 512 KiB and 6 MiB.
	InitialStreamWindow ByteSize `yaml:"initial_stream_window"`
	MaxStreamWindow     ByteSize `yaml:"max_stream_window"`

	// InitialConnWindow and MaxConnWindow are the per-connection flow-control
	// windows in bytes. Defaults 768 KiB and 15 MiB.
	InitialConnWindow ByteSize `yaml:"initial_conn_window"`
	MaxConnWindow     ByteSize `yaml:"max_conn_window"`

	// KeepAlivePeriod sends a PING this often to keep NAT bindings open;
	// 0 (the default) disables keep-alives.
	KeepAlivePeriod Duration `yaml:"keep_alive_period"`

	// EarlyData is the 0-RTT policy: "off" (default) or "safe" (early data
	// accepted for safe methods only, forwarded with Early-Data: 1; an
	// unsafe method in early data gets 425 Too Early).
	EarlyData string `yaml:"early_data"`

	// Retry is the address validation policy: "never", "always", or "auto"
	// (the default): a Retry is sent while more than RetryAbove handshakes
	// per second arrive.
	Retry string `yaml:"retry"`

	// RetryAbove is the handshakes-per-second threshold of Retry "auto".
	// Default 1000.
	RetryAbove int `yaml:"retry_above"`

	// MaxHandshakesPerSecond bounds new QUIC connections per second; above
	// it new ones are refused. Default 5000.
	MaxHandshakesPerSecond int `yaml:"max_handshakes_per_second"`

	// MaxConnsPerSource bounds concurrent QUIC connections from one source
	// IP address. Default 100.
	MaxConnsPerSource int `yaml:"max_conns_per_source"`

	// KeyFile holds the stateless-reset key and the address-validation
	// token key, so that resets and tokens keep working across restarts and
	// across a fleet sharing the file. Generated, with a log message, when
	// named but absent. Default: none (keys are random per process).
	KeyFile string `yaml:"key_file"`
}

// AltSvcConfig configures the Alt-Svc advertisement of HTTP/3.
type AltSvcConfig struct {
	// Enabled advertises HTTP/3 on HTTP/1.1 and HTTP/2 responses while
	// HTTP/3 is on. Routes may override it. Default true.
	Enabled *bool `yaml:"enabled"`

	// MaxAge is the ma= parameter: how long clients remember the
	// alternative. Default 24h (86400 s), the RFC 7838 default: long enough
	// that returning clients start on HTTP/3, short enough that turning
	// HTTP/3 off takes effect within a day even for clients that never see
	// Alt-Svc: clear.
	MaxAge Duration `yaml:"max_age"`

	// Port is the advertised UDP port, for when the public port differs
	// from Listen's (a Kubernetes Service, a load balancer). Default:
	// Listen's port.
	Port int `yaml:"port"`
}

// LimitsConfig bounds what one downstream client may send.
type LimitsConfig struct {
	// MaxHeaderBytes bounds the request header block (request line and
	// fields). Beyond it: 431. Default 64 KiB.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes"`

	// MaxHeaderCount bounds the number of request header fields. Beyond
	// it: 431. Default 100.
	MaxHeaderCount int `yaml:"max_header_count"`

	// MaxRequestLine bounds an HTTP/1.1 request line. Beyond it: 414.
	// Default 8 KiB.
	MaxRequestLine ByteSize `yaml:"max_request_line"`

	// HeaderTimeout bounds the time to receive a whole request header
	// block; a slower client is closed. Default 10s.
	HeaderTimeout Duration `yaml:"header_timeout"`

	// IdleTimeout closes an HTTP/1.1 keep-alive or HTTP/2 connection with
	// no request in flight. Default 120s.
	IdleTimeout Duration `yaml:"idle_timeout"`

	// WriteTimeout fails a response whose writes to the client make no
	// progress for this long (a client that stops reading): an HTTP/1.1
	// connection is closed; an HTTP/2 connection whose socket stalls is
	// closed, and a stream the client grants no flow-control window is
	// reset; an HTTP/3 stream is reset. The upstream request is cancelled
	// and logged as 499. Default 30s.
	WriteTimeout Duration `yaml:"write_timeout"`

	// MaxBodyBytes bounds a request body. Beyond it: 413. Default 0: no
	// limit.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`

	// MaxConcurrentStreams bounds concurrent streams per HTTP/2
	// connection. Default 250.
	MaxConcurrentStreams int `yaml:"max_concurrent_streams"`
}

// AdminConfig configures the admin endpoint (/healthz, /readyz).
type AdminConfig struct {
	// Listen is the admin address. Default "127.0.0.1:9901"; "off"
	// disables the endpoint.
	Listen string `yaml:"listen"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is "debug", "info" (default), "warn" or "error".
	Level string `yaml:"level"`

	// Format is "auto" (default: text on a terminal, JSON otherwise),
	// "text" or "json".
	Format string `yaml:"format"`

	// Buffer is the number of records queued for the log writer (and as
	// many again for the access log writer): logging never waits for the
	// output; beyond the buffer, records are dropped and counted in
	// proxynow_log_records_dropped_total. Default 2048. Read at start.
	Buffer int `yaml:"buffer"`
}

// AccessLogConfig configures the access log. Its lines go to the log output
// with the message "access", whatever log.level says.
type AccessLogConfig struct {
	// Enabled turns the access log on. Default true.
	Enabled *bool `yaml:"enabled"`

	// SampleRatio is the fraction of requests logged, 0 to 1. Default 1.
	SampleRatio *float64 `yaml:"sample_ratio"`

	// Errors logs every failed request whatever SampleRatio says: an
	// error the gateway answered (404 no route, 502, 504, ...), a 5xx from
	// the upstream, a response cut short, a client gone. Default true.
	Errors *bool `yaml:"errors"`
}

// MetricsConfig configures the Prometheus metrics.
type MetricsConfig struct {
	// Enabled serves /metrics on the admin endpoint and counts requests.
	// Default true.
	Enabled *bool `yaml:"enabled"`
}

// TracingConfig configures tracing. Requests carry W3C traceparent and
// tracestate to the upstream whether or not tracing is on; with tracing on,
// the gateway adds its own spans to a sampled request's trace.
type TracingConfig struct {
	// Endpoint is the base URL of an OpenTelemetry collector's OTLP/HTTP
	// receiver ("http://otel-collector:4318"); spans are POSTed in the OTLP
	// JSON encoding to Endpoint + "/v1/traces". Default "": tracing off.
	Endpoint string `yaml:"endpoint"`

	// SampleRatio is the fraction of requests traced (head sampling), 0 to
	// 1. Default 0.01.
	SampleRatio *float64 `yaml:"sample_ratio"`

	// SampleErrors also exports the spans of every failed request (see
	// AccessLogConfig.Errors), decided when it ends; its upstream did not
	// see it as sampled. Default false.
	SampleErrors bool `yaml:"sample_errors"`

	// ParentBased follows the sampled flag of a client's traceparent
	// instead of SampleRatio. Default false: at the edge, clients are not
	// trusted to decide what is traced.
	ParentBased bool `yaml:"parent_based"`

	// ServiceName is the service.name of the spans. Default "proxynow".
	ServiceName string `yaml:"service_name"`

	// QueueSize bounds the spans waiting for export; beyond it they are
	// dropped and counted. Default 2048.
	QueueSize int `yaml:"queue_size"`

	// BatchSize is the number of spans per export request. Default 512.
	BatchSize int `yaml:"batch_size"`

	// FlushInterval is the longest a span waits for a batch to fill.
	// Default 5s.
	FlushInterval Duration `yaml:"flush_interval"`

	// Timeout bounds one export request. Default 10s.
	Timeout Duration `yaml:"timeout"`
}

// RouteConfig maps a host and path prefix to a cluster.
type RouteConfig struct {
	// Host is an exact host ("api.example.com"), a wildcard
	// ("*.example.com", which matches one or more labels in front of
	// example.com), or empty for any host. Matched without port, case
	// insensitively.
	Host string `yaml:"host"`

	// PathPrefix matches the request path at a segment boundary: "/api"
	// matches "/api" and "/api/x", not "/apix". Default "/".
	PathPrefix string `yaml:"path_prefix"`

	// Cluster names the cluster that serves the route. Required.
	Cluster string `yaml:"cluster"`

	// AltSvc overrides AltSvcConfig.Enabled for this route.
	AltSvc *bool `yaml:"alt_svc"`
}

// ClusterConfig is a group of upstream servers.
type ClusterConfig struct {
	// Name identifies the cluster in routes, logs and metrics. Required,
	// unique.
	Name string `yaml:"name"`

	// Servers are the upstream addresses, host:port. At least one.
	Servers []string `yaml:"servers"`

	// Protocol is the upstream protocol: "h1" (default; HTTP/1.1, over
	// TLS when TLS.Enabled), "h2" (HTTP/2 over TLS), "h2c" (HTTP/2 over
	// cleartext TCP, prior knowledge) or "h3" (HTTP/3 over QUIC).
	Protocol string `yaml:"protocol"`

	// Balancing is "round_robin" (default) or "least_request" (power of
	// two choices).
	Balancing string `yaml:"balancing"`

	// TLS configures TLS to the upstream. h2 and h3 always use TLS.
	TLS UpstreamTLSConfig `yaml:"tls"`

	// ConnectTimeout bounds the TCP connect (and for an h2 cluster, the
	// exchange of HTTP/2 prefaces after it). Default 5s.
	ConnectTimeout Duration `yaml:"connect_timeout"`

	// TLSHandshakeTimeout bounds the TLS handshake that follows the TCP
	// connect. QUIC carries its TLS handshake in its own, so an h3
	// cluster's handshake is bounded by connect_timeout plus this.
	// Default 10s.
	TLSHandshakeTimeout Duration `yaml:"tls_handshake_timeout"`

	// ResponseHeaderTimeout bounds the wait for the response head after
	// the request was sent. Default 30s.
	ResponseHeaderTimeout Duration `yaml:"response_header_timeout"`

	// Pool bounds the upstream connection pool.
	Pool PoolConfig `yaml:"pool"`

	// TryTimeout bounds one attempt, from picking an upstream (waiting for
	// a conn or a dial included) to its response head; a retry gets a new
	// one. Default 0: only ConnectTimeout and ResponseHeaderTimeout apply.
	TryTimeout Duration `yaml:"try_timeout"`

	// BodyIdleTimeout bounds the wait for each piece of the upstream's
	// response body; a stalled upstream is cut (the client sees a reset).
	// Default 0: no limit.
	BodyIdleTimeout Duration `yaml:"body_idle_timeout"`

	// Timeout bounds the whole exchange, retries included, from the
	// request's arrival to the end of the response body. Default 0: no
	// limit (long downloads and streams are legitimate).
	Timeout Duration `yaml:"timeout"`

	// MaxConcurrentRequests caps the requests in flight to the cluster;
	// beyond it, 503 with Proxy-Status connection_limit_reached. Default 0:
	// no cap.
	MaxConcurrentRequests int `yaml:"max_concurrent_requests"`

	// MaxPendingRequests caps the requests waiting for an upstream conn
	// (all conns busy, a dial in progress); beyond it, 503. Default 0: no
	// cap.
	MaxPendingRequests int `yaml:"max_pending_requests"`

	// Retries configures retries.
	Retries RetryConfig `yaml:"retries"`

	// HealthCheck configures active health checks; off unless Path is set.
	HealthCheck HealthCheckConfig `yaml:"health_check"`

	// OutlierDetection configures passive health: an upstream that fails
	// several requests in a row is ejected for a while.
	OutlierDetection OutlierConfig `yaml:"outlier_detection"`
}

// RetryConfig configures retries. A request is retried only when the
// upstream provably did not process it (the connection failed, the stream was
// refused or fell above a GOAWAY), whatever its method, or when its method is
// idempotent and nothing of its body was sent yet and the upstream reset the
// exchange before the response head. A POST that reached an upstream is never
// sent twice. Retries go to another upstream when the cluster has one.
type RetryConfig struct {
	// Max is the number of retries of one request. Default 2; set -1 for
	// none.
	Max int `yaml:"max"`

	// BudgetPercent caps retries at this percentage of the requests, so a
	// failing cluster is not hammered. Default 20.
	BudgetPercent int `yaml:"budget_percent"`

	// MinPerSecond retries are allowed whatever the budget, so a quiet
	// cluster can still retry. Default 10.
	MinPerSecond int `yaml:"min_per_second"`
}

// HealthCheckConfig configures active health checks: a GET of Path on each
// upstream every Interval. Upstreams start healthy.
type HealthCheckConfig struct {
	// Path is the request path; empty (the default) disables active checks.
	Path string `yaml:"path"`
	// Host is the Host of the check request. Default: the server's address.
	Host string `yaml:"host"`
	// Interval between checks of one upstream. Default 10s.
	Interval Duration `yaml:"interval"`
	// Timeout of one check. Default 2s.
	Timeout Duration `yaml:"timeout"`
	// HealthyThreshold consecutive passes make an unhealthy upstream
	// healthy. Default 2.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// UnhealthyThreshold consecutive failures make a healthy upstream
	// unhealthy. Default 3.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
	// ExpectedStatus is the status that passes. Default 0: any 2xx.
	ExpectedStatus int `yaml:"expected_status"`
}

// OutlierConfig configures passive outlier detection. Failures are the
// gateway's own errors reaching an upstream (refused, timed out, reset,
// malformed) and 502, 503 and 504 responses.
type OutlierConfig struct {
	// ConsecutiveFailures ejects an upstream after this many failures in a
	// row. Default 5; -1 disables outlier detection.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// BaseEjection is the first ejection's length; the n-th ejection in a
	// row lasts n times as long. Default 30s.
	BaseEjection Duration `yaml:"base_ejection"`
	// MaxEjection caps an ejection. Default 5m.
	MaxEjection Duration `yaml:"max_ejection"`
}

// UpstreamTLSConfig configures TLS to upstream servers.
type UpstreamTLSConfig struct {
	// Enabled turns TLS on for protocol h1. Default false (h1), always true
	// for h2 and h3, never for h2c.
	Enabled bool `yaml:"enabled"`

	// ServerName is the SNI and verified name. Default: the server's host.
	ServerName string `yaml:"server_name"`

	// CAFile is a PEM bundle of roots to verify the upstream with. Default:
	// the system roots.
	CAFile string `yaml:"ca_file"`

	// InsecureSkipVerify disables certificate verification. Default false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// PoolConfig bounds a cluster's upstream connection pool.
type PoolConfig struct {
	// MaxConns caps the conns per upstream server. Default 256.
	MaxConns int `yaml:"max_conns"`
	// MaxIdle caps the idle conns kept per upstream server. Below the
	// requests in flight at peak, conns are closed and dialed again all
	// the time. Default: max_conns (idle conns still close after
	// idle_timeout).
	MaxIdle int `yaml:"max_idle"`
	// IdleTimeout closes a conn idle for this long. Default 90s.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxRequests retires a conn after this many requests: it takes no
	// new one and closes once its last ends. Default 0: unlimited.
	MaxRequests int `yaml:"max_requests"`
	// MaxLifetime retires a conn, the same way, this long after it was
	// opened. Default 0: unlimited.
	MaxLifetime Duration `yaml:"max_lifetime"`
	// DialBackoff is how long, after a failed connect to a server with no
	// conn open, requests for that server fail at once with the connect
	// error (and are retried on another server when retries allow) instead
	// of each trying to connect again. It doubles with each further failed
	// connect up to DialBackoffMax, and ends with the first one that works.
	// Default 10ms; 0s turns it off.
	DialBackoff *Duration `yaml:"dial_backoff"`
	// DialBackoffMax caps DialBackoff. It is also the longest time a
	// server that came back can go unnoticed. Default 250ms.
	DialBackoffMax Duration `yaml:"dial_backoff_max"`
	// Unsharded selects the previous, unsharded pool, for benchmarks that
	// compare the two. Not settable from YAML.
	Unsharded bool `yaml:"-"`
}

// Duration is a time.Duration written in YAML as a Go duration string
// ("1.5s", "30s", "2m").
type Duration time.Duration

// ByteSize is a size in bytes, written in YAML as an integer or with a unit
// suffix: "512KiB", "64MiB", "1GiB" (also "KB", "MB", "GB" as powers of 1000).
type ByteSize int64
