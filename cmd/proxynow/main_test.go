package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("clusters:\n  - name: app\n    servers: [\"127.0.0.1:8080\"]\n    balancing: fastest\n"), 0o600)

	var out, errOut bytes.Buffer
	if code := run([]string{"validate", good}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "ok") {
		t.Errorf("valid file: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	out.Reset()
	errOut.Reset()
	code := run([]string{"validate", bad}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), bad+":4:") || !strings.Contains(errOut.String(), "clusters[0].balancing") {
		t.Errorf("invalid file: exit %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"-config", filepath.Join(dir, "missing.yaml")}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "missing.yaml") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut.String())
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "proxynow ") {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
}
