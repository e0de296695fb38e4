package h3

import (
	"net"
	"strings"
	"testing"
)

func TestCheckUDP(t *testing.T) {
	pc := listenUDP(t)
	r := CheckUDP(pc)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	// Linux's floor is a few KiB and it reports twice the size set; no
	// system gives a UDP socket less than 4 KiB or more than 1 GiB.
	for name, v := range map[string]int{"ReadBuffer": r.ReadBuffer, "WriteBuffer": r.WriteBuffer} {
		if v < 4<<10 || v > 1<<30 {
			t.Errorf("%s = %d bytes, implausible", name, v)
		}
	}
	if r.WantBuffer != 7<<20 || !r.Batched {
		t.Errorf("report %+v", r)
	}
	w := r.Warning()
	if (r.ReadBuffer < r.WantBuffer) != strings.Contains(w, "net.core.rmem_max") ||
		(r.WriteBuffer < r.WantBuffer) != strings.Contains(w, "net.core.wmem_max") {
		t.Errorf("report %+v: warning %q", r, w)
	}
	t.Logf("%+v; warning: %q", r, w)

	// A socket quic-go cannot use with batched I/O.
	r = CheckUDP(struct{ net.PacketConn }{pc})
	if r.Batched || r.GSO || r.ECN || r.Err == nil {
		t.Errorf("wrapped socket: %+v", r)
	}
}

func TestUDPReportWarning(t *testing.T) {
	ok := UDPReport{ReadBuffer: 16 << 20, WriteBuffer: 16 << 20, WantBuffer: 7 << 20}
	if w := ok.Warning(); w != "" {
		t.Errorf("large buffers: %q", w)
	}
	small := UDPReport{ReadBuffer: 416 << 10, WriteBuffer: 416 << 10, WantBuffer: 7 << 20}
	if w := small.Warning(); !strings.Contains(w, "net.core.rmem_max") || !strings.Contains(w, "net.core.wmem_max") {
		t.Errorf("small buffers: %q", w)
	}
}
