package h2

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/proxynow/proxynow/transport"
)

// h2tCert is a self-signed certificate for 127.0.0.1 and localhost.
type h2tCert struct {
	cert tls.Certificate
	pool *x509.CertPool
}

var (
	h2tCertOnce sync.Once
	h2tCertVal  h2tCert
)

func h2tGetCert(t testing.TB) h2tCert {
	t.Helper()
	h2tCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "h2 test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{"localhost"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(leaf)
		h2tCertVal = h2tCert{
			cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
			pool: pool,
		}
	})
	return h2tCertVal
}

func h2tServerTLS(t testing.TB, protos ...string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{h2tGetCert(t).cert}, NextProtos: protos}
}

func h2tClientTLS(t testing.TB) *tls.Config {
	return &tls.Config{RootCAs: h2tGetCert(t).pool, ServerName: "localhost", NextProtos: []string{"h2"}}
}

// h2tTestCtx returns a context that ends with the test or after 10s.
func h2tTestCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// h2tWaitFor polls cond until it holds, failing the test after 5s.
func h2tWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// h2tRecv receives from ch or fails the test after 5s.
func h2tRecv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// h2tCheckLeaks registers a cleanup, run after the test's other cleanups,
// that waits for the goroutines of x/net's http2 and of this package to end.
func h2tCheckLeaks(t *testing.T) {
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if leaked = h2tLeakedGoroutines(); len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("leaked goroutines:\n%s", strings.Join(leaked, "\n\n"))
				return
			}
			<-tick.C
		}
	})
}

func h2tLeakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "h2tLeakedGoroutines") || strings.Contains(g, "testing.tRunner") {
			continue
		}
		if strings.Contains(g, "golang.org/x/net/http2.") || strings.Contains(g, "proxynow/h2.") ||
			strings.Contains(g, "proxynow/transport.") {
			leaked = append(leaked, g)
		}
	}
	return leaked
}

// h2tServer is one of our Servers behind a real TLSListener on loopback.
type h2tServer struct {
	srv  *Server
	tl   *transport.TLSListener
	addr string
	errc chan error // Serve's result
}

// h2tEngineList names the engines the server tests run against.
var h2tEngineList = []struct {
	name   string
	engine Engine
}{{"xnet", EngineXNet}, {"native", EngineNative}}

// h2tEngineByTest maps the *testing.T of an engine subtest to its engine.
var h2tEngineByTest sync.Map

// h2tEngines runs f once per engine, as subtests named after them;
// h2tStartServer serves with the subtest's engine.
func h2tEngines(t *testing.T, f func(t *testing.T)) {
	for _, e := range h2tEngineList {
		t.Run(e.name, func(t *testing.T) {
			h2tEngineByTest.Store(t, e.engine)
			t.Cleanup(func() { h2tEngineByTest.Delete(t) })
			f(t)
		})
	}
}

// h2tEngine returns the engine of an h2tEngines subtest (EngineNative, the
// zero Engine, otherwise).
func h2tEngine(t testing.TB) Engine {
	v, _ := h2tEngineByTest.Load(t)
	e, _ := v.(Engine)
	return e
}

func h2tStartServer(t *testing.T, h transport.Handler, cfg ServerConfig) *h2tServer {
	t.Helper()
	if cfg.Engine == EngineNative { // the zero value: the subtest's
		cfg.Engine = h2tEngine(t)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := transport.NewTLSListener(ln, h2tServerTLS(t, "h2", "http/1.1"), 5*time.Second)
	h2ln := tl.Listener("h2")
	ts := &h2tServer{srv: NewServer(h, cfg), tl: tl, addr: ln.Addr().String(), errc: make(chan error, 1)}
	runc := make(chan error, 1)
	go func() { runc <- tl.Run() }()
	go func() { ts.errc <- ts.srv.Serve(h2ln) }()
	t.Cleanup(func() {
		ts.srv.Close()
		tl.Close()
		if err := h2tRecv(t, runc, "TLSListener.Run"); err != nil {
			t.Errorf("TLSListener.Run: %v", err)
		}
		if err := h2tRecv(t, ts.errc, "Serve"); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

// h2tDialClient returns an x/net client conn to addr over TLS.
func h2tDialClient(t *testing.T, addr string) *http2.ClientConn {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, h2tClientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN: %q", p)
	}
	cc, err := (&http2.Transport{}).NewClientConn(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// h2tRaw is a raw HTTP/2 client conn for what x/net's client will not do.
type h2tRaw struct {
	t    *testing.T
	c    net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func h2tDialRaw(t *testing.T, addr string) *h2tRaw {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, h2tClientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	r := &h2tRaw{t: t, c: tc, fr: http2.NewFramer(tc, tc)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// request sends a HEADERS frame (with END_STREAM) for a GET with the extra
// fields.
func (r *h2tRaw) request(id uint32, path string, extra ...string) {
	r.t.Helper()
	r.hbuf.Reset()
	fields := append([]string{":method", "GET", ":scheme", "https", ":authority", "localhost", ":path", path}, extra...)
	for i := 0; i < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	// Split into HEADERS + CONTINUATION frames of at most 16 KiB.
	block := r.hbuf.Bytes()
	first := true
	for len(block) > 0 || first {
		chunk := block[:min(len(block), 16<<10)]
		block = block[len(chunk):]
		end := len(block) == 0
		var err error
		if first {
			err = r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: true, EndHeaders: end})
			first = false
		} else {
			err = r.fr.WriteContinuation(id, end, chunk)
		}
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

// next reads frames, acknowledging SETTINGS, until f returns true.
func (r *h2tRaw) next(what string, f func(http2.Frame) bool) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		fr, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("reading frames for %s: %v", what, err)
		}
		if sf, ok := fr.(*http2.SettingsFrame); ok && !sf.IsAck() {
			r.fr.WriteSettingsAck()
		}
		if f(fr) {
			return
		}
	}
}

// h2tUpstream is an x/net HTTP/2 server on loopback, over TLS or h2c.
type h2tUpstream struct {
	addr     string
	accepted atomic.Int64
	ln       net.Listener
	srv      *http2.Server
	base     *http.Server

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func h2tStartUpstream(t *testing.T, useTLS bool, maxStreams int, h http.Handler) *h2tUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &h2tUpstream{addr: ln.Addr().String(), ln: ln, srv: &http2.Server{}}
	u.base = &http.Server{Handler: h, ErrorLog: nil}
	if maxStreams > 0 {
		u.base.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: maxStreams}
	}
	if err := http2.ConfigureServer(u.base, u.srv); err != nil {
		t.Fatal(err)
	}
	cfg := h2tServerTLS(t, "h2")
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				var sc net.Conn = c
				if useTLS {
					tc := tls.Server(c, cfg)
					if err := tc.Handshake(); err != nil {
						c.Close()
						return
					}
					sc = tc
				}
				u.srv.ServeConn(sc, &http2.ServeConnOpts{BaseConfig: u.base, Handler: h})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

func h2tDialer(t testing.TB, useTLS bool, cfg DialerConfig) *Dialer {
	if useTLS && cfg.TLS == nil {
		cfg.TLS = &tls.Config{RootCAs: h2tGetCert(t).pool}
	}
	return NewDialer(cfg)
}

func h2tDial(t *testing.T, d *Dialer, addr string) transport.Conn {
	t.Helper()
	c, err := d.Dial(h2tTestCtx(t), addr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// h2tCode returns the transport code of err, failing when err is not a
// *transport.Error.
func h2tCode(t testing.TB, err error) transport.Code {
	t.Helper()
	if err == nil {
		return transport.CodeNone
	}
	if _, ok := err.(*transport.Error); !ok {
		t.Errorf("error %v (%T) is not a *transport.Error", err, err)
	}
	return transport.CodeOf(err)
}
