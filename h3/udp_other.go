//go:build !linux

package h3

import "syscall"

// offloads reports no GSO and no ECN: quic-go uses GSO on Linux only, and
// this check does not know the other platforms' ECN support.
func offloads(syscall.RawConn) (gso, ecn bool) { return false, false }
