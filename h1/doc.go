// Package h1 is ProxyNow's HTTP/1.1 transport: a native server that yields
// transport.ServerStreams, and a native upstream client that implements
// transport.Conn and transport.Dialer.
//
// # Server
//
// [Server] serves conns from any net.Listener (TLS conns must be handshaken:
// the transport.TLSListener hands them over). One goroutine per conn serves
// its requests in order; the conn's bufio.Reader and Writer come from pools,
// and its stream struct is reused for each request, so a request costs a few
// allocations: one string for the whole head (the method, target, field names
// and values are substrings of it), the header map and its value array, and
// a small body reader when the request has a body.
//
// The request parser is strict, as an edge proxy's must be: whatever it lets
// through, an upstream behind it must read the same way (RFC 9112 §11.2,
// request smuggling). A request that breaks a rule is answered with a short
// text response and Connection: close, then the conn closes; the handler never
// sees it:
//
//   - 414 for a request line over MaxRequestLine; 431 for a head over
//     MaxHeaderBytes or MaxHeaderCount fields.
//   - 400 for a malformed request line (exactly one SP between its three
//     parts), a method that is not a token, a version other than HTTP/1.x
//     (the HTTP/2 preface included), a target with bytes outside visible ASCII
//     or a '#', "*" with a method other than OPTIONS, an absolute-form target
//     whose authority is not a valid host (userinfo included).
//   - 501 for CONNECT (the only tunnels are WebSocket upgrades, below).
//   - 400 for lines ending in a bare LF: CRLF is required. RFC 9112 §2.2
//     lets a recipient accept a bare LF; we do not, as two parsers that
//     disagree on line ends are how smuggling starts. Up to the byte limit,
//     empty lines before the request line are skipped (RFC 9112 §2.2).
//   - 400 for a field name that is not a token or has whitespace before the
//     colon (RFC 9112 §5.1), obs-fold (§5.2), and a value with a control
//     character other than HTAB (RFC 9110 §5.5).
//   - 400 for Content-Length with Transfer-Encoding, a Content-Length that is
//     not 1*DIGIT or overflows, and several differing Content-Length values
//     (identical ones collapse); Transfer-Encoding in HTTP/1.0, an empty
//     coding or chunked twice. 501 for any coding other than chunked.
//   - 400 for an HTTP/1.1 request without Host, any request with several Host
//     fields, and an invalid Host (only letters, digits, "-._~" in a name, hex
//     digits, ':' and '.' in an IP literal, and a 1-5 digit port). An
//     absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
//   - 417 for an Expect other than a single 100-continue.
//   - chunked bodies: bare hex sizes that fit an int64, extensions parsed and
//     dropped (4 KiB per line, MaxHeaderBytes per body), CRLF after each
//     chunk's data, trailers read with the header rules and limits. A
//     malformed body fails the handler's read with CodeBadRequest, and the
//     conn closes.
//
// A conn's stream struct and its Request are reused for the next request, so
// a handler must not use either after ServeStream returns (like net/http's
// ResponseWriter). The stream's Context is the conn's: it is cancelled, with
// cause CodeClientCancelled, when the client goes away or the conn closes,
// not when one exchange ends.
//
// HeaderTimeout bounds the time to read a head, from its first byte (from
// the conn's start for the first request); IdleTimeout the wait for the next
// request. After the request body's end (at once for a request without one)
// the conn runs a background one-byte read, as net/http does, so the stream's
// context is cancelled when the client goes away while the handler waits on
// its upstream. Expect: 100-continue is answered when the handler first reads
// the body; a handler that answers without reading it gets its conn closed
// after the response. An unread body is drained up to 256 KiB after the
// response to keep the conn alive.
//
// A GET of HTTP/1.1 without content, with Upgrade: websocket and Connection:
// upgrade, is a WebSocket upgrade (RFC 6455 §4.1): its Request.Protocol is
// "websocket", and its fields, hop-by-hop ones, stay in Header. A handler
// accepts it with WriteHeader(101, ...): the 101 goes out at once with the
// server's own Upgrade and Connection fields, the body then reads the
// client's bytes (those that came with the head first), Write sends raw
// bytes, Finish half-closes the conn and Reset closes it; the conn serves
// no other request. Any other status declines the upgrade, and the conn
// closes after the response. Other upgrades (h2c among them) are not
// honoured: the request is an ordinary one, and 101 is refused for it.
//
// The response framing comes from WriteHeader's contentLength: no body for
// HEAD (with Content-Length when known), 1xx, 204 and 304; Content-Length
// when known; chunked for HTTP/1.1; close-delimited for HTTP/1.0. Fields a
// handler passes on that are not valid on the wire are dropped, so an
// upstream's field cannot split a response. A handler that returns without
// a response gets a 502 sent for it; one that returns without Finish has its
// conn closed unless the body is complete by its length; a panic closes the
// conn and is logged.
//
// # Client
//
// The client is native too, on net.Conn and bufio, rather than on net/http's
// Transport.NewClientConn: that one adds fields we must not send (a
// User-Agent, unless suppressed per request), allocates a net/http Request,
// URL and several channels per round trip, and runs two goroutines per conn,
// whereas a native conn needs no goroutine for a request without a body and
// shares its parser and its strictness with the server. A response is read
// with the server's rules (a response with both Content-Length and
// Transfer-Encoding, or another coding than chunked, is CodeUpstreamProtocol
// rather than guessed at), and the request is written exactly as given: the
// method, req.Path as the target, Host from req.Authority, the fields of
// req.Header but Host and the framing fields, and the framing from
// req.ContentLength. Nothing else is added.
//
// A request body is copied by a goroutine while the caller waits for the
// response, so an upstream that answers early is heard; a request without a
// body needs no goroutine. A response head is bounded by 1 MiB and 1000
// fields, and at most 16 1xx responses may precede the final one. For HEAD
// and 304, Response.ContentLength is the length the upstream declared and
// the body is empty. The response's
// Connection field and the fields it names are removed: they describe the
// upstream conn only. A conn that sat idle for over a second is checked with a
// non-blocking peek before reuse, and redialed when the upstream closed it:
// nothing was sent, so nothing is lost.
//
// A request with Protocol "websocket" is sent as an upgrade: without
// content or framing fields, with Connection: Upgrade and Upgrade: websocket
// of the client's own (req.Header's Connection and Upgrade are left out) and
// the request's other fields, Sec-WebSocket-* among them. An upstream that
// answers 101 must switch to WebSocket (Upgrade: websocket, Connection:
// upgrade) or the round trip fails with CodeUpstreamProtocol; the
// Response's Body is then the tunnel: it reads the upstream's bytes, and it
// is also an io.Writer and has CloseWrite() error, to send bytes and
// half-close. Closing it closes the conn. An upstream's other answer is an
// ordinary response. Either way the conn is not reused; a 101 to any other
// request is CodeUpstreamProtocol.
package h1
