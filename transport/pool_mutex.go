package transport

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// mutexPool is the pool ProxyNow had before the sharded [Pool]: one mutex
// per upstream guards its conns, so every Get and Put of an upstream passes
// through that one lock. It is kept, unexported, behind
// [PoolConfig.Unsharded] so that benchmarks can compare the two in one run;
// nothing else should select it. It ignores MaxRequestsPerConn and
// MaxConnLifetime.
//
// It reuses conns with a free slot last-in first-out, caps conns per
// upstream, shares dials among concurrent callers on a context the pool owns,
// queues waiters first in first out, and reaps idle conns.
type mutexPool struct {
	dialer Dialer
	cfg    PoolConfig

	ctx    context.Context // owns dials; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials and the reaper

	mu        sync.RWMutex // guards upstreams, closed and detached
	upstreams map[string]*mutexUpstream
	closed    bool
	detached  []*mutexConn // conns taken out by Shutdown, for Close to abort

	dials, dialFailures, gets, reused, waits, reaped atomic.Uint64
	open                                             atomic.Int64
}

// newMutexPool returns a mutexPool that dials with d; cfg has its defaults.
func newMutexPool(d Dialer, cfg PoolConfig) *mutexPool {
	p := &mutexPool{dialer: d, cfg: cfg, upstreams: make(map[string]*mutexUpstream)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.reapLoop()
	return p
}

// mutexUpstream is the part of a pool for one address.
type mutexUpstream struct {
	addr string
	pool *mutexPool

	mu      sync.Mutex   // guards everything below
	avail   []*mutexConn // conns with a free slot; the most recently used is last
	conns   map[*mutexConn]struct{}
	dialing int
	waiters []*mutexWaiter // FIFO; entries may be abandoned
	// multiplexed is learned from the first conn: a conn with more than one
	// slot serves a burst alone, so the pool dials one at a time.
	multiplexed, learned bool
	// closed is set once the pool has detached this upstream: a caller
	// that looked it up just before must not queue on it or dial for it.
	closed bool
}

// mutexConn is a Conn as the pool tracks it. Get returns it; Put takes it back.
type mutexConn struct {
	Conn
	up        *mutexUpstream
	onStack   bool      // in up.avail
	idleSince time.Time // when it last became idle; guarded by up.mu
}

type mutexWaiter struct {
	ch        chan mutexResult // buffered, 1
	abandoned bool             // guarded by mutexUpstream.mu
}

type mutexResult struct {
	pc  *mutexConn
	err error
}

// get returns a conn to addr with one slot reserved, waiting for a free slot
// or a dial while ctx allows. Its errors: the dial's *Error
// (CodeConnectRefused, CodeConnectTimeout, ...), CodeDraining once the pool is
// shut down, and ctx's error when ctx ends first.
func (p *mutexPool) get(ctx context.Context, addr string) (Conn, error) {
	up, err := p.lookup(addr)
	if err != nil {
		return nil, err
	}
	up.mu.Lock()
	if up.closed {
		up.mu.Unlock()
		return nil, errPoolClosed
	}
	pc, broken := up.takeLocked()
	if pc != nil {
		up.mu.Unlock()
		closeMutexConns(broken)
		p.gets.Add(1)
		p.reused.Add(1)
		return pc, nil
	}
	w := &mutexWaiter{ch: make(chan mutexResult, 1)}
	up.waiters = append(up.waiters, w)
	p.maybeDialLocked(up)
	up.mu.Unlock()
	closeMutexConns(broken)
	p.waits.Add(1)

	select {
	case r := <-w.ch:
		if r.err == nil {
			p.gets.Add(1)
		}
		return r.pc, r.err
	case <-ctx.Done():
		up.mu.Lock()
		w.abandoned = true
		up.mu.Unlock()
		// A result may have been sent before the abandon mark: give its
		// slot back.
		select {
		case r := <-w.ch:
			if r.pc != nil {
				r.pc.Release()
				p.put(r.pc)
			}
		default:
		}
		return nil, context.Cause(ctx)
	}
}

// put takes back a conn from get once its reserved slot has been used or
// released. A broken conn is no longer handed out and is closed once no stream
// is in flight on it (a multiplexed conn that received GOAWAY still finishes
// the streams it has); an idle one beyond the idle cap is closed.
func (p *mutexPool) put(c Conn) {
	pc, ok := c.(*mutexConn)
	if !ok {
		return
	}
	up := pc.up
	var closeConns []*mutexConn
	up.mu.Lock()
	if _, ok := up.conns[pc]; !ok {
		// Dropped already, or detached by Shutdown or Close, which own
		// its closing now.
		up.mu.Unlock()
		return
	}
	if pc.Err() != nil {
		if pc.Idle() {
			closeConns = append(closeConns, up.dropLocked(pc))
		} else {
			up.unstackLocked(pc)
		}
		p.maybeDialLocked(up)
	} else {
		up.serveWaitersLocked(pc, p, true)
		if !pc.onStack && pc.Available() > 0 {
			up.avail = append(up.avail, pc)
			pc.onStack = true
		}
		if pc.Idle() {
			pc.idleSince = time.Now()
			closeConns = up.trimIdleLocked(p.cfg.MaxIdlePerUpstream, closeConns)
		}
	}
	up.mu.Unlock()
	closeMutexConns(closeConns)
}

// closeMutexConns closes the conns the pool has dropped, outside any lock.
func closeMutexConns(conns []*mutexConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func (p *mutexPool) lookup(addr string) (*mutexUpstream, error) {
	p.mu.RLock()
	up, closed := p.upstreams[addr], p.closed
	p.mu.RUnlock()
	if closed {
		return nil, errPoolClosed
	}
	if up != nil {
		return up, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errPoolClosed
	}
	if up = p.upstreams[addr]; up == nil {
		up = &mutexUpstream{addr: addr, pool: p, conns: make(map[*mutexConn]struct{})}
		p.upstreams[addr] = up
	}
	return up, nil
}

// takeLocked reserves a slot on the most recently used conn that has one. It
// also returns the broken idle conns it met on the way, dropped, for the caller
// to close outside the lock: left open they would count against
// MaxConnsPerUpstream until the reaper found them.
func (up *mutexUpstream) takeLocked() (pc *mutexConn, broken []*mutexConn) {
	for n := len(up.avail); n > 0; n = len(up.avail) {
		pc := up.avail[n-1]
		if pc.Err() != nil {
			up.popLocked()
			if pc.Idle() {
				broken = append(broken, up.dropLocked(pc))
			}
			continue
		}
		if pc.Reserve() {
			if pc.Available() == 0 {
				up.popLocked()
			}
			pc.idleSince = time.Time{}
			return pc, broken
		}
		up.popLocked()
	}
	return nil, broken
}

func (up *mutexUpstream) popLocked() {
	n := len(up.avail) - 1
	up.avail[n].onStack = false
	up.avail[n] = nil
	up.avail = up.avail[:n]
}

// serveWaitersLocked hands slots of pc to waiting callers, oldest first.
// reused says whether pc was open before (a fresh conn is not a reuse).
func (up *mutexUpstream) serveWaitersLocked(pc *mutexConn, p *mutexPool, reused bool) {
	for len(up.waiters) > 0 {
		w := up.waiters[0]
		if w.abandoned {
			up.shiftWaiterLocked()
			continue
		}
		if !pc.Reserve() {
			return
		}
		up.shiftWaiterLocked()
		pc.idleSince = time.Time{}
		if reused {
			p.reused.Add(1)
		}
		w.ch <- mutexResult{pc: pc}
	}
}

func (up *mutexUpstream) shiftWaiterLocked() {
	up.waiters[0] = nil
	up.waiters = up.waiters[1:]
	if len(up.waiters) == 0 {
		up.waiters = up.waiters[:0:0]
	}
}

func (up *mutexUpstream) liveWaitersLocked() int {
	n := 0
	for _, w := range up.waiters {
		if !w.abandoned {
			n++
		}
	}
	return n
}

// dropLocked forgets pc and returns it for closing outside the lock.
func (up *mutexUpstream) dropLocked(pc *mutexConn) *mutexConn {
	if _, ok := up.conns[pc]; !ok {
		return nil
	}
	delete(up.conns, pc)
	up.pool.open.Add(-1)
	up.unstackLocked(pc)
	return pc
}

// unstackLocked takes pc off the stack of conns with a free slot.
func (up *mutexUpstream) unstackLocked(pc *mutexConn) {
	if !pc.onStack {
		return
	}
	for i, c := range up.avail {
		if c == pc {
			n := len(up.avail) - 1
			copy(up.avail[i:], up.avail[i+1:])
			up.avail[n] = nil
			up.avail = up.avail[:n]
			break
		}
	}
	pc.onStack = false
}

// trimIdleLocked closes the least recently used idle conns beyond max.
func (up *mutexUpstream) trimIdleLocked(max int, out []*mutexConn) []*mutexConn {
	idle := 0
	for _, c := range up.avail {
		if c.Idle() {
			idle++
		}
	}
	for i := 0; idle > max && i < len(up.avail); {
		if c := up.avail[i]; c.Idle() {
			out = append(out, up.dropLocked(c))
			up.pool.reaped.Add(1)
			idle--
			continue
		}
		i++
	}
	return out
}

// maybeDialLocked starts a dial when callers wait and the caps allow one. A
// multiplexed mutexUpstream (or one not yet known) gets one dial at a time; an
// HTTP/1.1 one a dial per waiting caller, up to MaxPendingDials.
func (p *mutexPool) maybeDialLocked(up *mutexUpstream) {
	if up.closed {
		return
	}
	want := up.liveWaitersLocked()
	if want == 0 {
		return
	}
	if up.multiplexed || !up.learned {
		want = 1
	}
	for up.dialing < want && up.dialing < p.cfg.MaxPendingDials &&
		len(up.conns)+up.dialing < p.cfg.MaxConnsPerUpstream {
		up.dialing++
		p.dials.Add(1)
		p.wg.Add(1)
		go p.dial(up)
	}
}

func (p *mutexPool) dial(up *mutexUpstream) {
	defer p.wg.Done()
	c, err := p.dialer.Dial(p.ctx, up.addr)
	up.mu.Lock()
	up.dialing--
	if err != nil {
		p.dialFailures.Add(1)
		// Fail the callers this dial was for: all of them when no other
		// dial or conn can serve them, else the oldest one.
		for len(up.waiters) > 0 {
			w := up.waiters[0]
			up.shiftWaiterLocked()
			if w.abandoned {
				continue
			}
			w.ch <- mutexResult{err: err}
			if up.dialing > 0 || len(up.conns) > 0 {
				break
			}
		}
		up.mu.Unlock()
		return
	}
	if up.closed {
		up.mu.Unlock()
		c.Close()
		return
	}
	pc := &mutexConn{Conn: c, up: up}
	p.open.Add(1)
	up.conns[pc] = struct{}{}
	if !up.learned {
		up.learned = true
		up.multiplexed = c.Available() > 1
	}
	up.serveWaitersLocked(pc, p, false)
	if pc.Available() > 0 {
		up.avail = append(up.avail, pc)
		pc.onStack = true
	}
	if pc.Idle() {
		pc.idleSince = time.Now()
	}
	p.maybeDialLocked(up)
	up.mu.Unlock()
}

func (p *mutexPool) reapLoop() {
	defer p.wg.Done()
	every := p.cfg.IdleTimeout / 2
	if every < 100*time.Millisecond {
		every = 100 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			p.reap(now)
		}
	}
}

// reap closes conns idle for longer than IdleTimeout and forgets broken ones.
func (p *mutexPool) reap(now time.Time) {
	p.mu.RLock()
	ups := make([]*mutexUpstream, 0, len(p.upstreams))
	for _, up := range p.upstreams {
		ups = append(ups, up)
	}
	p.mu.RUnlock()
	var closeConns []*mutexConn
	for _, up := range ups {
		up.mu.Lock()
		for pc := range up.conns {
			switch {
			case pc.Err() != nil && pc.Idle():
				closeConns = append(closeConns, up.dropLocked(pc))
			case pc.Idle() && !pc.idleSince.IsZero() && now.Sub(pc.idleSince) >= p.cfg.IdleTimeout:
				closeConns = append(closeConns, up.dropLocked(pc))
				p.reaped.Add(1)
			}
		}
		up.mu.Unlock()
	}
	closeMutexConns(closeConns)
}

// stats returns the pool's counters.
func (p *mutexPool) stats() PoolStats {
	return PoolStats{
		Dials: p.dials.Load(), DialFailures: p.dialFailures.Load(), Gets: p.gets.Load(),
		Reused: p.reused.Load(), Waits: p.waits.Load(), Reaped: p.reaped.Load(), Open: p.open.Load(),
	}
}

// shutdown stops handing out conns (Get fails with CodeDraining), then shuts
// every conn down gracefully: streams in flight finish unless ctx ends first,
// in which case the rest are closed. It returns ctx's error in that case.
func (p *mutexPool) shutdown(ctx context.Context) error {
	conns := p.detach()
	// Dials in flight can only yield conns that would be closed at once:
	// cancel them rather than let a slow connect outlast ctx.
	p.cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for _, c := range conns {
		wg.Go(func() {
			if err := c.Shutdown(ctx); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		})
	}
	wg.Wait()
	p.wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// close closes every conn at once, also those a Shutdown in progress still
// waits for, and waits for the pool's goroutines.
func (p *mutexPool) close() error {
	p.detach()
	p.cancel()
	p.mu.Lock()
	conns := p.detached
	p.detached = nil
	p.mu.Unlock()
	closeMutexConns(conns)
	p.wg.Wait()
	return nil
}

// detach marks the pool closed, fails waiters and returns the conns it took
// out, which it also records in p.detached.
func (p *mutexPool) detach() []*mutexConn {
	p.mu.Lock()
	p.closed = true
	ups := p.upstreams
	p.upstreams = map[string]*mutexUpstream{}
	p.mu.Unlock()
	var conns []*mutexConn
	for _, up := range ups {
		up.mu.Lock()
		up.closed = true
		for pc := range up.conns {
			conns = append(conns, pc)
		}
		p.open.Add(-int64(len(up.conns)))
		clear(up.conns)
		up.avail = nil
		for _, w := range up.waiters {
			if !w.abandoned {
				w.ch <- mutexResult{err: errPoolClosed}
			}
		}
		up.waiters = nil
		up.mu.Unlock()
	}
	if len(conns) > 0 {
		p.mu.Lock()
		p.detached = append(p.detached, conns...)
		p.mu.Unlock()
	}
	return conns
}
