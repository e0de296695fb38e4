package gateway

import "testing"

func TestRouterMatch(t *testing.T) {
	mk := func(host, prefix string) *route { return &route{host: host, prefix: prefix, name: host + prefix} }
	routes := []*route{
		mk("api.example.com", "/v1"),
		mk("api.example.com", "/v1/admin"),
		mk("*.example.com", "/"),
		mk("*.eu.example.com", "/"),
		mk("", "/static/"),
		mk("", "/assets"),
		mk("", "/"),
		mk("[::1]", "/"),
	}
	r := newRouter(routes)
	for _, tc := range []struct{ authority, path, want string }{
		{"api.example.com", "/v1/admin/x", "api.example.com/v1/admin"},
		{"api.example.com:8443", "/v1/users?q=1", "api.example.com/v1"},
		{"API.EXAMPLE.COM", "/v1", "api.example.com/v1"},
		{"api.example.com.", "/v1", "api.example.com/v1"},
		{"api.example.com", "/v10", "*.example.com/"}, // no exact prefix: falls to the wildcard
		{"x.eu.example.com", "/", "*.eu.example.com/"},
		{"eu.example.com", "/", "*.example.com/"},
		{"example.com", "/", "/"},
		{"other", "/static/a.css", "/static/"},
		{"other", "/static", "/"}, // "/static/" needs the slash
		{"other", "/assets", "/assets"},
		{"other", "/assets/x", "/assets"},
		{"other", "/assetsx", "/"},
		{"[::1]:8443", "/", "[::1]/"},
		{"", "/", "/"},
	} {
		rt := r.match(tc.authority, tc.path)
		if rt == nil || rt.name != tc.want {
			got := "<nil>"
			if rt != nil {
				got = rt.name
			}
			t.Errorf("match(%q, %q) = %s, want %s", tc.authority, tc.path, got, tc.want)
		}
	}
	if rt := newRouter(routes[:1]).match("other", "/"); rt != nil {
		t.Errorf("no route should match, got %s", rt.name)
	}
}

func TestRouterMatchAllocs(t *testing.T) {
	r := newRouter([]*route{{host: "api.example.com", prefix: "/v1"}, {host: "*.example.com", prefix: "/"}, {prefix: "/"}})
	if n := testing.AllocsPerRun(100, func() { r.match("www.example.com:443", "/index.html?x") }); n != 0 {
		t.Errorf("match allocates %v times", n)
	}
}

func BenchmarkRouterMatch(b *testing.B) {
	r := newRouter([]*route{{host: "api.example.com", prefix: "/v1"}, {host: "*.example.com", prefix: "/"}, {prefix: "/"}})
	b.ReportAllocs()
	for b.Loop() {
		r.match("www.example.com:443", "/index.html?x")
	}
}
