package transport_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// getOn gets a conn on the shard hint s.
func getOn(t *testing.T, p *transport.Pool, s uint32) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := p.GetShard(ctx, up, s)
	if err != nil {
		t.Fatalf("GetShard(%d): %v", s, err)
	}
	return c
}

func newShardedPool(d transport.Dialer, shards int, cfg transport.PoolConfig) *transport.Pool {
	p := transport.NewPool(d, cfg)
	p.SetShards(shards)
	return p
}

// TestPoolShardsKeepTheirConns checks that a conn goes back to the shard of
// the Get that took it, that a dry shard steals before it dials, and that the
// stolen conn then belongs to the thief.
func TestPoolShardsKeepTheirConns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := newShardedPool(d, 4, transport.PoolConfig{})
		defer p.Close()
		if n := p.Shards(); n != 4 {
			t.Fatalf("Shards = %d, want 4", n)
		}

		a1, b1 := getOn(t, p, 1), getOn(t, p, 1)
		done(p, a1)
		done(p, b1)
		// Shard 1 holds both, b1 on top.
		if c := getOn(t, p, 1); fake(c) != fake(b1) {
			t.Errorf("shard 1 Get = %v, want its most recent conn %v", fake(c), fake(b1))
		} else {
			done(p, c)
		}
		// Shard 2 has none: it steals the top of shard 1 rather than dial.
		c2 := getOn(t, p, 2)
		if fake(c2) != fake(b1) {
			t.Errorf("shard 2 stole %v, want %v", fake(c2), fake(b1))
		}
		done(p, c2) // now shard 2's
		if c := getOn(t, p, 1); fake(c) != fake(a1) {
			t.Errorf("shard 1 Get = %v, want %v (its other conn was stolen)", fake(c), fake(a1))
		} else {
			done(p, c)
		}
		if c := getOn(t, p, 6); fake(c) != fake(b1) { // 6 mod 4 = 2
			t.Errorf("shard 2 Get = %v, want the conn it stole, %v", fake(c), fake(b1))
		} else {
			done(p, c)
		}
		s := p.Stats()
		if dials, _, _ := d.counts(); dials != 2 || s.Dials != 2 {
			t.Errorf("dials = %d (stats %d), want 2", dials, s.Dials)
		}
		if s.Steals != 1 || s.Gets != 6 || s.Reused != 4 || s.Open != 2 || s.Idle != 2 || s.Active != 0 {
			t.Errorf("stats = %+v; want 1 steal, 6 gets, 4 reused, 2 open, 2 idle", s)
		}
		if r := s.ReuseRatio(); r < 0.66 || r > 0.67 {
			t.Errorf("ReuseRatio = %v, want 4/6", r)
		}
		d.checkConns(t)
	})
}

// TestPoolStealSkipsBroken checks that a dry shard does not steal a conn that
// broke while idle on another shard, and closes it.
func TestPoolStealSkipsBroken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := newShardedPool(d, 2, transport.PoolConfig{})
		defer p.Close()
		a := getOn(t, p, 0)
		fa := fake(a)
		done(p, a)
		fa.Break()
		b := getOn(t, p, 1)
		if fake(b) == fa {
			t.Fatal("broken conn stolen")
		}
		if !fa.isClosed() {
			t.Error("broken idle conn not closed")
		}
		done(p, b)
		if s := p.Stats(); s.Open != 1 || s.Steals != 0 {
			t.Errorf("stats = %+v, want 1 open, 0 steals", s)
		}
		d.checkConns(t)
	})
}

// TestPoolMultiplexedAcrossShards checks that every shard uses the free
// slots of a multiplexed conn, without a dial or a steal.
func TestPoolMultiplexedAcrossShards(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(8)
		p := newShardedPool(d, 4, transport.PoolConfig{})
		defer p.Close()
		var held []transport.Conn
		for s := range uint32(8) {
			c := getOn(t, p, s)
			if len(held) > 0 && fake(c) != fake(held[0]) {
				t.Fatalf("shard %d got %v, want the shared conn %v", s, fake(c), fake(held[0]))
			}
			held = append(held, c)
		}
		// All 8 slots are taken: the next Get waits for a dial.
		ninth := goGet(t.Context(), p)
		synctest.Wait()
		r := <-ninth
		if r.err != nil || fake(r.c) == fake(held[0]) {
			t.Fatalf("ninth Get = %v, %v; want a second conn", r.c, r.err)
		}
		held = append(held, r.c)
		for _, c := range held {
			done(p, c)
		}
		s := p.Stats()
		if s.Dials != 2 || s.Steals != 0 || s.Gets != 9 || s.Reused != 7 || s.Open != 2 || s.Idle != 2 {
			t.Errorf("stats = %+v", s)
		}
		d.checkConns(t)
	})
}

// TestPoolWaiterServedFromAnyShard checks that a conn put back on one shard
// serves a caller queued from another (FIFO across shards).
func TestPoolWaiterServedFromAnyShard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := newShardedPool(d, 4, transport.PoolConfig{MaxConnsPerUpstream: 1})
		defer p.Close()
		c0 := getOn(t, p, 0)
		ch := make(chan getResult, 1)
		go func() {
			c, err := p.GetShard(t.Context(), up, 3)
			ch <- getResult{c, err}
		}()
		synctest.Wait()
		pending(t, ch)
		done(p, c0)
		r := <-ch
		if r.err != nil || fake(r.c) != fake(c0) {
			t.Fatalf("waiter on shard 3: %v, %v; want %v", r.c, r.err, fake(c0))
		}
		done(p, r.c)
		// The conn now belongs to shard 3.
		if c := getOn(t, p, 3); fake(c) != fake(c0) {
			t.Errorf("shard 3 Get = %v", fake(c))
		} else {
			done(p, c)
		}
		if s := p.Stats(); s.Steals != 0 || s.Waits != 2 || s.Dials != 1 { // the first Get waited for the dial
			t.Errorf("stats = %+v", s)
		}
		d.checkConns(t)
	})
}

func TestPoolMaxRequestsPerConn(t *testing.T) {
	t.Run("single-slot", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := newFakeDialer(1)
			p := transport.NewPool(d, transport.PoolConfig{MaxRequestsPerConn: 3})
			defer p.Close()
			first := mustGet(t, p)
			fc := fake(first)
			done(p, first)
			for range 2 {
				c := mustGet(t, p)
				if fake(c) != fc {
					t.Fatal("conn not reused before its limit")
				}
				done(p, c)
			}
			if !fc.isClosed() {
				t.Error("conn not closed after its third request")
			}
			c := mustGet(t, p)
			if fake(c) == fc {
				t.Fatal("retired conn handed out")
			}
			done(p, c)
			if s := p.Stats(); s.Dials != 2 || s.Open != 1 {
				t.Errorf("stats = %+v", s)
			}
		})
	})
	t.Run("multiplexed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			d := newFakeDialer(10)
			p := transport.NewPool(d, transport.PoolConfig{MaxRequestsPerConn: 2})
			defer p.Close()
			a, b := mustGet(t, p), mustGet(t, p)
			if fake(a) != fake(b) {
				t.Fatal("second Get did not share the conn")
			}
			c := mustGet(t, p)
			if fake(c) == fake(a) {
				t.Fatal("conn handed out beyond MaxRequestsPerConn")
			}
			done(p, a)
			if fake(a).isClosed() {
				t.Fatal("retired conn closed with a stream in flight")
			}
			done(p, b)
			if !fake(a).isClosed() {
				t.Error("retired conn not closed after its last stream")
			}
			done(p, c)
			d.checkConns(t)
		})
	})
}

func TestPoolMaxConnLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const life = time.Minute
		d := newFakeDialer(1)
		// IdleTimeout above the lifetime: only the lifetime retires.
		p := transport.NewPool(d, transport.PoolConfig{MaxConnLifetime: life, IdleTimeout: time.Hour})
		defer p.Close()
		c := mustGet(t, p)
		fc := fake(c)
		done(p, c)
		busy := mustGet(t, p) // the same conn, kept over its lifetime
		if fake(busy) != fc {
			t.Fatal("conn not reused")
		}
		time.Sleep(life - time.Second)
		synctest.Wait()
		if fc.isClosed() {
			t.Fatal("conn closed before its lifetime")
		}
		time.Sleep(life/4 + time.Second)
		synctest.Wait()
		if fc.isClosed() {
			t.Fatal("conn closed while in use")
		}
		done(p, busy)
		if !fc.isClosed() {
			t.Fatal("conn past its lifetime not closed when put back")
		}
		// An idle conn past its lifetime is closed by the reaper.
		c = mustGet(t, p)
		fc2 := fake(c)
		if fc2 == fc {
			t.Fatal("retired conn handed out")
		}
		done(p, c)
		time.Sleep(life + life/4)
		synctest.Wait()
		if !fc2.isClosed() {
			t.Error("idle conn past its lifetime not closed")
		}
		if s := p.Stats(); s.Open != 0 {
			t.Errorf("Open = %d", s.Open)
		}
	})
}

// TestPoolMultiplexedIdleReap checks the idle timeout and the idle cap on
// multiplexed conns.
func TestPoolMultiplexedIdleReap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 10 * time.Second
		d := newFakeDialer(2)
		p := transport.NewPool(d, transport.PoolConfig{IdleTimeout: idle, MaxIdlePerUpstream: 1})
		defer p.Close()
		var held []transport.Conn
		for range 4 { // two conns of two slots
			held = append(held, mustGet(t, p))
		}
		c1, c2 := fake(held[0]), fake(held[2])
		if c1 == c2 || fake(held[1]) != c1 || fake(held[3]) != c2 {
			t.Fatalf("conns %v %v %v %v; want two pairs", fake(held[0]), fake(held[1]), fake(held[2]), fake(held[3]))
		}
		for _, c := range held {
			done(p, c)
		}
		// Two idle conns, cap 1: the next reaper pass closes the older.
		time.Sleep(idle/2 + time.Millisecond)
		synctest.Wait()
		if !c1.isClosed() || c2.isClosed() {
			t.Fatalf("after one pass: closed %v %v; want the older only", c1.isClosed(), c2.isClosed())
		}
		time.Sleep(idle - time.Second)
		synctest.Wait()
		if c2.isClosed() {
			t.Fatal("conn closed before IdleTimeout")
		}
		time.Sleep(idle)
		synctest.Wait()
		if !c2.isClosed() {
			t.Fatal("idle multiplexed conn not reaped")
		}
		if s := p.Stats(); s.Open != 0 || s.Reaped != 2 {
			t.Errorf("stats = %+v, want 0 open, 2 reaped", s)
		}
	})
}

// TestPoolSetShards checks that idle conns survive a change of the shard
// count and that Puts of conns taken before it still land.
func TestPoolSetShards(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := newShardedPool(d, 2, transport.PoolConfig{})
		defer p.Close()
		var held []transport.Conn
		for s := range uint32(4) {
			held = append(held, getOn(t, p, s))
		}
		done(p, held[0])
		done(p, held[1])
		p.SetShards(3)
		if n := p.Shards(); n != 3 {
			t.Fatalf("Shards = %d", n)
		}
		done(p, held[2]) // taken under the old set
		done(p, held[3])
		for s := range uint32(4) {
			held[s] = getOn(t, p, s)
		}
		for _, c := range held {
			done(p, c)
		}
		if s := p.Stats(); s.Dials != 4 || s.Open != 4 || s.Gets != 8 || s.Reused != 4 {
			t.Errorf("stats = %+v; want 4 dials, 4 open, 8 gets, 4 reused", s)
		}
		p.SetShards(0) // GOMAXPROCS
		d.checkConns(t)
	})
}

// TestPoolSteadyReuse runs a steady load over many shards, as the gateway
// does with one shard hint per downstream conn: once warm, the pool opens at
// most one conn per 1000 Gets.
func TestPoolSteadyReuse(t *testing.T) {
	for _, capacity := range []int{1, 100} {
		d := newFakeDialer(capacity)
		p := newShardedPool(d, 4, transport.PoolConfig{})
		const workers = 16
		run := func(rounds int) {
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for range rounds {
						c, err := p.GetShard(t.Context(), up, uint32(w))
						if err != nil {
							t.Error(err)
							return
						}
						done(p, c)
					}
				})
			}
			wg.Wait()
		}
		run(50)
		warm := p.Stats()
		run(1000)
		s := p.Stats()
		gets, dials := s.Gets-warm.Gets, s.Dials-warm.Dials
		if gets != workers*1000 || dials*1000 > gets {
			t.Errorf("capacity %d: once warm, %d gets opened %d conns; want %d gets, at most 1 conn per 1000", capacity, gets, dials, workers*1000)
		}
		d.checkConns(t)
		p.Close()
	}
}

// TestPoolGetPutAllocs checks that a Get served from a shard and its Put
// allocate nothing.
func TestPoolGetPutAllocs(t *testing.T) {
	for _, capacity := range []int{1, 8} {
		d := newFakeDialer(capacity)
		p := newShardedPool(d, 2, transport.PoolConfig{})
		defer p.Close()
		done(p, getOn(t, p, 1)) // warm
		ctx := context.Background()
		allocs := testing.AllocsPerRun(1000, func() {
			c, err := p.GetShard(ctx, up, 1)
			if err != nil {
				t.Fatal(err)
			}
			c.Release()
			p.Put(c)
		})
		if allocs != 0 {
			t.Errorf("capacity %d: %v allocs per Get and Put, want 0", capacity, allocs)
		}
	}
}

// TestPoolUnsharded runs the basic cycle through the pool kept for
// comparison.
func TestPoolUnsharded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{Unsharded: true})
		a, b := mustGet(t, p), mustGet(t, p)
		done(p, a)
		done(p, b)
		if c := mustGet(t, p); fake(c) != fake(b) {
			t.Errorf("Get = %v, want %v", fake(c), fake(b))
		} else {
			done(p, c)
		}
		if s := p.Stats(); s.Gets != 3 || s.Reused != 1 || s.Open != 2 {
			t.Errorf("stats = %+v", s)
		}
		p.Close()
		if _, _, live := d.counts(); live != 0 {
			t.Errorf("%d conns live after Close", live)
		}
	})
}

// TestPoolIdleCapAcrossShards checks that the reaper enforces
// MaxIdlePerUpstream exactly, closing the least recently used, when shards
// that each stayed within their allowance exceed it together.
func TestPoolIdleCapAcrossShards(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = 10 * time.Second
		d := newFakeDialer(1)
		p := newShardedPool(d, 4, transport.PoolConfig{MaxIdlePerUpstream: 4, IdleTimeout: idle})
		defer p.Close()
		a := []transport.Conn{getOn(t, p, 0), getOn(t, p, 0), getOn(t, p, 0), getOn(t, p, 0)}
		b := []transport.Conn{getOn(t, p, 1), getOn(t, p, 1)}
		done(p, a[0])
		done(p, a[1]) // shard 0 counts 2 of 4: it may hold 4
		done(p, b[0])
		done(p, b[1]) // shard 1 counts 4 of 4: it may hold 2
		done(p, a[2])
		done(p, a[3]) // within shard 0's allowance: 6 idle
		if s := p.Stats(); s.Idle != 6 {
			t.Fatalf("Idle = %d, want 6 before the reaper", s.Idle)
		}
		time.Sleep(idle/2 + time.Millisecond)
		synctest.Wait()
		if s := p.Stats(); s.Idle != 4 || s.Open != 4 || s.Reaped != 2 {
			t.Errorf("after a reaper pass: %+v; want 4 idle, 4 open, 2 reaped", s)
		}
		// All went idle in one reaper period: the bottoms of the stacks
		// go first, and the most recently used conn stays.
		closed := 0
		for _, c := range append(a, b...) {
			if fake(c).isClosed() {
				closed++
			}
		}
		if closed != 2 || fake(a[3]).isClosed() || fake(b[1]).isClosed() {
			t.Errorf("%d conns closed, newest of shard 0 closed %v, of shard 1 %v; want 2, false, false",
				closed, fake(a[3]).isClosed(), fake(b[1]).isClosed())
		}
	})
}
