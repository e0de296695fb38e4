package transport

import (
	"context"
	"errors"
	"maps"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// PoolConfig configures a Pool. The zero value works: every zero field takes
// the default documented on it.
type PoolConfig struct {
	// MaxConnsPerUpstream caps the conns, open or being dialed, to one
	// upstream address. Callers beyond it wait, first come first served.
	// Default 256.
	MaxConnsPerUpstream int

	// MaxIdlePerUpstream caps the conns kept open with no stream in flight.
	// Single-slot (HTTP/1.1) conns beyond it are closed when they are put
	// back, multiplexed ones by the next reaper pass. A cap below the
	// requests in flight at peak closes conns that the next moment needs
	// again: each then costs a dial. Default MaxConnsPerUpstream; idle
	// conns still close after IdleTimeout.
	MaxIdlePerUpstream int

	// MaxPendingDials caps the dials in progress to one upstream address.
	// Default 8.
	MaxPendingDials int

	// IdleTimeout closes a conn that has had no stream in flight for this
	// long; it is closed within IdleTimeout/2 after that. Default 90s.
	IdleTimeout time.Duration

	// MaxRequestsPerConn retires a conn once it has been handed out for
	// this many requests: it takes no new stream and is closed when its
	// last one ends. 0, the default, means no limit.
	MaxRequestsPerConn int

	// MaxConnLifetime retires a conn, the same way, once this long has
	// passed since it was dialed. The reaper checks it, at least four
	// times per MaxConnLifetime, so a conn may take new streams up to a
	// quarter of MaxConnLifetime late. 0, the default, means no limit.
	MaxConnLifetime time.Duration

	// DialBackoff is how long, after a failed dial to an upstream that has
	// no conn open or being dialed, Gets for it fail at once with that
	// dial's error instead of queueing and dialing again. It doubles with
	// each further failed dial up to DialBackoffMax and ends with the first
	// successful one. Like a gRPC subchannel in TRANSIENT_FAILURE, a down
	// upstream then costs its callers neither a dial nor a wait each, and
	// the gateway's retry moves them to another upstream at once; the price
	// is that an upstream that comes back is noticed up to DialBackoffMax
	// late. Default 10ms; negative turns the back-off off.
	DialBackoff time.Duration

	// DialBackoffMax caps DialBackoff's growth. Default 250ms.
	DialBackoffMax time.Duration

	// Unsharded selects the pool ProxyNow had before the sharded one: one
	// mutex per upstream on every Get and Put. It exists so that benchmarks
	// can compare the two in one run, and ignores MaxRequestsPerConn,
	// MaxConnLifetime and the dial back-off. Default false.
	Unsharded bool
}

func (c PoolConfig) withDefaults() PoolConfig {
	if c.MaxConnsPerUpstream <= 0 {
		c.MaxConnsPerUpstream = 256
	}
	if c.MaxIdlePerUpstream <= 0 {
		c.MaxIdlePerUpstream = c.MaxConnsPerUpstream
	}
	if c.MaxPendingDials <= 0 {
		c.MaxPendingDials = 8
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	c.MaxRequestsPerConn = max(c.MaxRequestsPerConn, 0)
	c.MaxConnLifetime = max(c.MaxConnLifetime, 0)
	if c.DialBackoff == 0 {
		c.DialBackoff = 10 * time.Millisecond
	}
	if c.DialBackoffMax <= 0 {
		c.DialBackoffMax = 250 * time.Millisecond
	}
	c.DialBackoffMax = max(c.DialBackoffMax, c.DialBackoff)
	return c
}

// PoolStats are a Pool's counters since it was made, and two gauges (Idle,
// Active, Open). Stats is the hook a metrics layer reads them through, on
// scrape: the pool itself imports no metrics library and counts on its hot
// path only in memory its shard already owns.
type PoolStats struct {
	Dials        uint64 // dials started
	DialFailures uint64 // dials that failed
	Gets         uint64 // successful Gets
	Reused       uint64 // Gets served by a conn that was already open
	Steals       uint64 // Gets served by an idle conn of another shard
	Waits        uint64 // Gets that had to wait for a conn
	FastFails    uint64 // Gets failed at once during a dial back-off (PoolConfig.DialBackoff)
	Reaped       uint64 // conns closed for idleness or the idle cap
	Open         int64  // conns open now
	Idle         int64  // open conns with no stream handed out
	Active       int64  // open conns with at least one stream handed out
}

// ReuseRatio is Reused/Gets, the share of Gets that did not need a new conn;
// 0 before the first Get.
func (s PoolStats) ReuseRatio() float64 {
	if s.Gets == 0 {
		return 0
	}
	return float64(s.Reused) / float64(s.Gets)
}

// Pool keeps upstream conns of one Dialer, keyed by upstream address. It is
// sharded: one shard per P (runtime.GOMAXPROCS when the pool is made or
// SetShards is called), and a request uses the shard its shard hint names
// (see [Request.Shard]), so the Gets and Puts of different shards share no
// lock and write no common cache line.
//
// A single-slot (HTTP/1.1) conn with nothing in flight sits on the stack of
// idle conns of one shard, guarded by that shard's own mutex; Get takes the
// most recently used one (a hot conn stays hot, a cold one times out) and
// Put pushes it back onto the shard of the Get that took it. A shard that runs
// dry steals an idle conn from another shard before it dials. A multiplexed
// (HTTP/2, HTTP/3) conn is shared by every shard: the conns of an upstream
// are published in a copy-on-write list that any shard reads without a lock,
// and a stream slot is taken with the conn's own Reserve.
//
// Only a miss takes the upstream's lock: callers then queue first in first
// out, and dials to one upstream are shared among them on a context the pool
// owns (a caller that gives up does not fail the others), capped by
// MaxConnsPerUpstream and MaxPendingDials. A conn that is broken, closed,
// going away or retired is never handed out; idle conns are reaped after
// IdleTimeout.
//
// Use: Get or GetShard returns a Conn with one slot reserved; the caller uses
// it (one RoundTrip and Close of the response body, or Release) and then calls
// Put exactly once.
type Pool struct {
	// Read on every Get and Put, written rarely.
	dialer    Dialer
	cfg       PoolConfig
	legacy    *mutexPool                           // set when cfg.Unsharded: it does the work
	ups       atomic.Pointer[map[string]*upstream] // copy on write under mu
	tick      atomic.Uint32                        // reaper passes since NewPool: the pool's coarse clock
	closed    atomic.Bool
	idleTicks uint32        // an idle conn is reaped once tick has passed its idleAt (idleTick) by more
	every     time.Duration // reaper period
	_         [cacheLinePad]byte

	ctx    context.Context // owns dials; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials and the reaper

	mu       sync.Mutex // guards creating upstreams, nshards and detached; taken before any upstream's mu
	nshards  int
	detached []*pconn // conns taken out by Shutdown, for Close to abort

	// Slow-path counters; the hot path counts in its shard (shard.hits).
	dials, dialFailures, fresh, waitReused, steals, waits, reaped, fastFails atomic.Uint64
	open                                                                     atomic.Int64
}

// cacheLinePad is the size shards and conns are padded to, so that two of
// them never share a cache line (128: adjacent-line prefetch on amd64, the
// line size on Apple silicon).
const cacheLinePad = 128

// NewPool returns a pool that dials with d. Close it when done.
func NewPool(d Dialer, cfg PoolConfig) *Pool {
	cfg = cfg.withDefaults()
	p := &Pool{dialer: d, cfg: cfg}
	if cfg.Unsharded {
		p.legacy = newMutexPool(d, cfg)
		return p
	}
	p.nshards = runtime.GOMAXPROCS(0)
	p.ups.Store(&map[string]*upstream{})
	p.every, p.idleTicks = reapPeriod(cfg)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.reapLoop()
	return p
}

// reapPeriod returns how often the reaper runs and after how many of its
// passes an idle conn has been idle for IdleTimeout. A conn that went idle
// between two passes is reaped after ticks+1 passes: between IdleTimeout and
// IdleTimeout plus one period after its last use.
func reapPeriod(cfg PoolConfig) (every time.Duration, ticks uint32) {
	every = cfg.IdleTimeout / 2
	if cfg.MaxConnLifetime > 0 {
		every = min(every, cfg.MaxConnLifetime/4)
	}
	every = max(every, 50*time.Millisecond)
	n := (cfg.IdleTimeout + every - 1) / every
	return every, uint32(max(n, 1))
}

var nextShard atomic.Uint32

// NextShard returns a shard hint for a new downstream connection. A server
// calls it once per accepted connection and sets the value as [Request.Shard]
// on every request of that connection. The hints go round robin, so the
// connections spread evenly over any number of shards; the counter is touched
// once per connection, never per request.
func NextShard() uint32 { return nextShard.Add(1) - 1 }

// upstream is the part of a pool for one address.
type upstream struct {
	addr string
	// Read on every Get and Put, written rarely.
	set   atomic.Pointer[shardSet]
	mux   atomic.Pointer[[]*pconn] // multiplexed conns, oldest first; copy on write under mu
	nwait atomic.Int32             // live waiters; changed under mu
	_     [cacheLinePad]byte

	mu      sync.Mutex  // guards everything below; taken before any shard's mu
	oldSets []*shardSet // replaced by SetShards, kept for their hits (a Get may still count there)
	conns   map[*pconn]struct{}
	dialing int
	waiters []*waiter // FIFO; entries done (served or abandoned) are skipped
	// multiplexed is learned from the first conn: a conn with more than one
	// slot serves a burst alone, so the pool dials one at a time.
	multiplexed, learned bool
	// closed is set once the pool has detached this upstream: a caller
	// that looked it up just before must not queue on it or dial for it.
	closed bool
	// The dial back-off (PoolConfig.DialBackoff): after failed dials in a
	// row, Gets fail with dialErr until retryAt when no conn is open or
	// being dialed.
	failedDials int
	retryAt     time.Time
	dialErr     error
}

// shardSet is the shards of one upstream. SetShards replaces it whole.
type shardSet struct {
	shards []shard
	// share is the number of idle conns a shard may hold before a Put
	// checks the upstream's total against MaxIdlePerUpstream.
	share int
}

// index returns the shard of hint: hint modulo the number of shards.
func (set *shardSet) index(hint uint32) uint32 {
	if n := uint32(len(set.shards)); hint >= n {
		return hint % n
	}
	return hint
}

func newShardSet(n, maxIdle int) *shardSet {
	set := &shardSet{shards: make([]shard, n), share: (maxIdle + n - 1) / n}
	for i := range set.shards {
		sh := &set.shards[i]
		sh.allow = set.share
		// The stack's array is written on every Get and Put: give it
		// cache lines of its own (a small one would share a line with
		// another shard's).
		sh.idle = make([]*pconn, 0, cacheLinePad/unsafe.Sizeof((*pconn)(nil)))
	}
	return set
}

// idle returns the number of idle conns in the set. It locks each shard in
// turn: it is for the slow paths.
func (set *shardSet) idle() int {
	n := 0
	for i := range set.shards {
		sh := &set.shards[i]
		sh.mu.Lock()
		n += len(sh.idle)
		sh.mu.Unlock()
	}
	return n
}

// shard is one shard's part of an upstream, alone on its cache lines.
type shard struct {
	shardState
	_ [cacheLinePad - unsafe.Sizeof(shardState{})%cacheLinePad]byte
}

type shardState struct {
	mu    sync.Mutex // guards idle, state, hits and allow
	idle  []*pconn   // single-slot conns with nothing in flight; the most recently used last
	state uint8
	hits  uint64 // Gets of this shard served from idle
	// allow is the len(idle) up to which a Put does not count the
	// upstream's idle conns against MaxIdlePerUpstream.
	allow int
	other atomic.Uint64 // Gets of this shard served at once otherwise: by a multiplexed conn or a steal
}

// counts returns the Gets of sh served without waiting and its idle conns.
func (sh *shard) counts() (served uint64, idle int) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.hits + sh.other.Load(), len(sh.idle)
}

const (
	shardLive   = iota
	shardMoved  // SetShards replaced the set: look it up again
	shardClosed // the pool is shut down
)

// pconn is a Conn as the pool tracks it. Get returns it; Put takes it back.
// It is padded so that conns used by different shards share no cache line.
type pconn struct {
	pconnState
	_ [cacheLinePad - unsafe.Sizeof(pconnState{})%cacheLinePad]byte
}

type pconnState struct {
	Conn
	up   *upstream
	born time.Time // dialed at, for MaxConnLifetime
	// mux: the conn had more than one slot when dialed. It lives in
	// up.mux, never on a shard's stack, and held counts its users.
	mux bool
	// shard is where a single-slot conn goes back to on Put: the shard of
	// the Get that has it. Written by whoever has the conn.
	shard uint32
	// idleAt is p.tick when a single-slot conn was pushed on its shard's
	// stack; guarded by that shard's mu.
	idleAt uint32
	// idleTick is p.tick when a multiplexed conn was last put back.
	idleTick atomic.Uint32
	retired  atomic.Bool  // handed out no more; closed once nothing is in flight
	held     atomic.Int32 // multiplexed: Gets not yet Put
	uses     atomic.Int64 // Gets served, counted when MaxRequestsPerConn is set
}

type waiter struct {
	ch    chan getResult // buffered, 1
	shard uint32
	done  bool // served or abandoned; guarded by upstream.mu
}

type getResult struct {
	pc    *pconn
	fresh bool // the conn was dialed for this waiter's queue
	err   error
}

var errPoolClosed = NewError(CodeDraining, false, errors.New("transport: pool closed"))

// Get is GetShard with shard hint 0. Callers that Get in parallel should use
// GetShard, or they all share one shard.
func (p *Pool) Get(ctx context.Context, addr string) (Conn, error) {
	return p.GetShard(ctx, addr, 0)
}

// GetShard returns a conn to addr with one slot reserved, waiting for a free
// slot or a dial while ctx allows. hint picks the shard (hint modulo the
// number of shards); pass [Request.Shard]. Its errors: the dial's *Error
// (CodeConnectRefused, CodeConnectTimeout, ...), CodeDraining once the pool is
// shut down, and ctx's cause when ctx ends first.
func (p *Pool) GetShard(ctx context.Context, addr string, hint uint32) (Conn, error) {
	if p.legacy != nil {
		return p.legacy.get(ctx, addr)
	}
	if up := (*p.ups.Load())[addr]; up != nil {
		set := up.set.Load()
		s := set.index(hint)
		sh := &set.shards[s]
		if l := up.mux.Load(); l != nil {
			if pc := p.takeMux(*l); pc != nil {
				sh.other.Add(1)
				return pc, nil
			}
		}
		if pc := p.takeIdle(sh, s); pc != nil {
			return pc, nil
		}
	}
	return p.getSlow(ctx, addr, hint)
}

// takeIdle pops the most recently used idle conn of sh and reserves its slot.
// Conns it cannot reserve (broken, closed by the peer) or retired are dropped
// on the way.
func (p *Pool) takeIdle(sh *shard, s uint32) *pconn {
	for {
		pc := sh.pop(true)
		if pc == nil {
			return nil
		}
		if !pc.retired.Load() && pc.Reserve() {
			pc.shard = s
			p.counted(pc)
			return pc
		}
		sh.mu.Lock()
		sh.hits-- // counted by pop
		sh.mu.Unlock()
		p.drop(pc)
	}
}

// pop takes the top of sh's stack, or returns nil. hit counts it as a Get
// of this shard served.
func (sh *shard) pop(hit bool) *pconn {
	sh.mu.Lock()
	n := len(sh.idle)
	if n == 0 {
		sh.mu.Unlock()
		return nil
	}
	pc := sh.idle[n-1]
	sh.idle[n-1] = nil
	sh.idle = sh.idle[:n-1]
	if hit {
		sh.hits++
	}
	sh.mu.Unlock()
	return pc
}

// takeMux reserves a slot on one of conns, newest first.
func (p *Pool) takeMux(conns []*pconn) *pconn {
	for i := len(conns) - 1; i >= 0; i-- {
		if pc := conns[i]; p.acquireMux(pc) {
			return pc
		}
	}
	return nil
}

// acquireMux reserves a slot on the multiplexed conn pc and counts the caller
// as its user. The order matters against retire, which sets retired and then
// looks at held: either this sees retired, or retire sees this user.
func (p *Pool) acquireMux(pc *pconn) bool {
	if pc.retired.Load() {
		return false
	}
	if !pc.Reserve() {
		if pc.Err() != nil {
			p.retire(pc) // GOAWAY, closed or broken
		}
		return false
	}
	pc.held.Add(1)
	if pc.retired.Load() {
		pc.Release()
		p.unhold(pc)
		return false
	}
	p.counted(pc)
	return true
}

// counted counts a Get of pc against MaxRequestsPerConn; the Get that
// reaches it retires pc, which its Put then closes.
func (p *Pool) counted(pc *pconn) {
	if max := p.cfg.MaxRequestsPerConn; max > 0 && pc.uses.Add(1) >= int64(max) {
		pc.retired.Store(true)
	}
}

// retire stops handing pc out; it is closed once nothing is in flight on it.
// The caller must not have pc (for one it has, setting retired is enough).
func (p *Pool) retire(pc *pconn) {
	if pc.retired.Swap(true) {
		return
	}
	if pc.mux && pc.held.Load() == 0 {
		p.drop(pc)
	}
}

// unhold ends one use of a multiplexed conn whose slot was already freed.
func (p *Pool) unhold(pc *pconn) {
	if pc.held.Add(-1) == 0 && pc.retired.Load() {
		p.drop(pc)
	}
}

// getSlow serves a Get that its shard could not: it steals from the other
// shards, then waits for a conn as the upstream's waiters do.
func (p *Pool) getSlow(ctx context.Context, addr string, hint uint32) (Conn, error) {
	up, err := p.upstream(addr)
	if err != nil {
		return nil, err
	}
	set := up.set.Load()
	s := set.index(hint)
	if l := up.mux.Load(); l != nil {
		if pc := p.takeMux(*l); pc != nil {
			set.shards[s].other.Add(1)
			return pc, nil
		}
	}
	if up.mux.Load() == nil { // a multiplexed upstream's stacks are empty
		if pc := p.steal(set, s); pc != nil {
			set.shards[s].other.Add(1)
			return pc, nil
		}
	}

	up.mu.Lock()
	if up.closed {
		up.mu.Unlock()
		return nil, errPoolClosed
	}
	if up.dialErr != nil && up.dialing == 0 && len(up.conns) == 0 && time.Now().Before(up.retryAt) {
		err := up.dialErr
		up.mu.Unlock()
		p.fastFails.Add(1)
		return nil, err
	}
	w := &waiter{ch: make(chan getResult, 1), shard: s}
	up.waiters = append(up.waiters, w)
	up.nwait.Add(1)
	up.mu.Unlock()
	p.waits.Add(1)
	// A conn put back or a slot freed between the scans above and the
	// registration did not see this waiter: serve it now, before dialing.
	// Put, for its part, looks for waiters after it has made its conn
	// available, so one of the two sees the other.
	p.feedWaiters(up)
	up.mu.Lock()
	if !w.done {
		p.maybeDialLocked(up, s)
	}
	up.mu.Unlock()

	select {
	case r := <-w.ch:
		if r.err == nil {
			if r.fresh {
				p.fresh.Add(1)
			} else {
				p.waitReused.Add(1)
			}
		}
		return r.pc, r.err
	case <-ctx.Done():
		up.mu.Lock()
		served := w.done
		if !served {
			w.done = true
			up.nwait.Add(-1)
		}
		up.mu.Unlock()
		if served {
			// The result is sent just after the waiter is taken off
			// the queue: give its slot back.
			if r := <-w.ch; r.pc != nil {
				r.pc.Release()
				p.Put(r.pc)
			}
		}
		return nil, context.Cause(ctx)
	}
}

// steal takes an idle conn from a shard other than s, nearest first.
func (p *Pool) steal(set *shardSet, s uint32) *pconn {
	n := uint32(len(set.shards))
	for i := uint32(1); i < n; i++ {
		sh := &set.shards[(s+i)%n]
		for {
			pc := sh.pop(false)
			if pc == nil {
				break
			}
			if !pc.retired.Load() && pc.Reserve() {
				pc.shard = s
				p.counted(pc)
				p.steals.Add(1)
				return pc
			}
			p.drop(pc)
		}
	}
	return nil
}

// Put takes back a conn from Get once its reserved slot has been used or
// released. A broken or retired conn is no longer handed out and is closed
// once no stream is in flight on it (a multiplexed conn that received GOAWAY
// still finishes the streams it has); an idle single-slot conn beyond the idle
// cap is closed.
func (p *Pool) Put(c Conn) {
	if p.legacy != nil {
		p.legacy.put(c)
		return
	}
	pc, ok := c.(*pconn)
	if !ok {
		return
	}
	if pc.mux {
		p.putMux(pc)
		return
	}
	up := pc.up
	if pc.retired.Load() || pc.Err() != nil {
		p.drop(pc)
		return
	}
	if up.nwait.Load() > 0 {
		if !pc.Reserve() {
			p.drop(pc)
			return
		}
		if p.handOff(up, pc) {
			return
		}
		pc.Release()
	}
	p.pushIdle(up, pc, true)
}

// pushIdle puts the idle single-slot conn pc on its shard's stack. With feed,
// it then serves waiters that queued meanwhile: a waiter registers and then
// scans the stacks, this pushes and then looks for waiters, so one of the two
// sees the other.
func (p *Pool) pushIdle(up *upstream, pc *pconn, feed bool) {
	for {
		set := up.set.Load()
		sh := &set.shards[set.index(pc.shard)]
		sh.mu.Lock()
		switch sh.state {
		case shardMoved:
			sh.mu.Unlock()
			continue
		case shardClosed:
			// Shut down: the pool took the conn out with the others.
			sh.mu.Unlock()
			return
		}
		pc.idleAt = p.tick.Load()
		sh.idle = append(sh.idle, pc)
		over := len(sh.idle) > sh.allow
		sh.mu.Unlock()
		if over {
			p.trimIdle(set, sh)
		}
		if feed && up.nwait.Load() > 0 {
			p.feedWaiters(up)
		}
		return
	}
}

// trimIdle closes the least recently used idle conns of sh while the
// upstream has more than MaxIdlePerUpstream idle. Only a shard that holds more
// than it is allowed counts the others; when they leave room, it is allowed
// that room, so that it does not count again at every Put. (Shards that fill
// their room at once can exceed the cap together; the reaper enforces it
// exactly.)
func (p *Pool) trimIdle(set *shardSet, sh *shard) {
	total := set.idle()
	for ; total > p.cfg.MaxIdlePerUpstream; total-- {
		pc := sh.popBottom()
		if pc == nil {
			break
		}
		p.reaped.Add(1)
		p.drop(pc)
	}
	sh.mu.Lock()
	sh.allow = max(set.share, len(sh.idle)+p.cfg.MaxIdlePerUpstream-total)
	sh.mu.Unlock()
}

// popBottom takes the least recently used conn of sh's stack, or returns nil.
func (sh *shard) popBottom() *pconn {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := len(sh.idle)
	if n == 0 {
		return nil
	}
	pc := sh.idle[0]
	copy(sh.idle, sh.idle[1:])
	sh.idle[n-1] = nil
	sh.idle = sh.idle[:n-1]
	return pc
}

// putMux takes back a multiplexed conn. It asks the conn for Err only when
// the conn goes idle (for HTTP/2 Err takes the conn's lock, which all its
// streams share): while it is busy, a conn that broke or got GOAWAY fails the
// next Reserve, which retires it.
func (p *Pool) putMux(pc *pconn) {
	// Before held drops: a reaper that sees the conn idle sees this tick.
	if t := p.tick.Load(); pc.idleTick.Load() != t {
		pc.idleTick.Store(t)
	}
	if pc.held.Add(-1) == 0 {
		if pc.retired.Load() {
			p.drop(pc)
			return
		}
		if pc.Err() != nil {
			p.retire(pc) // closes it: nothing is in flight
			return
		}
	}
	if up := pc.up; up.nwait.Load() > 0 {
		p.feedMux(up, pc)
	}
}

// feedWaiters hands idle conns and free slots to the upstream's waiters.
func (p *Pool) feedWaiters(up *upstream) {
	for up.nwait.Load() > 0 {
		pc := p.popAny(up)
		if pc == nil {
			break
		}
		if pc.retired.Load() || !pc.Reserve() {
			p.drop(pc)
			continue
		}
		if !p.handOff(up, pc) {
			pc.Release()
			p.pushIdle(up, pc, false)
			return
		}
	}
	if l := up.mux.Load(); l != nil {
		for _, pc := range *l {
			if up.nwait.Load() == 0 {
				return
			}
			p.feedMux(up, pc)
		}
	}
}

// feedMux hands free slots of pc to waiters.
func (p *Pool) feedMux(up *upstream, pc *pconn) {
	for up.nwait.Load() > 0 && p.acquireMux(pc) {
		if !p.handOff(up, pc) {
			if p.cfg.MaxRequestsPerConn > 0 {
				pc.uses.Add(-1)
			}
			pc.Release()
			p.unhold(pc)
			return
		}
	}
}

// popAny pops an idle conn from any shard of up.
func (p *Pool) popAny(up *upstream) *pconn {
	set := up.set.Load()
	for i := range set.shards {
		if pc := set.shards[i].pop(false); pc != nil {
			return pc
		}
	}
	return nil
}

// handOff gives pc, reserved, to the oldest live waiter. It reports false
// when there is none.
func (p *Pool) handOff(up *upstream, pc *pconn) bool {
	up.mu.Lock()
	w := up.nextWaiterLocked()
	up.mu.Unlock()
	if w == nil {
		return false
	}
	if !pc.mux {
		pc.shard = w.shard
		p.counted(pc) // acquireMux counted a multiplexed one
	}
	w.ch <- getResult{pc: pc}
	return true
}

// nextWaiterLocked takes the oldest live waiter off the queue, or returns
// nil. The caller sends it its result.
func (up *upstream) nextWaiterLocked() *waiter {
	for len(up.waiters) > 0 {
		w := up.waiters[0]
		up.waiters[0] = nil
		up.waiters = up.waiters[1:]
		if len(up.waiters) == 0 {
			up.waiters = up.waiters[:0:0]
		}
		if !w.done {
			w.done = true
			up.nwait.Add(-1)
			return w
		}
	}
	return nil
}

// drop forgets pc and closes it.
func (p *Pool) drop(pc *pconn) {
	up := pc.up
	up.mu.Lock()
	c := p.dropLocked(up, pc)
	p.maybeDialLocked(up, pc.shard) // its place under the cap may serve a waiter
	up.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// dropLocked forgets pc and returns it for closing outside the lock, or nil
// when it was forgotten already (dropped, or detached by Shutdown or Close,
// which own its closing).
func (p *Pool) dropLocked(up *upstream, pc *pconn) *pconn {
	if _, ok := up.conns[pc]; !ok {
		return nil
	}
	delete(up.conns, pc)
	p.open.Add(-1)
	if pc.mux {
		if l := up.mux.Load(); l != nil {
			if i := slices.Index(*l, pc); i >= 0 {
				nl := slices.Delete(slices.Clone(*l), i, i+1)
				if len(nl) == 0 {
					up.mux.Store(nil)
				} else {
					up.mux.Store(&nl)
				}
			}
		}
	}
	return pc
}

// upstream returns the part of p for addr, made on first use.
func (p *Pool) upstream(addr string) (*upstream, error) {
	if p.closed.Load() {
		return nil, errPoolClosed
	}
	if up := (*p.ups.Load())[addr]; up != nil {
		return up, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil, errPoolClosed
	}
	m := *p.ups.Load()
	if up := m[addr]; up != nil {
		return up, nil
	}
	up := &upstream{addr: addr, conns: make(map[*pconn]struct{})}
	up.set.Store(newShardSet(p.nshards, p.cfg.MaxIdlePerUpstream))
	nm := maps.Clone(m)
	nm[addr] = up
	p.ups.Store(&nm)
	return up, nil
}

// maybeDialLocked starts a dial when callers wait and the caps allow one. A
// multiplexed upstream (or one not yet known) gets one dial at a time; an
// HTTP/1.1 one a dial per waiting caller, up to MaxPendingDials. s is the
// shard a conn nobody waits for anymore goes to.
func (p *Pool) maybeDialLocked(up *upstream, s uint32) {
	if up.closed {
		return
	}
	want := int(up.nwait.Load())
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
		go p.dial(up, s)
	}
}

func (p *Pool) dial(up *upstream, s uint32) {
	defer p.wg.Done()
	c, err := p.dialer.Dial(p.ctx, up.addr)
	up.mu.Lock()
	up.dialing--
	if err != nil {
		p.dialFailures.Add(1)
		if p.cfg.DialBackoff > 0 && p.ctx.Err() == nil {
			d := p.cfg.DialBackoffMax
			if up.failedDials < 30 {
				d = min(p.cfg.DialBackoff<<up.failedDials, d)
			}
			up.failedDials++
			up.retryAt, up.dialErr = time.Now().Add(d), err
		}
		// Fail the callers this dial was for: all of them when no other
		// dial or conn can serve them, else the oldest one.
		for w := up.nextWaiterLocked(); w != nil; w = up.nextWaiterLocked() {
			w.ch <- getResult{err: err}
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
	up.failedDials, up.dialErr = 0, nil
	pc := &pconn{}
	pc.Conn, pc.up, pc.born, pc.shard = c, up, time.Now(), s
	pc.mux = c.Available() > 1
	pc.idleTick.Store(p.tick.Load())
	p.open.Add(1)
	up.conns[pc] = struct{}{}
	if !up.learned {
		up.learned = true
		up.multiplexed = pc.mux
	}
	idle := true
	if pc.mux {
		var l []*pconn
		if old := up.mux.Load(); old != nil {
			l = *old
		}
		nl := append(slices.Clip(l), pc)
		up.mux.Store(&nl)
		for up.nwait.Load() > 0 && !pc.retired.Load() && pc.Reserve() {
			pc.held.Add(1)
			p.counted(pc)
			up.nextWaiterLocked().ch <- getResult{pc: pc, fresh: true}
		}
	} else if up.nwait.Load() > 0 && pc.Reserve() {
		w := up.nextWaiterLocked()
		pc.shard = w.shard
		p.counted(pc)
		w.ch <- getResult{pc: pc, fresh: true}
		idle = false
	}
	p.maybeDialLocked(up, s)
	up.mu.Unlock()
	if idle && !pc.mux {
		p.pushIdle(up, pc, true)
	}
}

func (p *Pool) reapLoop() {
	defer p.wg.Done()
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			p.reap(now, p.tick.Add(1))
		}
	}
}

// reap closes conns idle for longer than IdleTimeout, broken ones with
// nothing in flight, and multiplexed ones beyond the idle cap, and retires
// conns older than MaxConnLifetime. It runs on the reaper's goroutine, off
// the request path: it may hold a shard's lock for a pass over its stack.
func (p *Pool) reap(now time.Time, tick uint32) {
	for _, up := range *p.ups.Load() {
		var closeConns []*pconn
		up.mu.Lock()
		var idleMux int
		for pc := range up.conns {
			if life := p.cfg.MaxConnLifetime; life > 0 && now.Sub(pc.born) >= life {
				pc.retired.Store(true)
			}
			if !pc.mux {
				continue
			}
			if !pc.retired.Load() && pc.Err() != nil {
				pc.retired.Store(true)
			}
			expired := tick-pc.idleTick.Load() > p.idleTicks
			if expired && !pc.retired.Load() && pc.held.Load() == 0 {
				pc.retired.Store(true)
				if pc.held.Load() == 0 {
					p.reaped.Add(1)
				}
			}
			if pc.retired.Load() {
				if pc.held.Load() == 0 {
					closeConns = append(closeConns, p.dropLocked(up, pc))
				}
			} else if pc.held.Load() == 0 {
				idleMux++
			}
		}
		if l := up.mux.Load(); l != nil && idleMux > p.cfg.MaxIdlePerUpstream {
			for _, pc := range *l { // oldest first
				if idleMux <= p.cfg.MaxIdlePerUpstream {
					break
				}
				if pc.held.Load() != 0 || pc.retired.Load() {
					continue
				}
				pc.retired.Store(true)
				if pc.held.Load() == 0 {
					closeConns = append(closeConns, p.dropLocked(up, pc))
					p.reaped.Add(1)
					idleMux--
				}
			}
		}
		up.mu.Unlock()

		set := up.set.Load()
		var drop []*pconn
		for i := range set.shards {
			sh := &set.shards[i]
			sh.mu.Lock()
			keep := sh.idle[:0]
			for _, pc := range sh.idle {
				switch {
				case pc.retired.Load() || pc.Err() != nil:
					drop = append(drop, pc)
				case tick-pc.idleAt > p.idleTicks:
					drop = append(drop, pc)
					p.reaped.Add(1)
				default:
					keep = append(keep, pc)
				}
			}
			clear(sh.idle[len(keep):])
			sh.idle = keep
			sh.allow = set.share
			sh.mu.Unlock()
		}
		// The idle cap, exactly: Puts enforce it only as far as their
		// shard's allowance goes.
		for total := set.idle(); total > p.cfg.MaxIdlePerUpstream; total-- {
			var oldest *shard
			var at uint32
			for i := range set.shards {
				sh := &set.shards[i]
				sh.mu.Lock()
				if len(sh.idle) > 0 && (oldest == nil || tick-sh.idle[0].idleAt > tick-at) {
					oldest, at = sh, sh.idle[0].idleAt
				}
				sh.mu.Unlock()
			}
			if oldest == nil {
				break
			}
			if pc := oldest.popBottom(); pc != nil {
				drop = append(drop, pc)
				p.reaped.Add(1)
			}
		}
		if len(drop) > 0 {
			up.mu.Lock()
			for _, pc := range drop {
				closeConns = append(closeConns, p.dropLocked(up, pc))
			}
			up.mu.Unlock()
		}
		for _, c := range closeConns {
			if c != nil {
				c.Close()
			}
		}
	}
}

// SetShards sets the number of shards: n, or runtime.GOMAXPROCS(0) when n
// is 0 or less. The gateway calls it on config reload, so a pool that lives
// on reads GOMAXPROCS again. Idle conns move to the new shards; Gets and Puts
// in progress find their way to them.
func (p *Pool) SetShards(n int) {
	if p.legacy != nil {
		return
	}
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n == p.nshards || p.closed.Load() {
		return
	}
	p.nshards = n
	for _, up := range *p.ups.Load() {
		p.reshard(up, n)
	}
}

// Shards returns the number of shards.
func (p *Pool) Shards() int {
	if p.legacy != nil {
		return 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nshards
}

func (p *Pool) reshard(up *upstream, n int) {
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.closed {
		return
	}
	old := up.set.Load()
	set := newShardSet(n, p.cfg.MaxIdlePerUpstream)
	up.set.Store(set)
	up.oldSets = append(up.oldSets, old)
	var moved []*pconn
	for i := range old.shards {
		sh := &old.shards[i]
		sh.mu.Lock()
		sh.state = shardMoved
		moved = append(moved, sh.idle...)
		sh.idle = nil
		sh.mu.Unlock()
	}
	for i, pc := range moved {
		sh := &set.shards[i%n]
		sh.mu.Lock()
		sh.idle = append(sh.idle, pc)
		sh.mu.Unlock()
	}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	if p.legacy != nil {
		return p.legacy.stats()
	}
	s := PoolStats{
		Dials: p.dials.Load(), DialFailures: p.dialFailures.Load(), Steals: p.steals.Load(),
		Waits: p.waits.Load(), Reaped: p.reaped.Load(), Open: p.open.Load(),
		FastFails: p.fastFails.Load(),
	}
	hits := uint64(0)
	for _, up := range *p.ups.Load() {
		var idle1, n1 int64
		up.mu.Lock()
		set := up.set.Load()
		for i := range set.shards {
			served, idle := set.shards[i].counts()
			hits += served
			idle1 += int64(idle)
		}
		for _, old := range up.oldSets {
			for i := range old.shards {
				served, _ := old.shards[i].counts()
				hits += served
			}
		}
		for pc := range up.conns {
			switch {
			case !pc.mux:
				n1++
			case pc.held.Load() == 0:
				s.Idle++
			default:
				s.Active++
			}
		}
		up.mu.Unlock()
		idle1 = min(idle1, n1)
		s.Idle += idle1
		s.Active += n1 - idle1
	}
	s.Reused = hits + p.waitReused.Load()
	s.Gets = s.Reused + p.fresh.Load()
	return s
}

// Shutdown stops handing out conns (Get fails with CodeDraining), then shuts
// every conn down gracefully: streams in flight finish unless ctx ends first,
// in which case the rest are closed. It returns ctx's error in that case.
func (p *Pool) Shutdown(ctx context.Context) error {
	if p.legacy != nil {
		return p.legacy.shutdown(ctx)
	}
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

// Close closes every conn at once, also those a Shutdown in progress still
// waits for, and waits for the pool's goroutines.
func (p *Pool) Close() error {
	if p.legacy != nil {
		return p.legacy.close()
	}
	p.detach()
	p.cancel()
	p.mu.Lock()
	conns := p.detached
	p.detached = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return nil
}

// detach marks the pool closed, fails waiters and returns the conns it took
// out, which it also records in p.detached. The upstreams stay, closed, so
// that Stats keeps their counts.
func (p *Pool) detach() []*pconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed.Store(true)
	var conns []*pconn
	for _, up := range *p.ups.Load() {
		up.mu.Lock()
		up.closed = true
		for pc := range up.conns {
			conns = append(conns, pc)
		}
		p.open.Add(-int64(len(up.conns)))
		clear(up.conns)
		up.mux.Store(nil)
		for w := up.nextWaiterLocked(); w != nil; w = up.nextWaiterLocked() {
			w.ch <- getResult{err: errPoolClosed}
		}
		up.waiters = nil
		set := up.set.Load()
		for i := range set.shards {
			sh := &set.shards[i]
			sh.mu.Lock()
			sh.state = shardClosed
			clear(sh.idle)
			sh.idle = nil
			sh.mu.Unlock()
		}
		up.mu.Unlock()
	}
	p.detached = append(p.detached, conns...)
	return conns
}
