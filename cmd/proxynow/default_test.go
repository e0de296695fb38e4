package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// TestDefaultRun builds proxynow, runs it with no arguments (the embedded
// default on :8443), requests through it over HTTP/1.1, HTTP/2 and HTTP/3,
// checks the served certificate against the printed fingerprint, and stops it
// with SIGTERM: it must exit 0.
func TestDefaultRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "proxynow")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	// Read the banner up to its last line; remember the fingerprint.
	var fingerprint string
	sc := bufio.NewScanner(stdout)
	banner := make(chan error, 1)
	go func() {
		next := false
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if next {
				fingerprint, next = line, false
			}
			if strings.HasPrefix(line, "Self-signed certificate") {
				next = true
			}
			if strings.HasPrefix(line, "Stop with Ctrl-C") {
				banner <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		banner <- errors.New("banner ended early")
	}()
	select {
	case err := <-banner:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no banner")
	}

	tc := &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
		sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
		if got := strings.ToUpper(hex.EncodeToString(sum[:])); strings.ReplaceAll(fingerprint, ":", "") != got {
			return errors.New("served certificate does not match the printed fingerprint")
		}
		return nil
	}}
	var h1p, h2p http.Protocols
	h1p.SetHTTP1(true)
	h2p.SetHTTP2(true)
	// Each client gets its own TLS config: transports set NextProtos on it.
	clients := map[string]http.RoundTripper{
		"HTTP/1.1": &http.Transport{TLSClientConfig: tc.Clone(), Protocols: &h1p},
		"HTTP/2":   &http.Transport{TLSClientConfig: tc.Clone(), Protocols: &h2p},
		"HTTP/3":   &http3.Transport{TLSClientConfig: tc.Clone()},
	}
	for name, rt := range clients {
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://127.0.0.1:8443/hello", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "edge protocol: "+name) {
			t.Errorf("%s: status %d body:\n%s", name, resp.StatusCode, body)
		}
		if name != "HTTP/3" && resp.Header.Get("Alt-Svc") != `h3=":8443"; ma=86400` {
			t.Errorf("%s: Alt-Svc %q", name, resp.Header.Get("Alt-Svc"))
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not exit within 15s of SIGTERM")
	}
}
