//go:build !unix

package h1

import "net"

// connDead cannot check the socket on this platform: a dead conn shows when
// it is used.
func connDead(net.Conn, bool) bool { return false }
