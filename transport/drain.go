package transport

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Shutdowner is what the drain coordinator drives: every server and every
// upstream pool implements it. Shutdown stops taking new work, lets work in
// flight finish, and returns once it has, or when ctx ends (then with ctx's
// error, having left the rest to Close). Close aborts what is left at once.
type Shutdowner interface {
	Shutdown(ctx context.Context) error
	Close() error
}

// DefaultDrainTimeout is the drain timeout when none is configured.
const DefaultDrainTimeout = 30 * time.Second

// Phase is a phase of a drain. Phases only move forward.
type Phase int32

// The phases, in order.
const (
	PhaseServing    Phase = iota // not draining
	PhaseNotReady                // readiness off; still accepting during the shutdown delay
	PhaseDraining                // listeners closed, GOAWAY / Connection: close sent, in-flight streams finishing
	PhaseHardClose               // the drain timeout passed (or a second signal came): what is left is cut
	PhaseClosePools              // downstream is done; upstream pools drain and close
	PhaseStopped                 // everything is closed
)

var phaseNames = [...]string{"serving", "not_ready", "draining", "hard_close", "close_pools", "stopped"}

// String returns the phase's name: serving, not_ready, draining, hard_close,
// close_pools or stopped.
func (p Phase) String() string {
	if p >= 0 && int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "unknown"
}

// DrainConfig configures a Coordinator. The zero value works.
type DrainConfig struct {
	// Timeout bounds the wait for in-flight streams. Default
	// DefaultDrainTimeout.
	Timeout time.Duration

	// ShutdownDelay is how long the gateway keeps accepting after readiness
	// went off, for load balancers that poll readiness slowly. Default 0.
	ShutdownDelay time.Duration

	// InFlight, if set, reports the streams in flight; the coordinator
	// samples it at the timeout to count the streams it cuts.
	InFlight func() int64

	// OnPhase, if set, is called as each phase begins (from Drain's
	// goroutine), with the streams in flight at that moment; for
	// PhaseHardClose, with the streams cut.
	OnPhase func(p Phase, inFlight int64)
}

// Coordinator is the one drain coordinator of a gateway. Servers and pools
// register with it; Drain runs the phases for all of them at once, so no
// protocol is cut off while another waits politely:
//
//  1. not ready: Draining reports true at once (readiness off, Alt-Svc:
//     clear, HTTP/1.1 Connection: close); the gateway keeps accepting for
//     ShutdownDelay;
//  2. draining: every server's Shutdown runs concurrently under the drain
//     timeout (each stops accepting, sends GOAWAY, finishes in-flight
//     streams);
//  3. hard close: whatever is still open at the timeout is closed, and the
//     streams cut are counted;
//  4. pools: upstream pools are shut down, then closed;
//  5. stopped.
type Coordinator struct {
	cfg      DrainConfig
	draining atomic.Bool
	phase    atomic.Int32
	cut      atomic.Int64

	mu      sync.Mutex // guards servers and pools
	servers []Shutdowner
	pools   []Shutdowner
}

// NewCoordinator returns a coordinator with the given drain timeout
// (DefaultDrainTimeout when zero or negative) and no shutdown delay.
func NewCoordinator(timeout time.Duration) *Coordinator {
	return NewDrainCoordinator(DrainConfig{Timeout: timeout})
}

// NewDrainCoordinator returns a coordinator configured by cfg.
func NewDrainCoordinator(cfg DrainConfig) *Coordinator {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultDrainTimeout
	}
	if cfg.ShutdownDelay < 0 {
		cfg.ShutdownDelay = 0
	}
	return &Coordinator{cfg: cfg}
}

// AddServer registers a downstream server.
func (c *Coordinator) AddServer(s Shutdowner) {
	c.mu.Lock()
	c.servers = append(c.servers, s)
	c.mu.Unlock()
}

// RemoveServer forgets a server that was shut down on its own (replaced by
// a reload).
func (c *Coordinator) RemoveServer(s Shutdowner) {
	c.mu.Lock()
	c.servers = slices.DeleteFunc(c.servers, func(x Shutdowner) bool { return x == s })
	c.mu.Unlock()
}

// AddPool registers an upstream pool; pools are drained after the servers.
func (c *Coordinator) AddPool(p Shutdowner) {
	c.mu.Lock()
	c.pools = append(c.pools, p)
	c.mu.Unlock()
}

// Draining reports whether a drain has begun.
func (c *Coordinator) Draining() bool { return c.draining.Load() }

// Phase returns the current phase.
func (c *Coordinator) Phase() Phase { return Phase(c.phase.Load()) }

// Cut returns the number of streams the hard close cut (as reported by
// DrainConfig.InFlight at the timeout).
func (c *Coordinator) Cut() int64 { return c.cut.Load() }

// Timeout returns the drain timeout.
func (c *Coordinator) Timeout() time.Duration { return c.cfg.Timeout }

// ErrDrainTimeout is returned by Drain when streams were still running at the
// drain timeout and had to be cut.
var ErrDrainTimeout = errors.New("transport: drain timeout: streams were cut")

// Drain runs the drain phases. It returns nil when every stream finished
// within the timeout, and ErrDrainTimeout when some had to be cut. Cancelling
// ctx (a second signal) skips to the hard close. Drain runs once; later calls
// return at once with nil.
func (c *Coordinator) Drain(ctx context.Context) error {
	if !c.draining.CompareAndSwap(false, true) {
		return nil
	}
	c.enter(PhaseNotReady)
	if d := c.cfg.ShutdownDelay; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	c.mu.Lock()
	servers, pools := slices.Clone(c.servers), slices.Clone(c.pools)
	c.mu.Unlock()

	// The servers' context ends at the timeout or on a second signal; the
	// streams in flight are counted just before, while the laggards still
	// hold them.
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var sampled atomic.Int64
	var once sync.Once
	expire := func() {
		once.Do(func() {
			if c.cfg.InFlight != nil {
				sampled.Store(c.cfg.InFlight())
			}
		})
		cancel()
	}
	timer := time.AfterFunc(c.cfg.Timeout, expire)
	defer timer.Stop()
	defer context.AfterFunc(ctx, expire)()

	c.enter(PhaseDraining)
	late := shutdownAll(gctx, servers)
	if len(late) > 0 {
		expire()
		c.cut.Store(sampled.Load())
		c.enter(PhaseHardClose)
		closeShutdowners(late)
	}
	// Pools drain after the servers: every downstream stream has ended, so
	// upstream streams have too, unless they were cut.
	c.enter(PhaseClosePools)
	if lateP := shutdownAll(gctx, pools); len(lateP) > 0 {
		closeShutdowners(lateP)
		late = append(late, lateP...)
	}
	c.enter(PhaseStopped)
	if len(late) > 0 {
		return ErrDrainTimeout
	}
	return nil
}

func (c *Coordinator) enter(p Phase) {
	c.phase.Store(int32(p))
	if c.cfg.OnPhase != nil {
		var n int64
		switch {
		case p == PhaseHardClose:
			n = c.cut.Load()
		case c.cfg.InFlight != nil:
			n = c.cfg.InFlight()
		}
		c.cfg.OnPhase(p, n)
	}
}

// shutdownAll shuts every s down concurrently and returns those that did not
// finish before ctx ended.
func shutdownAll(ctx context.Context, ss []Shutdowner) (late []Shutdowner) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, s := range ss {
		wg.Go(func() {
			if err := s.Shutdown(ctx); err != nil {
				mu.Lock()
				late = append(late, s)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return late
}

func closeShutdowners(ss []Shutdowner) {
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() { s.Close() })
	}
	wg.Wait()
}
