// Package h2 is the HTTP/2 transport of ProxyNow, built on
// golang.org/x/net/http2.
//
// The server side, [Server], serves HTTP/2 conns (over TLS with ALPN "h2", or
// cleartext with prior knowledge) and yields one [transport.ServerStream] per
// request to a [transport.Handler]. The client side, [Dialer], dials upstream
// HTTP/2 conns (TLS with ALPN "h2", or h2c with prior knowledge) that implement
// [transport.Conn]: a conn has as many stream slots as the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS.
//
// Both sides translate x/net's errors to [transport.Code] values at this
// package's boundary, by type (http2.StreamError, http2.ConnectionError,
// http2.GoAwayError, net.OpError, tls errors), never by text.
//
// What x/net does not let this package control is documented where it
// matters; in short:
//
//   - The server resets streams with INTERNAL_ERROR whatever the
//     [transport.Code] given to [transport.ServerStream.Reset].
//   - The server delivers only request trailers that the client declared in a
//     Trailer header field; the client sends trailers after the body when the
//     request declares them or has a body of unknown length.
//   - A response ends when the handler returns: Finish records the trailers
//     and the end, the handler's return sends them.
//
// x/net v0.62.0 marks its http2 API deprecated in favour of net/http's own
// HTTP/2 (Go 1.26); from Go 1.27 on, unless built with the http2legacy tag, it
// wraps net/http. This package is written against the Go 1.26 code path.
package h2
