package gateway

import (
	"net/http"
	"strconv"

	"github.com/proxynow/proxynow/transport"
)

// errorInfo is how the gateway answers one transport code. The table below is
// the one place where codes become HTTP statuses, RFC 9209 Proxy-Status error
// types and stream reset codes.
type errorInfo struct {
	status int
	// proxyStatus is the RFC 9209 §2.3 error type.
	proxyStatus string
	// h2Reset and h3Reset are the RST_STREAM (RFC 9113 §7) and HTTP/3
	// stream reset (RFC 9114 §8.1) codes used when the response has already
	// started and the stream can only be reset. REFUSED_STREAM and
	// H3_REQUEST_REJECTED promise the request was not processed, so only
	// codes the gateway raises before forwarding use them; CONNECT_ERROR is
	// for CONNECT tunnels and not used for requests. The h3 server and the
	// native HTTP/2 engine send these columns (a test in cmd/proxynow checks
	// they agree); the x/net HTTP/2 engine (http2.engine: xnet) always sends
	// INTERNAL_ERROR.
	h2Reset uint32
	h3Reset uint64

	// Precomputed response parts, so the error path formats nothing.
	proxyStatusValue []string // {"proxynow; error=..."}, shared by every response
	body             []byte
	contentLength    int64
}

// HTTP/2 error codes (RFC 9113 §7) and HTTP/3 error codes (RFC 9114 §8.1)
// used by the table; the protocol packages own the full lists.
const (
	h2InternalError    = 0x2
	h2RefusedStream    = 0x7
	h2Cancel           = 0x8
	h2EnhanceYourCalm  = 0xb
	h3InternalError    = 0x102
	h3ExcessiveLoad    = 0x107
	h3RequestRejected  = 0x10b
	h3RequestCancelled = 0x10c
	h3MessageError     = 0x10e
)

// ProxyName names this proxy in Proxy-Status fields.
const ProxyName = "proxynow"

// StatusClientClosedRequest is the status logged when the client went away
// before the response was complete. It is never sent.
const StatusClientClosedRequest = 499

var errorTable = func() (t [transport.NumCodes]errorInfo) {
	set := func(c transport.Code, status int, ps string, h2, h3 uint64) {
		t[c] = errorInfo{status: status, proxyStatus: ps, h2Reset: uint32(h2), h3Reset: h3}
	}
	set(transport.CodeNone, http.StatusOK, "", 0, 0)
	set(transport.CodeNoRoute, http.StatusNotFound, "destination_not_found", h2InternalError, h3InternalError)
	set(transport.CodeNoHealthyUpstream, http.StatusServiceUnavailable, "destination_unavailable", h2InternalError, h3InternalError)
	set(transport.CodeConnectRefused, http.StatusBadGateway, "connection_refused", h2InternalError, h3InternalError)
	set(transport.CodeConnectTimeout, http.StatusGatewayTimeout, "connection_timeout", h2InternalError, h3InternalError)
	set(transport.CodeUpstreamTLS, http.StatusBadGateway, "tls_protocol_error", h2InternalError, h3InternalError)
	set(transport.CodeUpstreamUnreachable, http.StatusBadGateway, "destination_ip_unroutable", h2InternalError, h3InternalError)
	set(transport.CodeUpstreamReset, http.StatusBadGateway, "connection_terminated", h2InternalError, h3InternalError)
	set(transport.CodeUpstreamProtocol, http.StatusBadGateway, "http_protocol_error", h2InternalError, h3InternalError)
	set(transport.CodeResponseTimeout, http.StatusGatewayTimeout, "http_response_timeout", h2InternalError, h3InternalError)
	set(transport.CodeClientCancelled, StatusClientClosedRequest, "", h2Cancel, h3RequestCancelled)
	set(transport.CodeHeaderTooLarge, http.StatusRequestHeaderFieldsTooLarge, "http_request_error", h2InternalError, h3ExcessiveLoad)
	set(transport.CodeBodyTooLarge, http.StatusRequestEntityTooLarge, "http_request_error", h2Cancel, h3ExcessiveLoad)
	set(transport.CodeURITooLong, http.StatusRequestURITooLong, "http_request_error", h2InternalError, h3MessageError)
	set(transport.CodeBadRequest, http.StatusBadRequest, "http_request_error", h2InternalError, h3MessageError)
	set(transport.CodeNotImplemented, http.StatusNotImplemented, "http_request_error", h2InternalError, h3InternalError)
	set(transport.CodeTooEarly, http.StatusTooEarly, "http_request_denied", h2RefusedStream, h3RequestRejected)
	set(transport.CodeOverloaded, http.StatusServiceUnavailable, "connection_limit_reached", h2EnhanceYourCalm, h3ExcessiveLoad)
	set(transport.CodeDraining, http.StatusServiceUnavailable, "destination_unavailable", h2RefusedStream, h3RequestRejected)
	set(transport.CodeInternal, http.StatusInternalServerError, "proxy_internal_error", h2InternalError, h3InternalError)
	for c := range t {
		e := &t[c]
		if e.proxyStatus != "" {
			e.proxyStatusValue = []string{ProxyName + "; error=" + e.proxyStatus}
		}
		e.body = []byte(strconv.Itoa(e.status) + " " + http.StatusText(e.status) + ": " + transport.Code(c).String() + "\n")
		e.contentLength = int64(len(e.body))
	}
	return t
}()

func infoFor(c transport.Code) *errorInfo {
	if int(c) >= len(errorTable) {
		c = transport.CodeInternal
	}
	return &errorTable[c]
}

// StatusFor returns the HTTP status the gateway answers a code with.
func StatusFor(c transport.Code) int { return infoFor(c).status }

// ProxyStatusFor returns the RFC 9209 error type for a code, or "" for codes
// the proxy does not report (CodeNone, CodeClientCancelled).
func ProxyStatusFor(c transport.Code) string { return infoFor(c).proxyStatus }

// ResetCodesFor returns the HTTP/2 and HTTP/3 stream reset codes for a code,
// used when the response has already started.
func ResetCodesFor(c transport.Code) (h2 uint32, h3 uint64) {
	e := infoFor(c)
	return e.h2Reset, e.h3Reset
}

// writeError answers s with the error response for code. Nothing is
// formatted: the body and header values are precomputed.
func writeError(s transport.ServerStream, code transport.Code) {
	e := infoFor(code)
	if code == transport.CodeClientCancelled {
		s.Reset(code)
		return
	}
	h := make(http.Header, 3)
	h["Content-Type"] = textPlain
	h["Cache-Control"] = noStore
	if e.proxyStatusValue != nil {
		h["Proxy-Status"] = e.proxyStatusValue
	}
	if s.WriteHeader(e.status, h, e.contentLength) != nil {
		return
	}
	if s.Request().Method != http.MethodHead {
		s.Write(e.body)
	}
	s.Finish(nil)
}

var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noStore   = []string{"no-store"}
)
