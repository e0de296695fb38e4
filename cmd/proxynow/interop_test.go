package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestGtlsclient talks HTTP/3 to the gateway with gtlsclient, the client of
// Debian's ngtcp2-client: an independent QUIC and HTTP/3 stack (ngtcp2,
// nghttp3, GnuTLS).
func TestGtlsclient(t *testing.T) {
	bin := needTool(t, "gtlsclient")
	up := startUpstream(t, "h1")
	f := startGateway(t, simpleConfig("h1"), up)
	dir := t.TempDir()
	// run makes the requests and returns the bodies gtlsclient saved, by
	// file name (the last path segment of each URI).
	run := func(t *testing.T, opts []string, uris ...string) map[string]string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		dl := t.TempDir()
		args := append([]string{"-q", "--exit-on-all-streams-close", "--timeout=10s", "--download", dl}, opts...)
		args = append(args, "127.0.0.1", f.port)
		args = append(args, uris...)
		cmd := exec.CommandContext(ctx, bin, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("gtlsclient %v: %v\n%s", args, err, out.String())
		}
		files, _ := os.ReadDir(dl)
		bodies := make(map[string]string)
		for _, fi := range files {
			b, _ := os.ReadFile(filepath.Join(dl, fi.Name()))
			bodies[fi.Name()] = string(b)
		}
		return bodies
	}
	url := "https://localhost:" + f.port

	t.Run("get", func(t *testing.T) {
		before := up.requests.Load()
		var out string
		for _, b := range run(t, nil, url+"/echo?from=gtlsclient") {
			out += b
		}
		if !strings.Contains(out, `"uri":"/echo?from=gtlsclient"`) || !strings.Contains(out, `"Via":["3 proxynow"]`) {
			t.Errorf("response:\n%s", out)
		}
		if up.requests.Load()-before != 1 {
			t.Errorf("upstream got %d requests", up.requests.Load()-before)
		}
	})
	t.Run("20-streams", func(t *testing.T) {
		before := up.requests.Load()
		var uris []string
		for i := range 20 {
			uris = append(uris, url+"/p"+strconv.Itoa(i))
		}
		bodies := run(t, nil, uris...)
		for i := range 20 {
			if b := bodies["p"+strconv.Itoa(i)]; !strings.Contains(b, `"uri":"/p`+strconv.Itoa(i)+`"`) {
				t.Errorf("stream %d: %q", i, b)
			}
		}
		if got := up.requests.Load() - before; got != 20 {
			t.Errorf("upstream got %d requests", got)
		}
	})
	t.Run("upload-1MiB", func(t *testing.T) {
		payload := bytes.Repeat([]byte("ngtcp2 "), (1<<20)/7+1)[:1<<20]
		file := filepath.Join(dir, "upload")
		os.WriteFile(file, payload, 0o600)
		sum := sha256.Sum256(payload)
		out := run(t, []string{"-m", "POST", "-d", file}, url+"/echo")["echo"]
		if !strings.Contains(out, `"body_len":`+strconv.Itoa(1<<20)) || !strings.Contains(out, hex.EncodeToString(sum[:])) {
			t.Errorf("upload not received intact:\n%.2000s", out)
		}
	})
}
