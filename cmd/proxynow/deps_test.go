package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection enforces the layout's import rules with go list -deps:
// transport imports only the standard library; protocol libraries appear only
// in h1, h2 and h3; gateway never imports h1/h2/h3; the protocol packages never
// import gateway or each other; Prometheus stays out of transport and h*.
func TestImportDirection(t *testing.T) {
	const mod = "github.com/proxynow/proxynow/"
	deps := func(pkg string) []string {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		{"transport", []string{"github.com/", "golang.org/x/", mod + "gateway", mod + "h1", mod + "h2", mod + "h3"}},
		{"gateway", []string{mod + "h1", mod + "h2", mod + "h3", "github.com/quic-go/", "golang.org/x/net/http2"}},
		{"h1", []string{mod + "gateway", mod + "h2", mod + "h3", "github.com/prometheus/", "github.com/quic-go/"}},
		{"h2", []string{mod + "gateway", mod + "h1", mod + "h3", "github.com/prometheus/", "github.com/quic-go/"}},
		{"h3", []string{mod + "gateway", mod + "h1", mod + "h2", "github.com/prometheus/"}},
	} {
		for _, d := range deps(tc.pkg) {
			if strings.HasPrefix(d, mod+tc.pkg) {
				continue
			}
			for _, f := range tc.forbidden {
				if strings.HasPrefix(d, f) && !(tc.pkg == "transport" && strings.HasPrefix(d, mod+"transport")) {
					t.Errorf("%s imports %s", tc.pkg, d)
				}
			}
		}
	}
}
