package loadtest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports: loadtest and its command measure any server as a stranger
// would: they import none of ProxyNow's server packages (transport, h1, h2,
// h3, gateway).
func TestImports(t *testing.T) {
	const mod = "github.com/proxynow/proxynow/"
	for _, pkg := range []string{"loadtest", "cmd/loadtest"} {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, d := range strings.Fields(string(out)) {
			if strings.HasPrefix(d, mod) && d != mod+"loadtest" && d != mod+"cmd/loadtest" {
				t.Errorf("%s imports %s", pkg, d)
			}
		}
	}
}
