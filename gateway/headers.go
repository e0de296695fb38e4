package gateway

import (
	"net/http"
	"net/netip"
	"strings"
)

// hopByHop are the fields that describe one connection, not the message
// (RFC 9110 §7.6.1), plus those a proxy must never pass on: Upgrade with
// HTTP2-Settings (an h2c upgrade is never forwarded or tunnelled), Proxy-*
// fields of the client's proxy, and the framing fields that each transport
// re-derives.
var hopByHop = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Transfer-Encoding",
	"Content-Length",
	"Upgrade",
	"Http2-Settings",
}

// stripHopByHop removes the hop-by-hop fields from h: first those that
// Connection names (before Connection itself goes), then the fixed list.
func stripHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			delete(h, http.CanonicalHeaderKey(name))
		}
	}
	for _, k := range hopByHop {
		delete(h, k)
	}
}

// trustedProxies is a compiled trusted_proxies list.
type trustedProxies []netip.Prefix

func (t trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// setForwarded sets X-Forwarded-For, -Proto and -Host. A client that is a
// trusted proxy has its values kept and the peer's address appended to
// X-Forwarded-For; any other client's values are replaced, so they cannot
// spoof an address (and its Forwarded field is dropped for the same reason).
func setForwarded(h http.Header, remote netip.AddrPort, scheme, authority string, trusted trustedProxies) {
	ip := remote.Addr().Unmap()
	var ipText string
	if ip.IsValid() {
		ipText = ip.String()
	}
	if trusted.contains(ip) {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 {
			h["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + ipText}
		} else if ipText != "" {
			h["X-Forwarded-For"] = []string{ipText}
		}
		if len(h["X-Forwarded-Proto"]) == 0 {
			h["X-Forwarded-Proto"] = schemeValue(scheme)
		}
		if len(h["X-Forwarded-Host"]) == 0 {
			h["X-Forwarded-Host"] = []string{authority}
		}
		return
	}
	delete(h, "Forwarded")
	if ipText != "" {
		h["X-Forwarded-For"] = []string{ipText}
	} else {
		delete(h, "X-Forwarded-For")
	}
	h["X-Forwarded-Proto"] = schemeValue(scheme)
	h["X-Forwarded-Host"] = []string{authority}
}

var (
	httpsValue = []string{"https"}
	httpValue  = []string{"http"}
)

func schemeValue(scheme string) []string {
	if scheme == "http" {
		return httpValue
	}
	return httpsValue
}
