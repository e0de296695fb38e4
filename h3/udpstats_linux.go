//go:build linux

package h3

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// udpStats reads the kernel's UDP drop counters for the server's socket. It
// reads /proc only when asked (a Stats call, that is a scrape), never per
// packet.
type udpStats struct {
	mu       sync.Mutex // guards the fields below
	inode    uint64     // the socket's inode; 0 before Serve or if unknown
	rawDrops uint32     // sk_drops when last read
	drops    uint64     // receive drops seen so far, across sk_drops wrapping
	sndbuf   uint64     // largest Udp+Udp6 SndbufErrors read so far
}

// setSocket remembers pc's inode, which names it in /proc/net/udp{,6}. A
// socket without a file descriptor (not a syscall.Conn) is not counted.
func (u *udpStats) setSocket(pc net.PacketConn) {
	ino, ok := socketInode(pc)
	if !ok {
		return
	}
	u.mu.Lock()
	u.inode = ino
	u.mu.Unlock()
}

// read returns the socket's receive drops and the network namespace's UDP
// send buffer errors. Both only grow: a failed read, or a socket that is
// gone, keeps the last value.
func (u *udpStats) read() (recvDrops, sndbufErrors uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.inode != 0 {
		if d, ok := readUDPDrops(u.inode); ok {
			u.observeDropsLocked(d)
		}
	}
	if n, ok := readUDPSndbufErrors(); ok && n > u.sndbuf {
		u.sndbuf = n
	}
	return u.drops, u.sndbuf
}

// observeDropsLocked adds what sk_drops grew by since it was last read. It
// is 32 bits wide in the kernel and wraps.
func (u *udpStats) observeDropsLocked(d uint32) {
	u.drops += uint64(d - u.rawDrops)
	u.rawDrops = d
}

// socketInode returns the inode of pc's socket: fstat on a socket's file
// descriptor gives the inode that /proc/net/udp lists (and that
// /proc/self/fd/N names as socket:[INODE]).
func socketInode(pc net.PacketConn) (uint64, bool) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var st syscall.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil || serr != nil {
		return 0, false
	}
	return st.Ino, st.Ino != 0
}

// readUDPDrops returns the drops column of the socket with this inode in
// /proc/net/udp or /proc/net/udp6 (a socket on an IPv6 or dual-stack
// address is in the second).
func readUDPDrops(inode uint64) (uint32, bool) {
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		d, ok := parseUDPDrops(f, inode)
		f.Close()
		if ok {
			return d, true
		}
	}
	return 0, false
}

// parseUDPDrops scans a /proc/net/udp or /proc/net/udp6 table for the
// socket with this inode and returns its drops, the kernel's sk_drops:
// datagrams for the socket that the kernel discarded, mostly because its
// receive buffer was full, also for a bad checksum or a socket filter. The
// columns (net/ipv4/udp.c, udp4_format_sock) are
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops
func parseUDPDrops(r io.Reader, inode uint64) (uint32, bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), 4096)
	want := strconv.AppendUint(make([]byte, 0, 20), inode, 10)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		line := sc.Bytes()
		if !bytes.Equal(field(line, 9), want) {
			continue
		}
		d, err := strconv.ParseUint(string(field(line, 12)), 10, 32)
		if err != nil {
			return 0, false
		}
		return uint32(d), true
	}
	return 0, false
}

// field returns the i-th whitespace-separated field of line, or nil.
func field(line []byte, i int) []byte {
	for {
		line = bytes.TrimLeft(line, " \t\n")
		if len(line) == 0 {
			return nil
		}
		end := bytes.IndexAny(line, " \t\n")
		if end < 0 {
			end = len(line)
		}
		if i == 0 {
			return line[:end]
		}
		i--
		line = line[end:]
	}
}

// readUDPSndbufErrors returns Udp SndbufErrors from /proc/net/snmp plus
// Udp6SndbufErrors from /proc/net/snmp6: for the whole network namespace.
func readUDPSndbufErrors() (uint64, bool) {
	b4, err4 := os.ReadFile("/proc/net/snmp")
	n4, ok4 := parseSNMPUdp(b4, "SndbufErrors")
	b6, err6 := os.ReadFile("/proc/net/snmp6")
	n6, ok6 := parseSNMP6(b6, "Udp6SndbufErrors")
	ok4 = ok4 && err4 == nil
	ok6 = ok6 && err6 == nil
	return n4 + n6, ok4 || ok6
}

// parseSNMPUdp returns the column name of the Udp table in /proc/net/snmp,
// a line of names after "Udp:" followed by a line of values.
func parseSNMPUdp(b []byte, name string) (uint64, bool) {
	const prefix = "Udp: "
	var names []byte
	for line := range bytes.Lines(b) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		if !bytes.HasPrefix(line, []byte(prefix)) {
			continue
		}
		if names == nil {
			names = line
			continue
		}
		for i := 1; ; i++ {
			n := field(names, i)
			if n == nil {
				return 0, false
			}
			if string(n) == name {
				v, err := strconv.ParseUint(string(field(line, i)), 10, 64)
				return v, err == nil
			}
		}
	}
	return 0, false
}

// parseSNMP6 returns the value of name in /proc/net/snmp6, lines of a name
// and a value.
func parseSNMP6(b []byte, name string) (uint64, bool) {
	for line := range bytes.Lines(b) {
		if string(field(line, 0)) == name {
			v, err := strconv.ParseUint(string(field(line, 1)), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}
