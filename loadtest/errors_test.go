package loadtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/proxynow/proxynow/loadtest/loadtesttest"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("outer: %w", err) }
	for _, tc := range []struct {
		p    phase
		err  error
		want ErrorKind
	}{
		{phaseConnect, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, ErrConnect},
		{phaseConnect, context.DeadlineExceeded, ErrConnect},
		{phaseHandshake, wrap(x509.UnknownAuthorityError{}), ErrTLS},
		{phaseHandshake, &tls.CertificateVerificationError{Err: errors.New("x")}, ErrTLS},
		{phaseHandshake, tls.AlertError(40), ErrTLS},
		{phaseHandshake, errNoALPN, ErrTLS},
		{phaseHandshake, io.EOF, ErrTLS},
		{phaseHandshake, &quic.TransportError{ErrorCode: 0x12a}, ErrTLS},
		{phaseHandshake, &quic.TransportError{ErrorCode: quic.ProtocolViolation}, ErrProtocol},
		{phaseHandshake, &quic.HandshakeTimeoutError{}, ErrConnect},
		{phaseHandshake, os.ErrDeadlineExceeded, ErrTimeout},
		{phaseRequest, context.DeadlineExceeded, ErrTimeout},
		{phaseRequest, wrap(os.ErrDeadlineExceeded), ErrTimeout},
		{phaseRequest, &quic.IdleTimeoutError{}, ErrTimeout},
		{phaseRequest, wrap(syscall.ECONNRESET), ErrReset},
		{phaseRequest, io.ErrUnexpectedEOF, ErrReset},
		{phaseRequest, http2.StreamError{Code: http2.ErrCodeInternal}, ErrReset},
		{phaseRequest, http2.StreamError{Code: http2.ErrCodeProtocol}, ErrProtocol},
		{phaseRequest, http2.ConnectionError(http2.ErrCodeCompression), ErrProtocol},
		{phaseRequest, http2.GoAwayError{ErrCode: http2.ErrCodeNo}, ErrReset},
		{phaseRequest, &http3.Error{ErrorCode: http3.ErrCodeInternalError}, ErrReset},
		{phaseRequest, &http3.Error{ErrorCode: http3.ErrCodeRequestRejected}, ErrReset},
		{phaseRequest, &http3.Error{ErrorCode: http3.ErrCodeFrameError}, ErrProtocol},
		{phaseRequest, &http3.Error{ErrorCode: 0x201}, ErrProtocol},
		{phaseRequest, &quic.StreamError{ErrorCode: 5, Remote: true}, ErrReset},
		{phaseRequest, &quic.ApplicationError{Remote: true}, ErrReset},
		{phaseRequest, &quic.TransportError{ErrorCode: quic.FlowControlError}, ErrProtocol},
		{phaseRequest, &quic.StatelessResetError{}, ErrReset},
		{phaseRequest, errors.New("net/http: malformed response"), ErrOther},
	} {
		if got := classify(tc.p, tc.err); got != tc.want {
			t.Errorf("classify(%d, %T %v) = %v, want %v", tc.p, tc.err, tc.err, got, tc.want)
		}
	}
	if ErrorKind(200).String() != "unknown" || ErrTLS.String() != "tls" || len(ErrorKinds()) != int(numErrorKinds) {
		t.Error("ErrorKind names")
	}
}

// TestErrorRefused: nothing listens; TCP connects are refused, QUIC
// handshakes get no answer. Each attempt is one connect error.
func TestErrorRefused(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		addr := loadtesttest.FreePort(t)
		cfg := Config{
			URLs: []string{"https://" + addr + "/"}, Proto: p, Insecure: true,
			Conns: 3, Requests: 6, ConnectTimeout: 200 * time.Millisecond, Timeout: time.Second,
		}
		res := runOK(t, cfg)
		if res.Errors[ErrConnect] != 6 || res.TotalErrors() != 6 || res.Requests != 0 {
			t.Fatalf("errors %v, requests %d; want 6 connect errors", res.Errors, res.Requests)
		}
	})
}

// TestErrorTLS: the server's certificate is not trusted.
func TestErrorTLS(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool()} // trusts nothing
		cfg.Requests = 4
		res := runOK(t, cfg)
		if res.Errors[ErrTLS] != 4 || res.TotalErrors() != 4 {
			t.Fatalf("errors %v; want 4 tls errors", res.Errors)
		}
		// With the right name and -insecure-like trust it works.
		cfg.TLSConfig = nil
		cfg.Insecure = true
		if res := runOK(t, cfg); res.Requests != 4 {
			t.Fatalf("insecure: requests %d, errors %v", res.Requests, res.Errors)
		}
	})
}

// TestErrorTLSWrongProtocol: an HTTP/2 run against a server that speaks
// only HTTP/1.1 fails ALPN.
func TestErrorTLSWrongProtocol(t *testing.T) {
	srv := loadtesttest.NewServer(t, &counter{}, loadtesttest.Options{NoH3: true, H1Only: true})
	cfg := base(srv, H2)
	cfg.Requests = 2
	res := runOK(t, cfg)
	if res.Errors[ErrTLS] != 2 {
		t.Fatalf("errors %v; want 2 tls errors", res.Errors)
	}
}

// TestErrorReset: the server resets every other request's stream (HTTP/2,
// HTTP/3) or connection (HTTP/1.1). On HTTP/2 and HTTP/3 the connection
// survives and the other requests succeed.
func TestErrorReset(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		var n atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1)%2 == 0 {
				panic(http.ErrAbortHandler)
			}
			io.WriteString(w, "ok")
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Streams, cfg.Requests = 2, 40
		res := runOK(t, cfg)
		if res.Requests != 20 || res.Errors[ErrReset] != 20 || res.TotalErrors() != 20 {
			t.Fatalf("requests %d, errors %v; want 20 and 20 resets", res.Requests, res.Errors)
		}
		if p != H1 && res.Dials != 1 {
			t.Fatalf("%d connections: a stream reset must not cost the connection", res.Dials)
		}
	})
}

// TestErrorResetTCP: an HTTP/1.1 server that aborts the connection with a
// TCP RST.
func TestErrorResetTCP(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		if tc, ok := c.(*tls.Conn); ok {
			tc.NetConn().(*net.TCPConn).SetLinger(0)
		}
		c.Close()
	})
	srv := loadtesttest.NewServer(t, h, loadtesttest.Options{NoH3: true})
	cfg := base(srv, H1)
	cfg.Requests = 5
	res := runOK(t, cfg)
	if res.Errors[ErrReset] != 5 {
		t.Fatalf("errors %v; want 5 resets", res.Errors)
	}
}

// TestErrorTimeout: the server does not answer the first two requests
// within Timeout, then answers. On HTTP/2 and HTTP/3 a timed-out request
// costs its stream, not the connection.
//
// Timeout bounds connection setup too, and every connection is dialed by a
// request under it (the first of each slot; with HTTP/1.1 also the one after
// a timeout), so it is long enough for a handshake on a loaded machine; the
// protocols run in parallel, as each waits out two timeouts.
func TestErrorTimeout(t *testing.T) {
	forEachProto(t, func(t *testing.T, p Proto) {
		t.Parallel()
		release := make(chan struct{})
		defer close(release)
		var n atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1) > 2 {
				return
			}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		srv := loadtesttest.NewServer(t, h, loadtesttest.Options{})
		cfg := base(srv, p)
		cfg.Timeout, cfg.Conns, cfg.Requests = time.Second, 2, 6
		res := runOK(t, cfg)
		if res.Errors[ErrTimeout] != 2 || res.TotalErrors() != 2 || res.Requests != 4 {
			t.Fatalf("errors %v, requests %d; want 2 timeouts and 4 answers", res.Errors, res.Requests)
		}
		if p != H1 && res.Dials != 2 {
			t.Fatalf("%d connections for 2 slots: a timeout must not cost the connection", res.Dials)
		}
	})
}
