package h2

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"reflect"
	"syscall"

	"golang.org/x/net/http2"

	"github.com/proxynow/proxynow/transport"
)

// ErrUnprocessed is the cause carried by the [transport.CodeUpstreamReset]
// error that RoundTrip returns when the upstream provably did not process the
// request: it refused the stream (REFUSED_STREAM, RFC 9113 §8.7) or sent
// GOAWAY with a last stream ID below it (§6.8). Such a request may be retried
// on another conn if its body can be replayed. Match it with errors.Is.
var ErrUnprocessed = transport.ErrNotProcessed

// Preallocated errors of the request path. They carry Remote=true where the
// peer caused them, which the sentinels of transport.Code.Err do not.
var (
	// errUpstreamReset: the upstream reset the stream or dropped the conn.
	errUpstreamReset = &transport.Error{Code: transport.CodeUpstreamReset, Remote: true}
	// errUnprocessed: REFUSED_STREAM or a stream above the GOAWAY's last
	// stream ID; retryable.
	errUnprocessed = &transport.Error{Code: transport.CodeUpstreamReset, Remote: true, Err: ErrUnprocessed}
	// errUpstreamProtocol: the upstream broke the protocol.
	errUpstreamProtocol = &transport.Error{Code: transport.CodeUpstreamProtocol, Remote: true}
	// errClientGone: the downstream client reset the stream or went away
	// (or its request body failed).
	errClientGone = &transport.Error{Code: transport.CodeClientCancelled, Remote: true}
	// errBodyLength: a request body longer or shorter than its
	// ContentLength.
	errBodyLength = transport.NewError(transport.CodeBadRequest, true, errors.New("h2: request body length differs from its Content-Length"))

	// Conn states reported by conn.Err.
	errConnGoAway   = transport.NewError(transport.CodeUpstreamReset, true, errors.New("h2: GOAWAY received"))
	errConnBroken   = transport.NewError(transport.CodeUpstreamReset, true, errors.New("h2: connection closed"))
	errConnShutdown = transport.NewError(transport.CodeDraining, false, errors.New("h2: connection shut down"))
	errConnClosed   = transport.NewError(transport.CodeDraining, false, errors.New("h2: connection closed locally"))

	errNoH2 = errors.New("h2: server did not negotiate h2 with ALPN")
)

// ctxErr translates the end of the caller's ctx: its cause when that is a
// *transport.Error, CodeResponseTimeout (or CodeConnectTimeout when dialing) for
// a deadline, and CodeClientCancelled otherwise.
func ctxErr(ctx context.Context, timeout transport.Code) error {
	cause := context.Cause(ctx)
	if te, ok := errors.AsType[*transport.Error](cause); ok {
		return te
	}
	if errors.Is(cause, context.DeadlineExceeded) {
		return timeout.Err()
	}
	return transport.CodeClientCancelled.Err()
}

// streamErr translates an error of a RoundTrip or of a response body read,
// once ctx cancellation has been ruled out. It allocates nothing.
func streamErr(err error) error {
	if te, ok := errors.AsType[*transport.Error](err); ok {
		// From our own request body wrapper: the downstream side failed.
		return te
	}
	if se, ok := errors.AsType[http2.StreamError](err); ok {
		if se.Code == http2.ErrCodeRefusedStream {
			// RFC 9113 §8.7: the stream was not processed; retryable.
			return errUnprocessed
		}
		return errUpstreamReset
	}
	if _, ok := errors.AsType[http2.GoAwayError](err); ok {
		return errUpstreamReset
	}
	if _, ok := errors.AsType[http2.ConnectionError](err); ok {
		return errUpstreamProtocol
	}
	if isConnDrop(err) {
		return errUpstreamReset
	}
	return nil
}

// isConnDrop reports whether err says the transport conn went away.
func isConnDrop(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED)
}

// dialPhase is the step of Dial an error happened in.
type dialPhase uint8

const (
	phaseTCP dialPhase = iota
	phaseTLS
	phaseH2
)

// dialErr translates a dial failure. ctx is the caller's, dctx the one bounded
// by ConnectTimeout. Dial failures are per-connection events, so the error
// carries its cause.
func dialErr(ctx, dctx context.Context, phase dialPhase, err error) error {
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		if te, ok := errors.AsType[*transport.Error](cause); ok {
			return te
		}
		if errors.Is(cause, context.DeadlineExceeded) {
			return transport.NewError(transport.CodeConnectTimeout, false, err)
		}
		return transport.NewError(transport.CodeClientCancelled, false, err)
	}
	if te, ok := errors.AsType[*transport.Error](err); ok {
		return te
	}
	if dctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return transport.NewError(transport.CodeConnectTimeout, true, err)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return transport.NewError(transport.CodeConnectTimeout, true, err)
	}
	if isNoALPNAlert(err) {
		// RFC 7301 §3.2: the server supports none of our protocols,
		// so it does not speak h2.
		return transport.NewError(transport.CodeUpstreamProtocol, true, err)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return transport.NewError(transport.CodeConnectRefused, true, err)
	}
	if _, ok := errors.AsType[*net.DNSError](err); ok {
		return transport.NewError(transport.CodeUpstreamUnreachable, true, err)
	}
	if errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) {
		return transport.NewError(transport.CodeUpstreamUnreachable, true, err)
	}
	if isTLSErr(err) {
		return transport.NewError(transport.CodeUpstreamTLS, true, err)
	}
	switch phase {
	case phaseTLS:
		// The peer hung up or sent garbage during the handshake.
		return transport.NewError(transport.CodeUpstreamTLS, true, err)
	case phaseH2:
		// The peer does not speak HTTP/2: no SETTINGS, a bad frame, or
		// a hang-up in reply to the preface.
		return transport.NewError(transport.CodeUpstreamProtocol, true, err)
	}
	return transport.NewError(transport.CodeUpstreamUnreachable, true, err)
}

// alertNoApplicationProtocol is the TLS alert no_application_protocol
// (RFC 7301 §3.2).
const alertNoApplicationProtocol = 120

// tlsAlert returns the TLS alert that err carries. crypto/tls reports an
// alert received from the peer as a *net.OpError whose Err is its unexported
// alert type, a uint8; tls.AlertError is what QUIC conns return.
func tlsAlert(err error) (uint8, bool) {
	if a, ok := errors.AsType[tls.AlertError](err); ok {
		return uint8(a), true
	}
	oe, ok := errors.AsType[*net.OpError](err)
	if !ok || oe.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(oe.Err)
	if v.Kind() != reflect.Uint8 || v.Type().PkgPath() != "crypto/tls" {
		return 0, false
	}
	return uint8(v.Uint()), true
}

// isNoALPNAlert reports whether err is the peer's no_application_protocol
// alert.
func isNoALPNAlert(err error) bool {
	a, ok := tlsAlert(err)
	return ok && a == alertNoApplicationProtocol
}

// isTLSErr reports whether err is a TLS alert or certificate failure.
func isTLSErr(err error) bool {
	if _, ok := tlsAlert(err); ok {
		return true
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return true
	}
	return false
}
