package transport

import (
	"context"
	"errors"
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

// Coordinator is the one drain coordinator of a gateway. Servers register
// with it; Drain runs the phases for all of them at once, so no protocol is cut
// off while another waits politely:
//
//  1. draining: Draining reports true, so handlers answer with Connection:
//     close and withdraw Alt-Svc;
//  2. graceful: every server's Shutdown runs concurrently under the drain
//     timeout (servers stop accepting, send GOAWAY, finish in-flight streams);
//  3. hard close: whatever is still open at the timeout is closed;
//  4. upstream pools are shut down, then closed.
//
// The zero value is not usable; use NewCoordinator.
type Coordinator struct {
	timeout  time.Duration
	draining atomic.Bool

	mu      sync.Mutex // guards servers and pools
	servers []Shutdowner
	pools   []Shutdowner
}

// NewCoordinator returns a coordinator with the given drain timeout
// (DefaultDrainTimeout when zero or negative).
func NewCoordinator(timeout time.Duration) *Coordinator {
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}
	return &Coordinator{timeout: timeout}
}

// AddServer registers a downstream server.
func (c *Coordinator) AddServer(s Shutdowner) {
	c.mu.Lock()
	c.servers = append(c.servers, s)
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

// ErrDrainTimeout is returned by Drain when streams were still running at the
// drain timeout and had to be cut.
var ErrDrainTimeout = errors.New("transport: drain timeout: streams were cut")

// Drain runs the drain phases. It returns nil when every stream finished
// within the timeout, and ErrDrainTimeout when some had to be cut. Cancelling
// ctx (a second signal) skips to the hard close.
func (c *Coordinator) Drain(ctx context.Context) error {
	c.draining.Store(true)
	c.mu.Lock()
	servers, pools := append([]Shutdowner(nil), c.servers...), append([]Shutdowner(nil), c.pools...)
	c.mu.Unlock()

	gctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cut := shutdownAll(gctx, servers)
	// Pools drain after the servers: every downstream stream has ended, so
	// upstream streams have too, unless they were cut.
	if shutdownAll(gctx, pools) {
		cut = true
	}
	if cut {
		return ErrDrainTimeout
	}
	return nil
}

// shutdownAll shuts every s down concurrently and closes those that did not
// finish in time. It reports whether any had to be closed.
func shutdownAll(ctx context.Context, ss []Shutdowner) (cut bool) {
	var wg sync.WaitGroup
	var cutAny atomic.Bool
	for _, s := range ss {
		wg.Go(func() {
			if err := s.Shutdown(ctx); err != nil {
				cutAny.Store(true)
				s.Close()
			}
		})
	}
	wg.Wait()
	return cutAny.Load()
}
