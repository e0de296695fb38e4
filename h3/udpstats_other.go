//go:build !linux

package h3

import "net"

// udpStats counts nothing outside Linux: the kernel counters it reads on
// Linux are in /proc.
type udpStats struct{}

func (*udpStats) setSocket(net.PacketConn) {}

func (*udpStats) read() (recvDrops, sndbufErrors uint64) { return 0, 0 }
