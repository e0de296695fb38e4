package main

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestAltSvc(t *testing.T) {
	up := startUpstream(t, "h1")
	f := startGateway(t, `
alt_svc:
  max_age: 1h
  port: 443
routes:
  - {path_prefix: /quiet, cluster: app, alt_svc: false}
  - {path_prefix: /, cluster: app}
clusters:
  - {name: app, servers: ["@UP@"]}
`, up)
	forEachMode(t, func(t *testing.T, proto string, c *http.Client) {
		resp, _ := get(t, c, f.url("/hop")) // the upstream sends its own Alt-Svc
		want := `h3=":443"; ma=3600`
		if proto == "h3" {
			want = "" // already on HTTP/3
		}
		if got := resp.Header.Values("Alt-Svc"); len(got) > 1 || (len(got) == 1) != (want != "") || (want != "" && got[0] != want) {
			t.Errorf("Alt-Svc %q, want %q", got, want)
		}
		resp, _ = get(t, c, f.url("/quiet/x"))
		if got := resp.Header.Values("Alt-Svc"); len(got) != 0 {
			t.Errorf("route with alt_svc false: Alt-Svc %q", got)
		}
	})

	off := startGateway(t, "alt_svc: {enabled: false}\n"+simpleConfig("h1"), up)
	resp, _ := get(t, clientFor(t, "h2"), off.url("/hop"))
	if got := resp.Header.Values("Alt-Svc"); len(got) != 0 {
		t.Errorf("alt_svc disabled: Alt-Svc %q", got)
	}
	h3off := startGateway(t, "http3: {enabled: false}\n"+simpleConfig("h1"), up)
	resp, _ = get(t, clientFor(t, "h1"), h3off.url("/echo"))
	if got := resp.Header.Values("Alt-Svc"); len(got) != 0 {
		t.Errorf("http3 disabled: Alt-Svc %q", got)
	}
}

// TestAltSvcClearWhileDraining checks that a response written after the drain
// began withdraws HTTP/3 with Alt-Svc: clear (RFC 7838 §3).
func TestAltSvcClearWhileDraining(t *testing.T) {
	up := startUpstream(t, "h1")
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			f := startGateway(t, simpleConfig("h1"), up)
			c := clientFor(t, proto)
			before := up.requests.Load()
			type result struct {
				resp *http.Response
				err  error
			}
			done := make(chan result, 1)
			go func() {
				resp, err := c.Get(f.url("/slow?d=1s"))
				if err == nil {
					resp.Body.Close()
				}
				done <- result{resp, err}
			}()
			deadline := time.Now().Add(5 * time.Second)
			for up.requests.Load() == before {
				if time.Now().After(deadline) {
					t.Fatal("request never reached the upstream")
				}
				time.Sleep(5 * time.Millisecond)
			}
			drained := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				drained <- f.inst.Drain(ctx)
			}()
			r := <-done
			if r.err != nil {
				t.Fatalf("in-flight request failed during drain: %v", r.err)
			}
			if r.resp.StatusCode != 200 || r.resp.Header.Get("Alt-Svc") != "clear" {
				t.Errorf("status %d, Alt-Svc %q, want clear", r.resp.StatusCode, r.resp.Header.Get("Alt-Svc"))
			}
			if err := <-drained; err != nil {
				t.Errorf("drain: %v", err)
			}
		})
	}
}
