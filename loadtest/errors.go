package loadtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
)

// ErrorKind is the class of a failed request.
type ErrorKind uint8

// The kinds of errors. A request fails with exactly one.
const (
	// ErrConnect: the TCP connection was refused or not answered, or the QUIC
	// handshake got no answer (QUIC has no refusal: a closed UDP port looks
	// like silence, so it ends in the handshake timeout).
	ErrConnect ErrorKind = iota
	// ErrTLS: the TLS handshake failed: certificate, alert, no common ALPN
	// protocol, or the peer hung up during the handshake.
	ErrTLS
	// ErrReset: the server reset or closed the stream or the connection
	// before the response was complete: TCP RST, EOF mid-response, HTTP/2
	// RST_STREAM or GOAWAY, QUIC RESET_STREAM or CONNECTION_CLOSE.
	ErrReset
	// ErrTimeout: the request (Config.Timeout) or the connection timed out.
	ErrTimeout
	// ErrProtocol: the server violated the protocol (HTTP/2 PROTOCOL_ERROR,
	// HTTP/3 frame or QPACK errors, a QUIC transport error).
	ErrProtocol
	// ErrOther: anything else, including HTTP/1.1 parse errors, which
	// net/http reports without a type.
	ErrOther
	numErrorKinds
)

var errorKindNames = [numErrorKinds]string{"connect", "tls", "reset", "timeout", "protocol", "other"}

// String returns the kind's name as used in reports: connect, tls, reset,
// timeout, protocol, other.
func (k ErrorKind) String() string {
	if k < numErrorKinds {
		return errorKindNames[k]
	}
	return "unknown"
}

// ErrorKinds lists every kind, in report order.
func ErrorKinds() []ErrorKind {
	ks := make([]ErrorKind, numErrorKinds)
	for i := range ks {
		ks[i] = ErrorKind(i)
	}
	return ks
}

// phase is the step of a request where an error happened. Classification
// starts from it: a failure while connecting is a connect error whatever
// the library calls it.
type phase uint8

const (
	phaseConnect   phase = iota // TCP connect
	phaseHandshake              // TLS over TCP, or the whole QUIC handshake
	phaseRequest                // request and response on an established connection
)

// errNoALPN is returned when the server did not select the protocol the run
// asked for in ALPN (h2 asked, http/1.1 or nothing chosen).
var errNoALPN = errors.New("loadtest: server did not negotiate the requested protocol with ALPN")

// classify returns the kind of err, which happened in phase p. It looks only
// at error types and values, never at text.
func classify(p phase, err error) ErrorKind {
	switch p {
	case phaseConnect:
		return ErrConnect
	case phaseHandshake:
		return classifyHandshake(err)
	}
	return classifyRequest(err)
}

func classifyHandshake(err error) ErrorKind {
	if errors.Is(err, errNoALPN) || isTLSError(err) {
		return ErrTLS
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		if te.ErrorCode.IsCryptoError() {
			return ErrTLS
		}
		return ErrProtocol
	}
	// A QUIC handshake that times out never heard from the server: the
	// equivalent of a TCP connect that got no SYN-ACK.
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return ErrConnect
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return ErrConnect
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return ErrConnect
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ErrConnect
	}
	if isTimeout(err) {
		return ErrTimeout
	}
	// Over TCP everything else in the handshake is TLS: EOF or a reset while
	// handshaking is the server refusing to talk TLS.
	return ErrTLS
}

func isTLSError(err error) bool {
	if _, ok := errors.AsType[tls.AlertError](err); ok {
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

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	return false
}

func classifyRequest(err error) ErrorKind {
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return ErrTimeout
	}
	if isTimeout(err) {
		return ErrTimeout
	}
	// HTTP/3 wraps QUIC stream and connection errors in *http3.Error.
	if he, ok := errors.AsType[*http3.Error](err); ok {
		if h3ProtocolError(he.ErrorCode) {
			return ErrProtocol
		}
		return ErrReset
	}
	if _, ok := errors.AsType[*quic.StreamError](err); ok {
		return ErrReset
	}
	if _, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return ErrReset
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return ErrReset
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		if te.ErrorCode.IsCryptoError() {
			return ErrTLS
		}
		return ErrProtocol
	}
	// net/http's bundled HTTP/2 errors convert to x/net's types with As.
	if se, ok := errors.AsType[http2.StreamError](err); ok {
		if h2ProtocolError(se.Code) {
			return ErrProtocol
		}
		return ErrReset
	}
	if ce, ok := errors.AsType[http2.ConnectionError](err); ok {
		if h2ProtocolError(http2.ErrCode(ce)) {
			return ErrProtocol
		}
		return ErrReset
	}
	if ge, ok := errors.AsType[http2.GoAwayError](err); ok {
		if h2ProtocolError(ge.ErrCode) {
			return ErrProtocol
		}
		return ErrReset
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) {
		return ErrReset
	}
	if isTLSError(err) {
		return ErrTLS
	}
	return ErrOther
}

func h2ProtocolError(c http2.ErrCode) bool {
	switch c {
	case http2.ErrCodeProtocol, http2.ErrCodeFrameSize, http2.ErrCodeCompression, http2.ErrCodeFlowControl:
		return true
	}
	return false
}

func h3ProtocolError(c http3.ErrCode) bool {
	switch c {
	case http3.ErrCodeGeneralProtocolError, http3.ErrCodeStreamCreationError, http3.ErrCodeClosedCriticalStream,
		http3.ErrCodeFrameUnexpected, http3.ErrCodeFrameError, http3.ErrCodeIDError, http3.ErrCodeSettingsError,
		http3.ErrCodeMissingSettings, http3.ErrCodeMessageError, http3.ErrCodeQPACKDecompressionFailed:
		return true
	}
	// QPACK_ENCODER_STREAM_ERROR and QPACK_DECODER_STREAM_ERROR (RFC 9204, section 6).
	return c == 0x201 || c == 0x202
}
