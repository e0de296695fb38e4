package gateway

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// upstreamServer is one server of a cluster with its health. It is
// available unless an active check marked it down or passive outlier
// detection ejected it; the hot path reads two atomics and, only while an
// ejection is pending, the clock.
type upstreamServer struct {
	addr   string
	active atomic.Int64 // requests in flight, for least_request

	down         atomic.Bool  // failed active health checks
	failures     atomic.Int32 // consecutive failures, for outlier detection
	ejections    atomic.Int32 // ejections in a row
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 when not ejected
}

func (u *upstreamServer) available() bool {
	if u.down.Load() {
		return false
	}
	e := u.ejectedUntil.Load()
	if e == 0 {
		return true
	}
	if time.Now().UnixNano() < e {
		return false
	}
	u.ejectedUntil.CompareAndSwap(e, 0)
	return true
}

// HealthState names an upstream's state: "healthy", "unhealthy" (failed
// active checks) or "ejected" (outlier detection).
func (u *upstreamServer) state() string {
	switch {
	case u.down.Load():
		return "unhealthy"
	case !u.available():
		return "ejected"
	}
	return "healthy"
}

// pick chooses an available upstream server, preferring one other than
// avoid (the one a retry is moving away from): round robin, or the less
// loaded of two random ones (power of two choices). It returns nil when none
// is available.
func (c *cluster) pick(avoid *upstreamServer) *upstreamServer {
	n := len(c.servers)
	if n == 1 {
		if u := c.servers[0]; u.available() {
			return u
		}
		return nil
	}
	if c.leastReq {
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		a, b := c.servers[i], c.servers[j]
		okA := a != avoid && a.available()
		okB := b != avoid && b.available()
		switch {
		case okA && okB:
			if b.active.Load() < a.active.Load() {
				return b
			}
			return a
		case okA:
			return a
		case okB:
			return b
		}
		return c.scan(i, avoid)
	}
	return c.scan(int((c.rr.Add(1)-1)%uint64(n)), avoid)
}

// scan returns the first available server from index start on, avoid last.
func (c *cluster) scan(start int, avoid *upstreamServer) *upstreamServer {
	n := len(c.servers)
	for k := 0; k < n; k++ {
		if u := c.servers[(start+k)%n]; u != avoid && u.available() {
			return u
		}
	}
	if avoid != nil && avoid.available() {
		return avoid
	}
	return nil
}

// report feeds outlier detection with the outcome of one attempt: failures
// in a row eject the server for base × (ejections in a row), capped.
func (c *cluster) report(u *upstreamServer, failed bool) {
	od := &c.configRef.OutlierDetection
	if od.ConsecutiveFailures <= 0 {
		return
	}
	if !failed {
		if u.failures.Load() != 0 {
			u.failures.Store(0)
		}
		if u.ejections.Load() != 0 && u.ejectedUntil.Load() == 0 {
			u.ejections.Store(0)
		}
		return
	}
	if u.failures.Add(1) < int32(od.ConsecutiveFailures) {
		return
	}
	u.failures.Store(0)
	k := u.ejections.Add(1)
	d := time.Duration(od.BaseEjection) * time.Duration(k)
	if max := time.Duration(od.MaxEjection); d > max {
		d = max
	}
	u.ejectedUntil.Store(time.Now().Add(d).UnixNano())
	c.log.Warn("upstream ejected", "cluster", c.name, "upstream", u.addr, "for", d.String(), "ejections_in_a_row", k)
}

// outlierFailure reports whether an attempt's outcome counts against the
// upstream: the gateway's own errors reaching it, and 502/503/504 answers.
func outlierFailure(code transport.Code, status int) bool {
	switch code {
	case transport.CodeConnectRefused, transport.CodeConnectTimeout, transport.CodeUpstreamTLS,
		transport.CodeUpstreamUnreachable, transport.CodeUpstreamReset, transport.CodeUpstreamProtocol,
		transport.CodeResponseTimeout:
		return true
	}
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// startHealthChecks runs one active checker per server until stop.
func (c *cluster) startHealthChecks() {
	hc := c.configRef.HealthCheck
	if hc.Path == "" {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopChecks = cancel
	for _, u := range c.servers {
		c.checks.Go(func() { c.checkLoop(ctx, u, hc) })
	}
}

// stopHealthChecks stops the checkers and waits for them.
func (c *cluster) stopHealthChecks() {
	if c.stopChecks != nil {
		c.stopChecks()
	}
	c.checks.Wait()
}

func (c *cluster) checkLoop(ctx context.Context, u *upstreamServer, hc HealthCheckConfig) {
	interval := time.Duration(hc.Interval)
	// Spread the first checks so that servers are not probed in lockstep.
	t := time.NewTimer(time.Duration(rand.Int64N(int64(interval)/4 + 1)))
	defer t.Stop()
	var passes, fails int
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok := c.check(ctx, u, hc)
		if ctx.Err() != nil {
			return
		}
		if ok {
			passes, fails = passes+1, 0
			if u.down.Load() && passes >= hc.HealthyThreshold {
				u.down.Store(false)
				c.log.Info("upstream healthy", "cluster", c.name, "upstream", u.addr)
			}
		} else {
			passes, fails = 0, fails+1
			if !u.down.Load() && fails >= hc.UnhealthyThreshold {
				u.down.Store(true)
				c.log.Warn("upstream unhealthy", "cluster", c.name, "upstream", u.addr, "failed_checks", fails)
			}
		}
		t.Reset(interval)
	}
}

// check sends one health check request through the cluster's pool, so it
// speaks the cluster's protocol and sees what requests see.
func (c *cluster) check(ctx context.Context, u *upstreamServer, hc HealthCheckConfig) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(hc.Timeout))
	defer cancel()
	conn, err := c.pool.Get(ctx, u.addr)
	if err != nil {
		c.log.Debug("health check failed", "cluster", c.name, "upstream", u.addr, "err", err)
		return false
	}
	defer c.pool.Put(conn)
	host := hc.Host
	if host == "" {
		host = u.addr
	}
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	req := &transport.Request{
		Method: http.MethodGet, Scheme: scheme, Authority: host, Path: hc.Path,
		Header: http.Header{"User-Agent": {"proxynow-health-check"}}, Body: http.NoBody,
	}
	resp, err := conn.RoundTrip(ctx, req)
	if err != nil {
		c.log.Debug("health check failed", "cluster", c.name, "upstream", u.addr, "err", err)
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if hc.ExpectedStatus != 0 {
		return resp.Status == hc.ExpectedStatus
	}
	return resp.Status >= 200 && resp.Status < 300
}

// retryBudget caps retries at a share of the requests, with a floor per
// second, so a failing cluster is not hammered (Finagle's retry budget). The
// balance is in thousandths of a retry; each request deposits the ratio.
type retryBudget struct {
	perRequest int64 // thousandths deposited per request
	cap        int64
	minPerSec  int64

	balance atomic.Int64
	second  atomic.Int64 // the unix second floorUsed counts
	floor   atomic.Int64 // retries taken from this second's floor
}

func newRetryBudget(rc RetryConfig) *retryBudget {
	b := &retryBudget{perRequest: int64(rc.BudgetPercent) * 10, minPerSec: int64(rc.MinPerSecond)}
	b.cap = max(100*1000, b.minPerSec*10*1000)
	return b
}

func (b *retryBudget) deposit() {
	if b.perRequest == 0 {
		return
	}
	if v := b.balance.Add(b.perRequest); v > b.cap {
		b.balance.Store(b.cap)
	}
}

// withdraw takes one retry from the balance, or from this second's floor.
func (b *retryBudget) withdraw() bool {
	for {
		v := b.balance.Load()
		if v < 1000 {
			break
		}
		if b.balance.CompareAndSwap(v, v-1000) {
			return true
		}
	}
	if b.minPerSec == 0 {
		return false
	}
	now := time.Now().Unix()
	if s := b.second.Load(); s != now && b.second.CompareAndSwap(s, now) {
		b.floor.Store(0)
	}
	return b.floor.Add(1) <= b.minPerSec
}

// UpstreamHealth is the health of one upstream server, for the admin
// endpoint.
type UpstreamHealth struct {
	Cluster  string `json:"cluster"`
	Upstream string `json:"upstream"`
	State    string `json:"state"`
	InFlight int64  `json:"in_flight"`
}

// Health returns the health of every upstream server.
func (g *Gateway) Health() []UpstreamHealth {
	var out []UpstreamHealth
	for _, c := range g.state.Load().clusters {
		for _, u := range c.servers {
			out = append(out, UpstreamHealth{Cluster: c.name, Upstream: u.addr, State: u.state(), InFlight: u.active.Load()})
		}
	}
	return out
}
