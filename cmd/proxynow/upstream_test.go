package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// echoReply is what the test upstream answers on /echo: what it received.
type echoReply struct {
	Method     string              `json:"method"`
	URI        string              `json:"uri"`
	Host       string              `json:"host"`
	Proto      string              `json:"proto"`
	Header     map[string][]string `json:"header"`
	Trailer    map[string][]string `json:"trailer"`
	BodyLen    int64               `json:"body_len"`
	BodySHA256 string              `json:"body_sha256"`
	CL         int64               `json:"content_length"`
	TE         []string            `json:"transfer_encoding"`
}

// testUpstream is a real upstream server on loopback that counts the
// connections it accepted and the requests it received.
type testUpstream struct {
	addr     string
	proto    string // h1, h2, h2c, h3
	conns    atomic.Int64
	requests atomic.Int64
	aborted  atomic.Int64 // requests whose body read or response write failed: cancelled
	certFile string       // PEM of its certificate, for TLS upstreams
	close    func()
}

// upstreamHandler serves the behaviours the tests need, chosen by path.
func upstreamHandler(u *testUpstream) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			u.aborted.Add(1)
			return
		}
		rep := echoReply{
			Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto,
			Header: r.Header, Trailer: r.Trailer, BodyLen: n,
			BodySHA256: hex.EncodeToString(h.Sum(nil)), CL: r.ContentLength, TE: r.TransferEncoding,
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		code, _ := strconv.Atoi(r.PathValue("code"))
		w.Header().Set("X-Upstream", "yes")
		if code == 304 || code == 204 {
			w.Header().Set("ETag", `"abc"`)
		}
		w.WriteHeader(code)
		if code != 304 && code != 204 && r.Method != http.MethodHead {
			io.WriteString(w, "status body\n")
		}
	})
	mux.HandleFunc("/head", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		w.Header().Set("Content-Length", "1234")
		if r.Method != http.MethodHead {
			w.Write(make([]byte, 1234))
		}
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Checksum")
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "body with trailers\n")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "sha-"+strconv.Itoa(len(r.Trailer)))
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "late")
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		w.Header().Set("Connection", "X-Hop-Resp")
		w.Header().Set("X-Hop-Resp", "must go")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("Alt-Svc", `h3=":9999"; ma=60`)
		w.Header().Set("X-End-To-End", "stays")
		io.WriteString(w, "hop\n")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		seed, _ := strconv.ParseUint(r.URL.Query().Get("seed"), 10, 64)
		w.Header().Set("Trailer", "X-Sha256")
		h := sha256.New()
		src := newPattern(seed)
		buf := make([]byte, 64<<10)
		for n > 0 {
			m := int64(len(buf))
			if n < m {
				m = n
			}
			src.Read(buf[:m])
			h.Write(buf[:m])
			if _, err := w.Write(buf[:m]); err != nil {
				u.aborted.Add(1)
				return
			}
			n -= m
		}
		w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			u.aborted.Add(1)
			return
		}
		io.WriteString(w, "slow done\n")
	})
	mux.HandleFunc("/hints", func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "after hints\n")
	})
	return mux
}

// pattern is a deterministic byte source for large bodies.
type pattern struct{ r *rand.ChaCha8 }

func newPattern(seed uint64) *pattern {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &pattern{r: rand.NewChaCha8(s)}
}

func (p *pattern) Read(b []byte) (int, error) { return p.r.Read(b) }

// countingListener counts accepted conns.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startUpstream starts a test upstream speaking proto: h1 (cleartext),
// h1tls, h2 (TLS, ALPN h2), h2c or h3.
func startUpstream(t *testing.T, proto string) *testUpstream {
	t.Helper()
	u := &testUpstream{proto: proto}
	handler := upstreamHandler(u)
	cert, certPEM := testCert(t)
	u.certFile = filepath.Join(t.TempDir(), "upstream.pem")
	if err := os.WriteFile(u.certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if proto == "h3" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http3.Server{
			Handler:   handler,
			TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
			ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
				u.conns.Add(1)
				return ctx
			},
		}
		u.addr = pc.LocalAddr().String()
		go srv.Serve(pc)
		u.close = func() { srv.Close(); pc.Close() }
		t.Cleanup(u.close)
		return u
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	var protos http.Protocols
	switch proto {
	case "h1", "h1tls":
		protos.SetHTTP1(true)
	case "h2":
		protos.SetHTTP2(true)
	case "h2c":
		protos.SetUnencryptedHTTP2(true)
	default:
		t.Fatalf("unknown upstream protocol %q", proto)
	}
	srv.Protocols = &protos
	var l net.Listener = countingListener{ln, &u.conns}
	if proto == "h1tls" || proto == "h2" {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		go srv.ServeTLS(l, "", "")
	} else {
		go srv.Serve(l)
	}
	u.close = func() { srv.Close() }
	t.Cleanup(u.close)
	return u
}

var (
	certOnce sync.Once
	certVal  tls.Certificate
	certPEMV []byte
	certErr  error
)

// testCert returns a self-signed certificate for localhost and 127.0.0.1,
// made once per test binary, and its PEM.
func testCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	certOnce.Do(func() {
		certVal, _, certErr = selfSigned()
		if certErr == nil {
			certPEMV = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certVal.Certificate[0]})
		}
	})
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certVal, certPEMV
}

func testRoots(t *testing.T) *x509.CertPool {
	cert, _ := testCert(t)
	p := x509.NewCertPool()
	p.AddCert(cert.Leaf)
	return p
}
