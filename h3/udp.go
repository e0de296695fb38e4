package h3

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// wantUDPBuffer is the socket buffer size quic-go asks for (7 MiB) to absorb
// bursts at high throughput.
const wantUDPBuffer = 7 << 20

// UDPReport is what CheckUDP found out about a UDP socket.
type UDPReport struct {
	// ReadBuffer and WriteBuffer are the effective SO_RCVBUF and SO_SNDBUF
	// in bytes, as the kernel reports them (Linux reports twice the size
	// that was set, to account for its bookkeeping), after trying to raise
	// them to WantBuffer as quic-go does.
	ReadBuffer, WriteBuffer int
	// WantBuffer is the size quic-go wants: 7 MiB.
	WantBuffer int
	// Batched reports whether quic-go can use the socket's batched and
	// ancillary-data I/O (a *net.UDPConn): without it GSO and ECN are off.
	Batched bool
	// GSO reports whether quic-go will send with generic segmentation
	// offload: Linux 5 or later, the UDP_SEGMENT socket option accepted, and
	// QUIC_GO_DISABLE_GSO unset. quic-go still falls back if a send fails.
	GSO bool
	// ECN reports whether quic-go will read and set ECN marks: Linux 5 or
	// later and QUIC_GO_DISABLE_ECN unset.
	ECN bool
	// Err is why something could not be determined, or nil.
	Err error
}

// CheckUDP inspects pc the way quic-go will use it. It first tries to raise
// the socket buffers to 7 MiB, as quic-go does when it starts serving, so
// the report holds whether the Server is running yet or not.
func CheckUDP(pc net.PacketConn) UDPReport {
	r := UDPReport{WantBuffer: wantUDPBuffer}
	uc, ok := pc.(*net.UDPConn)
	r.Batched = ok
	sc, ok := pc.(syscall.Conn)
	if !ok {
		r.Err = errors.New("h3: socket does not expose its file descriptor")
		return r
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		r.Err = fmt.Errorf("h3: inspecting UDP socket: %w", err)
		return r
	}
	if uc != nil {
		// Ignore errors: what counts is what the kernel grants.
		if size, _ := sockoptInt(raw, syscall.SO_RCVBUF); size < wantUDPBuffer {
			_ = uc.SetReadBuffer(wantUDPBuffer)
		}
		if size, _ := sockoptInt(raw, syscall.SO_SNDBUF); size < wantUDPBuffer {
			_ = uc.SetWriteBuffer(wantUDPBuffer)
		}
	}
	var err1, err2 error
	r.ReadBuffer, err1 = sockoptInt(raw, syscall.SO_RCVBUF)
	r.WriteBuffer, err2 = sockoptInt(raw, syscall.SO_SNDBUF)
	if err := errors.Join(err1, err2); err != nil {
		r.Err = fmt.Errorf("h3: reading UDP socket buffer sizes: %w", err)
	}
	if r.Batched {
		r.GSO, r.ECN = offloads(raw)
	}
	return r
}

// Warning returns a message for the operator when the socket buffers are
// smaller than quic-go wants, naming the sysctl to raise, or "".
func (r UDPReport) Warning() string {
	var msg string
	if r.ReadBuffer > 0 && r.ReadBuffer < r.WantBuffer {
		msg = fmt.Sprintf("h3: UDP receive buffer is %d KiB, quic-go wants %d KiB: raise net.core.rmem_max (sysctl -w net.core.rmem_max=%d)",
			r.ReadBuffer>>10, r.WantBuffer>>10, r.WantBuffer)
	}
	if r.WriteBuffer > 0 && r.WriteBuffer < r.WantBuffer {
		if msg != "" {
			msg += "; "
		} else {
			msg = "h3: "
		}
		msg += fmt.Sprintf("UDP send buffer is %d KiB, quic-go wants %d KiB: raise net.core.wmem_max (sysctl -w net.core.wmem_max=%d)",
			r.WriteBuffer>>10, r.WantBuffer>>10, r.WantBuffer)
	}
	return msg
}

func sockoptInt(raw syscall.RawConn, opt int) (int, error) {
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt)
	}); err != nil {
		return 0, err
	}
	return v, serr
}
