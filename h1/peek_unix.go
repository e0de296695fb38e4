//go:build unix

package h1

import (
	"net"
	"syscall"
)

// connDead reports whether the peer closed or reset an idle conn, with a
// non-blocking MSG_PEEK read on its socket. Bytes waiting on an idle
// plaintext conn mean the conn is out of step (dead too); on a TLS conn they
// may be a post-handshake message (a session ticket), so they do not count.
func connDead(c net.Conn, plaintext bool) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	dead := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		case err != nil, n == 0:
			dead = true
		default:
			dead = plaintext
		}
		return true
	})
	return dead || err != nil
}
