package gateway

import (
	"sort"
	"strings"
)

// route is one compiled RouteConfig.
type route struct {
	host    string // as configured, lowercase; "" for any
	prefix  string // path prefix, without a trailing "/" unless it is "/"
	cluster *cluster
	altSvc  bool // advertise HTTP/3 on this route
	name    string

	// m and cm are the metric children of the route and of its cluster,
	// resolved when the config is compiled; nil when metrics are off.
	m  *routeMetrics
	cm *clusterMetrics
}

// hostRoutes are the routes of one host pattern, longest prefix first.
type hostRoutes struct {
	suffix string // for wildcards: ".example.com"
	routes []*route
}

// router finds the route of a request: the most specific host pattern (exact,
// then the longest wildcard, then any host) that has a route whose prefix
// matches, and within it the longest path prefix. Lookups allocate nothing
// for lowercase hosts.
type router struct {
	exact     map[string]*hostRoutes
	wildcards []*hostRoutes // longest suffix first
	any       *hostRoutes
}

func newRouter(routes []*route) *router {
	r := &router{exact: make(map[string]*hostRoutes), any: &hostRoutes{}}
	wild := make(map[string]*hostRoutes)
	for _, rt := range routes {
		var hr *hostRoutes
		switch {
		case rt.host == "":
			hr = r.any
		case strings.HasPrefix(rt.host, "*."):
			suffix := rt.host[1:]
			if hr = wild[suffix]; hr == nil {
				hr = &hostRoutes{suffix: suffix}
				wild[suffix] = hr
				r.wildcards = append(r.wildcards, hr)
			}
		default:
			if hr = r.exact[rt.host]; hr == nil {
				hr = &hostRoutes{}
				r.exact[rt.host] = hr
			}
		}
		hr.routes = append(hr.routes, rt)
	}
	byPrefix := func(hr *hostRoutes) {
		sort.SliceStable(hr.routes, func(i, j int) bool { return len(hr.routes[i].prefix) > len(hr.routes[j].prefix) })
	}
	for _, hr := range r.exact {
		byPrefix(hr)
	}
	for _, hr := range r.wildcards {
		byPrefix(hr)
	}
	byPrefix(r.any)
	sort.SliceStable(r.wildcards, func(i, j int) bool { return len(r.wildcards[i].suffix) > len(r.wildcards[j].suffix) })
	return r
}

// match returns the route for authority (host[:port]) and path, or nil.
func (r *router) match(authority, path string) *route {
	host := hostOnly(authority)
	if hasUpper(host) {
		host = strings.ToLower(host)
	}
	if hr := r.exact[host]; hr != nil {
		if rt := hr.match(path); rt != nil {
			return rt
		}
	}
	for _, hr := range r.wildcards {
		if len(host) > len(hr.suffix) && strings.HasSuffix(host, hr.suffix) {
			if rt := hr.match(path); rt != nil {
				return rt
			}
		}
	}
	return r.any.match(path)
}

func (hr *hostRoutes) match(path string) *route {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	for _, rt := range hr.routes {
		if prefixMatch(rt.prefix, path) {
			return rt
		}
	}
	return nil
}

// prefixMatch reports whether path starts with prefix at a segment boundary:
// "/api" matches "/api" and "/api/x" but not "/apix".
func prefixMatch(prefix, path string) bool {
	if prefix == "/" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/' || prefix[len(prefix)-1] == '/'
}

// hostOnly strips the port and a trailing dot from an authority; an IPv6
// literal keeps its brackets.
func hostOnly(a string) string {
	if strings.HasPrefix(a, "[") {
		if i := strings.IndexByte(a, ']'); i > 0 {
			return a[:i+1]
		}
		return a
	}
	if i := strings.LastIndexByte(a, ':'); i >= 0 {
		a = a[:i]
	}
	return strings.TrimSuffix(a, ".")
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}
