package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
	buildOut  []byte
)

// proxynowBinary builds cmd/proxynow once per test binary.
func proxynowBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "proxynow-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "proxynow")
		buildOut, buildErr = exec.Command("go", "build", "-o", buildBin, ".").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build: %v\n%s", buildErr, buildOut)
	}
	return buildBin
}

// certFiles writes the test certificate and its key as PEM files.
func certFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	cert, certPEM := testCert(t)
	der, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	return certFile, keyFile
}

// proc is a proxynow process started by a test.
type proc struct {
	cmd    *exec.Cmd
	port   string
	admin  string
	config string
	logs   *lockedBuffer
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startProc writes config (with listen, admin, certificate and JSON logs
// added) to a file and runs proxynow -config on it.
func startProc(t *testing.T, config string) *proc {
	t.Helper()
	bin := proxynowBinary(t)
	cert, key := certFiles(t)
	config = "listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nlog: {format: json, level: info}\n" +
		"tls: {certificates: [{cert: \"" + cert + "\", key: \"" + key + "\"}]}\n" + config
	p := &proc{config: filepath.Join(t.TempDir(), "proxynow.yaml"), logs: &lockedBuffer{}, exited: make(chan struct{})}
	if err := os.WriteFile(p.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "-config", p.config)
	stderr, _ := p.cmd.StderrPipe()
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	scanned := make(chan struct{}) // closed once stderr reached EOF
	go func() {
		defer close(scanned)
		// Whatever the scanner leaves (a line over its limit) is drained,
		// so that the child never blocks on a full pipe.
		defer io.Copy(io.Discard, stderr)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.logs.Write(append(line, '\n'))
			var rec struct {
				Msg, Listen, Admin string
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "proxynow serving" {
				_, p.port, _ = splitHostPortString(rec.Listen)
				p.admin = rec.Admin
				close(ready)
			}
		}
	}()
	go func() {
		// Wait closes the pipe: it must come after the last read, or the
		// child's last log lines (written as it exits) can be lost.
		<-scanned
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("proxynow exited: %v\n%s", p.err, p.logs.String())
	case <-time.After(15 * time.Second):
		t.Fatalf("proxynow did not start\n%s", p.logs.String())
	}
	return p
}

func (p *proc) url(path string) string { return "https://127.0.0.1:" + p.port + path }

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("proxynow did not exit within %v\n%s", d, p.logs.String())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

func splitHostPortString(s string) (string, string, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

type tlsConfig = tls.Config

func readFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	return string(b), err
}

func writeFile(t *testing.T, name, s string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
