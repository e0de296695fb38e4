// Package transport is the protocol-neutral core of ProxyNow. It holds the
// pieces every HTTP version plugs into and that the gateway sees:
//
//   - [Request] and [Response], the two messages of one exchange, and
//     [ServerStream], the downstream side of an exchange that a server yields
//     to a [Handler];
//   - [Conn] and [Dialer], the upstream connection contract: a conn has stream
//     slots (1 for HTTP/1.1, the peer's concurrency limit for HTTP/2 and
//     HTTP/3) that are reserved, used exactly once and released;
//   - [Pool], which keeps upstream conns per upstream address, sharded;
//   - [Code] and [Error], the typed, non-allocating error codes of the data
//     plane;
//   - [Coordinator], the one drain coordinator that shuts every server and
//     pool down under one deadline.
//
// # Pool shards
//
// The pool has one shard per P (runtime.GOMAXPROCS), and a request uses the
// shard of its downstream connection: a server takes a hint from [NextShard]
// once per accepted connection, a round-robin counter, and sets it as
// [Request.Shard] on every request of that connection; the gateway passes it
// to [Pool.GetShard]. Within a shard, Get and Put take only that shard's
// mutex and touch only that shard's memory; a shard that runs dry steals an
// idle conn from the others before it dials, and multiplexed conns are
// shared by all shards through a list read without a lock.
//
// Why a hint per connection rather than the P the goroutine runs on (what
// sync.Pool does with the runtime's procPin): the hint costs nothing per
// request (a field copied from the connection), needs no reach into the
// runtime, and keeps a connection's requests on one shard while its goroutine
// moves between Ps, so a keep-alive client keeps getting the same hot upstream
// conn back. Its price is that two connections of one shard may run on two
// Ps at the same moment and meet at the shard's mutex: a lock held for O(1)
// work by a fraction of the requests, never one every request passes.
//
// The package imports only the standard library. Protocol libraries live in
// the h1, h2 and h3 packages, which implement these contracts.
package transport
