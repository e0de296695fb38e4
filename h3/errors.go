package h3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/proxynow/proxynow/transport"
)

// This file translates between the HTTP/3 wire codes of quic-go (http3.ErrCode,
// quic.StreamError, quic.ApplicationError, ...) and transport codes, in both
// directions. It is the only place that does; the request path uses the
// preallocated values below, so translating allocates nothing.

// ErrRequestNotProcessed is the cause of the *transport.Error that RoundTrip
// returns when the upstream provably did not process the request: it reset
// the stream with H3_REQUEST_REJECTED (RFC 9114 §4.1.1), or the connection
// had received GOAWAY before the request was sent (§5.2). The request can be
// retried on another connection if its body is replayable. Test with
// errors.Is(err, ErrRequestNotProcessed).
var ErrRequestNotProcessed = transport.ErrNotProcessed

// resetCodes is the stream error code (RFC 9114 §8.1) a ServerStream.Reset
// sends for each transport code.
var resetCodes = [transport.NumCodes]http3.ErrCode{
	transport.CodeNone:                http3.ErrCodeNoError,
	transport.CodeNoRoute:             http3.ErrCodeInternalError,
	transport.CodeNoHealthyUpstream:   http3.ErrCodeInternalError,
	transport.CodeConnectRefused:      http3.ErrCodeInternalError,
	transport.CodeConnectTimeout:      http3.ErrCodeInternalError,
	transport.CodeUpstreamTLS:         http3.ErrCodeInternalError,
	transport.CodeUpstreamUnreachable: http3.ErrCodeInternalError,
	transport.CodeUpstreamReset:       http3.ErrCodeInternalError,
	transport.CodeUpstreamProtocol:    http3.ErrCodeInternalError,
	transport.CodeResponseTimeout:     http3.ErrCodeInternalError,
	transport.CodeClientCancelled:     http3.ErrCodeRequestCanceled,
	transport.CodeHeaderTooLarge:      http3.ErrCodeExcessiveLoad,
	transport.CodeBodyTooLarge:        http3.ErrCodeExcessiveLoad,
	transport.CodeURITooLong:          http3.ErrCodeMessageError,
	transport.CodeBadRequest:          http3.ErrCodeMessageError,
	transport.CodeNotImplemented:      http3.ErrCodeInternalError,
	// H3_REQUEST_REJECTED promises that no application processing took
	// place (§8.1), so the client may retry: true for a request refused
	// for arriving too early or while draining.
	transport.CodeTooEarly:   http3.ErrCodeRequestRejected,
	transport.CodeOverloaded: http3.ErrCodeExcessiveLoad,
	transport.CodeDraining:   http3.ErrCodeRequestRejected,
	transport.CodeInternal:   http3.ErrCodeInternalError,
}

// ResetCode returns the HTTP/3 stream error code that a reset with transport
// code c carries on the wire.
func ResetCode(c transport.Code) http3.ErrCode {
	if int(c) < len(resetCodes) {
		return resetCodes[c]
	}
	return http3.ErrCodeInternalError
}

// DownstreamCode returns the transport code for a stream or connection error
// code that a client sent us. Whatever the code (H3_REQUEST_CANCELLED
// usually; H3_NO_ERROR on STOP_SENDING; a protocol error code when it found
// our response malformed), a client that resets a stream has given up on
// it: the result is CodeClientCancelled.
func DownstreamCode(http3.ErrCode) transport.Code {
	return transport.CodeClientCancelled
}

// UpstreamCode returns the transport code for a stream error code on an
// upstream stream. remote reports whether the upstream sent it; local codes
// are those quic-go's client used to reset a stream whose response it could
// not parse.
func UpstreamCode(e http3.ErrCode, remote bool) transport.Code {
	if remote {
		return transport.CodeUpstreamReset
	}
	switch e {
	case http3.ErrCodeRequestCanceled, http3.ErrCodeNoError:
		return transport.CodeClientCancelled
	case http3.ErrCodeMessageError, http3.ErrCodeFrameError, http3.ErrCodeFrameUnexpected,
		http3.ErrCodeQPACKDecompressionFailed, http3.ErrCodeRequestIncomplete,
		http3.ErrCodeExcessiveLoad, http3.ErrCodeGeneralProtocolError, http3.ErrCodeIDError,
		http3.ErrCodeSettingsError, http3.ErrCodeMissingSettings, http3.ErrCodeClosedCriticalStream,
		http3.ErrCodeStreamCreationError:
		return transport.CodeUpstreamProtocol
	}
	return transport.CodeUpstreamReset
}

// remoteErrs are the preallocated errors with Remote set, one per code;
// transport.Code.Err gives the local ones.
var remoteErrs = func() (e [transport.NumCodes]transport.Error) {
	for i := range e {
		e[i] = transport.Error{Code: transport.Code(i), Remote: true}
	}
	return e
}()

// codeErr returns the preallocated error for c, remote or local.
func codeErr(c transport.Code, remote bool) error {
	if c == transport.CodeNone {
		return nil
	}
	if remote && int(c) < len(remoteErrs) {
		return &remoteErrs[c]
	}
	return c.Err()
}

// Preallocated errors with a cause, for the request path.
var (
	errUpstreamRejected = transport.NewError(transport.CodeUpstreamReset, true, ErrRequestNotProcessed)
	errServerDraining   = transport.NewError(transport.CodeDraining, false, errors.New("h3: server closed the connection"))
	errConnClosed       = transport.NewError(transport.CodeUpstreamReset, false, errors.New("h3: connection closed"))
	errConnGoingAway    = transport.NewError(transport.CodeUpstreamReset, true, errors.New("h3: connection received GOAWAY"))
	errConnShutdown     = transport.NewError(transport.CodeDraining, false, errors.New("h3: connection shutting down"))
	errResponseTimeout  = transport.NewError(transport.CodeResponseTimeout, false, errors.New("h3: timeout awaiting response headers"))
)

// downstreamErr translates an error from reading a client's request body or
// writing its response. resetBy is the code of our own Reset, if any: a
// stream error we caused locally reports it.
func downstreamErr(err error, resetBy transport.Code) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*transport.Error); ok {
		return e
	}
	if e, ok := errors.AsType[*http3.Error](err); ok {
		if _, conn := errors.AsType[*quic.ApplicationError](err); conn {
			return connClosedErr(err)
		}
		if !e.Remote {
			return localResetErr(resetBy)
		}
		return codeErr(transport.CodeClientCancelled, true)
	}
	if e, ok := errors.AsType[*quic.StreamError](err); ok {
		if !e.Remote {
			return localResetErr(resetBy)
		}
		return codeErr(transport.CodeClientCancelled, true)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// The client ended the body short of its Content-Length.
		return codeErr(transport.CodeBadRequest, true)
	}
	if isConnErr(err) {
		return connClosedErr(err)
	}
	// quic-go's content-length check and frame parser errors are plain
	// errors: the request was malformed.
	return codeErr(transport.CodeBadRequest, true)
}

func localResetErr(c transport.Code) error {
	if c == transport.CodeNone {
		c = transport.CodeInternal
	}
	return c.Err()
}

// connClosedErr translates the error of a closed client connection: our own
// close (Server.Close, a drain) is CodeDraining, anything else means the
// client went away.
func connClosedErr(err error) error {
	if e, ok := errors.AsType[*quic.ApplicationError](err); ok && !e.Remote {
		return errServerDraining
	}
	if e, ok := errors.AsType[*quic.TransportError](err); ok && !e.Remote {
		return errServerDraining
	}
	return codeErr(transport.CodeClientCancelled, true)
}

func isConnErr(err error) bool {
	if _, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.TransportError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.StatelessResetError](err); ok {
		return true
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return true
	}
	return false
}

// streamCause translates the cause of a server stream's send-side context,
// which quic-go cancels on STOP_SENDING from the client, on our own
// CancelWrite, on Close, and when the connection closes. It returns nil for
// causes that are not the client's or the connection's doing (our Close and
// our own Reset, which cancels the stream's context itself).
func streamCause(cause error) error {
	if cause == nil || errors.Is(cause, quic.ErrStreamClosed) {
		return nil
	}
	if e, ok := cause.(*quic.StreamError); ok {
		if !e.Remote {
			return nil
		}
		return codeErr(transport.CodeClientCancelled, true)
	}
	if isConnErr(cause) {
		return connClosedErr(cause)
	}
	return codeErr(transport.CodeClientCancelled, true)
}

// upstreamErr translates an error from an upstream stream: RoundTrip, or a
// read of the response body.
func upstreamErr(err error) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*transport.Error); ok {
		return e
	}
	if e, ok := errors.AsType[*http3.Error](err); ok {
		if _, conn := errors.AsType[*quic.ApplicationError](err); conn {
			return upstreamConnErr(err)
		}
		if e.Remote && e.ErrorCode == http3.ErrCodeRequestRejected {
			return errUpstreamRejected
		}
		return codeErr(UpstreamCode(e.ErrorCode, e.Remote), e.Remote)
	}
	if e, ok := errors.AsType[*quic.StreamError](err); ok {
		code := http3.ErrCode(e.ErrorCode)
		if e.Remote && code == http3.ErrCodeRequestRejected {
			return errUpstreamRejected
		}
		return codeErr(UpstreamCode(code, e.Remote), e.Remote)
	}
	if isConnErr(err) {
		return upstreamConnErr(err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return transport.CodeResponseTimeout.Err()
	}
	if errors.Is(err, context.Canceled) {
		return transport.CodeClientCancelled.Err()
	}
	// Everything else quic-go's client returns is a malformed response
	// (plain errors from its header and frame parsers).
	return codeErr(transport.CodeUpstreamProtocol, true)
}

// upstreamConnErr translates the error of an upstream connection that closed
// under a stream.
func upstreamConnErr(err error) error {
	if e, ok := errors.AsType[*quic.TransportError](err); ok && e.Remote &&
		e.ErrorCode != quic.NoError && e.ErrorCode != quic.ApplicationErrorErrorCode {
		return codeErr(transport.CodeUpstreamProtocol, true)
	}
	return codeErr(transport.CodeUpstreamReset, true)
}

// dialErr translates an error of a QUIC dial. It runs once per connection,
// so it may allocate.
func dialErr(err error) *transport.Error {
	if e, ok := errors.AsType[*transport.Error](err); ok {
		return e
	}
	switch {
	case isType[*quic.HandshakeTimeoutError](err), isType[*quic.IdleTimeoutError](err),
		errors.Is(err, context.DeadlineExceeded):
		// No answer: QUIC has no refusal signal a socket could report, so a
		// port nobody listens on shows up as a handshake timeout.
		return transport.NewError(transport.CodeConnectTimeout, false, err)
	case errors.Is(err, context.Canceled):
		return transport.NewError(transport.CodeDraining, false, err)
	}
	if isTLSErr(err) {
		return transport.NewError(transport.CodeUpstreamTLS, true, err)
	}
	if e, ok := errors.AsType[*quic.TransportError](err); ok && e.ErrorCode == quic.ConnectionRefused {
		return transport.NewError(transport.CodeConnectRefused, true, err)
	}
	if _, ok := errors.AsType[*quic.VersionNegotiationError](err); ok {
		return transport.NewError(transport.CodeConnectRefused, true, err)
	}
	if isUnreachable(err) {
		return transport.NewError(transport.CodeUpstreamUnreachable, false, err)
	}
	if isRefused(err) {
		return transport.NewError(transport.CodeConnectRefused, true, err)
	}
	if _, ok := errors.AsType[*quic.ApplicationError](err); ok {
		return transport.NewError(transport.CodeConnectRefused, true, err)
	}
	return transport.NewError(transport.CodeUpstreamUnreachable, false, err)
}

func isType[T error](err error) bool {
	_, ok := errors.AsType[T](err)
	return ok
}

// isTLSErr reports whether err is a failed TLS handshake: a crypto error
// (a TLS alert, RFC 9001 §4.8) sent or received, or a certificate that did
// not verify.
func isTLSErr(err error) bool {
	if e, ok := errors.AsType[*quic.TransportError](err); ok && e.ErrorCode.IsCryptoError() {
		return true
	}
	if isType[*tls.CertificateVerificationError](err) || isType[tls.AlertError](err) ||
		isType[x509.UnknownAuthorityError](err) || isType[x509.HostnameError](err) ||
		isType[x509.CertificateInvalidError](err) {
		return true
	}
	return false
}

func isUnreachable(err error) bool {
	if isType[*net.DNSError](err) || isType[*net.AddrError](err) {
		return true
	}
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.EADDRNOTAVAIL)
}

func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
