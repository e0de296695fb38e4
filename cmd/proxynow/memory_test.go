package main

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// TestGigabyteBoundedMemory streams 1 GiB up and 1 GiB down through the
// gateway and checks that the heap of the whole test process (client, gateway
// and upstream) stays bounded: nothing buffers a body whole.
func TestGigabyteBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 2 GiB per protocol")
	}
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	const size = 1 << 30
	const limit = 64 << 20
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			c := clientFor(t, proto)
			runtime.GC()
			var peak atomic.Uint64
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				var ms runtime.MemStats
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						runtime.ReadMemStats(&ms)
						if ms.HeapInuse > peak.Load() {
							peak.Store(ms.HeapInuse)
						}
					}
				}
			}()
			// Upload.
			h := sha256.New()
			req, _ := http.NewRequest("POST", f.url("/echo"), io.TeeReader(io.LimitReader(newPattern(1), size), h))
			resp, body := do(t, c, req)
			rep := decodeEcho(t, body)
			if resp.StatusCode != 200 || rep.BodyLen != size || rep.BodySHA256 != hex.EncodeToString(h.Sum(nil)) {
				t.Errorf("upload: status %d, upstream got %d bytes", resp.StatusCode, rep.BodyLen)
			}
			// Download.
			resp, err := c.Get(f.url("/big?n=" + strconv.Itoa(size) + "&seed=2"))
			if err != nil {
				t.Fatal(err)
			}
			h2 := sha256.New()
			n, err := io.Copy(h2, resp.Body)
			resp.Body.Close()
			if err != nil || n != size || hex.EncodeToString(h2.Sum(nil)) != resp.Trailer.Get("X-Sha256") {
				t.Errorf("download: %d bytes, %v, checksum mismatch", n, err)
			}
			close(stop)
			<-sampled
			t.Logf("%s: peak heap in use while moving 2 GiB: %.1f MiB", proto, float64(peak.Load())/(1<<20))
			if peak.Load() > limit {
				t.Errorf("peak heap %d MiB > %d MiB: a body is being buffered", peak.Load()>>20, limit>>20)
			}
		})
	}
}
