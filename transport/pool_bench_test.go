package transport_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/proxynow/proxynow/transport"
)

// The pool benchmark runs one get/use/put workload through the sharded Pool
// and through two baselines written for the comparison, the designs the Go
// proxies use:
//
//   - mutexLIFOPool: one pool under one sync.Mutex with a LIFO slice per
//     upstream, as net/http's Transport keeps its idle conns;
//   - chanPool: one buffered channel per upstream, as Traefik's fast proxy
//     does (the runtime locks the channel on every send and receive).
//
// It also runs the pool ProxyNow had before (PoolConfig.Unsharded: one mutex
// per upstream, taken on every Get and Put).
//
// Each goroutine of b.RunParallel stands for one downstream connection: it
// takes a shard hint once, as a server does at accept, and then loops. The
// conn is a single-slot one whose methods are atomics, so the figures are the
// pools' own cost.
//
//	go test -run '^$' -bench BenchmarkPoolGetPut -cpu 1,2,4,8,16 -benchmem ./transport/

const benchAddr = "upstream.bench:80"

// benchConn is a single-slot conn made of atomics, padded to its own cache
// lines like the pool's.
type benchConn struct {
	slot   atomic.Int32
	closed atomic.Bool
	_      [120]byte
}

var errBenchClosed = errors.New("bench: closed")

func (c *benchConn) Reserve() bool {
	return !c.closed.Load() && c.slot.CompareAndSwap(0, 1)
}
func (c *benchConn) Release() { c.slot.Store(0) }
func (c *benchConn) RoundTrip(context.Context, *transport.Request) (*transport.Response, error) {
	return nil, transport.CodeInternal.Err()
}
func (c *benchConn) Available() int {
	if c.closed.Load() || c.slot.Load() != 0 {
		return 0
	}
	return 1
}
func (c *benchConn) Idle() bool { return c.slot.Load() == 0 }
func (c *benchConn) Err() error {
	if c.closed.Load() {
		return errBenchClosed
	}
	return nil
}
func (c *benchConn) Shutdown(context.Context) error { return c.Close() }
func (c *benchConn) Close() error                   { c.closed.Store(true); return nil }

type benchDialer struct{ dials atomic.Int64 }

func (d *benchDialer) Dial(context.Context, string) (transport.Conn, error) {
	d.dials.Add(1)
	return &benchConn{}, nil
}

// benchPool is what the workload needs from a pool.
type benchPool interface {
	Get(ctx context.Context, addr string, hint uint32) (transport.Conn, error)
	Put(addr string, c transport.Conn)
	Close()
}

// shardedPool adapts transport.Pool (sharded, or Unsharded for the previous
// pool).
type shardedPool struct{ p *transport.Pool }

func (s shardedPool) Get(ctx context.Context, addr string, hint uint32) (transport.Conn, error) {
	return s.p.GetShard(ctx, addr, hint)
}
func (s shardedPool) Put(_ string, c transport.Conn) { s.p.Put(c) }
func (s shardedPool) Close()                         { s.p.Close() }

// mutexLIFOPool is the first baseline: one mutex over every upstream's LIFO
// slice of idle conns.
type mutexLIFOPool struct {
	d       transport.Dialer
	maxIdle int

	mu  sync.Mutex // guards ups and the slices
	ups map[string]*[]transport.Conn
}

func newMutexLIFOPool(d transport.Dialer) *mutexLIFOPool {
	return &mutexLIFOPool{d: d, maxIdle: 64, ups: make(map[string]*[]transport.Conn)}
}

func (p *mutexLIFOPool) Get(ctx context.Context, addr string, _ uint32) (transport.Conn, error) {
	for {
		p.mu.Lock()
		l := p.ups[addr]
		if l == nil || len(*l) == 0 {
			p.mu.Unlock()
			break
		}
		n := len(*l) - 1
		c := (*l)[n]
		(*l)[n] = nil
		*l = (*l)[:n]
		p.mu.Unlock()
		if c.Reserve() {
			return c, nil
		}
		c.Close()
	}
	c, err := p.d.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c.Reserve()
	return c, nil
}

func (p *mutexLIFOPool) Put(addr string, c transport.Conn) {
	if c.Err() != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	l := p.ups[addr]
	if l == nil {
		l = new([]transport.Conn)
		p.ups[addr] = l
	}
	if len(*l) >= p.maxIdle {
		p.mu.Unlock()
		c.Close()
		return
	}
	*l = append(*l, c)
	p.mu.Unlock()
}

func (p *mutexLIFOPool) Close() {}

// chanPool is the second baseline: one buffered channel of idle conns per
// upstream, looked up in a copy-on-write map as the sharded pool does.
type chanPool struct {
	d       transport.Dialer
	maxIdle int
	ups     atomic.Pointer[map[string]chan transport.Conn]
	mu      sync.Mutex // serialises adding upstreams
}

func newChanPool(d transport.Dialer) *chanPool {
	p := &chanPool{d: d, maxIdle: 64}
	p.ups.Store(&map[string]chan transport.Conn{})
	return p
}

func (p *chanPool) idle(addr string) chan transport.Conn {
	if ch := (*p.ups.Load())[addr]; ch != nil {
		return ch
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	m := *p.ups.Load()
	if ch := m[addr]; ch != nil {
		return ch
	}
	nm := make(map[string]chan transport.Conn, len(m)+1)
	for k, v := range m {
		nm[k] = v
	}
	ch := make(chan transport.Conn, p.maxIdle)
	nm[addr] = ch
	p.ups.Store(&nm)
	return ch
}

func (p *chanPool) Get(ctx context.Context, addr string, _ uint32) (transport.Conn, error) {
	ch := p.idle(addr)
	for {
		select {
		case c := <-ch:
			if c.Reserve() {
				return c, nil
			}
			c.Close()
			continue
		default:
		}
		break
	}
	c, err := p.d.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	c.Reserve()
	return c, nil
}

func (p *chanPool) Put(addr string, c transport.Conn) {
	if c.Err() != nil {
		c.Close()
		return
	}
	select {
	case p.idle(addr) <- c:
	default:
		c.Close()
	}
}

func (p *chanPool) Close() {}

// localPB: every worker runs on a copy of its *testing.PB on its own stack.
// RunParallel allocates the PBs (32 bytes each) from the goroutines as they
// start, often from one P's cache, so that two workers' PBs can share a cache
// line, and PB.Next writes its PB on every iteration: a false sharing of the
// harness that costs each pool the same ~30 ns per op on two cores and made
// the results depend on where the PBs landed. Next only uses its own PB and
// the shared iteration counter it points to, so the copy counts the same.

// BenchmarkPoolGetPut: Get, use (the exchange frees the slot), Put, from
// GOMAXPROCS goroutines. The pools are made inside the benchmark, after -cpu
// has set GOMAXPROCS, so the sharded pool has one shard per P.
func BenchmarkPoolGetPut(b *testing.B) {
	pools := []struct {
		name string
		make func(transport.Dialer) benchPool
	}{
		{"sharded", func(d transport.Dialer) benchPool {
			return shardedPool{transport.NewPool(d, transport.PoolConfig{})}
		}},
		{"mutex", func(d transport.Dialer) benchPool { return newMutexLIFOPool(d) }},
		{"chan", func(d transport.Dialer) benchPool { return newChanPool(d) }},
		{"unsharded", func(d transport.Dialer) benchPool {
			return shardedPool{transport.NewPool(d, transport.PoolConfig{Unsharded: true})}
		}},
	}
	for _, pc := range pools {
		b.Run(pc.name, func(b *testing.B) {
			d := &benchDialer{}
			p := pc.make(d)
			defer p.Close()
			ctx := context.Background()
			var hints atomic.Uint32
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(shared *testing.PB) {
				pb := *shared            // see localPB
				hint := hints.Add(1) - 1 // once per "downstream connection"
				for pb.Next() {
					c, err := p.Get(ctx, benchAddr, hint)
					if err != nil {
						b.Error(err)
						return
					}
					c.Release() // the exchange is done: its slot is free
					p.Put(benchAddr, c)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(d.dials.Load()), "dials")
		})
	}
}

// BenchmarkPoolGetPutMultiplexed is the same workload on one multiplexed
// conn (100 slots), which every shard shares: the pool's own cost on top of
// the conn's Reserve.
func BenchmarkPoolGetPutMultiplexed(b *testing.B) {
	for _, unsharded := range []bool{false, true} {
		name := "sharded"
		if unsharded {
			name = "unsharded"
		}
		b.Run(name, func(b *testing.B) {
			d := newFakeDialer(100)
			p := transport.NewPool(d, transport.PoolConfig{Unsharded: unsharded})
			defer p.Close()
			ctx := context.Background()
			var hints atomic.Uint32
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(shared *testing.PB) {
				pb := *shared // see localPB
				hint := hints.Add(1) - 1
				for pb.Next() {
					c, err := p.GetShard(ctx, benchAddr, hint)
					if err != nil {
						b.Error(err)
						return
					}
					c.Release()
					p.Put(c)
				}
			})
		})
	}
}
