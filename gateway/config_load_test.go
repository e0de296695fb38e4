package gateway

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// cfgWriteCert writes a self-signed ECDSA certificate for names and its key
// as PEM files certPath and keyPath.
func cfgWriteCert(t testing.TB, certPath, keyPath string, names ...string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{certPath, "CERTIFICATE", der}, {keyPath, "PRIVATE KEY", keyDER}} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// cfgFullExample returns testdata/config/full.yaml with its /etc/proxynow/
// paths moved to a temporary directory holding generated certificates.
func cfgFullExample(t testing.TB, dir string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/config/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfgWriteCert(t, dir+"/tls/example.com.crt", dir+"/tls/example.com.key", "example.com", "*.example.com")
	cfgWriteCert(t, dir+"/tls/example.net.crt", dir+"/tls/example.net.key", "example.net", "media.example.net")
	cfgWriteCert(t, dir+"/ca/internal-ca.pem", dir+"/ca/internal-ca.key", "Internal CA")
	return bytes.ReplaceAll(data, []byte("/etc/proxynow/"), []byte(dir+"/"))
}

// configErrors flattens err into its *ConfigErrors; it fails the test if
// err holds anything else.
func configErrors(t testing.TB, err error) []*ConfigError {
	t.Helper()
	var out []*ConfigError
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		ce, ok := err.(*ConfigError)
		if !ok {
			t.Fatalf("error %T is not a *ConfigError: %v", err, err)
		}
		out = append(out, ce)
	}
	if err != nil {
		walk(err)
	}
	return out
}

func TestParseConfigFullExample(t *testing.T) {
	dir := t.TempDir()
	data := cfgFullExample(t, dir)
	orig := bytes.Clone(data)
	c, err := ParseConfig("full.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, orig) {
		t.Error("ParseConfig modified its input")
	}
	check := func(name string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", name, got, want)
		}
	}
	check("File", c.File, "full.yaml")
	check("Listen", c.Listen, ":443")
	check("TLS.Certificates", c.TLS.Certificates, []CertificateConfig{
		{dir + "/tls/example.com.crt", dir + "/tls/example.com.key"},
		{dir + "/tls/example.net.crt", dir + "/tls/example.net.key"},
	})
	check("TLS.HandshakeTimeout", c.TLS.HandshakeTimeout.D(), 10*time.Second)
	check("HTTP2.Engine", c.HTTP2.Engine, "native")
	check("HTTP2.InitialStreamWindow", c.HTTP2.InitialStreamWindow, ByteSize(2<<20))
	check("HTTP2.InitialConnWindow", c.HTTP2.InitialConnWindow, ByteSize(8<<20))
	check("HTTP3.Engine", c.HTTP3.Engine, "native")
	check("HTTP3Enabled", c.HTTP3Enabled(), true)
	h := c.HTTP3
	check("HTTP3.IdleTimeout", h.IdleTimeout.D(), 30*time.Second)
	check("HTTP3.MaxStreams", h.MaxStreams, 250)
	check("HTTP3.InitialStreamWindow", h.InitialStreamWindow, ByteSize(512<<10))
	check("HTTP3.MaxStreamWindow", h.MaxStreamWindow, ByteSize(6<<20))
	check("HTTP3.InitialConnWindow", h.InitialConnWindow, ByteSize(768<<10))
	check("HTTP3.MaxConnWindow", h.MaxConnWindow, ByteSize(15<<20))
	check("HTTP3.KeepAlivePeriod", h.KeepAlivePeriod.D(), 20*time.Second)
	check("HTTP3.EarlyData", h.EarlyData, "safe")
	check("HTTP3.Retry", h.Retry, "auto")
	check("HTTP3.KeyFile", h.KeyFile, "/var/lib/proxynow/quic-keys")
	check("AltSvcEnabled", c.AltSvcEnabled(), true)
	check("AltSvc.MaxAge", c.AltSvc.MaxAge.D(), 24*time.Hour)
	check("AltSvc.Port", c.AltSvc.Port, 443)
	check("Limits", c.Limits, LimitsConfig{
		MaxHeaderBytes: 64 << 10, MaxHeaderCount: 100, MaxRequestLine: 8 << 10,
		HeaderTimeout: Duration(10 * time.Second), IdleTimeout: Duration(2 * time.Minute), WriteTimeout: Duration(time.Minute),
		MaxBodyBytes: 100e6, MaxConcurrentStreams: 250,
	})
	check("TrustedProxies", c.TrustedProxies, []string{"10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "203.0.113.7"})
	check("DrainTimeout", c.DrainTimeout.D(), 30*time.Second)
	check("ShutdownDelay", c.ShutdownDelay.D(), 5*time.Second)
	check("Admin.Listen", c.Admin.Listen, "127.0.0.1:9901")
	check("Log", c.Log, LogConfig{Level: "info", Format: "json", Buffer: 4096})
	check("AccessLog", c.AccessLog, AccessLogConfig{Enabled: new(true), SampleRatio: new(0.1), Errors: new(true)})
	check("Metrics", c.Metrics, MetricsConfig{Enabled: new(true)})
	check("Tracing", c.Tracing, TracingConfig{
		Endpoint: "http://otel-collector:4318", SampleRatio: new(0.01), SampleErrors: true, ServiceName: "edge-eu-1",
		QueueSize: 2048, BatchSize: 512, FlushInterval: Duration(5 * time.Second), Timeout: Duration(10 * time.Second),
	})
	check("Routes", c.Routes, []RouteConfig{
		{Host: "api.example.com", PathPrefix: "/v1", Cluster: "api"},
		{Host: "*.example.com", PathPrefix: "/", Cluster: "web"},
		{Host: "media.example.net", PathPrefix: "/", Cluster: "media", AltSvc: new(false)},
		{PathPrefix: "/static", Cluster: "static"},
		{PathPrefix: "/", Cluster: "web"},
	})
	defPool := PoolConfig{MaxConns: 256, MaxIdle: 256, IdleTimeout: Duration(90 * time.Second),
		DialBackoff: new(Duration(10 * time.Millisecond)), DialBackoffMax: Duration(250 * time.Millisecond)}
	defRetries := RetryConfig{Max: 2, BudgetPercent: 20, MinPerSecond: 10}
	defHealth := HealthCheckConfig{Interval: Duration(10 * time.Second), Timeout: Duration(2 * time.Second), HealthyThreshold: 2, UnhealthyThreshold: 3}
	defOutlier := OutlierConfig{ConsecutiveFailures: 5, BaseEjection: Duration(30 * time.Second), MaxEjection: Duration(5 * time.Minute)}
	check("Clusters", c.Clusters, []ClusterConfig{{
		Name: "api", Servers: []string{"10.0.1.10:8080", "10.0.1.11:8080"}, Protocol: "h2c", Balancing: "least_request",
		ConnectTimeout: Duration(2 * time.Second), TLSHandshakeTimeout: Duration(3 * time.Second), ResponseHeaderTimeout: Duration(15 * time.Second),
		Pool: PoolConfig{MaxConns: 512, MaxIdle: 128, IdleTimeout: Duration(time.Minute), MaxRequests: 10000, MaxLifetime: Duration(time.Hour),
			DialBackoff: new(Duration(10 * time.Millisecond)), DialBackoffMax: Duration(250 * time.Millisecond)},
		TryTimeout: Duration(5 * time.Second), BodyIdleTimeout: Duration(time.Minute), Timeout: Duration(10 * time.Minute),
		MaxConcurrentRequests: 2000, MaxPendingRequests: 500,
		Retries: RetryConfig{Max: 1, BudgetPercent: 10, MinPerSecond: 5},
		HealthCheck: HealthCheckConfig{Path: "/healthz", Host: "api.internal", Interval: Duration(5 * time.Second),
			Timeout: Duration(time.Second), HealthyThreshold: 2, UnhealthyThreshold: 3, ExpectedStatus: 200},
		OutlierDetection: OutlierConfig{ConsecutiveFailures: 5, BaseEjection: Duration(30 * time.Second), MaxEjection: Duration(5 * time.Minute)},
	}, {
		Name: "web", Servers: []string{"web-1.internal:443", "web-2.internal:443"}, Protocol: "h2", Balancing: "round_robin",
		TLS:            UpstreamTLSConfig{Enabled: true, ServerName: "web.internal", CAFile: dir + "/ca/internal-ca.pem"},
		ConnectTimeout: Duration(5 * time.Second), TLSHandshakeTimeout: Duration(10 * time.Second),
		ResponseHeaderTimeout: Duration(30 * time.Second), Pool: defPool,
		Retries: defRetries, HealthCheck: defHealth, OutlierDetection: defOutlier,
	}, {
		Name: "media", Servers: []string{"media.internal:443"}, Protocol: "h3", Balancing: "round_robin",
		TLS:            UpstreamTLSConfig{Enabled: true},
		ConnectTimeout: Duration(3 * time.Second), TLSHandshakeTimeout: Duration(10 * time.Second),
		ResponseHeaderTimeout: Duration(30 * time.Second), Pool: defPool,
		Retries: defRetries, HealthCheck: defHealth, OutlierDetection: defOutlier,
	}, {
		Name: "static", Servers: []string{"static.internal:8080"}, Protocol: "h1", Balancing: "round_robin",
		TLS:            UpstreamTLSConfig{Enabled: true, CAFile: dir + "/ca/internal-ca.pem"},
		ConnectTimeout: Duration(5 * time.Second), TLSHandshakeTimeout: Duration(10 * time.Second),
		ResponseHeaderTimeout: Duration(30 * time.Second), Pool: defPool,
		Retries: defRetries, HealthCheck: defHealth, OutlierDetection: defOutlier,
	}})
	if got := c.Cluster("media"); got != &c.Clusters[2] {
		t.Errorf("Cluster(media) = %p, want %p", got, &c.Clusters[2])
	}
	if got := c.Cluster("nope"); got != nil {
		t.Errorf("Cluster(nope) = %v, want nil", got)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate of a parsed config: %v", err)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	const src = `
clusters:
  - name: app
    servers: ["127.0.0.1:8080"]
`
	c, err := ParseConfig("min.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s := func(d time.Duration) Duration { return Duration(d) }
	want := &Config{
		Listen: ":8443",
		TLS:    TLSConfig{HandshakeTimeout: s(10 * time.Second)},
		HTTP2:  HTTP2Config{Engine: "native", InitialStreamWindow: 1 << 20, InitialConnWindow: 4 << 20},
		HTTP3: HTTP3Config{
			Enabled: new(true), Engine: "native", IdleTimeout: s(30 * time.Second), HandshakeTimeout: s(10 * time.Second),
			MaxStreams: 250, InitialStreamWindow: 512 << 10, MaxStreamWindow: 6 << 20,
			InitialConnWindow: 768 << 10, MaxConnWindow: 15 << 20, EarlyData: "off", Retry: "auto",
			RetryAbove: 1000, MaxHandshakesPerSecond: 5000, MaxConnsPerSource: 100,
		},
		AltSvc: AltSvcConfig{Enabled: new(true), MaxAge: s(24 * time.Hour)},
		Limits: LimitsConfig{
			MaxHeaderBytes: 64 << 10, MaxHeaderCount: 100, MaxRequestLine: 8 << 10,
			HeaderTimeout: s(10 * time.Second), IdleTimeout: s(120 * time.Second), WriteTimeout: s(30 * time.Second), MaxConcurrentStreams: 250,
		},
		DrainTimeout: s(30 * time.Second),
		Admin:        AdminConfig{Listen: "127.0.0.1:9901"},
		Log:          LogConfig{Level: "info", Format: "auto", Buffer: 2048},
		AccessLog:    AccessLogConfig{Enabled: new(true), SampleRatio: new(1.0), Errors: new(true)},
		Metrics:      MetricsConfig{Enabled: new(true)},
		Tracing: TracingConfig{SampleRatio: new(0.01), ServiceName: "proxynow", QueueSize: 2048, BatchSize: 512,
			FlushInterval: s(5 * time.Second), Timeout: s(10 * time.Second)},
		Routes: []RouteConfig{{PathPrefix: "/", Cluster: "app"}},
		Clusters: []ClusterConfig{{
			Name: "app", Servers: []string{"127.0.0.1:8080"}, Protocol: "h1", Balancing: "round_robin",
			ConnectTimeout: s(5 * time.Second), TLSHandshakeTimeout: s(10 * time.Second), ResponseHeaderTimeout: s(30 * time.Second),
			Pool: PoolConfig{MaxConns: 256, MaxIdle: 256, IdleTimeout: s(90 * time.Second),
				DialBackoff: new(s(10 * time.Millisecond)), DialBackoffMax: s(250 * time.Millisecond)},
			Retries:          RetryConfig{Max: 2, BudgetPercent: 20, MinPerSecond: 10},
			HealthCheck:      HealthCheckConfig{Interval: s(10 * time.Second), Timeout: s(2 * time.Second), HealthyThreshold: 2, UnhealthyThreshold: 3},
			OutlierDetection: OutlierConfig{ConsecutiveFailures: 5, BaseEjection: s(30 * time.Second), MaxEjection: s(5 * time.Minute)},
		}},
		File: "min.yaml",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
	if c.Hash() != want.Hash() {
		t.Error("hash of parsed and built config differ")
	}

	// Explicit nulls and "---" markers change nothing.
	c2, err := ParseConfig("min.yaml", []byte("---\nlisten:\nhttp3: ~\n"+src+"---\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c2, want) {
		t.Errorf("with nulls:\n got %+v\nwant %+v", c2, want)
	}
}

func TestParseConfigFeatures(t *testing.T) {
	// Anchors, aliases and merge keys; explicit keys win over merged ones;
	// hosts are lowercased; yaml integer syntaxes; false overrides.
	const src = `
http3:
  enabled: false
  max_streams: 0x100
alt_svc: {enabled: false}
limits:
  max_body_bytes: 1_000_000
  max_header_bytes: "32 KiB"
routes:
  - {host: API.Example.COM, cluster: a}
  - {host: "*.Example.com", path_prefix: /x, cluster: b, alt_svc: true}
clusters:
  - &base
    name: a
    servers: &servers ["10.0.0.1:80", "[::1]:80", "backend.svc.cluster.local.:80"]
    protocol: h2
    pool: {max_conns: 8}
  - <<: *base
    name: b
    servers: *servers
  - <<: [{name: zzz, protocol: h2c}, *base]
    name: c
`
	c, err := ParseConfig("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP3Enabled() || c.AltSvcEnabled() {
		t.Error("enabled: false ignored")
	}
	if c.HTTP3.MaxStreams != 256 || c.Limits.MaxBodyBytes != 1e6 || c.Limits.MaxHeaderBytes != 32<<10 {
		t.Errorf("numbers: %d %d %d", c.HTTP3.MaxStreams, c.Limits.MaxBodyBytes, c.Limits.MaxHeaderBytes)
	}
	if c.Routes[0].Host != "api.example.com" || c.Routes[1].Host != "*.example.com" || !*c.Routes[1].AltSvc {
		t.Errorf("routes: %+v", c.Routes)
	}
	b, cc := c.Cluster("b"), c.Cluster("c")
	if b == nil || b.Protocol != "h2" || b.Pool.MaxConns != 8 || len(b.Servers) != 3 {
		t.Errorf("merged cluster b: %+v", b)
	}
	if cc == nil || cc.Protocol != "h2c" || cc.TLS.Enabled || len(cc.Servers) != 3 {
		t.Errorf("merged cluster c: %+v", cc)
	}
}

// cfgOneCluster is appended to invalid-config cases that do not define
// clusters, so that they have exactly the problem they test.
const cfgOneCluster = "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n"

func TestParseConfigInvalid(t *testing.T) {
	dir := t.TempDir()
	cfgWriteCert(t, dir+"/cert.pem", dir+"/key.pem", "example.com")
	cfgWriteCert(t, dir+"/other.pem", dir+"/other.key", "example.org")
	if err := os.WriteFile(dir+"/notpem.txt", []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		src   string
		bare  bool   // do not append cfgOneCluster
		pos   string // "LINE:COL" of the error; "0:0" for a whole-file error without position
		field string
		msg   string // a part of the message
	}{
		{name: "empty", src: "", bare: true, pos: "0:0", msg: "empty config"},
		{name: "comments only", src: "# nothing here\n\n", bare: true, pos: "0:0", msg: "empty config"},
		{name: "null document", src: "~\n", bare: true, pos: "0:0", msg: "empty config"},
		{name: "syntax", src: "listen: a\n  admin: b\n", bare: true, pos: "2:0", msg: "invalid YAML: mapping values are not allowed"},
		{name: "root list", src: "- listen\n- admin\n", bare: true, pos: "1:1", msg: "must be a mapping of settings, not a list"},
		{name: "two documents", src: "listen: \":8443\"\n---\nlisten: \":9443\"\n", bare: true, pos: "3:1", msg: "single YAML document"},
		{name: "non-string key", src: "? [a, b]\n: c\n", pos: "1:3", msg: "keys must be strings, got a list"},
		{name: "unknown top-level", src: "listn: \":8443\"\n", pos: "1:1", field: "listn", msg: `unknown field (did you mean "listen"?)`},
		{name: "file is not a key", src: "file: x.yaml\n", pos: "1:1", field: "file", msg: "unknown field"},
		{name: "unknown nested", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    pool:\n      max_conn: 10\n",
			pos: "5:7", field: "clusters[0].pool.max_conn", msg: `did you mean "max_conns"?`},
		{name: "duplicate top-level", src: "listen: \":8443\"\nlisten: \":9443\"\n", pos: "2:1", field: "listen", msg: "duplicate key (first at line 1)"},
		{name: "duplicate nested", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    name: app2\n",
			pos: "4:5", field: "clusters[0].name", msg: "duplicate key (first at line 2)"},
		{name: "string for int", src: "http3:\n  max_streams: many\n", pos: "2:16", field: "http3.max_streams", msg: `expected an integer, got string "many"`},
		{name: "float for int", src: "http3:\n  max_streams: 1.5\n", pos: "2:16", field: "http3.max_streams", msg: "expected an integer, got number 1.5"},
		{name: "list for mapping", src: "limits: [1, 2]\n", pos: "1:9", field: "limits", msg: "expected a mapping, got a list"},
		{name: "mapping for list", src: "trusted_proxies:\n  a: b\n", pos: "2:3", field: "trusted_proxies", msg: "expected a list, got a mapping"},
		{name: "mapping for string", src: "listen: {a: b}\n", pos: "1:9", field: "listen", msg: "expected a string, got a mapping"},
		{name: "yes for bool", src: "http3:\n  enabled: yes\n", pos: "2:12", field: "http3.enabled", msg: `expected true or false, got string "yes"`},
		{name: "unsupported tag", src: "listen: !env PORT\n", pos: "1:9", field: "listen", msg: `unsupported tag "!env"`},
		{name: "duration without unit", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    connect_timeout: 5\n",
			pos: "4:22", field: "clusters[0].connect_timeout", msg: `missing unit, as in "5s"`},
		{name: "duration garbage", src: "limits:\n  header_timeout: soon\n", pos: "2:19", field: "limits.header_timeout", msg: `invalid duration "soon"`},
		{name: "negative duration", src: "drain_timeout: -1s\n", pos: "1:16", field: "drain_timeout", msg: "must not be negative"},
		{name: "size unit", src: "limits:\n  max_header_bytes: 64 megs\n", pos: "2:21", field: "limits.max_header_bytes", msg: `unknown unit "megs"`},
		{name: "size fraction", src: "limits:\n  max_header_bytes: 1.5MiB\n", pos: "2:21", field: "limits.max_header_bytes", msg: "whole number"},
		{name: "negative size", src: "limits:\n  max_body_bytes: -1\n", pos: "2:19", field: "limits.max_body_bytes", msg: "must not be negative"},
		{name: "size overflow", src: "limits:\n  max_body_bytes: 9000000TiB\n", pos: "2:19", field: "limits.max_body_bytes", msg: "too large"},
		{name: "listen without port", src: "listen: localhost\n", pos: "1:9", field: "listen", msg: "missing port in address"},
		{name: "listen port range", src: "listen: \":70000\"\n", pos: "1:9", field: "listen", msg: `port "70000" is not in 1-65535`},
		{name: "listen port name", src: "listen: \":https\"\n", pos: "1:9", field: "listen", msg: `port "https"`},
		{name: "admin listen", src: "admin:\n  listen: nope\n", pos: "2:11", field: "admin.listen", msg: `(want host:port or "off")`},
		{name: "admin conflicts", src: "listen: \":9000\"\nadmin:\n  listen: 127.0.0.1:9000\n", pos: "3:11", field: "admin.listen", msg: "conflicts with listen"},
		{name: "log level", src: "log:\n  level: verbose\n", pos: "2:10", field: "log.level", msg: `"verbose" is not one of debug, info, warn, error`},
		{name: "log format", src: "log:\n  format: xml\n", pos: "2:11", field: "log.format", msg: "not one of auto, text, json"},
		{name: "log buffer", src: "log:\n  buffer: -5\n", pos: "2:11", field: "log.buffer", msg: "must be at least 1"},
		{name: "access ratio", src: "access_log:\n  sample_ratio: 1.5\n", pos: "2:17", field: "access_log.sample_ratio", msg: "between 0 and 1, got 1.5"},
		{name: "ratio type", src: "access_log:\n  sample_ratio: ten\n", pos: "2:17", field: "access_log.sample_ratio", msg: "expected a number"},
		{name: "ratio nan", src: "tracing:\n  sample_ratio: .nan\n", pos: "2:17", field: "tracing.sample_ratio", msg: "invalid number"},
		{name: "tracing ratio", src: "tracing:\n  sample_ratio: -0.1\n", pos: "2:17", field: "tracing.sample_ratio", msg: "between 0 and 1"},
		{name: "tracing endpoint", src: "tracing:\n  endpoint: otel:4318\n", pos: "2:13", field: "tracing.endpoint", msg: "want an http:// or https:// URL"},
		{name: "tracing endpoint host", src: "tracing:\n  endpoint: \"http://\"\n", pos: "2:13", field: "tracing.endpoint", msg: "no host"},
		{name: "tracing batch", src: "tracing:\n  batch_size: -1\n", pos: "2:15", field: "tracing.batch_size", msg: "must be at least 1"},
		{name: "metrics enabled", src: "metrics:\n  enabled: sometimes\n", pos: "2:12", field: "metrics.enabled", msg: "expected true or false"},
		{name: "early data", src: "http3:\n  early_data: on\n", pos: "2:15", field: "http3.early_data", msg: "not one of off, safe"},
		{name: "h2 engine", src: "http2:\n  engine: nghttp2\n", pos: "2:11", field: "http2.engine", msg: "not one of native, xnet"},
		{name: "h2 window", src: "http2:\n  initial_stream_window: 1KiB\n", pos: "2:26", field: "http2.initial_stream_window", msg: "must be between 65535 and 2147483647 bytes, got 1024"},
		{name: "h3 engine", src: "http3:\n  engine: nghttp3\n", pos: "2:11", field: "http3.engine", msg: "not one of native, quicgo"},
		{name: "retry", src: "http3:\n  retry: sometimes\n", pos: "2:10", field: "http3.retry", msg: "not one of never, always, auto"},
		{name: "negative count", src: "limits:\n  max_header_count: -1\n", pos: "2:21", field: "limits.max_header_count", msg: "must not be negative"},
		{name: "negative pool", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    pool: {max_idle: -2}\n",
			pos: "4:22", field: "clusters[0].pool.max_idle", msg: "must not be negative"},
		{name: "dial backoff", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    pool: {dial_backoff: -5ms}\n",
			pos: "4:26", field: "clusters[0].pool.dial_backoff", msg: "must not be negative"},
		{name: "TLS handshake timeout", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    tls_handshake_timeout: -1s\n",
			pos: "4:28", field: "clusters[0].tls_handshake_timeout", msg: "must not be negative"},
		{name: "int overflow", src: "http3:\n  retry_above: 0x7fffffffffffffff0\n", pos: "2:16", field: "http3.retry_above"},
		{name: "h2 streams", src: "limits:\n  max_concurrent_streams: 5000000000\n", pos: "2:27", field: "limits.max_concurrent_streams", msg: "HTTP/2 maximum"},
		{name: "windows", src: "http3:\n  initial_stream_window: 8MiB\n", pos: "2:26", field: "http3.initial_stream_window", msg: "8MiB exceeds max_stream_window 6MiB"},
		{name: "alt-svc port", src: "alt_svc:\n  port: 70000\n", pos: "2:9", field: "alt_svc.port", msg: "out of range"},
		{name: "trusted proxy", src: "trusted_proxies:\n  - 10.0.0.0/8\n  - not-an-ip\n", pos: "3:5", field: "trusted_proxies[1]", msg: "not an IP address or CIDR"},
		{name: "trusted proxy cidr", src: "trusted_proxies: [10.0.0.0/33]\n", pos: "1:19", field: "trusted_proxies[0]", msg: "not a CIDR"},
		{name: "trusted proxy host bits", src: "trusted_proxies: [10.1.2.3/8]\n", pos: "1:19", field: "trusted_proxies[0]", msg: "did you mean 10.0.0.0/8?"},
		{name: "route host", src: "routes:\n  - host: \"exa mple.com\"\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "invalid character"},
		{name: "route wildcard", src: "routes:\n  - host: \"a.*.example.com\"\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "only as the whole first label"},
		{name: "route bare wildcard", src: "routes:\n  - host: \"*\"\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "only as the whole first label"},
		{name: "route host unicode", src: "routes:\n  - host: bücher.example\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "punycode"},
		{name: "route host port", src: "routes:\n  - host: example.com:443\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "must not include a port"},
		{name: "route host dot", src: "routes:\n  - host: example.com.\n    cluster: app\n", pos: "2:11", field: "routes[0].host", msg: "must not end with a dot"},
		{name: "path prefix", src: "routes:\n  - path_prefix: api\n    cluster: app\n", pos: "2:18", field: "routes[0].path_prefix", msg: `must start with "/"`},
		{name: "path prefix query", src: "routes:\n  - path_prefix: /api?x=1\n    cluster: app\n", pos: "2:18", field: "routes[0].path_prefix", msg: "not allowed"},
		{name: "route unknown cluster", src: "routes:\n  - cluster: nope\n", pos: "2:14", field: "routes[0].cluster", msg: `unknown cluster "nope"`},
		{name: "route without cluster", src: "routes:\n  - host: example.com\n", pos: "2:5", field: "routes[0].cluster", msg: "required"},
		{name: "duplicate route", src: "routes:\n  - path_prefix: /api\n    cluster: app\n  - path_prefix: /api/\n    cluster: app\n",
			pos: "4:5", field: "routes[1]", msg: "same host and path_prefix as routes[0]"},
		{name: "cluster without name", src: "clusters:\n  - servers: [\"127.0.0.1:8080\"]\n", pos: "2:5", field: "clusters[0].name", msg: "required"},
		{name: "cluster name", src: "clusters:\n  - name: API\n    servers: [\"127.0.0.1:8080\"]\n", pos: "2:11", field: "clusters[0].name", msg: "lowercase letters"},
		{name: "duplicate cluster", src: "routes:\n  - cluster: app\nclusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n  - name: app\n    servers: [\"127.0.0.1:8081\"]\n",
			pos: "6:11", field: "clusters[1].name", msg: `duplicate cluster "app" (first is clusters[0])`},
		{name: "no servers", src: "clusters:\n  - name: app\n    servers: []\n", pos: "3:14", field: "clusters[0].servers", msg: "at least one server"},
		{name: "server port", src: "clusters:\n  - name: app\n    servers: [\"backend:0\"]\n", pos: "3:15", field: "clusters[0].servers[0]", msg: "not in 1-65535"},
		{name: "server host", src: "clusters:\n  - name: app\n    servers: [\":8080\"]\n", pos: "3:15", field: "clusters[0].servers[0]", msg: "missing host"},
		{name: "server no port", src: "clusters:\n  - name: app\n    servers:\n      - backend\n", pos: "4:9", field: "clusters[0].servers[0]", msg: "missing port"},
		{name: "protocol", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h4\n", pos: "4:15", field: "clusters[0].protocol", msg: "not one of h1, h2, h2c, h3"},
		{name: "balancing", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    balancing: random\n", pos: "4:16", field: "clusters[0].balancing", msg: "not one of round_robin, least_request"},
		{name: "h2c with tls", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h2c\n    tls:\n      enabled: true\n",
			pos: "6:16", field: "clusters[0].tls.enabled", msg: "h2c is HTTP/2 over cleartext"},
		{name: "tls settings without tls", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    tls:\n      server_name: backend\n",
			pos: "5:20", field: "clusters[0].tls.server_name", msg: "TLS is off"},
		{name: "server name", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h2\n    tls:\n      server_name: bad_name\n",
			pos: "6:20", field: "clusters[0].tls.server_name", msg: "invalid character"},
		{name: "ca file missing", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h2\n    tls:\n      ca_file: $DIR/missing.pem\n",
			pos: "6:16", field: "clusters[0].tls.ca_file", msg: "no such file"},
		{name: "ca file not pem", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h3\n    tls:\n      ca_file: $DIR/notpem.txt\n",
			pos: "6:16", field: "clusters[0].tls.ca_file", msg: "no PEM certificates"},
		{name: "ca file is a directory", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    protocol: h3\n    tls:\n      ca_file: $DIR\n",
			pos: "6:16", field: "clusters[0].tls.ca_file", msg: "not a regular file"},
		{name: "certificate without key", src: "tls:\n  certificates:\n    - cert: $DIR/cert.pem\n", pos: "3:7", field: "tls.certificates[0].key", msg: "required"},
		{name: "certificate file missing", src: "tls:\n  certificates:\n    - cert: $DIR/nope.pem\n      key: $DIR/key.pem\n",
			pos: "3:13", field: "tls.certificates[0].cert", msg: "no such file"},
		{name: "key file missing", src: "tls:\n  certificates:\n    - cert: $DIR/cert.pem\n      key: $DIR/nope.key\n",
			pos: "4:12", field: "tls.certificates[0].key", msg: "no such file"},
		{name: "certificate and key mismatch", src: "tls:\n  certificates:\n    - cert: $DIR/cert.pem\n      key: $DIR/other.key\n",
			pos: "3:7", field: "tls.certificates[0]", msg: "private key does not match public key"},
		{name: "certificate not pem", src: "tls:\n  certificates:\n    - cert: $DIR/notpem.txt\n      key: $DIR/key.pem\n",
			pos: "3:7", field: "tls.certificates[0]", msg: "cert"},
		{name: "several clusters without routes", src: "clusters:\n  - name: a\n    servers: [\"127.0.0.1:8080\"]\n  - name: b\n    servers: [\"127.0.0.1:8081\"]\n",
			pos: "1:1", field: "routes", msg: "required when there is more than one cluster"},
		{name: "no clusters", src: "listen: \":8443\"\n", bare: true, pos: "1:1", field: "clusters", msg: "at least one cluster is required"},
		{name: "empty clusters", src: "listen: \":8443\"\nclusters: []\n", pos: "2:11", field: "clusters", msg: "at least one cluster is required"},
		{name: "bad merge", src: "clusters:\n  - <<: [1, 2]\n    name: app\n    servers: [\"127.0.0.1:8080\"]\n",
			pos: "2:9", field: `clusters[0]."<<"`, msg: "merge key"},
		{name: "unknown key in merged mapping", src: "clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\nroutes:\n  - <<: {cluster: app, weight: 3}\n",
			pos: "5:24", field: "routes[0].weight", msg: "unknown field"},
	}
	if len(tests) < 30 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := strings.ReplaceAll(tt.src, "$DIR", dir)
			if !tt.bare && !strings.Contains(src, "clusters:") {
				src += cfgOneCluster
			}
			c, err := ParseConfig("bad.yaml", []byte(src))
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			if c != nil {
				t.Error("a Config returned with an error")
			}
			t.Log(err)
			errs := configErrors(t, err)
			if len(errs) != 1 {
				t.Errorf("%d errors, want 1:\n%v", len(errs), err)
			}
			e := errs[0]
			if got := strconv.Itoa(e.Line) + ":" + strconv.Itoa(e.Column); got != tt.pos || e.Field != tt.field || e.File != "bad.yaml" {
				t.Errorf("error at %s %s %q, want %s %q in bad.yaml: %v", e.File, got, e.Field, tt.pos, tt.field, e)
			}
			if !strings.Contains(e.Error(), tt.msg) {
				t.Errorf("message %q does not contain %q", e.Error(), tt.msg)
			}
			wantPrefix := "bad.yaml:"
			if e.Line > 0 {
				wantPrefix += strconv.Itoa(e.Line) + ":"
				if e.Column > 0 {
					wantPrefix += strconv.Itoa(e.Column) + ":"
				}
			}
			if tt.field != "" {
				wantPrefix += " " + tt.field + ": "
			}
			if !strings.HasPrefix(e.Error(), wantPrefix) {
				t.Errorf("message %q does not start with %q", e.Error(), wantPrefix)
			}
		})
	}
}

func TestParseConfigReportsAll(t *testing.T) {
	const src = `listen: nope
log:
  level: loud
  colour: true
clusters:
  - name: A
    servers: []
    pool: {max_conns: many}
  - name: b
    servers: ["127.0.0.1:1"]
    connect_timeout: 1x
routes:
  - cluster: A
  - cluster: b
    path_prefix: x
`
	_, err := ParseConfig("all.yaml", []byte(src))
	if _, ok := err.(interface{ Unwrap() []error }); !ok {
		t.Fatalf("error %T is not joined: %v", err, err)
	}
	errs := configErrors(t, err)
	want := []string{
		"all.yaml:1:9: listen: ",
		"all.yaml:3:10: log.level: ",
		"all.yaml:4:3: log.colour: ",
		"all.yaml:6:11: clusters[0].name: ",
		"all.yaml:7:14: clusters[0].servers: ",
		"all.yaml:8:23: clusters[0].pool.max_conns: ",
		"all.yaml:11:22: clusters[1].connect_timeout: ",
		"all.yaml:15:18: routes[1].path_prefix: ",
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, e := range errs {
		if !strings.HasPrefix(e.Error(), want[i]) {
			t.Errorf("error %d = %q, want prefix %q", i, e.Error(), want[i])
		}
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != len(want) {
		t.Errorf("joined message has %d lines, want %d", len(lines), len(want))
	}
}

func TestConfigHash(t *testing.T) {
	const a = `
listen: ":8443"
clusters:
  - name: app
    servers: ["127.0.0.1:8080"]
`
	// The same settings: other order, comments, explicit defaults, units.
	const b = `# same
clusters: [{servers: ["127.0.0.1:8080"], name: app, protocol: h1, connect_timeout: 5000ms}]
limits: {max_header_bytes: 65536}
drain_timeout: 0.5m
`
	ca, err := ParseConfig("a.yaml", []byte(a))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := ParseConfig("b.yaml", []byte(b))
	if err != nil {
		t.Fatal(err)
	}
	h := ca.Hash()
	if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Fatalf("hash %q is not hex SHA-256", h)
	}
	if h != ca.Hash() || h != cb.Hash() {
		t.Errorf("hashes of equal configs differ: %s %s %s", h, ca.Hash(), cb.Hash())
	}
	// Built in code, without defaults and with other pointers: the same.
	built := &Config{Clusters: []ClusterConfig{{Name: "app", Servers: []string{"127.0.0.1:8080"}}}, HTTP3: HTTP3Config{Enabled: new(true)}}
	if built.Hash() != h {
		t.Error("hash of an equal config built in code differs")
	}
	if built.Listen != "" || built.Routes != nil {
		t.Error("Hash modified the config")
	}
	for _, change := range []func(c *Config){
		func(c *Config) { c.Listen = ":9443" },
		func(c *Config) { c.HTTP3.Enabled = new(false) },
		func(c *Config) { c.Clusters[0].Servers = append(c.Clusters[0].Servers, "127.0.0.1:8081") },
		func(c *Config) { c.Routes[0].AltSvc = new(true) },
		func(c *Config) { c.Limits.MaxBodyBytes = 1 },
		func(c *Config) { c.TrustedProxies = []string{""} },
	} {
		c := ca.clone()
		change(c)
		if c.Hash() == h {
			t.Errorf("hash unchanged after a change: %+v", c)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := &Config{
		Clusters: []ClusterConfig{{Name: "app", Servers: []string{"127.0.0.1:8080"}}},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "" || c.Routes != nil || c.Clusters[0].Protocol != "" {
		t.Error("Validate modified the config")
	}
	c.Clusters[0].ConnectTimeout = -1
	c.Log.Level = "loud"
	errs := configErrors(t, c.Validate())
	if len(errs) != 2 || errs[0].Field != "log.level" || errs[1].Field != "clusters[0].connect_timeout" {
		t.Fatalf("errors %v", errs)
	}
	if got, want := errs[1].Error(), "gateway: clusters[0].connect_timeout: must not be negative, got -1ns"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gw.yaml")
	if err := os.WriteFile(path, []byte(cfgOneCluster), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.File != path {
		t.Errorf("File = %q", c.File)
	}

	missing := filepath.Join(dir, "missing.yaml")
	_, err = LoadConfig(missing)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v is not ErrNotExist", err)
	}
	if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.File != missing {
		t.Errorf("error %#v is not a *ConfigError for the file", err)
	}
	if msg := err.Error(); strings.Count(msg, missing) != 1 {
		t.Errorf("message %q should name the file once", msg)
	}

	if err := os.WriteFile(path, []byte("listen: x\n"+cfgOneCluster), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(path); err == nil || !strings.HasPrefix(err.Error(), path+":1:9: listen: ") {
		t.Errorf("error %v does not locate the problem", err)
	}
}

func TestConfigErrorFormat(t *testing.T) {
	inner := errors.New("bad")
	for _, tt := range []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{File: "f.yaml", Line: 3, Column: 7, Field: "a.b", Err: inner}, "f.yaml:3:7: a.b: bad"},
		{ConfigError{File: "f.yaml", Line: 3, Field: "a.b", Err: inner}, "f.yaml:3: a.b: bad"},
		{ConfigError{File: "f.yaml", Err: inner}, "f.yaml: bad"},
		{ConfigError{Field: "a", Err: inner}, "gateway: a: bad"},
		{ConfigError{Line: 2, Column: 1, Err: inner}, "2:1: bad"},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.e, got, tt.want)
		}
		if !errors.Is(&tt.e, inner) {
			t.Errorf("%+v does not unwrap", tt.e)
		}
	}
}

func TestByteSizeAndDuration(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ByteSize
		err  bool
	}{
		{"0", 0, false}, {"100", 100, false}, {"0x400", 1024, false}, {"64KiB", 64 << 10, false},
		{"512 KiB", 512 << 10, false}, {"6MiB", 6 << 20, false}, {"1GiB", 1 << 30, false}, {"2TiB", 2 << 40, false},
		{"10KB", 10000, false}, {"3MB", 3e6, false}, {"1GB", 1e9, false}, {"7B", 7, false}, {`"42"`, 42, false},
		{"1kb", 0, true}, {"KiB", 0, true}, {"-1KiB", 0, true}, {"1.5GiB", 0, true}, {"9999999999TiB", 0, true}, {"[1]", 0, true},
	} {
		var v struct {
			S ByteSize `yaml:"s"`
		}
		err := yaml.Unmarshal([]byte("s: "+tt.in), &v)
		if (err != nil) != tt.err || (err == nil && v.S != tt.want) {
			t.Errorf("ByteSize %s = %d, %v; want %d, error %v", tt.in, v.S, err, tt.want, tt.err)
		}
	}
	for _, tt := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"0", 0, false}, {"30s", 30 * time.Second, false}, {"1m30s", 90 * time.Second, false}, {"250ms", 250 * time.Millisecond, false},
		{"30", 0, true}, {"-1s", 0, true}, {"soon", 0, true}, {"{a: 1}", 0, true},
	} {
		var v struct {
			D Duration `yaml:"d"`
		}
		err := yaml.Unmarshal([]byte("d: "+tt.in), &v)
		if (err != nil) != tt.err || (err == nil && v.D.D() != tt.want) {
			t.Errorf("Duration %s = %v, %v; want %v, error %v", tt.in, v.D, err, tt.want, tt.err)
		}
	}
	out, err := yaml.Marshal(struct {
		A ByteSize `yaml:"a"`
		B ByteSize `yaml:"b"`
		C Duration `yaml:"c"`
	}{64 << 10, 1000, Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "a: 64KiB\nb: 1000\nc: 1m30s\n"; got != want {
		t.Errorf("marshal = %q, want %q", got, want)
	}
}

func TestParseConfigAliasExpansion(t *testing.T) {
	// 1000 clusters that alias one whose servers alias a list of 1000: a
	// small file that expands to a million values.
	var b strings.Builder
	b.WriteString("trusted_proxies: &s [")
	for i := range 1000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"10.0.0.1:80"`)
	}
	b.WriteString("]\nclusters:\n  - &c {name: app, servers: *s}\n")
	for range 999 {
		b.WriteString("  - *c\n")
	}
	start := time.Now()
	_, err := ParseConfig("bomb.yaml", []byte(b.String()))
	if !errors.Is(err, errAliasExpansion) {
		t.Fatalf("error %v, want %v", err, errAliasExpansion)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}
