//go:build linux

package h3

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

const sampleUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
  172: 0100007F:A6E1 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4711 2 0000000000000000 0        
  389: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 47110 2 0000000000000000 12       
  512: 0100007F:01BB 00000000:0000 07 00000000:00003A00 00:00000000 00000000  1000        0 93822 2 0000000000000000 4294967295
`

const sampleUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  512: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 93823 2 0000000000000000 77
 1043: 00000000000000000000000001000000:A6E1 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 555 2 0000000000000000 x
`

func TestParseUDPDrops(t *testing.T) {
	tests := []struct {
		name   string
		table  string
		inode  uint64
		drops  uint32
		wantOK bool
	}{
		{"first", sampleUDP, 4711, 0, true},
		{"not a prefix match", sampleUDP, 47110, 12, true},
		{"largest", sampleUDP, 93822, 4294967295, true},
		{"absent", sampleUDP, 93823, 0, false},
		{"udp6", sampleUDP6, 93823, 77, true},
		{"bad drops", sampleUDP6, 555, 0, false},
		{"header only", strings.SplitAfter(sampleUDP, "\n")[0], 4711, 0, false},
		{"empty", "", 4711, 0, false},
		{"short line", "header\n 1: 0100007F:A6E1 00000000:0000 07\n", 4711, 0, false},
	}
	for _, tt := range tests {
		d, ok := parseUDPDrops(strings.NewReader(tt.table), tt.inode)
		if d != tt.drops || ok != tt.wantOK {
			t.Errorf("%s: inode %d: got %d, %v; want %d, %v", tt.name, tt.inode, d, ok, tt.drops, tt.wantOK)
		}
	}
}

const sampleSNMP = `Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 123
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 9394768 3310 5 5253603 4 17 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 99 0 0 0
`

const sampleSNMP6 = `Udp6InDatagrams                 	106
Udp6RcvbufErrors                	3
Udp6SndbufErrors                	25
UdpLite6SndbufErrors            	99
`

func TestParseSNMP(t *testing.T) {
	for _, tt := range []struct {
		name string
		v    uint64
		ok   bool
	}{{"SndbufErrors", 17, true}, {"RcvbufErrors", 4, true}, {"InDatagrams", 9394768, true}, {"Nope", 0, false}} {
		if v, ok := parseSNMPUdp([]byte(sampleSNMP), tt.name); v != tt.v || ok != tt.ok {
			t.Errorf("snmp %s: %d, %v; want %d, %v", tt.name, v, ok, tt.v, tt.ok)
		}
	}
	if v, ok := parseSNMPUdp([]byte("Udp: A B\n"), "B"); ok {
		t.Errorf("snmp without values: %d, %v", v, ok)
	}
	if v, ok := parseSNMPUdp([]byte("Udp: A B\nUdp: 1\n"), "B"); ok {
		t.Errorf("snmp with a missing value: %d, %v", v, ok)
	}
	for _, tt := range []struct {
		name string
		v    uint64
		ok   bool
	}{{"Udp6SndbufErrors", 25, true}, {"Udp6RcvbufErrors", 3, true}, {"Udp6", 0, false}} {
		if v, ok := parseSNMP6([]byte(sampleSNMP6), tt.name); v != tt.v || ok != tt.ok {
			t.Errorf("snmp6 %s: %d, %v; want %d, %v", tt.name, v, ok, tt.v, tt.ok)
		}
	}
	// This machine's own files parse.
	if _, ok := readUDPSndbufErrors(); !ok {
		t.Error("cannot read Udp SndbufErrors from /proc/net/snmp{,6}")
	}
}

func TestUDPStatsWrap(t *testing.T) {
	var u udpStats
	u.observeDropsLocked(1<<32 - 2)
	u.observeDropsLocked(1<<32 - 2)
	u.observeDropsLocked(3)
	if u.drops != 1<<32+3 {
		t.Errorf("drops after sk_drops wrapped: %d, want %d", u.drops, uint64(1<<32+3))
	}
}

// flood sends n datagrams to to from a new loopback socket, bounded in time.
func flood(t *testing.T, to net.Addr, n int) (sent int) {
	t.Helper()
	from := listenUDP(t)
	from.SetWriteDeadline(time.Now().Add(testTimeout))
	msg := make([]byte, 200)
	for range n {
		if _, err := from.WriteTo(msg, to); err == nil {
			sent++
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			break
		}
	}
	return sent
}

// TestUDPReceiveDrops fills a socket with a tiny receive buffer that nobody
// reads and checks that the kernel's drops for it show.
func TestUDPReceiveDrops(t *testing.T) {
	pc := listenUDP(t)
	if err := pc.SetReadBuffer(1); err != nil { // the kernel rounds up to its minimum, a few KiB
		t.Fatal(err)
	}
	ino, ok := socketInode(pc)
	if !ok {
		t.Fatal("no inode for the socket")
	}
	if d, ok := readUDPDrops(ino); !ok || d != 0 {
		t.Fatalf("fresh socket %d: drops %d, found %v", ino, d, ok)
	}
	var u udpStats
	u.setSocket(pc)
	const n = 20000
	sent := flood(t, pc.LocalAddr(), n)
	// Loopback delivery runs in softirq context and may lag the last
	// sendto, so drops can still grow: udpStats must read what /proc shows
	// just before and after it, and the same once /proc stopped moving.
	var got uint64
	var d uint32
	waitFor(t, "the drop count to settle", func() bool {
		before, ok1 := readUDPDrops(ino)
		got, _ = u.read()
		after, ok2 := readUDPDrops(ino)
		if !ok1 || !ok2 {
			t.Fatalf("socket %d gone from /proc/net/udp", ino)
		}
		if got < uint64(before) || got > uint64(after) {
			t.Fatalf("udpStats.read: %d, /proc: %d before, %d after", got, before, after)
		}
		d = after
		return before == after
	})
	if d == 0 {
		t.Fatalf("after %d datagrams: no drops", sent)
	}
	if got != uint64(d) {
		t.Errorf("udpStats.read: %d, /proc: %d", got, d)
	}
	t.Logf("sent %d datagrams of %d to an unread socket: %d dropped", sent, n, d)

	// Once the socket is gone the counter keeps its value.
	pc.Close()
	if got, _ := u.read(); got != uint64(d) {
		t.Errorf("after close: %d, want %d", got, d)
	}
}

// TestServerUDPReceiveDrops checks that Stats reports the drops of the
// socket the server serves on: here drops from before Serve, since quic-go
// reads fast enough on loopback that drops while serving are not certain.
func TestServerUDPReceiveDrops(t *testing.T) {
	pc := listenUDP(t)
	if err := pc.SetReadBuffer(1); err != nil {
		t.Fatal(err)
	}
	flood(t, pc.LocalAddr(), 20000)
	ino, _ := socketInode(pc)
	d, ok := readUDPDrops(ino)
	if !ok || d == 0 {
		t.Fatalf("drops %d, found %v", d, ok)
	}
	serverTLS, clientTLS := tlsPair(t)
	ts := startServerOn(t, transport.HandlerFunc(echo), ServerConfig{TLS: serverTLS, Logger: quietLogger()}, pc, clientTLS, nil)
	waitFor(t, "Serve to start", func() bool { return ts.Port() != 0 })
	if st := ts.Stats(); st.UDPReceiveDrops < uint64(d) {
		t.Errorf("Stats().UDPReceiveDrops = %d, want at least %d", st.UDPReceiveDrops, d)
	}
	// The server still works on the socket.
	dialQUIC(t, ts.addr, clientTLS, nil)
}
