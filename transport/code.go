package transport

import (
	"context"
	"errors"
)

// Code is a protocol-neutral error code of the data plane. Each transport
// translates its library's errors to a Code at its boundary; the gateway maps a
// Code to an HTTP status, a Proxy-Status error type and a stream reset code in
// one table. The zero Code, CodeNone, means no error.
type Code uint8

// The codes. Their order is API: the gateway indexes tables by them.
const (
	CodeNone                Code = iota
	CodeNoRoute                  // no route matches the request's host and path
	CodeNoHealthyUpstream        // the cluster has no upstream to send to
	CodeConnectRefused           // the upstream refused the TCP/QUIC connection
	CodeConnectTimeout           // connecting to the upstream timed out
	CodeUpstreamTLS              // the TLS handshake with the upstream failed
	CodeUpstreamUnreachable      // the upstream could not be reached (DNS, no route to host)
	CodeUpstreamReset            // the upstream reset or closed the stream or connection
	CodeUpstreamProtocol         // the upstream broke the protocol (malformed response)
	CodeResponseTimeout          // the upstream did not answer in time
	CodeClientCancelled          // the downstream client went away
	CodeHeaderTooLarge           // the request header block exceeds a limit
	CodeBodyTooLarge             // the request body exceeds a limit
	CodeURITooLong               // the request line exceeds its limit
	CodeBadRequest               // the request is malformed
	CodeNotImplemented           // the request uses something we do not implement (a transfer coding)
	CodeTooEarly                 // an unsafe request arrived in 0-RTT early data
	CodeOverloaded               // a concurrency or pending limit is reached
	CodeDraining                 // the gateway is shutting down
	CodeInternal                 // a bug: a recovered panic or broken invariant

	numCodes
)

var codeNames = [numCodes]string{
	CodeNone:                "none",
	CodeNoRoute:             "no_route",
	CodeNoHealthyUpstream:   "no_healthy_upstream",
	CodeConnectRefused:      "connect_refused",
	CodeConnectTimeout:      "connect_timeout",
	CodeUpstreamTLS:         "upstream_tls",
	CodeUpstreamUnreachable: "upstream_unreachable",
	CodeUpstreamReset:       "upstream_reset",
	CodeUpstreamProtocol:    "upstream_protocol",
	CodeResponseTimeout:     "response_timeout",
	CodeClientCancelled:     "client_cancelled",
	CodeHeaderTooLarge:      "header_too_large",
	CodeBodyTooLarge:        "body_too_large",
	CodeURITooLong:          "uri_too_long",
	CodeBadRequest:          "bad_request",
	CodeNotImplemented:      "not_implemented",
	CodeTooEarly:            "too_early",
	CodeOverloaded:          "overloaded",
	CodeDraining:            "draining",
	CodeInternal:            "internal",
}

// NumCodes is the number of defined codes; valid codes are below it. Tables
// indexed by Code have this length.
const NumCodes = int(numCodes)

// String returns the code's name, a stable snake_case label fit for logs and
// metrics.
func (c Code) String() string {
	if c < numCodes {
		return codeNames[c]
	}
	return "unknown"
}

// valid maps the codes that must not describe an error (CodeNone and codes
// beyond the table) to CodeInternal.
func (c Code) valid() Code {
	if c == CodeNone || c >= numCodes {
		return CodeInternal
	}
	return c
}

// Err returns the preallocated *Error for c. It allocates nothing, so it is
// what the request path returns. Err of CodeNone is nil.
func (c Code) Err() error {
	if c == CodeNone {
		return nil
	}
	if c >= numCodes {
		c = CodeInternal
	}
	return &sentinels[c]
}

// Error is the error type of the data plane: a Code, whether the peer or we
// caused it, and optionally the underlying library error.
//
// errors.Is(err, CodeX.Err()) matches any *Error with the same Code, so the
// sentinel values serve as targets whatever the wrapped cause.
type Error struct {
	Code Code
	// Remote is true when the peer (client or upstream) caused the error, for
	// example by resetting a stream, rather than a local limit or decision.
	Remote bool
	// Err is the underlying cause, or nil.
	Err error
}

var sentinels = func() (s [numCodes]Error) {
	for i := range s {
		s[i].Code = Code(i)
	}
	return s
}()

// NewError returns an *Error carrying code and its cause. It allocates; use it
// at start-up, on dial failures and other per-connection events, and Code.Err on
// the per-request path.
func NewError(code Code, remote bool, cause error) *Error {
	return &Error{Code: code, Remote: remote, Err: cause}
}

// Error implements error. The text is "transport: " and the code's name,
// followed by the cause when there is one.
func (e *Error) Error() string {
	if e.Err == nil {
		return "transport: " + e.Code.String()
	}
	return "transport: " + e.Code.String() + ": " + e.Err.Error()
}

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && e != nil && t != nil && t.Code == e.Code
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error {
	if e == nil {
		return nil
	}
	return e.Err
}

// ErrNotProcessed is the cause of an upstream error when the upstream
// provably did not process the request: HTTP/2 REFUSED_STREAM or a stream
// above a GOAWAY's last stream ID, HTTP/3 H3_REQUEST_REJECTED, a request not
// sent. Such a request may be retried whatever its method (RFC 9110 §9.2.2,
// RFC 9113 §8.7, RFC 9114 §4.1.1). Test with errors.Is.
var ErrNotProcessed = errors.New("transport: request not processed by the upstream")

// CodeOf returns the Code carried by err. An error that carries none maps to
// CodeClientCancelled when it is a context cancellation, CodeResponseTimeout
// when it is a deadline, and CodeInternal otherwise. CodeOf(nil) is CodeNone.
// The result is always below NumCodes, and CodeNone only for nil: an *Error
// whose Code is CodeNone or out of range maps to CodeInternal, so tables
// indexed by Code can be indexed without a check.
func CodeOf(err error) Code {
	if err == nil {
		return CodeNone
	}
	if e, ok := err.(*Error); ok && e != nil { // fast path: no reflection
		return e.Code.valid()
	}
	if e, ok := errors.AsType[*Error](err); ok && e != nil {
		return e.Code.valid()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return CodeClientCancelled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeResponseTimeout
	}
	return CodeInternal
}
