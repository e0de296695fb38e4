package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

// TestErrorTable checks every transport code has a complete row.
func TestErrorTable(t *testing.T) {
	seen := map[string]bool{}
	for c := transport.Code(1); int(c) < transport.NumCodes; c++ {
		e := infoFor(c)
		if e.status < 400 || e.status > 599 {
			t.Errorf("%s: status %d is not an error", c, e.status)
		}
		if c != transport.CodeClientCancelled && http.StatusText(e.status) == "" {
			t.Errorf("%s: status %d has no text", c, e.status)
		}
		if c != transport.CodeClientCancelled {
			if e.proxyStatus == "" || e.proxyStatusValue[0] != "proxynow; error="+e.proxyStatus {
				t.Errorf("%s: Proxy-Status %q", c, e.proxyStatusValue)
			}
			if !strings.Contains(string(e.body), c.String()) || int64(len(e.body)) != e.contentLength {
				t.Errorf("%s: body %q", c, e.body)
			}
		}
		if e.h2Reset == 0 || e.h3Reset < 0x100 {
			t.Errorf("%s: reset codes h2 %#x h3 %#x", c, e.h2Reset, e.h3Reset)
		}
		seen[c.String()] = true
	}
	if len(seen) != transport.NumCodes-1 {
		t.Errorf("codes share names")
	}
	for _, tc := range []struct {
		code   transport.Code
		status int
		ps     string
	}{
		{transport.CodeNoRoute, 404, "destination_not_found"},
		{transport.CodeNoHealthyUpstream, 503, "destination_unavailable"},
		{transport.CodeConnectRefused, 502, "connection_refused"},
		{transport.CodeConnectTimeout, 504, "connection_timeout"},
		{transport.CodeUpstreamTLS, 502, "tls_protocol_error"},
		{transport.CodeUpstreamReset, 502, "connection_terminated"},
		{transport.CodeUpstreamProtocol, 502, "http_protocol_error"},
		{transport.CodeResponseTimeout, 504, "http_response_timeout"},
		{transport.CodeHeaderTooLarge, 431, "http_request_error"},
		{transport.CodeBodyTooLarge, 413, "http_request_error"},
		{transport.CodeURITooLong, 414, "http_request_error"},
		{transport.CodeBadRequest, 400, "http_request_error"},
		{transport.CodeNotImplemented, 501, "http_request_error"},
		{transport.CodeTooEarly, 425, "http_request_denied"},
		{transport.CodeOverloaded, 503, "connection_limit_reached"},
		{transport.CodeDraining, 503, "destination_unavailable"},
		{transport.CodeInternal, 500, "proxy_internal_error"},
	} {
		if StatusFor(tc.code) != tc.status || ProxyStatusFor(tc.code) != tc.ps {
			t.Errorf("%s: %d %q, want %d %q", tc.code, StatusFor(tc.code), ProxyStatusFor(tc.code), tc.status, tc.ps)
		}
	}
}

func TestStripHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":       {"X-A, close", " x-b "},
		"X-A":              {"1"},
		"X-B":              {"2"},
		"Keep-Alive":       {"timeout=5"},
		"Te":               {"trailers"},
		"Upgrade":          {"h2c"},
		"Http2-Settings":   {"AAAA"},
		"Proxy-Connection": {"keep-alive"},
		"Content-Length":   {"5"},
		"X-Keep":           {"yes"},
		"Trailer":          {"X-T"},
	}
	stripHopByHop(h)
	if len(h) != 2 || h["X-Keep"] == nil || h["Trailer"] == nil {
		t.Errorf("after strip: %v", h)
	}
}
