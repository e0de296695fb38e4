package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
)

func decodeEcho(t *testing.T, body []byte) echoReply {
	t.Helper()
	var rep echoReply
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("upstream reply is not an echo: %v\n%s", err, body)
	}
	return rep
}

func TestRouting(t *testing.T) {
	api, web, wild, def := startUpstream(t, "h1"), startUpstream(t, "h1"), startUpstream(t, "h1"), startUpstream(t, "h1")
	f := startGateway(t, `
routes:
  - {host: api.example.com, path_prefix: /v1, cluster: api}
  - {host: api.example.com, path_prefix: /, cluster: web}
  - {host: "*.example.com", path_prefix: /, cluster: wild}
  - {path_prefix: /static, cluster: web}
  - {path_prefix: /, cluster: def}
clusters:
  - {name: api, servers: ["@UP@"]}
  - {name: web, servers: ["@UP1@"]}
  - {name: wild, servers: ["@UP2@"]}
  - {name: def, servers: ["@UP3@"]}
`, api, web, wild, def)
	cases := []struct {
		host, path string
		want       *testUpstream
	}{
		{"api.example.com", "/v1/users", api},
		{"api.example.com", "/v1", api},
		{"API.Example.com:443", "/v1?x=1", api},
		{"api.example.com", "/v1x", web}, // prefixes match whole segments
		{"api.example.com", "/", web},
		{"shop.example.com", "/v1", wild},
		{"a.b.example.com", "/", wild},
		{"example.com", "/", def}, // "*.example.com" needs a label in front
		{"other.test", "/static/app.js", web},
		{"other.test", "/staticx", def},
		{"other.test", "/", def},
	}
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		for _, tc := range cases {
			before := [4]int64{api.requests.Load(), web.requests.Load(), wild.requests.Load(), def.requests.Load()}
			req, _ := http.NewRequest("GET", f.url(tc.path), nil)
			req.Host = tc.host
			resp, body := do(t, c, req)
			if resp.StatusCode != 200 {
				t.Fatalf("%s%s: status %d: %s", tc.host, tc.path, resp.StatusCode, body)
			}
			rep := decodeEcho(t, body)
			if rep.Host != tc.host || rep.URI != tc.path {
				t.Errorf("%s%s: upstream saw host %q uri %q", tc.host, tc.path, rep.Host, rep.URI)
			}
			after := [4]int64{api.requests.Load(), web.requests.Load(), wild.requests.Load(), def.requests.Load()}
			for i, u := range []*testUpstream{api, web, wild, def} {
				got := after[i] - before[i]
				if (u == tc.want) != (got == 1) {
					t.Errorf("%s%s: upstream %d got %d requests", tc.host, tc.path, i, got)
				}
			}
		}
	})
}

func TestNoRoute(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, `
routes:
  - {host: only.example.com, cluster: app}
clusters:
  - {name: app, servers: ["@UP@"]}
`, up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		resp, _ := get(t, c, f.url("/"))
		if resp.StatusCode != 404 || resp.Header.Get("Proxy-Status") != "proxynow; error=destination_not_found" {
			t.Errorf("status %d, Proxy-Status %q", resp.StatusCode, resp.Header.Get("Proxy-Status"))
		}
	})
	if up.requests.Load() != 0 {
		t.Errorf("upstream got %d requests", up.requests.Load())
	}
}

// TestMethodsAndBodies sends bodies of each framing and checks what the
// upstream received, byte for byte.
func TestMethodsAndBodies(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		for _, tc := range []struct {
			name, method string
			body         []byte
			chunked      bool
		}{
			{"get", "GET", nil, false},
			{"delete", "DELETE", nil, false},
			{"post-empty", "POST", []byte{}, false},
			{"post-length", "POST", []byte("hello, upstream"), false},
			{"put-chunked", "PUT", bytes.Repeat([]byte("chunk"), 10000), true},
			{"patch", "PATCH", []byte(`{"a":1}`), false},
			{"options", "OPTIONS", nil, false},
		} {
			var r io.Reader
			if tc.body != nil {
				r = bytes.NewReader(tc.body)
				if tc.chunked {
					r = io.MultiReader(r) // hides the length: chunked / no content-length
				}
			}
			req, _ := http.NewRequest(tc.method, f.url("/echo?q="+tc.name), r)
			resp, body := do(t, c, req)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: status %d: %s", tc.name, resp.StatusCode, body)
			}
			rep := decodeEcho(t, body)
			sum := sha256.Sum256(tc.body)
			if rep.Method != tc.method || rep.URI != "/echo?q="+tc.name || rep.BodyLen != int64(len(tc.body)) || rep.BodySHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: upstream saw %s %s with %d bytes (sha %s)", tc.name, rep.Method, rep.URI, rep.BodyLen, rep.BodySHA256[:8])
			}
			if tc.chunked && rep.CL != -1 {
				t.Errorf("%s: upstream saw Content-Length %d for a body of unknown length", tc.name, rep.CL)
			}
			if !tc.chunked && tc.body != nil && len(tc.body) > 0 && rep.CL != int64(len(tc.body)) {
				t.Errorf("%s: upstream saw Content-Length %d, want %d", tc.name, rep.CL, len(tc.body))
			}
		}
	})
}

// TestLargeBodies streams 10 MiB each way and checks the checksums.
func TestLargeBodies(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	const size = 10 << 20
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		// Upload.
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(newPattern(7), size), h)
		req, _ := http.NewRequest("POST", f.url("/echo"), src)
		resp, body := do(t, c, req)
		rep := decodeEcho(t, body)
		if resp.StatusCode != 200 || rep.BodyLen != size || rep.BodySHA256 != hex.EncodeToString(h.Sum(nil)) {
			t.Fatalf("upload: status %d, upstream got %d bytes", resp.StatusCode, rep.BodyLen)
		}
		// Download, with the checksum in a trailer.
		resp2, err := c.Get(f.url("/big?n=" + strconv.Itoa(size) + "&seed=9"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp2.Body.Close()
		h2 := sha256.New()
		n, err := io.Copy(h2, resp2.Body)
		if err != nil || n != size {
			t.Fatalf("download: %d bytes, %v", n, err)
		}
		if got, want := hex.EncodeToString(h2.Sum(nil)), resp2.Trailer.Get("X-Sha256"); got != want {
			t.Fatalf("download checksum %s, trailer says %q", got, want)
		}
	})
}

func TestTrailers(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		// Request trailers reach the upstream.
		req, _ := http.NewRequest("POST", f.url("/echo"), io.MultiReader(strings.NewReader("payload")))
		req.Trailer = http.Header{"X-Req-Trailer": nil}
		pr, pw := io.Pipe()
		req.Body = pr
		go func() {
			pw.Write([]byte("payload"))
			req.Trailer.Set("X-Req-Trailer", "tv")
			pw.Close()
		}()
		_, body := do(t, c, req)
		rep := decodeEcho(t, body)
		if got := rep.Trailer["X-Req-Trailer"]; len(got) != 1 || got[0] != "tv" {
			t.Errorf("upstream saw request trailers %v", rep.Trailer)
		}
		// Response trailers reach the client.
		resp, body := get(t, c, f.url("/trailers"))
		if string(body) != "body with trailers\n" {
			t.Errorf("body %q", body)
		}
		if resp.Trailer.Get("X-Checksum") == "" || resp.Trailer.Get("X-Undeclared") != "late" {
			t.Errorf("client saw trailers %v", resp.Trailer)
		}
	})
}

func TestHeadAndBodilessStatuses(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		req, _ := http.NewRequest("HEAD", f.url("/head"), nil)
		resp, body := do(t, c, req)
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength != 1234 {
			t.Errorf("HEAD: status %d, %d body bytes, Content-Length %d", resp.StatusCode, len(body), resp.ContentLength)
		}
		for _, code := range []int{204, 304} {
			resp, body := get(t, c, f.url("/status/"+strconv.Itoa(code)))
			if resp.StatusCode != code || len(body) != 0 || resp.Header.Get("Etag") != `"abc"` {
				t.Errorf("%d: got status %d, %d body bytes, ETag %q", code, resp.StatusCode, len(body), resp.Header.Get("Etag"))
			}
		}
		for _, code := range []int{201, 404, 418, 500, 503} {
			resp, body := get(t, c, f.url("/status/"+strconv.Itoa(code)))
			if resp.StatusCode != code || string(body) != "status body\n" || resp.Header.Get("Proxy-Status") != "" {
				t.Errorf("%d: got status %d body %q Proxy-Status %q", code, resp.StatusCode, body, resp.Header.Get("Proxy-Status"))
			}
		}
	})
}

func TestEarlyHints(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		if proto == "h3" {
			t.Skip("quic-go's HTTP/3 client does not report 1xx responses through httptrace")
		}
		var hints []string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, strconv.Itoa(code)+" "+h.Get("Link"))
			return nil
		}}
		req, _ := http.NewRequest("GET", f.url("/hints"), nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, body := do(t, c, req)
		if resp.StatusCode != 200 || string(body) != "after hints\n" {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		if len(hints) != 1 || hints[0] != "103 </style.css>; rel=preload" {
			t.Errorf("1xx seen by client: %q", hints)
		}
	})
}

func TestHopByHopStripped(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		req, _ := http.NewRequest("GET", f.url("/echo"), nil)
		req.Header.Set("X-Keep", "end-to-end")
		if proto == "h1" { // connection-specific fields are malformed in h2/h3
			req.Header.Set("Connection", "X-Drop-Me, keep-alive")
			req.Header.Set("X-Drop-Me", "secret")
			req.Header.Set("Keep-Alive", "timeout=5")
			req.Header.Set("Upgrade", "h2c")
			req.Header.Set("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")
		}
		req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
		_, body := do(t, c, req)
		rep := decodeEcho(t, body)
		for _, k := range []string{"Connection", "X-Drop-Me", "Keep-Alive", "Upgrade", "Http2-Settings", "Proxy-Authorization", "Te"} {
			if v, ok := rep.Header[k]; ok {
				t.Errorf("upstream received hop-by-hop %s: %v", k, v)
			}
		}
		if rep.Header["X-Keep"] == nil {
			t.Errorf("end-to-end field lost")
		}
		resp, _ := get(t, c, f.url("/hop"))
		for _, k := range []string{"X-Hop-Resp", "Keep-Alive", "Proxy-Authenticate"} {
			if v := resp.Header.Get(k); v != "" {
				t.Errorf("client received hop-by-hop %s: %q", k, v)
			}
		}
		if resp.Header.Get("X-End-To-End") != "stays" {
			t.Errorf("end-to-end response field lost")
		}
		if v := resp.Header.Values("Alt-Svc"); strings.Contains(strings.Join(v, ","), "9999") || (proto == "h3" && len(v) != 0) {
			t.Errorf("upstream Alt-Svc leaked to the client: %q", v)
		}
	})
}

func TestForwardingHeaders(t *testing.T) {
	up := startUpstream(t, "h1")
	untrusted := startGateway(t, simpleConfig("h1"), up)
	trusted := startGateway(t, simpleConfig("h1")+"trusted_proxies: [\"127.0.0.0/8\"]\n", up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		for _, tc := range []struct {
			f                     *fixture
			xff, xfproto, xfhost  string
			wantXFF, wantP, wantH string
		}{
			{untrusted, "", "", "", "127.0.0.1", "https", "127.0.0.1:" + untrusted.port},
			{untrusted, "6.6.6.6", "http", "evil.test", "127.0.0.1", "https", "127.0.0.1:" + untrusted.port},
			{trusted, "", "", "", "127.0.0.1", "https", "127.0.0.1:" + trusted.port},
			{trusted, "203.0.113.7", "http", "shop.test", "203.0.113.7, 127.0.0.1", "http", "shop.test"},
		} {
			req, _ := http.NewRequest("GET", tc.f.url("/echo"), nil)
			if tc.xff != "" {
				req.Header.Set("X-Forwarded-For", tc.xff)
				req.Header.Set("X-Forwarded-Proto", tc.xfproto)
				req.Header.Set("X-Forwarded-Host", tc.xfhost)
			}
			_, body := do(t, c, req)
			rep := decodeEcho(t, body)
			got := func(k string) string { return strings.Join(rep.Header[k], ",") }
			if got("X-Forwarded-For") != tc.wantXFF || got("X-Forwarded-Proto") != tc.wantP || got("X-Forwarded-Host") != tc.wantH {
				t.Errorf("client sent XFF %q: upstream saw XFF %q proto %q host %q; want %q %q %q",
					tc.xff, got("X-Forwarded-For"), got("X-Forwarded-Proto"), got("X-Forwarded-Host"), tc.wantXFF, tc.wantP, tc.wantH)
			}
			if rep.Host != "127.0.0.1:"+tc.f.port {
				t.Errorf("Host not preserved: upstream saw %q", rep.Host)
			}
			wantVia := map[string]string{"h1": "1.1 proxynow", "h2": "2 proxynow", "h3": "3 proxynow"}[proto]
			if got("Via") != wantVia {
				t.Errorf("Via %q, want %q", got("Via"), wantVia)
			}
		}
	})
}

// TestUpstreamKeepAlive checks that sequential proxied requests share one
// upstream connection, counted at the upstream.
func TestUpstreamKeepAlive(t *testing.T) {
	for _, upProto := range []string{"h1", "h2", "h2c", "h3"} {
		t.Run("upstream-"+upProto, func(t *testing.T) {
			up := startUpstream(t, upProto)
			f := startGateway(t, simpleConfig(upProto), up)
			forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
				before := up.conns.Load()
				n := 1000
				if testing.Short() || upProto != "h1" {
					n = 200
				}
				for i := 0; i < n; i++ {
					resp, _ := get(t, c, f.url("/echo"))
					if resp.StatusCode != 200 {
						t.Fatalf("request %d: status %d", i, resp.StatusCode)
					}
				}
				if opened := up.conns.Load() - before; opened > 1 {
					t.Errorf("%d sequential requests opened %d upstream connections, want at most 1", n, opened)
				}
			})
		})
	}
}

// TestUpstreamProtocols runs the basic behaviours against every upstream
// protocol from every downstream protocol.
func TestUpstreamProtocols(t *testing.T) {
	for _, upProto := range []string{"h1", "h1tls", "h2", "h2c", "h3"} {
		t.Run("upstream-"+upProto, func(t *testing.T) {
			up := startUpstream(t, upProto)
			f := startGateway(t, simpleConfig(upProto), up)
			wantUp := map[string]string{"h1": "HTTP/1.1", "h1tls": "HTTP/1.1", "h2": "HTTP/2.0", "h2c": "HTTP/2.0", "h3": "HTTP/3.0"}[upProto]
			forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
				payload := bytes.Repeat([]byte("0123456789"), 100_000)
				sum := sha256.Sum256(payload)
				req, _ := http.NewRequest("PUT", f.url("/echo?x=1"), bytes.NewReader(payload))
				resp, body := do(t, c, req)
				if resp.StatusCode != 200 || resp.Proto != wantProto[proto] {
					t.Fatalf("status %d proto %s", resp.StatusCode, resp.Proto)
				}
				rep := decodeEcho(t, body)
				if rep.Proto != wantUp || rep.Method != "PUT" || rep.URI != "/echo?x=1" || rep.BodySHA256 != hex.EncodeToString(sum[:]) {
					t.Errorf("upstream saw %s %s %s sha %s", rep.Proto, rep.Method, rep.URI, rep.BodySHA256)
				}
				resp, body = get(t, c, f.url("/trailers"))
				if resp.StatusCode != 200 || string(body) != "body with trailers\n" || resp.Trailer.Get("X-Checksum") == "" {
					t.Errorf("trailers: status %d body %q trailers %v", resp.StatusCode, body, resp.Trailer)
				}
				resp, _ = get(t, c, f.url("/status/503"))
				if resp.StatusCode != 503 || resp.Header.Get("Proxy-Status") != "" {
					t.Errorf("upstream 503: got %d, Proxy-Status %q", resp.StatusCode, resp.Header.Get("Proxy-Status"))
				}
			})
		})
	}
}
