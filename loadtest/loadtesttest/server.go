// Package loadtesttest provides servers for the tests of loadtest and
// cmd/loadtest: one handler served over HTTP/1.1 and HTTP/2 (TLS over TCP)
// and HTTP/3 (QUIC over UDP) on the same port of 127.0.0.1, the way an edge
// gateway serves them, built only on net/http and quic-go. Import it only
// from _test.go files.
package loadtesttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// Options change a Server. The zero value serves all three protocols.
type Options struct {
	// Allow0RTT lets HTTP/3 clients send requests in 0-RTT.
	Allow0RTT bool
	// NoH3 serves only HTTP/1.1 and HTTP/2 (no UDP socket).
	NoH3 bool
	// H1Only offers only http/1.1 in ALPN over TCP.
	H1Only bool
}

// Server serves one handler on 127.0.0.1: HTTP/1.1 and HTTP/2 with TLS on a
// TCP port, HTTP/3 on the UDP port of the same number.
type Server struct {
	URL  string // https://127.0.0.1:PORT
	Addr string // 127.0.0.1:PORT

	tcp  net.Listener
	udp  net.PacketConn
	h12  *http.Server
	h3   *http3.Server
	wg   sync.WaitGroup
	once sync.Once
}

// NewServer starts a Server for h; t.Cleanup closes it.
func NewServer(t testing.TB, h http.Handler, opt Options) *Server {
	t.Helper()
	s := &Server{}
	var err error
	// Find a port free on both TCP and UDP.
	for range 20 {
		if s.tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if opt.NoH3 {
			break
		}
		port := s.tcp.Addr().(*net.TCPAddr).Port
		if s.udp, err = net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			break
		}
		s.tcp.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = s.tcp.Addr().String()
	s.URL = "https://" + s.Addr

	cert := Certificate()
	s.h12 = &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // aborted handlers and TLS failures are on purpose
	}
	if opt.H1Only {
		s.h12.TLSConfig.NextProtos = []string{"http/1.1"}
		s.h12.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	s.wg.Go(func() { s.h12.ServeTLS(s.tcp, "", "") })
	if !opt.NoH3 {
		s.h3 = &http3.Server{
			Handler:    h,
			TLSConfig:  http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
			QUICConfig: &quic.Config{Allow0RTT: opt.Allow0RTT, MaxIncomingStreams: 1000},
		}
		s.wg.Go(func() { s.h3.Serve(s.udp) })
	}
	t.Cleanup(s.Close)
	return s
}

// NewPlainServer starts a cleartext server for h on 127.0.0.1 speaking
// HTTP/1.1 and HTTP/2 with prior knowledge (h2c); t.Cleanup closes it. It
// returns the URL, http://127.0.0.1:PORT.
func NewPlainServer(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: p, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return "http://" + ln.Addr().String()
}

// ClientTLS returns a client configuration that trusts the server's
// certificate.
func (s *Server) ClientTLS() *tls.Config { return &tls.Config{RootCAs: CertPool()} }

// Close stops serving and waits for the serving goroutines.
func (s *Server) Close() {
	s.once.Do(func() {
		s.h12.Close()
		if s.h3 != nil {
			s.h3.Close()
			s.udp.Close()
		}
		s.wg.Wait()
	})
}

var (
	certOnce sync.Once
	cert     tls.Certificate
	pool     *x509.CertPool
)

// Certificate returns a self-signed ECDSA certificate for 127.0.0.1, ::1 and
// localhost, made once per process.
func Certificate() tls.Certificate {
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "loadtest test server"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			DNSNames:              []string{"localhost"},
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		pool = x509.NewCertPool()
		pool.AddCert(leaf)
	})
	return cert
}

// CertPool returns a pool holding Certificate.
func CertPool() *x509.CertPool {
	Certificate()
	return pool
}

// FreePort returns a 127.0.0.1 address on which, a moment ago, nothing
// listened on TCP nor UDP: connections to it are refused (TCP) or get no
// answer (UDP).
func FreePort(t testing.TB) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		pc.Close()
		return addr
	}
	t.Fatal(errors.New("loadtesttest: no free port"))
	return ""
}
