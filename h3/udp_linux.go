package h3

import (
	"os"
	"strconv"
	"syscall"
)

// udpSegment is UDP_SEGMENT from linux/udp.h.
const udpSegment = 103

// offloads mirrors quic-go's checks (sys_conn_helper_linux.go): GSO and ECN
// need Linux 5 or later and can be turned off by environment variables.
func offloads(raw syscall.RawConn) (gso, ecn bool) {
	if kernelMajor() < 5 {
		return false, false
	}
	ecn = !envTrue("QUIC_GO_DISABLE_ECN")
	if envTrue("QUIC_GO_DISABLE_GSO") {
		return false, ecn
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		_, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_UDP, udpSegment)
	}); err != nil {
		return false, ecn
	}
	return serr == nil, ecn
}

func envTrue(name string) bool {
	v, err := strconv.ParseBool(os.Getenv(name))
	return err == nil && v
}

func kernelMajor() int {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return 0
	}
	major := 0
	for _, c := range u.Release {
		if c < '0' || c > '9' {
			break
		}
		major = major*10 + int(c-'0')
	}
	return major
}
