// Package transport is the protocol-neutral core of ProxyNow. It holds the
// pieces every HTTP version plugs into and that the gateway sees:
//
//   - [Request] and [Response], the two messages of one exchange, and
//     [ServerStream], the downstream side of an exchange that a server yields
//     to a [Handler];
//   - [Conn] and [Dialer], the upstream connection contract: a conn has stream
//     slots (1 for HTTP/1.1, the peer's concurrency limit for HTTP/2 and
//     HTTP/3) that are reserved, used exactly once and released;
//   - [Pool], which keeps upstream conns per upstream address;
//   - [Code] and [Error], the typed, non-allocating error codes of the data
//     plane;
//   - [Coordinator], the one drain coordinator that shuts every server and
//     pool down under one deadline.
//
// The package imports only the standard library. Protocol libraries live in
// the h1, h2 and h3 packages, which implement these contracts.
package transport
