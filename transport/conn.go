package transport

import (
	"context"
)

// Conn is one upstream connection of any HTTP version.
//
// The contract: a Conn has stream slots, 1 for HTTP/1.1 and the peer's
// concurrency limit for HTTP/2 (SETTINGS_MAX_CONCURRENT_STREAMS) and HTTP/3
// (MAX_STREAMS). A caller reserves a slot with Reserve, then uses it exactly
// once: either with one RoundTrip, whose Response.Body Close frees the slot
// (or RoundTrip's error does), or by giving it back unused with Release.
// Reserve, Release, Available, Err and Close are safe for concurrent use and
// take O(1) time; the pool calls them on its hot path.
type Conn interface {
	// Reserve reserves one stream slot. It returns false when the conn is
	// at its concurrency limit, closed, shutting down or broken.
	Reserve() bool

	// Release gives back a reserved slot that was not used.
	Release()

	// RoundTrip sends req on a reserved slot and returns the response once
	// its head arrived. Errors are *Error values with a Code. RoundTrip
	// reads req.Body until EOF or error and never closes it; HTTP/2 and
	// HTTP/3 conns send the body on their own goroutine and may still be
	// reading it after RoundTrip returned (even with an error), until the
	// stream ends, so whatever req.Body reads from must outlive the call
	// and be safe to read from that goroutine. Cancelling ctx
	// cancels the upstream stream (HTTP/2 and HTTP/3 reset it; HTTP/1.1
	// closes the conn), also while the response body is being read.
	RoundTrip(ctx context.Context, req *Request) (*Response, error)

	// Available reports how many more slots Reserve could take now.
	Available() int

	// Idle reports whether no slot is reserved or in use.
	Idle() bool

	// Err returns nil while the conn can take new streams, and the reason
	// otherwise (closed, GOAWAY received, failed).
	Err() error

	// Shutdown stops new streams and waits for those in flight to finish
	// or ctx to end, then closes the conn.
	Shutdown(ctx context.Context) error

	// Close closes the conn at once, failing streams in flight.
	Close() error
}

// Dialer makes upstream conns of one protocol.
type Dialer interface {
	// Dial connects to addr (host:port) and completes the handshakes. Its
	// errors are *Error values: CodeConnectRefused, CodeConnectTimeout,
	// CodeUpstreamTLS, CodeUpstreamUnreachable.
	Dial(ctx context.Context, addr string) (Conn, error)
}

// DialerFunc adapts a function to a Dialer.
type DialerFunc func(ctx context.Context, addr string) (Conn, error)

// Dial calls f(ctx, addr).
func (f DialerFunc) Dial(ctx context.Context, addr string) (Conn, error) { return f(ctx, addr) }
