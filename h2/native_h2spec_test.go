package h2

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// h2specPath finds the h2spec binary on PATH or in /tmp/gobin. Without it
// the test is skipped, unless CI=true, where it fails.
func h2specPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	if p := filepath.Join("/tmp/gobin", "h2spec"); fileExists(p) {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("h2spec not found (go install github.com/summerwind/h2spec/cmd/h2spec@latest)")
	}
	t.Skip("h2spec not found on PATH or in /tmp/gobin")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// h2specHandler reads the request body and answers with 4 KiB, enough for
// h2spec's flow-control cases.
func h2specHandler(s transport.ServerStream) {
	io.Copy(io.Discard, s.Request().Body)
	body := bytes.Repeat([]byte("h2spec! "), 512)
	if s.WriteHeader(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, int64(len(body))) != nil {
		return
	}
	if _, err := s.Write(body); err != nil {
		return
	}
	s.Finish(nil)
}

var h2specSummary = regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`)

// TestNativeH2Spec runs h2spec (every case of its http2, hpack and generic
// suites) over TLS on loopback against the native engine and requires all
// to pass. With H2SPEC_XNET=1 it also runs it against the x/net engine and
// only logs the result.
func TestNativeH2Spec(t *testing.T) {
	bin := h2specPath(t)
	run := func(t *testing.T, engine Engine, strict bool) {
		h2tCheckLeaks(t)
		ts := h2tStartServer(t, transport.HandlerFunc(h2specHandler), ServerConfig{Engine: engine})
		_, port, _ := net.SplitHostPort(ts.addr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "2")
		out, err := cmd.CombinedOutput()
		m := h2specSummary.FindSubmatch(out)
		if m == nil {
			t.Fatalf("h2spec: %v, no summary:\n%s", err, out)
		}
		t.Logf("h2spec: %s", m[0])
		if strict && (err != nil || string(m[4]) != "0") {
			t.Errorf("h2spec failures (%v):\n%s", err, failuresOf(out))
		} else if !strict && string(m[4]) != "0" {
			t.Logf("failures:\n%s", failuresOf(out))
		}
	}
	t.Run("native", func(t *testing.T) { run(t, EngineNative, true) })
	if os.Getenv("H2SPEC_XNET") == "1" {
		t.Run("xnet", func(t *testing.T) { run(t, EngineXNet, false) })
	}
}

// failuresOf returns the "Failures:" section of h2spec's output, or all of
// it.
func failuresOf(out []byte) []byte {
	if i := bytes.Index(out, []byte("Failures:")); i >= 0 {
		return out[i:]
	}
	return out
}
