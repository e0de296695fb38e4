package transport

import (
	"context"
	"io"
	"net/http"
	"net/netip"
)

// Proto names the HTTP version of one side of an exchange.
type Proto uint8

// The protocols.
const (
	ProtoHTTP1 Proto = iota + 1
	ProtoHTTP2
	ProtoHTTP3
)

// String returns "h1", "h2" or "h3".
func (p Proto) String() string {
	switch p {
	case ProtoHTTP1:
		return "h1"
	case ProtoHTTP2:
		return "h2"
	case ProtoHTTP3:
		return "h3"
	}
	return "unknown"
}

// Request is the request message of one exchange. The same type crosses both
// sides: a server fills it from the wire and hands it to the [Handler]; the
// gateway edits it and gives it to an upstream [Conn].
//
// Header holds end-to-end fields only once the gateway has stripped the
// hop-by-hop ones; framing fields (Content-Length, Transfer-Encoding) are never
// in Header: the framing travels as ContentLength and is re-derived by the
// transport that writes the message.
type Request struct {
	Method    string
	Scheme    string // "https" or "http"
	Authority string // host[:port], from Host or :authority
	Path      string // origin-form path and query, "*" for OPTIONS *
	Header    http.Header

	// ContentLength is the body length, or -1 when unknown (chunked, or an
	// HTTP/2 or HTTP/3 request without content-length).
	ContentLength int64

	// Body is the request body; never nil (http.NoBody when empty). Reading
	// it streams from the client: it is never buffered whole.
	Body io.Reader

	// Trailer holds the request trailers. A server sets it, at the latest,
	// when Body has returned io.EOF; a client conn sends it after the body.
	Trailer http.Header

	// Protocol is the tunnel protocol of an upgrade: "websocket" for an
	// HTTP/1.1 request with Upgrade: websocket (and Connection: upgrade),
	// and for an HTTP/2 or HTTP/3 extended CONNECT with :protocol websocket
	// (RFC 8441, RFC 9220); empty otherwise. "websocket" is the only value.
	//
	// A server's request with Protocol set has ContentLength 0: once the
	// handler has accepted the upgrade (HTTP/1.1: WriteHeader 101; HTTP/2,
	// HTTP/3: a 2xx), Body reads the client's tunnel bytes and the stream's
	// Write and Finish carry the other direction. A handler reads Body only
	// after accepting (HTTP/1.1 reads io.EOF before). An upstream conn that
	// supports upgrades (HTTP/1.1) sends a request with Protocol set as an
	// upgrade, without content, and returns a 101 as a Response whose Body
	// is the tunnel: it reads the upstream's bytes, and also implements
	// io.Writer, to write to the upstream, and CloseWrite() error, to end
	// that direction.
	Protocol string

	// OnInformational, if set, is called by an upstream conn for each 1xx
	// response (other than 101) that arrives before the final one.
	OnInformational func(status int, h http.Header) error

	// Downstream facts, set by the server.
	Proto      Proto
	RemoteAddr netip.AddrPort
	TLS        bool
	EarlyData  bool // received in TLS/QUIC 0-RTT

	// Shard is the upstream pool shard hint of the downstream connection:
	// a server takes it from [NextShard] once per connection and sets it on
	// every request of that connection, and the gateway passes it to
	// [Pool.GetShard]. The requests of one connection thus use one shard of
	// the pool, and different connections spread over all of them.
	Shard uint32
}

// Response is the response message of one exchange, as an upstream conn
// returns it. Closing Body (after io.EOF or early) releases the stream slot
// the response used; an early close cancels the upstream stream.
type Response struct {
	Status int
	Header http.Header

	// ContentLength is the body length, or -1 when unknown.
	ContentLength int64

	// Body is the response body; never nil.
	Body io.ReadCloser

	// Trailer holds the response trailers once Body has returned io.EOF.
	Trailer http.Header
}

// ServerStream is the downstream side of one exchange: a server yields one per
// request to its [Handler]. The handler reads the request and writes exactly
// one final response head, then the body, then Finish (or Reset).
//
// Methods other than Reset must be called from the handler's goroutine. The
// stream and its Request belong to the server again once ServeStream has
// returned (a server may recycle them, as net/http does its
// ResponseWriter): nothing may use them after that, Reset included. Only a
// request body, and the header map, that an upstream conn still reads then
// stay valid.
type ServerStream interface {
	// Context is cancelled when the client goes away or the server closes
	// the connection; its cause is a *Error carrying the Code.
	Context() context.Context

	// Request returns the request. Its Body streams from the client.
	Request() *Request

	// WriteInformational sends a 1xx response (100 Continue, 103 Early
	// Hints). It is an error after WriteHeader.
	WriteInformational(status int, h http.Header) error

	// WriteHeader sends the final response head. contentLength is the body
	// length or -1 when unknown; the stream derives the framing from it
	// (HTTP/1.1 Content-Length or chunked). h must not carry framing fields.
	// After WriteHeader the stream owns h.
	WriteHeader(status int, h http.Header, contentLength int64) error

	// Write writes response body bytes. It does not retain p.
	Write(p []byte) (int, error)

	// Flush sends buffered body bytes to the client.
	Flush() error

	// Finish ends the response, with trailers when trailer is non-empty.
	Finish(trailer http.Header) error

	// Reset aborts the exchange with code: HTTP/2 and HTTP/3 reset the
	// stream, HTTP/1.1 closes the connection without a valid end of body.
	// It may be called from any goroutine.
	Reset(code Code)
}

// Handler serves the streams that servers yield. The gateway implements it.
type Handler interface {
	ServeStream(s ServerStream)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ServerStream)

// ServeStream calls f(s).
func (f HandlerFunc) ServeStream(s ServerStream) { f(s) }

// DrainState is the optional capability of a Handler to tell servers that a
// drain has begun: HTTP/1.1 servers then answer with Connection: close.
type DrainState interface {
	Draining() bool
}
