// Package transporttest holds test helpers shared by the transport packages,
// like net/http/httptest: the upstream-connection conformance suite
// [TestConn], the echo server it runs against ([EchoHandler]) and throwaway
// TLS certificates ([TLSConfigs]). Import it from _test.go files only.
package transporttest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The echo server's paths and fields.
const (
	// PathSlow waits, before it answers, for the request's context to end
	// or SlowWait to pass.
	PathSlow = "/slow"
	// PathSlowBody sends the response head at once, then waits like
	// PathSlow before it sends the body.
	PathSlowBody = "/slowbody"
	// SlowWait bounds the wait of PathSlow and PathSlowBody.
	SlowWait = 5 * time.Second

	HeaderMethod        = "X-Method"         // the request method
	HeaderHost          = "X-Host"           // the request's Host (:authority)
	HeaderPath          = "X-Path"           // the request's path and query
	HeaderContentLength = "X-Content-Length" // the request's Content-Length as received, -1 when unknown
	TrailerBodySHA256   = "X-Body-Sha256"    // trailer: hex SHA-256 of the request body received
)

// EchoHandler returns the handler of the echo server that [TestConn] expects.
// For any request it reads the whole body, then answers 200 with the body
// echoed, the response headers X-Method, X-Host, X-Path and X-Content-Length
// describing the request as received, and the trailer X-Body-Sha256, the hex
// SHA-256 of the body received. It reads the body before it writes, so it
// works with HTTP/1.1 servers that are not full duplex. PathSlow and
// PathSlowBody wait as documented on them. Run it on an httptest, x/net http2
// or quic-go http3 server.
func EchoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body bytes.Buffer
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(&body, h), r.Body); err != nil {
			http.Error(w, "echo: reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if r.URL.Path == PathSlow && !wait(r) {
			return
		}
		hdr := w.Header()
		hdr.Set(HeaderMethod, r.Method)
		hdr.Set(HeaderHost, r.Host)
		hdr.Set(HeaderPath, r.URL.RequestURI())
		hdr.Set(HeaderContentLength, strconv.FormatInt(r.ContentLength, 10))
		hdr.Set("Content-Type", "application/octet-stream")
		hdr.Set("Trailer", TrailerBodySHA256)
		w.WriteHeader(http.StatusOK)
		if r.URL.Path == PathSlowBody {
			if err := http.NewResponseController(w).Flush(); err != nil {
				return
			}
			if !wait(r) {
				return
			}
		}
		w.Write(body.Bytes())
		hdr.Set(TrailerBodySHA256, hex.EncodeToString(h.Sum(nil)))
	})
}

// wait waits for r's context to end or SlowWait, and reports whether the
// request is still wanted.
func wait(r *http.Request) bool {
	t := time.NewTimer(SlowWait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}
