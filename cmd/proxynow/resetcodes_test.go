package main

import (
	"testing"

	"github.com/proxynow/proxynow/gateway"
	"github.com/proxynow/proxynow/h2"
	"github.com/proxynow/proxynow/h3"
	"github.com/proxynow/proxynow/transport"
)

// TestResetCodesAgree: the gateway's error table is the one place that maps
// transport codes to stream reset codes; the h3 server and the native HTTP/2
// engine, which cannot import the gateway, must send the same ones.
func TestResetCodesAgree(t *testing.T) {
	for c := transport.Code(1); int(c) < transport.NumCodes; c++ {
		want2, want3 := gateway.ResetCodesFor(c)
		if got := uint64(h3.ResetCode(c)); got != want3 {
			t.Errorf("%s: h3 resets with %#x, the gateway table says %#x", c, got, want3)
		}
		if got := uint32(h2.ResetCode(c)); got != want2 {
			t.Errorf("%s: h2 resets with %#x, the gateway table says %#x", c, got, want2)
		}
	}
}
