package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// needTool returns the path of an independent client, skipping the test when
// it is missing, except under CI (CI=true), where a missing tool is a failure:
// .ci/run installs it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed; .ci/run must install it", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// TestCurl runs the basic behaviours once through curl, an independent
// HTTP/1.1 and HTTP/2 client.
func TestCurl(t *testing.T) {
	curl := needTool(t, "curl")
	up := startUpstream(t, "h1")
	f := startGateway(t, `
routes:
  - {host: localhost, cluster: app}
clusters:
  - {name: app, servers: ["@UP@"]}
`, up)
	_, certPEM := testCert(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, certPEM, 0o600)
	base := "https://localhost:" + f.port
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		args = append([]string{"-sS", "--cacert", ca, "--resolve", "localhost:" + f.port + ":127.0.0.1", "--max-time", "20"}, args...)
		out, err := exec.Command(curl, args...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for _, flag := range []string{"--http1.1", "--http2"} {
		t.Run(strings.TrimPrefix(flag, "--"), func(t *testing.T) {
			want := map[string]string{"--http1.1": "1.1", "--http2": "2"}[flag]
			// GET: version, status, echo, Alt-Svc advertised.
			out := run(t, flag, "-D", "-", "-w", "\nversion=%{http_version} status=%{http_code}", base+"/echo?a=b")
			if !strings.Contains(out, "version="+want+" status=200") {
				t.Errorf("GET: %s", out)
			}
			if !strings.Contains(strings.ToLower(out), "alt-svc: h3=\":"+f.port+"\"; ma=86400") {
				t.Errorf("GET: no Alt-Svc advertising HTTP/3:\n%s", out)
			}
			if !strings.Contains(out, `"uri":"/echo?a=b"`) || !strings.Contains(out, `"X-Forwarded-Proto":["https"]`) {
				t.Errorf("GET: upstream did not see the request as sent:\n%s", out)
			}
			// POST with a body and a checksum.
			payload := bytes.Repeat([]byte("curl-body "), 50_000)
			bodyFile := filepath.Join(dir, "body")
			os.WriteFile(bodyFile, payload, 0o600)
			sum := sha256.Sum256(payload)
			out = run(t, flag, "--data-binary", "@"+bodyFile, base+"/echo")
			if !strings.Contains(out, `"body_len":`+strconv.Itoa(len(payload))) || !strings.Contains(out, hex.EncodeToString(sum[:])) {
				t.Errorf("POST: upstream did not receive the body intact:\n%.300s", out)
			}
			// Chunked upload (HTTP/1.1) / no length (HTTP/2).
			out = run(t, flag, "-H", "Transfer-Encoding: chunked", "--data-binary", "@"+bodyFile, base+"/echo")
			if !strings.Contains(out, hex.EncodeToString(sum[:])) {
				t.Errorf("chunked POST: upstream did not receive the body intact:\n%.300s", out)
			}
			// HEAD.
			out = run(t, flag, "-I", base+"/head")
			if !strings.Contains(strings.ToLower(out), "content-length: 1234") {
				t.Errorf("HEAD:\n%s", out)
			}
			// 10 MiB download with its checksum in a trailer (curl shows
			// trailers with -D on HTTP/1.1 chunked and HTTP/2).
			dl := filepath.Join(dir, "dl")
			out = run(t, flag, "-o", dl, "-D", "-", base+"/big?n=10485760&seed=3")
			data, _ := os.ReadFile(dl)
			got := sha256.Sum256(data)
			if len(data) != 10<<20 || !strings.Contains(strings.ToLower(out), "x-sha256: "+hex.EncodeToString(got[:])) {
				t.Errorf("download: %d bytes, headers/trailers:\n%s", len(data), out)
			}
			// An error the gateway answers itself.
			out = run(t, flag, "-D", "-", "-H", "Host: nowhere.test", base+"/y")
			if !strings.Contains(out, " 404") || !strings.Contains(strings.ToLower(out), "proxy-status: proxynow; error=destination_not_found") {
				t.Errorf("no route:\n%s", out)
			}
		})
	}
}
