package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzParseConfig checks that ParseConfig never panics, that a Config it
// returns validates again (and hashes), and that every error it returns is
// a located *ConfigError: a Field and a line, unless it is about the whole
// file.
func FuzzParseConfig(f *testing.F) {
	dir := f.TempDir()
	f.Add(cfgFullExample(f, dir))
	cfgWriteCert(f, dir+"/cert.pem", dir+"/key.pem", "example.com")
	f.Add([]byte(cfgOneCluster))
	for _, s := range []string{
		"",
		"~\n",
		"- a\n",
		"listen: a\n  admin: b\n",
		"listen: \":8443\"\n---\nlisten: \":9443\"\n",
		"? [a, b]\n: c\n" + cfgOneCluster,
		"listn: \":8443\"\nlisten: x\nlisten: y\n" + cfgOneCluster,
		"http3: {max_streams: many, enabled: yes, initial_stream_window: 64 megs}\n" + cfgOneCluster,
		"limits: [1, 2]\ntrusted_proxies: {a: b}\ndrain_timeout: -1s\n" + cfgOneCluster,
		"routes:\n  - {host: \"a.*.example.com\", path_prefix: api, cluster: nope}\n  - {path_prefix: /, cluster: app}\n  - {cluster: app}\n" + cfgOneCluster,
		"tls:\n  certificates:\n    - cert: " + dir + "/cert.pem\n      key: " + dir + "/key.pem\n    - {cert: " + dir + "/nope.pem}\n" + cfgOneCluster,
		"clusters:\n  - &c {name: a, servers: [\"x:1\"], protocol: h2c, tls: {enabled: true}}\n  - <<: *c\n    name: b\n  - <<: [*c, {pool: {max_conns: -1}}]\n",
		"clusters: &x [*x]\n",
		"a: &x {<<: *x}\n" + cfgOneCluster,
		"listen: !env PORT\nadmin: {listen: off}\n" + cfgOneCluster,
	} {
		f.Add([]byte(s))
	}
	wholeFile := []error{errEmptyConfig, errNotMapping, errMultipleDocs, errAliasExpansion, errInvalidYAML, errKeyNotString}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		type result struct {
			c   *Config
			err error
		}
		done := make(chan result, 1)
		go func() {
			c, err := ParseConfig("fuzz.yaml", data)
			done <- result{c, err}
		}()
		var c *Config
		var err error
		select {
		case r := <-done:
			c, err = r.c, r.err
		case <-time.After(2 * time.Second):
			t.Fatalf("ParseConfig did not return within 2s:\n%q", data)
		}
		if err == nil {
			if c == nil {
				t.Fatal("nil Config and nil error")
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("a parsed config does not validate again: %v\n%s", err, data)
			}
			if c.Hash() != c.Hash() {
				t.Fatal("Hash is not stable")
			}
			return
		}
		if c != nil {
			t.Fatal("a Config returned with an error")
		}
		for _, e := range configErrors(t, err) {
			if e.File != "fuzz.yaml" || e.Err == nil || e.Line < 0 || e.Column < 0 {
				t.Fatalf("malformed error %#v", e)
			}
			if e.Field == "" {
				if !slicesContainsIs(wholeFile, e.Err) {
					t.Fatalf("error without a field: %v", e)
				}
				continue
			}
			if e.Line == 0 {
				t.Fatalf("error without a line: %v", e)
			}
			if msg := e.Error(); !strings.HasPrefix(msg, "fuzz.yaml:") {
				t.Fatalf("message %q does not name the file", msg)
			}
		}
	})
}

func slicesContainsIs(targets []error, err error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
