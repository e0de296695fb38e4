package main

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClientCancelReachesUpstream: a client that goes away mid-body (its
// download, its upload, or while waiting for the head) cancels the upstream
// request, on every downstream and upstream protocol.
func TestClientCancelReachesUpstream(t *testing.T) {
	for _, upProto := range []string{"h1", "h2", "h3"} {
		t.Run("upstream-"+upProto, func(t *testing.T) {
			up := startUpstream(t, upProto)
			f := startGateway(t, simpleConfig(upProto), up)
			forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
				// Mid-download.
				before := up.aborted.Load()
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, "GET", f.url("/big?n=1073741824"), nil)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.CopyN(io.Discard, resp.Body, 256<<10); err != nil {
					t.Fatal(err)
				}
				cancel()
				resp.Body.Close()
				waitFor(t, 10*time.Second, "the upstream download to be cancelled", func() bool { return up.aborted.Load() > before })

				// Mid-upload.
				before = up.aborted.Load()
				ctx, cancel = context.WithCancel(context.Background())
				pr, pw := io.Pipe()
				req, _ = http.NewRequestWithContext(ctx, "POST", f.url("/echo"), pr)
				// Read before the request starts: it may reach the
				// upstream before this goroutine runs again.
				reqsBefore := up.requests.Load()
				var wg sync.WaitGroup
				wg.Go(func() {
					pw.Write(make([]byte, 64<<10))
				})
				wg.Go(func() {
					resp, err := c.Do(req)
					if err == nil {
						resp.Body.Close()
					}
				})
				waitFor(t, 10*time.Second, "the upload to reach the upstream", func() bool { return up.requests.Load() > reqsBefore })
				cancel()
				pw.CloseWithError(context.Canceled)
				wg.Wait()
				waitFor(t, 10*time.Second, "the upstream upload to be cancelled", func() bool { return up.aborted.Load() > before })

				// While the upstream thinks.
				before = up.aborted.Load()
				ctx, cancel = context.WithCancel(context.Background())
				req, _ = http.NewRequestWithContext(ctx, "GET", f.url("/slow?d=10s"), nil)
				reqsBefore = up.requests.Load()
				done := make(chan struct{})
				go func() {
					defer close(done)
					if resp, err := c.Do(req); err == nil {
						resp.Body.Close()
					}
				}()
				waitFor(t, 10*time.Second, "the slow request to reach the upstream", func() bool { return up.requests.Load() > reqsBefore })
				cancel()
				<-done
				waitFor(t, 10*time.Second, "the slow upstream request to be cancelled", func() bool { return up.aborted.Load() > before })
			})
		})
	}
}

// TestConcurrentStreams: 200 concurrent requests on one HTTP/3 connection
// (and one HTTP/2 connection) through the gateway.
func TestConcurrentStreams(t *testing.T) {
	up := startUpstream(t, "h2c")
	f := startGateway(t, simpleConfig("h2c"), up)
	for _, proto := range []string{"h2", "h3"} {
		t.Run(proto, func(t *testing.T) {
			c := clientFor(t, proto)
			var wg sync.WaitGroup
			errs := make(chan error, 200)
			for i := 0; i < 200; i++ {
				wg.Go(func() {
					resp, err := c.Get(f.url("/echo"))
					if err != nil {
						errs <- err
						return
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || len(body) == 0 {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("request failed: %v", err)
			}
		})
	}
}

// TestStalledClientCancelsUpstream: a client that stops reading a download
// (its socket buffer or its flow-control window full) fails the response
// after limits.write_timeout and cancels the upstream request, on every
// downstream protocol.
func TestStalledClientCancelsUpstream(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1")+"limits:\n  write_timeout: 300ms\n", up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		before := up.aborted.Load()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", f.url("/big?n=1073741824"), nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.CopyN(io.Discard, resp.Body, 256<<10); err != nil {
			t.Fatal(err)
		}
		// Stop reading, without cancelling or closing.
		waitFor(t, 10*time.Second, "the stalled download to be cancelled upstream", func() bool { return up.aborted.Load() > before })
	})
}
