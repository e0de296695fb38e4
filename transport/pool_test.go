package transport_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// fakeConn is a Conn with a fixed number of slots and no wire: the narrow
// seam the pool sees. It records contract violations instead of panicking.
type fakeConn struct {
	d   *fakeDialer
	id  int
	cap int

	mu             sync.Mutex // guards everything below
	inUse          int
	broken         bool
	shutdown       bool
	closed         bool
	closes         int
	shutdownCalled bool
	idle           chan struct{} // closed when inUse drops to 0 or on Close; made by Shutdown
	violation      string
}

var _ transport.Conn = (*fakeConn)(nil)

var (
	errFakeBroken   = errors.New("fake: broken")
	errFakeShutdown = errors.New("fake: shutting down")
	errFakeClosed   = errors.New("fake: closed")
)

func (c *fakeConn) String() string { return fmt.Sprintf("conn#%d", c.id) }

func (c *fakeConn) Reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken || c.shutdown || c.closed || c.inUse >= c.cap {
		return false
	}
	c.inUse++
	return true
}

func (c *fakeConn) Release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inUse--
	if c.inUse < 0 {
		c.violation = "Release without a reserved slot"
		c.inUse = 0
	}
	if c.inUse == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
}

func (c *fakeConn) RoundTrip(context.Context, *transport.Request) (*transport.Response, error) {
	return nil, transport.CodeInternal.Err()
}

func (c *fakeConn) Available() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken || c.shutdown || c.closed {
		return 0
	}
	return c.cap - c.inUse
}

func (c *fakeConn) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inUse == 0
}

func (c *fakeConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return errFakeClosed
	case c.broken:
		return errFakeBroken
	case c.shutdown:
		return errFakeShutdown
	}
	return nil
}

func (c *fakeConn) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.shutdown = true
	c.shutdownCalled = true
	for c.inUse > 0 && !c.closed {
		if c.idle == nil {
			c.idle = make(chan struct{})
		}
		idle := c.idle
		c.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			c.Close()
			return ctx.Err()
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	c.Close()
	return nil
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	c.closes++
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.mu.Unlock()
	c.d.mu.Lock()
	c.d.live--
	c.d.mu.Unlock()
	return nil
}

// Break makes the conn fail like one that got GOAWAY or lost its transport.
func (c *fakeConn) Break() {
	c.mu.Lock()
	c.broken = true
	c.mu.Unlock()
}

func (c *fakeConn) state() (inUse int, closed, shutdown bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inUse, c.closed, c.shutdownCalled
}

func (c *fakeConn) isClosed() bool {
	_, closed, _ := c.state()
	return closed
}

// fakeDialer makes fakeConns with capacity cap. With gate set, each Dial
// waits for a token from it (or its ctx); with fail set, Dial fails.
type fakeDialer struct {
	cap  int
	gate chan struct{}

	mu          sync.Mutex // guards everything below
	fail        error
	conns       []*fakeConn
	dials       int
	inflight    int
	maxInflight int
	live        int
	maxLive     int
}

func newFakeDialer(capacity int) *fakeDialer { return &fakeDialer{cap: capacity} }

func (d *fakeDialer) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	d.mu.Lock()
	d.dials++
	d.inflight++
	d.maxInflight = max(d.maxInflight, d.inflight)
	gate := d.gate
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.inflight--
		d.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, transport.NewError(transport.CodeConnectTimeout, false, ctx.Err())
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return nil, d.fail
	}
	c := &fakeConn{d: d, id: len(d.conns) + 1, cap: d.cap}
	d.conns = append(d.conns, c)
	d.live++
	d.maxLive = max(d.maxLive, d.live)
	return c, nil
}

func (d *fakeDialer) setGate(ch chan struct{}) {
	d.mu.Lock()
	d.gate = ch
	d.mu.Unlock()
}

func (d *fakeDialer) counts() (dials, inflight, live int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials, d.inflight, d.live
}

func (d *fakeDialer) all() []*fakeConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeConn(nil), d.conns...)
}

// checkConns reports contract violations and slots still held.
func (d *fakeDialer) checkConns(t *testing.T) {
	t.Helper()
	for _, c := range d.all() {
		c.mu.Lock()
		if c.violation != "" {
			t.Errorf("%v: %s", c, c.violation)
		}
		if c.inUse != 0 {
			t.Errorf("%v: %d slots still reserved", c, c.inUse)
		}
		c.mu.Unlock()
	}
}

func fake(c transport.Conn) *fakeConn { return transport.Underlying(c).(*fakeConn) }

const up = "upstream:443"

// mustGet gets a conn; a Get that hangs fails after a minute (of fake time
// in a bubble) rather than deadlocking the test.
func mustGet(t *testing.T, p *transport.Pool) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := p.Get(ctx, up)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return c
}

// done gives back a conn from Get whose slot was not used.
func done(p *transport.Pool, c transport.Conn) {
	c.Release()
	p.Put(c)
}

type getResult struct {
	c   transport.Conn
	err error
}

// goGet runs Get in a goroutine and returns the channel of its result.
func goGet(ctx context.Context, p *transport.Pool) <-chan getResult {
	ch := make(chan getResult, 1)
	go func() {
		c, err := p.Get(ctx, up)
		ch <- getResult{c, err}
	}()
	return ch
}

// pending fails t if the Get behind ch has returned.
func pending(t *testing.T, ch <-chan getResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("Get returned early: %v, %v", r.c, r.err)
	default:
	}
}

func TestPoolLIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{})
		defer p.Close()
		a, b, c := mustGet(t, p), mustGet(t, p), mustGet(t, p)
		if fa, fb, fc := fake(a), fake(b), fake(c); fa == fb || fb == fc || fa == fc {
			t.Fatalf("one conn handed out twice: %v %v %v", fa, fb, fc)
		}
		done(p, a)
		done(p, b)
		done(p, c)
		// The most recently put conn comes back first.
		for _, want := range []transport.Conn{c, b, a} {
			got := mustGet(t, p)
			if fake(got) != fake(want) {
				t.Errorf("Get = %v, want %v", fake(got), fake(want))
			}
		}
		if dials, _, _ := d.counts(); dials != 3 {
			t.Errorf("dials = %d, want 3", dials)
		}
		if s := p.Stats(); s.Gets != 6 || s.Reused != 3 || s.Open != 3 {
			t.Errorf("stats = %+v, want 6 gets, 3 reused, 3 open", s)
		}
	})
}

func TestPoolIdleReap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 10 * time.Second
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{IdleTimeout: idle})
		defer p.Close()

		c := mustGet(t, p)
		fc := fake(c)
		done(p, c)
		time.Sleep(idle - time.Millisecond)
		synctest.Wait()
		if fc.isClosed() {
			t.Fatal("conn closed before IdleTimeout")
		}
		time.Sleep(idle)
		synctest.Wait()
		if !fc.isClosed() {
			t.Fatal("conn still open after 2×IdleTimeout")
		}
		if s := p.Stats(); s.Reaped != 1 || s.Open != 0 {
			t.Errorf("stats = %+v, want 1 reaped, 0 open", s)
		}

		// A conn that is used restarts its idle clock, and one in use
		// (even with its slot already freed by the exchange, before Put)
		// is never reaped.
		c = mustGet(t, p)
		fc = fake(c)
		done(p, c)
		time.Sleep(idle - time.Second)
		c = mustGet(t, p)
		if fake(c) != fc {
			t.Fatal("idle conn not reused")
		}
		time.Sleep(3 * idle)
		c.Release()                           // the exchange ended; Put comes later
		time.Sleep(idle/2 + time.Millisecond) // at least one reaper tick
		synctest.Wait()
		if fc.isClosed() {
			t.Fatal("conn reaped while handed out")
		}
		p.Put(c)
		time.Sleep(idle - time.Millisecond)
		synctest.Wait()
		if fc.isClosed() {
			t.Fatal("conn reaped before IdleTimeout after its last use")
		}
		time.Sleep(idle)
		synctest.Wait()
		if !fc.isClosed() {
			t.Fatal("conn not reaped after its last use")
		}
	})
}

func TestPoolWaitersFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 1})
		defer p.Close()
		c0 := mustGet(t, p)

		const n = 5
		order := make(chan int, n)
		for i := range n {
			go func() {
				c := mustGet(t, p)
				order <- i
				done(p, c)
			}()
			synctest.Wait() // queue in order
		}
		if len(order) != 0 {
			t.Fatal("a waiter got a conn while the only one was held")
		}
		done(p, c0)
		for want := range n {
			if got := <-order; got != want {
				t.Fatalf("waiter %d served in place %d", got, want)
			}
		}
		synctest.Wait() // the last waiter gives its conn back
		if dials, _, _ := d.counts(); dials != 1 {
			t.Errorf("dials = %d, want 1", dials)
		}
		d.checkConns(t)
	})
}

func TestPoolWaiterCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 1})
		defer p.Close()
		c0 := mustGet(t, p)

		cause := errors.New("client went away")
		ctxA, cancelA := context.WithCancelCause(t.Context())
		a := goGet(ctxA, p)
		synctest.Wait()
		b := goGet(t.Context(), p)
		synctest.Wait()
		c := goGet(t.Context(), p)
		synctest.Wait()

		cancelA(cause)
		synctest.Wait()
		if r := <-a; r.err == nil || !errors.Is(r.err, cause) {
			t.Fatalf("cancelled waiter: Get = %v, %v; want its ctx cause", r.c, r.err)
		}
		pending(t, b)
		pending(t, c)

		done(p, c0)
		rb := <-b
		if rb.err != nil {
			t.Fatalf("second waiter failed: %v", rb.err)
		}
		synctest.Wait()
		pending(t, c)
		done(p, rb.c)
		if rc := <-c; rc.err != nil {
			t.Fatalf("third waiter failed: %v", rc.err)
		} else {
			done(p, rc.c)
		}
		if dials, _, _ := d.counts(); dials != 1 {
			t.Errorf("dials = %d, want 1", dials)
		}
		d.checkConns(t)
	})
}

func TestPoolSharedDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(100)
		d.gate = make(chan struct{})
		p := transport.NewPool(d, transport.PoolConfig{})
		defer p.Close()

		const n = 50
		results := make([]<-chan getResult, n)
		for i := range results {
			results[i] = goGet(t.Context(), p)
		}
		synctest.Wait()
		if dials, inflight, _ := d.counts(); dials != 1 || inflight != 1 {
			t.Fatalf("%d concurrent Gets on an empty upstream: %d dials (%d in flight), want 1", n, dials, inflight)
		}
		d.gate <- struct{}{}
		var conns []transport.Conn
		for _, ch := range results {
			r := <-ch
			if r.err != nil {
				t.Fatalf("Get: %v", r.err)
			}
			if len(conns) > 0 && fake(r.c) != fake(conns[0]) {
				t.Errorf("Get returned %v and %v; want one shared conn", fake(r.c), fake(conns[0]))
			}
			conns = append(conns, r.c)
		}
		if dials, _, _ := d.counts(); dials != 1 {
			t.Errorf("dials = %d, want 1", dials)
		}
		if got := fake(conns[0]).Available(); got != 100-n {
			t.Errorf("Available = %d, want %d", got, 100-n)
		}
		for _, c := range conns {
			done(p, c)
		}
		// A multiplexed conn with free slots serves the next caller at once.
		c := mustGet(t, p)
		done(p, c)
		if s := p.Stats(); s.Dials != 1 || s.Gets != n+1 || s.Waits != n || s.Open != 1 {
			t.Errorf("stats = %+v", s)
		}
		d.checkConns(t)
	})
}

func TestPoolHTTP1Caps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		d.gate = make(chan struct{})
		p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 4, MaxPendingDials: 2})
		defer p.Close()

		// The first conn teaches the pool the upstream has one slot per conn.
		first := goGet(t.Context(), p)
		synctest.Wait()
		d.gate <- struct{}{}
		r := <-first
		if r.err != nil {
			t.Fatal(r.err)
		}
		held := []transport.Conn{r.c}

		const n = 6
		results := make([]<-chan getResult, n)
		for i := range results {
			results[i] = goGet(t.Context(), p)
			synctest.Wait()
		}
		if _, inflight, _ := d.counts(); inflight != 2 {
			t.Fatalf("dials in flight = %d, want MaxPendingDials 2", inflight)
		}
		d.gate <- struct{}{}
		d.gate <- struct{}{}
		synctest.Wait()
		// 3 conns open, so only one more may be dialed under the cap of 4.
		if _, inflight, live := d.counts(); inflight != 1 || live != 3 {
			t.Fatalf("dials in flight = %d, live = %d; want 1 and 3", inflight, live)
		}
		d.gate <- struct{}{}
		synctest.Wait()
		if dials, inflight, live := d.counts(); dials != 4 || inflight != 0 || live != 4 {
			t.Fatalf("dials = %d, in flight = %d, live = %d; want 4, 0, 4", dials, inflight, live)
		}
		// Waiters are served in order as conns come back.
		for i, ch := range results {
			select {
			case r := <-ch:
				if r.err != nil {
					t.Fatalf("waiter %d: %v", i, r.err)
				}
				held = append(held, r.c)
			default:
				if len(held) < 4 {
					t.Fatalf("waiter %d not served with %d conns held", i, len(held))
				}
				done(p, held[0])
				held = held[1:]
				r := <-ch
				if r.err != nil {
					t.Fatalf("waiter %d: %v", i, r.err)
				}
				held = append(held, r.c)
			}
		}
		for _, c := range held {
			done(p, c)
		}
		d.mu.Lock()
		maxLive, maxInflight, dials := d.maxLive, d.maxInflight, d.dials
		d.mu.Unlock()
		if maxLive > 4 || maxInflight > 2 || dials != 4 {
			t.Errorf("max live %d (cap 4), max dials in flight %d (cap 2), dials %d (want 4)", maxLive, maxInflight, dials)
		}
		d.checkConns(t)
	})
}

func TestPoolBrokenConn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 1})
		defer p.Close()

		// Broken while idle: not handed out, closed, and its place under
		// MaxConnsPerUpstream goes to a new dial at once.
		a := mustGet(t, p)
		fa := fake(a)
		done(p, a)
		fa.Break()
		b := mustGet(t, p)
		if fake(b) == fa {
			t.Fatal("broken conn handed out")
		}
		if !fa.isClosed() {
			t.Error("broken idle conn not closed")
		}
		// Broken while in use: closed on Put.
		fb := fake(b)
		fb.Break()
		done(p, b)
		if !fb.isClosed() {
			t.Error("broken conn not closed on Put")
		}
		if s := p.Stats(); s.Open != 0 {
			t.Errorf("Open = %d, want 0", s.Open)
		}
		d.checkConns(t)
	})
}

func TestPoolBrokenMultiplexedConn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(2)
		p := transport.NewPool(d, transport.PoolConfig{})
		defer p.Close()

		s1, s2 := mustGet(t, p), mustGet(t, p)
		fc := fake(s1)
		if fake(s2) != fc {
			t.Fatal("second Get did not share the multiplexed conn")
		}
		fc.Break() // GOAWAY: the streams in flight still finish
		done(p, s1)
		if fc.isClosed() {
			t.Fatal("broken conn closed while a stream was in flight on it")
		}
		s3 := mustGet(t, p)
		if fake(s3) == fc {
			t.Fatal("broken conn handed out")
		}
		done(p, s3)
		done(p, s2)
		if !fc.isClosed() {
			t.Fatal("broken conn not closed after its last stream")
		}
		if s := p.Stats(); s.Open != 1 {
			t.Errorf("Open = %d, want 1", s.Open)
		}
		d.checkConns(t)
	})
}

func TestPoolMaxIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{MaxIdlePerUpstream: 2})
		defer p.Close()
		var cs []transport.Conn
		for range 4 {
			cs = append(cs, mustGet(t, p))
		}
		for _, c := range cs {
			done(p, c)
		}
		// The least recently used idle conns are closed.
		for i, c := range cs {
			if closed := fake(c).isClosed(); closed != (i < 2) {
				t.Errorf("conn %d (put %d of 4): closed = %v", i, i+1, closed)
			}
		}
		if s := p.Stats(); s.Open != 2 || s.Reaped != 2 {
			t.Errorf("stats = %+v, want 2 open, 2 reaped", s)
		}
		if _, _, live := d.counts(); live != 2 {
			t.Errorf("live conns = %d, want 2", live)
		}
	})
}

func TestPoolDialFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		d.gate = make(chan struct{})
		refused := transport.NewError(transport.CodeConnectRefused, true, errors.New("connection refused"))
		d.fail = refused
		p := transport.NewPool(d, transport.PoolConfig{})
		defer p.Close()

		var results []<-chan getResult
		for range 3 {
			results = append(results, goGet(t.Context(), p))
			synctest.Wait()
		}
		close(d.gate)
		for i, ch := range results {
			r := <-ch
			if r.err == nil {
				t.Fatalf("waiter %d: Get succeeded", i)
			}
			if transport.CodeOf(r.err) != transport.CodeConnectRefused || !errors.Is(r.err, refused) {
				t.Errorf("waiter %d: Get error = %v, want the dial's", i, r.err)
			}
		}
		if s := p.Stats(); s.Dials != 1 || s.DialFailures != 1 || s.Gets != 0 || s.Open != 0 {
			t.Errorf("stats = %+v", s)
		}
		// The next dial that works serves, once the back-off is over.
		d.mu.Lock()
		d.fail = nil
		d.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
		done(p, mustGet(t, p))
	})
}

// TestPoolDialBackoff checks that Gets for an upstream whose dials fail get
// the dial's error at once, without a dial, for a back-off that doubles per
// failed dial up to its cap and ends with a successful dial.
func TestPoolDialBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		refused := transport.NewError(transport.CodeConnectRefused, true, errors.New("connection refused"))
		d.fail = refused
		p := transport.NewPool(d, transport.PoolConfig{DialBackoff: 10 * time.Millisecond, DialBackoffMax: 35 * time.Millisecond})
		defer p.Close()
		get := func() error {
			t.Helper()
			c, err := p.Get(t.Context(), "up")
			if err == nil {
				done(p, c)
			}
			return err
		}
		// Each failed dial opens a window in which Gets fail at once:
		// 10ms, 20ms, then capped at 35ms.
		for i, window := range []time.Duration{10, 20, 35, 35} {
			window *= time.Millisecond
			if err := get(); !errors.Is(err, refused) {
				t.Fatalf("dial %d: Get error = %v, want the dial's", i, err)
			}
			dials := p.Stats().Dials
			time.Sleep(window - time.Millisecond)
			if err := get(); !errors.Is(err, refused) {
				t.Fatalf("dial %d: Get inside the back-off: %v, want the last dial's error", i, err)
			}
			if s := p.Stats(); s.Dials != dials {
				t.Fatalf("dial %d: a Get inside the back-off dialed (%d dials, want %d)", i, s.Dials, dials)
			}
			time.Sleep(time.Millisecond)
		}
		if s := p.Stats(); s.Dials != 4 || s.DialFailures != 4 || s.FastFails != 4 {
			t.Errorf("stats = %+v, want 4 dials, 4 failures, 4 fast fails", s)
		}
		// A dial that works ends the back-off: the next failure starts
		// again at 10ms.
		d.mu.Lock()
		d.fail = nil
		d.mu.Unlock()
		if err := get(); err != nil {
			t.Fatalf("Get after the back-off: %v", err)
		}
		if s := p.Stats(); s.Dials != 5 || s.Gets != 1 {
			t.Errorf("stats = %+v, want 5 dials, 1 Get", s)
		}
	})
}

// TestPoolDialBackoffOff checks that a negative DialBackoff dials for every
// Get that finds no conn.
func TestPoolDialBackoffOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		d.fail = transport.CodeConnectRefused.Err()
		p := transport.NewPool(d, transport.PoolConfig{DialBackoff: -1})
		defer p.Close()
		for range 5 {
			if _, err := p.Get(t.Context(), "up"); err == nil {
				t.Fatal("Get succeeded")
			}
		}
		if s := p.Stats(); s.Dials != 5 || s.FastFails != 0 {
			t.Errorf("stats = %+v, want 5 dials and no fast fail", s)
		}
	})
}

func TestPoolCallerGivesUpDuringDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		d.gate = make(chan struct{})
		p := transport.NewPool(d, transport.PoolConfig{})
		defer p.Close()

		ctxA, cancelA := context.WithTimeout(t.Context(), time.Second)
		defer cancelA()
		a := goGet(ctxA, p)
		synctest.Wait()
		b := goGet(t.Context(), p)
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		if r := <-a; !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("caller whose ctx ended: Get = %v, %v; want its ctx error", r.c, r.err)
		}
		pending(t, b)
		if _, inflight, _ := d.counts(); inflight != 1 {
			t.Fatalf("dials in flight = %d: a caller giving up cancelled the shared dial", inflight)
		}
		d.gate <- struct{}{}
		rb := <-b
		if rb.err != nil {
			t.Fatalf("next caller: %v", rb.err)
		}
		done(p, rb.c)

		// Alone: the dial's conn goes idle in the pool and serves the next Get.
		held := mustGet(t, p) // the idle conn, so that the next Get dials
		ctxC, cancelC := context.WithCancel(t.Context())
		rc := goGet(ctxC, p)
		synctest.Wait()
		cancelC()
		if r := <-rc; !errors.Is(r.err, context.Canceled) {
			t.Fatalf("Get = %v, %v; want context.Canceled", r.c, r.err)
		}
		d.gate <- struct{}{}
		synctest.Wait()
		if s := p.Stats(); s.Open != 2 {
			t.Fatalf("Open = %d, want 2: the abandoned dial's conn should stay in the pool", s.Open)
		}
		dials, _, _ := d.counts()
		got := mustGet(t, p)
		if d2, _, _ := d.counts(); d2 != dials || fake(got) == fake(held) {
			t.Errorf("Get did not use the abandoned dial's conn")
		}
		done(p, got)
		done(p, held)
		d.checkConns(t)
	})
}

func TestPoolShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{})
		busy := mustGet(t, p)
		idle := mustGet(t, p)
		done(p, idle)

		shut := make(chan error, 1)
		go func() { shut <- p.Shutdown(t.Context()) }()
		synctest.Wait()
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a stream in flight", err)
		default:
		}
		if _, _, called := fake(busy).state(); !called {
			t.Error("Shutdown did not shut the busy conn down")
		}
		if !fake(idle).isClosed() {
			t.Error("idle conn not closed by Shutdown")
		}
		if _, err := p.Get(t.Context(), up); !errors.Is(err, transport.CodeDraining.Err()) {
			t.Errorf("Get after Shutdown = %v, want draining", err)
		}
		if _, err := p.Get(t.Context(), "other:80"); transport.CodeOf(err) != transport.CodeDraining {
			t.Errorf("Get on a new upstream after Shutdown = %v, want draining", err)
		}
		done(p, busy)
		if err := <-shut; err != nil {
			t.Errorf("Shutdown = %v", err)
		}
		if !fake(busy).isClosed() {
			t.Error("conn not closed after Shutdown")
		}
		if s := p.Stats(); s.Open != 0 {
			t.Errorf("Open = %d", s.Open)
		}
		p.Close()
		d.checkConns(t)
	})
}

func TestPoolShutdownTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{})
		busy := mustGet(t, p)
		// A dial in flight must not hold Shutdown up: it is cancelled.
		d.setGate(make(chan struct{}))
		waiter := goGet(t.Context(), p)
		synctest.Wait()

		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		err := p.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown = %v, want deadline exceeded", err)
		}
		if el := time.Since(start); el != 5*time.Second {
			t.Errorf("Shutdown took %v, want the 5s of its ctx", el)
		}
		if r := <-waiter; transport.CodeOf(r.err) != transport.CodeDraining {
			t.Errorf("waiter: Get = %v, want draining", r.err)
		}
		if !fake(busy).isClosed() {
			t.Error("busy conn not closed at the deadline")
		}
		if _, inflight, live := d.counts(); inflight != 0 || live != 0 {
			t.Errorf("after Shutdown: %d dials in flight, %d conns live", inflight, live)
		}
		done(p, busy) // a late Put is harmless
		p.Close()
	})
}

func TestPoolCloseDuringShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{})
		busy := mustGet(t, p)
		shut := make(chan error, 1)
		go func() { shut <- p.Shutdown(context.Background()) }()
		synctest.Wait()
		p.Close() // the hard stop aborts what Shutdown still waits for
		synctest.Wait()
		select {
		case <-shut:
		default:
			t.Fatal("Shutdown still waiting after Close")
		}
		if !fake(busy).isClosed() {
			t.Error("conn not closed by Close")
		}
		done(p, busy)
	})
}

func TestPoolClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		before := bubbleGoroutines(t)
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 3})
		busy := mustGet(t, p)
		idle := mustGet(t, p)
		done(p, idle)
		idle2 := mustGet(t, p) // the idle one again
		d.setGate(make(chan struct{}))
		waiter := goGet(t.Context(), p) // dials the third conn, which never comes
		synctest.Wait()

		if err := p.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
		if r := <-waiter; transport.CodeOf(r.err) != transport.CodeDraining {
			t.Errorf("waiter: Get = %v, want draining", r.err)
		}
		for _, c := range d.all() {
			if !c.isClosed() {
				t.Errorf("%v not closed", c)
			}
		}
		if _, err := p.Get(t.Context(), up); transport.CodeOf(err) != transport.CodeDraining {
			t.Errorf("Get after Close = %v, want draining", err)
		}
		done(p, busy) // late Puts are harmless
		done(p, idle2)
		p.Close() // idempotent
		if s := p.Stats(); s.Open != 0 {
			t.Errorf("Open = %d", s.Open)
		}
		if _, inflight, live := d.counts(); inflight != 0 || live != 0 {
			t.Errorf("after Close: %d dials in flight, %d conns live", inflight, live)
		}
		synctest.Wait()
		if after := bubbleGoroutines(t); after > before {
			t.Errorf("goroutines: %d before NewPool, %d after Close", before, after)
		}
	})
}

var bubbleRE = regexp.MustCompile(`^goroutine \d+ \[[^\n]*, synctest bubble (\d+)\b`)

// bubbleGoroutines counts the goroutines of the calling goroutine's synctest
// bubble. runtime.NumGoroutine would count the whole process, where the
// finalizer or a timer of an earlier test may come and go.
func bubbleGoroutines(t *testing.T) int {
	t.Helper()
	buf := make([]byte, 1<<20)
	self := bubbleRE.FindSubmatch(buf[:runtime.Stack(buf, false)])
	if self == nil {
		t.Fatal("no synctest bubble in the stack header of the calling goroutine")
	}
	n := 0
	for {
		m := runtime.Stack(buf, true)
		if m == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		for _, g := range strings.Split(string(buf[:m]), "\n\n") {
			if id := bubbleRE.FindStringSubmatch(g); id != nil && id[1] == string(self[1]) {
				n++
			}
		}
		return n
	}
}

// TestPoolStress hammers one pool from many goroutines, with conns breaking
// at random, and then checks the books: every conn the pool counts open is
// open, and no slot is held or released twice. Run it with -race.
func TestPoolStress(t *testing.T) {
	for _, capacity := range []int{1, 4} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			d := newFakeDialer(capacity)
			p := transport.NewPool(d, transport.PoolConfig{MaxConnsPerUpstream: 16, MaxIdlePerUpstream: 4})
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			const goroutines, cycles = 32, 500
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 1))
					for range cycles {
						c, err := p.Get(ctx, up)
						if err != nil {
							t.Errorf("Get: %v", err)
							return
						}
						if rng.IntN(20) == 0 {
							fake(c).Break()
						}
						if rng.IntN(4) == 0 {
							runtime.Gosched()
						}
						done(p, c)
					}
				})
			}
			wg.Wait()
			// A dial started for a waiter that was then served by a Put may
			// still be on its way (the dialer counted the conn live, the pool
			// not yet open, or the reverse while an extra idle conn is
			// dropped): look until no such dial falls between the counts.
			for deadline := time.Now().Add(10 * time.Second); ; {
				_, _, before := d.counts()
				s := p.Stats()
				dials, inflight, after := d.counts()
				if s.Dials == uint64(dials) && inflight == 0 && int64(before) == s.Open && s.Open == int64(after) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("Stats().Open = %d, dialer has %d then %d live conns; %d dials started, %d reached the dialer, %d in flight",
						s.Open, before, after, s.Dials, dials, inflight)
					break
				}
				runtime.Gosched()
			}
			if s := p.Stats(); s.Gets != goroutines*cycles {
				t.Errorf("Gets = %d, want %d", s.Gets, goroutines*cycles)
			}
			d.checkConns(t)
			p.Close()
			if _, inflight, live := d.counts(); live != 0 || inflight != 0 {
				t.Errorf("after Close: %d live conns, %d dials in flight", live, inflight)
			}
			for _, c := range d.all() {
				c.mu.Lock()
				if c.closes == 0 {
					t.Errorf("%v never closed", c)
				}
				c.mu.Unlock()
			}
		})
	}
}
