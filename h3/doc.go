// Package h3 is ProxyNow's HTTP/3 transport, built on quic-go and its http3
// package.
//
// The server side, [Server], serves QUIC on a UDP socket and yields every
// request to a transport.Handler as a transport.ServerStream. It runs its
// own quic.Transport and listener (Retry policy, per-second and per-source
// connection limits, stateless-reset and token keys from [Keys]). The HTTP/3
// layer is chosen by ServerConfig.Engine: with [EngineQuicGo] (the default)
// each connection goes to quic-go's http3.Server for the HTTP/3 machinery
// (control stream, SETTINGS, QPACK, GOAWAY, request parsing), and each
// request stream is taken over from quic-go's response writer before
// anything is written; with [EngineNative] (native.go, native_stream.go) the
// package speaks HTTP/3 on the QUIC streams itself and parses request
// frames straight into transport.Requests. With either, the ServerStream
// writes the response frames itself (stream.go).
//
// The client side, [Dialer], dials upstream HTTP/3 connections that
// implement transport.Conn, on quic-go's http3.ClientConn.
//
// Wire error codes and transport codes are translated in one place,
// errors.go: [ResetCode], [DownstreamCode], [UpstreamCode].
//
// What quic-go v0.65.0 does not expose, and what this package does instead:
//   - the peer's MAX_STREAMS limit: a Dialer's stream slots are configured
//     (DialerConfig.MaxStreams), quic-go blocks a stream beyond the peer's
//     real limit;
//   - a received GOAWAY frame on a client connection: it shows as the
//     connection closing (quic-go closes it once its streams are done) or as
//     a stream that could not be opened;
//   - an error from a 1xx callback: transport.Request.OnInformational's
//     error is ignored (quic-go ignores the httptrace hook's result).
package h3
