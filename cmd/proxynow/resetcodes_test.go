package main

import (
	"testing"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport"
)

// TestResetCodesAgree: the gateway's error table is the one place that maps
// transport codes to stream reset codes; the h3 server, which cannot import
// the gateway, must send the same ones.
func TestResetCodesAgree(t *testing.T) {
	for c := transport.Code(1); int(c) < transport.NumCodes; c++ {
		_, want := gateway.ResetCodesFor(c)
		if got := uint64(h3.ResetCode(c)); got != want {
			t.Errorf("%s: h3 resets with %#x, the gateway table says %#x", c, got, want)
		}
	}
}
