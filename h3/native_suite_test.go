package h3

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// engineEnv names the environment variable that selects the engine of the
// servers the tests start (startServerOn).
const engineEnv = "PROXYNOW_H3_ENGINE"

// serverTests matches the tests that run a Server, which
// TestNativeEngineSuite runs again on the native engine.
const serverTests = "^(TestServer|TestNoLeaks|TestRetryAuto|TestKeysToken|TestKeysStatelessReset)"

// TestNativeEngineSuite runs every server test again, in a child process of
// this test binary, with the servers on EngineNative, so that one
// `go test ./h3/` covers both engines.
func TestNativeEngineSuite(t *testing.T) {
	if os.Getenv(engineEnv) != "" {
		t.Skip("already in a suite run")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	args := []string{"-test.run", serverTests, "-test.count", "1", "-test.timeout", "4m", "-test.v"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), engineEnv+"=native")
	out, err := cmd.CombinedOutput()
	if err != nil || testing.Verbose() {
		t.Logf("%s", out)
	}
	if err != nil {
		t.Fatalf("server tests on EngineNative: %v", err)
	}
	// The pattern still matches the server tests.
	if n := bytes.Count(out, []byte("--- PASS: TestServer")); n < 20 {
		t.Logf("%s", out)
		t.Fatalf("%d server tests passed on EngineNative, want at least 20", n)
	}
}
