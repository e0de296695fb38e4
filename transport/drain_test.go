package transport_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// fakeServer is a Shutdowner whose work in flight takes a fixed time.
type fakeServer struct {
	work  time.Duration
	coord *transport.Coordinator // to see Draining from inside Shutdown

	mu            sync.Mutex // guards everything below
	shutdownAt    time.Time
	shutdownDone  time.Time
	sawDraining   bool
	closedAt      time.Time
	shutdownCalls int
	closeCalls    int
}

func (s *fakeServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdownCalls++
	s.shutdownAt = time.Now()
	if s.coord != nil {
		s.sawDraining = s.coord.Draining()
	}
	s.mu.Unlock()
	t := time.NewTimer(s.work)
	defer t.Stop()
	select {
	case <-t.C:
		s.mu.Lock()
		s.shutdownDone = time.Now()
		s.mu.Unlock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *fakeServer) Close() error {
	s.mu.Lock()
	s.closeCalls++
	s.closedAt = time.Now()
	s.mu.Unlock()
	return nil
}

type serverState struct {
	shutdownAt, shutdownDone, closedAt time.Time
	sawDraining                        bool
	shutdownCalls, closeCalls          int
}

func (s *fakeServer) state() serverState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return serverState{s.shutdownAt, s.shutdownDone, s.closedAt, s.sawDraining, s.shutdownCalls, s.closeCalls}
}

func TestDrainConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := transport.NewCoordinator(30 * time.Second)
		// The slow one first: it must not delay the others' start.
		slow := &fakeServer{work: 10 * time.Second, coord: c}
		fast1 := &fakeServer{work: time.Second, coord: c}
		fast2 := &fakeServer{work: 3 * time.Second, coord: c}
		pool := &fakeServer{work: 2 * time.Second, coord: c}
		c.AddServer(slow)
		c.AddPool(pool)
		c.AddServer(fast1)
		c.AddServer(fast2)
		if c.Draining() {
			t.Fatal("Draining before Drain")
		}

		start := time.Now()
		if err := c.Drain(t.Context()); err != nil {
			t.Fatalf("Drain = %v", err)
		}
		if el := time.Since(start); el != 12*time.Second {
			t.Errorf("Drain took %v, want 12s (slowest server 10s, then the pool 2s)", el)
		}
		for name, s := range map[string]*fakeServer{"slow": slow, "fast1": fast1, "fast2": fast2} {
			st := s.state()
			if st.shutdownCalls != 1 || !st.shutdownAt.Equal(start) {
				t.Errorf("%s: %d Shutdown calls, first at +%v; want 1 at +0", name, st.shutdownCalls, st.shutdownAt.Sub(start))
			}
			if !st.sawDraining {
				t.Errorf("%s: Draining false during Shutdown", name)
			}
			if st.closeCalls != 0 {
				t.Errorf("%s: closed although it finished in time", name)
			}
		}
		if st := pool.state(); !st.shutdownAt.Equal(start.Add(10 * time.Second)) {
			t.Errorf("pool Shutdown at +%v, want after the servers, at +10s", st.shutdownAt.Sub(start))
		} else if st.closeCalls != 0 {
			t.Error("pool closed although it finished in time")
		}
		if !c.Draining() {
			t.Error("Draining false after Drain")
		}
	})
}

func TestDrainDrainingAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := transport.NewCoordinator(0)
		s := &fakeServer{work: time.Hour}
		c.AddServer(s)
		errc := make(chan error, 1)
		go func() { errc <- c.Drain(t.Context()) }()
		synctest.Wait()
		if !c.Draining() {
			t.Fatal("Draining false while Drain runs")
		}
		// The default timeout is DefaultDrainTimeout.
		start := time.Now()
		if err := <-errc; !errors.Is(err, transport.ErrDrainTimeout) {
			t.Errorf("Drain = %v, want ErrDrainTimeout", err)
		}
		if el := time.Since(start); el != transport.DefaultDrainTimeout {
			t.Errorf("Drain took %v, want DefaultDrainTimeout", el)
		}
	})
}

func TestDrainTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := transport.NewCoordinator(5 * time.Second)
		done := &fakeServer{work: time.Second}
		laggard := &fakeServer{work: time.Minute}
		pool := &fakeServer{work: time.Second}
		c.AddServer(done)
		c.AddServer(laggard)
		c.AddPool(pool)

		start := time.Now()
		err := c.Drain(t.Context())
		if !errors.Is(err, transport.ErrDrainTimeout) {
			t.Fatalf("Drain = %v, want ErrDrainTimeout", err)
		}
		if el := time.Since(start); el != 5*time.Second {
			t.Errorf("Drain took %v, want the 5s timeout", el)
		}
		if st := laggard.state(); st.closeCalls != 1 || !st.closedAt.Equal(start.Add(5*time.Second)) {
			t.Errorf("laggard: %d Close calls at +%v; want 1 at the timeout", st.closeCalls, st.closedAt.Sub(start))
		}
		if st := done.state(); st.closeCalls != 0 {
			t.Error("server that finished in time was closed")
		}
		// The time is up: the pools go straight to the hard close.
		if st := pool.state(); st.shutdownCalls != 1 || st.closeCalls != 1 {
			t.Errorf("pool: %d Shutdown, %d Close calls; want 1 and 1", st.shutdownCalls, st.closeCalls)
		}
	})
}

func TestDrainCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := transport.NewCoordinator(30 * time.Second)
		s1 := &fakeServer{work: 20 * time.Second}
		s2 := &fakeServer{work: 20 * time.Second}
		pool := &fakeServer{work: 20 * time.Second}
		c.AddServer(s1)
		c.AddServer(s2)
		c.AddPool(pool)

		// A second signal cancels ctx: skip to the hard close.
		ctx, cancel := context.WithCancel(t.Context())
		start := time.Now()
		time.AfterFunc(time.Second, cancel)
		err := c.Drain(ctx)
		if !errors.Is(err, transport.ErrDrainTimeout) {
			t.Fatalf("Drain = %v, want ErrDrainTimeout", err)
		}
		if el := time.Since(start); el != time.Second {
			t.Errorf("Drain took %v, want 1s (the cancel)", el)
		}
		for i, s := range []*fakeServer{s1, s2, pool} {
			if st := s.state(); st.closeCalls != 1 {
				t.Errorf("shutdowner %d: %d Close calls, want 1", i, st.closeCalls)
			}
		}

		// Already cancelled: nothing waits at all.
		c2 := transport.NewCoordinator(30 * time.Second)
		s3 := &fakeServer{work: time.Second}
		c2.AddServer(s3)
		ctx2, cancel2 := context.WithCancel(t.Context())
		cancel2()
		start = time.Now()
		if err := c2.Drain(ctx2); !errors.Is(err, transport.ErrDrainTimeout) {
			t.Errorf("Drain with a cancelled ctx = %v, want ErrDrainTimeout", err)
		}
		if el := time.Since(start); el != 0 {
			t.Errorf("Drain with a cancelled ctx took %v", el)
		}
		if st := s3.state(); st.closeCalls != 1 {
			t.Errorf("server: %d Close calls, want 1", st.closeCalls)
		}
	})
}

// TestDrainRealPool drives a real Pool through the coordinator.
func TestDrainRealPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newFakeDialer(1)
		p := transport.NewPool(d, transport.PoolConfig{})
		c := transport.NewCoordinator(5 * time.Second)
		c.AddPool(p)
		busy := mustGet(t, p)
		go func() {
			time.Sleep(2 * time.Second)
			done(p, busy)
		}()
		start := time.Now()
		if err := c.Drain(t.Context()); err != nil {
			t.Errorf("Drain = %v", err)
		}
		if el := time.Since(start); el != 2*time.Second {
			t.Errorf("Drain took %v, want 2s (the stream in flight)", el)
		}
		if _, _, live := d.counts(); live != 0 {
			t.Errorf("%d conns live after Drain", live)
		}
	})
}

// TestDrainPhases checks the phases in order, the shutdown delay during which
// the coordinator is already not ready, the count of streams cut, and that a
// removed server is not drained.
func TestDrainPhases(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var inFlight atomic.Int64
		inFlight.Store(3)
		type seen struct {
			p  transport.Phase
			at time.Duration
			n  int64
		}
		var phases []seen
		start := time.Now()
		c := transport.NewDrainCoordinator(transport.DrainConfig{
			Timeout:       5 * time.Second,
			ShutdownDelay: 2 * time.Second,
			InFlight:      inFlight.Load,
			OnPhase: func(p transport.Phase, n int64) {
				phases = append(phases, seen{p, time.Since(start), n})
			},
		})
		laggard := &fakeServer{work: time.Minute}
		removed := &fakeServer{work: time.Second}
		c.AddServer(laggard)
		c.AddServer(removed)
		c.RemoveServer(removed)
		if err := c.Drain(t.Context()); !errors.Is(err, transport.ErrDrainTimeout) {
			t.Fatalf("Drain = %v", err)
		}
		want := []seen{
			{transport.PhaseNotReady, 0, 3},
			{transport.PhaseDraining, 2 * time.Second, 3},
			{transport.PhaseHardClose, 7 * time.Second, 3},
			{transport.PhaseClosePools, 7 * time.Second, 3},
			{transport.PhaseStopped, 7 * time.Second, 3},
		}
		if len(phases) != len(want) {
			t.Fatalf("phases %v, want %v", phases, want)
		}
		for i := range want {
			if phases[i] != want[i] {
				t.Errorf("phase %d: %v at %v, want %v at %v", i, phases[i].p, phases[i].at, want[i].p, want[i].at)
			}
		}
		if c.Cut() != 3 || c.Phase() != transport.PhaseStopped {
			t.Errorf("Cut %d, Phase %v", c.Cut(), c.Phase())
		}
		if st := removed.state(); st.shutdownCalls != 0 {
			t.Errorf("a removed server was drained")
		}
		// Drain runs once.
		if err := c.Drain(t.Context()); err != nil {
			t.Errorf("second Drain = %v", err)
		}
	})
}
