package loadtest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Proto is an HTTP version to load a server with.
type Proto uint8

// The protocols. The zero value means "the default for the URL's scheme":
// HTTP/2 for https, HTTP/1.1 for http.
const (
	H1 Proto = iota + 1 // HTTP/1.1 over TCP (TLS for https), Go's net/http client
	H2                  // HTTP/2 over TLS (h2), or cleartext with prior knowledge (h2c) for http
	H3                  // HTTP/3 over QUIC, quic-go's http3 client
)

// Protos returns every protocol, in report order.
func Protos() []Proto { return []Proto{H1, H2, H3} }

// String returns "h1", "h2" or "h3".
func (p Proto) String() string {
	switch p {
	case H1:
		return "h1"
	case H2:
		return "h2"
	case H3:
		return "h3"
	}
	return "default"
}

// MarshalText implements encoding.TextMarshaler.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseProto.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParseProto parses "h1" (or "http/1.1", "1.1"), "h2" (or "2") and "h3"
// (or "3"), in any case.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "h1", "http/1.1", "1.1", "http1", "1":
		return H1, nil
	case "h2", "2", "http2", "http/2":
		return H2, nil
	case "h3", "3", "http3", "http/3":
		return H3, nil
	}
	return 0, fmt.Errorf("loadtest: unknown protocol %q (want h1, h2 or h3)", s)
}

// Config is one workload. Its zero value is not runnable (it has no URL);
// every other field has a default, filled into a copy: the caller's Config
// is never modified.
type Config struct {
	// URLs are requested in turn by each stream. They must share one origin
	// (scheme, host and port): the connections go to that one address.
	URLs []string
	// Proto is the protocol; the zero value picks H2 for https and H1 for
	// http. H3 needs https.
	Proto Proto
	// Method defaults to GET.
	Method string
	// Header is sent with every request; a "Host" entry sets the Host header
	// (HTTP/1.1) or :authority (HTTP/2, HTTP/3).
	Header http.Header
	// Body is sent with every request, with its Content-Length.
	Body []byte

	// TLSConfig is the base client TLS configuration (roots, certificates).
	// It is cloned; nil means the system roots.
	TLSConfig *tls.Config
	// Insecure skips certificate verification.
	Insecure bool
	// ServerName is the SNI and verified name; default: the URL's host.
	ServerName string

	// Conns is the number of connections (C), default 1.
	Conns int
	// Streams is the number of concurrent requests on each connection (M),
	// default 1. HTTP/1.1 has one request in flight per connection, so with
	// H1 a run opens Conns*Streams connections of one stream each: the
	// concurrency stays the same across protocols.
	Streams int
	// Duration is how long requests are counted after the warm-up. The
	// default is 10s when Requests is 0, else no limit.
	Duration time.Duration
	// Requests, if > 0, stops the run after exactly this many requests
	// (successful or failed) after the warm-up.
	Requests int64
	// Warmup is a period before the measurement whose requests are sent but
	// not counted; default 0.
	Warmup time.Duration
	// Rate, if > 0, is an open loop: requests are sent at this constant
	// total rate (per second), spread evenly over the Conns*Streams streams,
	// whatever the server's speed; latency is measured from each request's
	// intended send time, so a stalled server shows in the percentiles
	// (coordinated omission corrected, as in wrk2). A stream has one request
	// in flight, so Conns*Streams must be large enough for the rate times
	// the latency. Zero is a closed loop: each stream sends its next request
	// as soon as the previous one is done.
	Rate float64
	// NewConn sends every request on a fresh connection, closed after the
	// response, to measure connection setup (TCP+TLS or QUIC). The latency
	// then includes the setup. Conns*Streams requests are in flight.
	NewConn bool
	// Resume gives each connection slot (each stream in NewConn mode) a TLS
	// session cache, so that its next connections resume a session, and
	// HTTP/3 GET and HEAD requests on new connections go in 0-RTT when the
	// server allows it. Without it no session is resumed (TLSConfig's own
	// ClientSessionCache is ignored), so every handshake is a full one.
	Resume bool
	// Timeout bounds each request, connection setup included; default 10s.
	Timeout time.Duration
	// ConnectTimeout bounds connection setup (TCP connect and TLS, or the
	// QUIC handshake); default 5s, and never above Timeout.
	ConnectTimeout time.Duration

	// Progress, if set, is called every ProgressInterval (default 500ms) from
	// one goroutine while the run goes on, and not after Run returns.
	Progress func(Progress)
	// ProgressInterval defaults to 500ms.
	ProgressInterval time.Duration
	// Step is the resolution of the throughput timeline; default:
	// Duration/100, at least 10ms (100ms when there is no Duration).
	Step time.Duration
}

// Progress is a snapshot of a run in progress.
type Progress struct {
	Proto    Proto
	Warmup   bool          // still in the warm-up
	Elapsed  time.Duration // since the measurement started (or the warm-up, while in it)
	Requests int64         // completed after the warm-up, failed ones included
	Errors   int64
	Rate     float64 // requests per second over the last interval
}

// target is a validated Config, with defaults filled in.
type target struct {
	cfg     Config
	urls    []*url.URL
	addr    string // host:port to dial
	tls     *tls.Config
	streams int // total concurrent streams
	conns   int // connections (slots)
	perConn int // streams per connection
}

// defaults returns a copy of c with its defaults filled in, validated.
// Errors: no URL, a URL that is not absolute http(s), URLs of different
// origins, H3 with http, negative counts or durations.
func (c Config) defaults() (*target, error) {
	if len(c.URLs) == 0 {
		return nil, errors.New("loadtest: no URL")
	}
	t := &target{}
	for _, s := range c.URLs {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("loadtest: %w", err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("loadtest: URL %q: scheme must be http or https", s)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("loadtest: URL %q has no host", s)
		}
		if u.Path == "" {
			u.Path = "/"
		}
		if len(t.urls) > 0 && (u.Scheme != t.urls[0].Scheme || u.Host != t.urls[0].Host) {
			return nil, fmt.Errorf("loadtest: URL %q: all URLs must have the origin of the first, %s://%s", s, t.urls[0].Scheme, t.urls[0].Host)
		}
		t.urls = append(t.urls, u)
	}
	u := t.urls[0]
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	t.addr = net.JoinHostPort(u.Hostname(), port)

	if c.Proto == 0 {
		c.Proto = H2
		if u.Scheme == "http" {
			c.Proto = H1
		}
	}
	if c.Proto > H3 {
		return nil, fmt.Errorf("loadtest: unknown protocol %d", c.Proto)
	}
	if c.Proto == H3 && u.Scheme != "https" {
		return nil, errors.New("loadtest: h3 needs an https URL")
	}
	if c.Method == "" {
		c.Method = http.MethodGet
	}
	if c.Conns < 0 || c.Streams < 0 || c.Requests < 0 || c.Duration < 0 || c.Warmup < 0 || c.Rate < 0 ||
		c.Timeout < 0 || c.ConnectTimeout < 0 || c.ProgressInterval < 0 || c.Step < 0 {
		return nil, errors.New("loadtest: counts, rates and durations must not be negative")
	}
	if c.Conns == 0 {
		c.Conns = 1
	}
	if c.Streams == 0 {
		c.Streams = 1
	}
	if c.Duration == 0 && c.Requests == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	c.ConnectTimeout = min(c.ConnectTimeout, c.Timeout)
	if c.ProgressInterval == 0 {
		c.ProgressInterval = 500 * time.Millisecond
	}
	if c.Step == 0 {
		c.Step = 100 * time.Millisecond
		if c.Duration > 0 {
			c.Step = max(c.Duration/100, 10*time.Millisecond)
		}
	}
	c.Header = c.Header.Clone()
	if c.Header == nil {
		c.Header = http.Header{}
	}

	t.streams = c.Conns * c.Streams
	t.conns, t.perConn = c.Conns, c.Streams
	if c.Proto == H1 || c.NewConn {
		t.conns, t.perConn = t.streams, 1
	}

	if u.Scheme == "https" {
		if c.TLSConfig != nil {
			t.tls = c.TLSConfig.Clone()
		} else {
			t.tls = &tls.Config{}
		}
		t.tls.InsecureSkipVerify = t.tls.InsecureSkipVerify || c.Insecure
		if c.ServerName != "" {
			t.tls.ServerName = c.ServerName
		} else if t.tls.ServerName == "" {
			t.tls.ServerName = u.Hostname()
		}
		switch c.Proto {
		case H1:
			t.tls.NextProtos = []string{"http/1.1"}
		case H2:
			t.tls.NextProtos = []string{"h2"}
		case H3:
			t.tls.NextProtos = []string{"h3"}
		}
		t.tls.ClientSessionCache = nil // each slot has its own with Resume
	}
	t.cfg = c
	return t, nil
}
