package transport_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// sockServer is a loopback upstream speaking a one-byte protocol: each byte
// it reads is answered with one byte. It closes conns at random, before or
// after answering, as an upstream that times conns out or crashes does.
type sockServer struct {
	ln       net.Listener
	closeOne int // a conn is closed after 1 in closeOne requests
	wg       sync.WaitGroup

	mu    sync.Mutex // guards conns
	conns map[net.Conn]struct{}
}

func startSockServer(t *testing.T, closeOne int) *sockServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sockServer{ln: ln, closeOne: closeOne, conns: make(map[net.Conn]struct{})}
	s.wg.Go(s.accept)
	return s
}

func (s *sockServer) accept() {
	for seed := uint64(1); ; seed++ {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.serve(c, seed) })
	}
}

func (s *sockServer) serve(c net.Conn, seed uint64) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		if rng.IntN(s.closeOne) == 0 {
			if rng.IntN(2) == 0 {
				return // without an answer
			}
			c.Write(b)
			return
		}
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}

// Close stops the server and waits for its goroutines.
func (s *sockServer) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

var (
	errSockClosed = errors.New("sock: closed")
	errSockPeer   = errors.New("sock: peer closed")
)

// sockConn is a transport.Conn over a real TCP conn to a sockServer, with
// capacity slots. Its exchanges take turns on the wire. A reader goroutine
// notices at once when the peer closes the conn, so that it breaks while
// idle, as an HTTP/2 conn does on GOAWAY.
type sockConn struct {
	nc         net.Conn
	cap        int
	io         sync.Mutex // serialises exchanges
	resp       chan byte  // from the reader; closed when it stops
	readerDone chan struct{}

	mu        sync.Mutex // guards everything below
	inUse     int
	err       error
	closed    bool
	idle      chan struct{} // closed when inUse drops to 0; made by Shutdown
	violation string
}

var _ transport.Conn = (*sockConn)(nil)

func (c *sockConn) read() {
	defer close(c.readerDone)
	defer close(c.resp)
	b := make([]byte, 1)
	for {
		if _, err := c.nc.Read(b); err != nil {
			c.fail(errSockPeer)
			return
		}
		c.resp <- b[0]
	}
}

func (c *sockConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// exchange sends one request on the slot the caller reserved and frees it.
func (c *sockConn) exchange() error {
	c.io.Lock()
	_, err := c.nc.Write([]byte{'x'})
	if err == nil {
		if _, ok := <-c.resp; !ok {
			err = errSockPeer
		}
	}
	c.io.Unlock()
	if err != nil {
		c.fail(errSockPeer)
	}
	c.Release()
	return err
}

func (c *sockConn) Reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.inUse >= c.cap {
		return false
	}
	c.inUse++
	return true
}

func (c *sockConn) Release() {
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

func (c *sockConn) RoundTrip(context.Context, *transport.Request) (*transport.Response, error) {
	return nil, transport.CodeInternal.Err()
}

func (c *sockConn) Available() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0
	}
	return c.cap - c.inUse
}

func (c *sockConn) Idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inUse == 0
}

func (c *sockConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *sockConn) Shutdown(ctx context.Context) error {
	c.fail(errSockClosed)
	c.mu.Lock()
	var idle chan struct{}
	if c.inUse > 0 {
		if c.idle == nil {
			c.idle = make(chan struct{})
		}
		idle = c.idle
	}
	c.mu.Unlock()
	var err error
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	c.Close()
	return err
}

// Close closes the socket and waits for the reader to stop.
func (c *sockConn) Close() error {
	c.mu.Lock()
	c.closed = true
	if c.err == nil {
		c.err = errSockClosed
	}
	c.mu.Unlock()
	c.nc.Close()
	<-c.readerDone
	return nil
}

// sockDialer dials sockConns; 1 in failOne dials fails as refused.
type sockDialer struct {
	cap     int
	failOne int

	mu    sync.Mutex // guards rng and conns
	rng   *rand.Rand
	conns []*sockConn
}

func (d *sockDialer) all() []*sockConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.conns)
}

var errSockRefused = transport.NewError(transport.CodeConnectRefused, true, errors.New("sock: refused (injected)"))

func (d *sockDialer) Dial(ctx context.Context, addr string) (transport.Conn, error) {
	d.mu.Lock()
	fail := d.rng.IntN(d.failOne) == 0
	d.mu.Unlock()
	if fail {
		return nil, errSockRefused
	}
	var nd net.Dialer
	nc, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, transport.NewError(transport.CodeConnectRefused, true, err)
	}
	c := &sockConn{nc: nc, cap: d.cap, resp: make(chan byte, 1), readerDone: make(chan struct{})}
	go c.read()
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c, nil
}

// openSockets returns the inodes of this process's open sockets, or nil
// where /proc/self/fd does not exist.
func openSockets(t *testing.T) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	socks := make(map[string]bool)
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			socks[l] = true
		}
	}
	return socks
}

// TestPoolStressSockets runs many goroutines on many shards through one pool
// to a real loopback upstream that closes conns at random, with dials that
// fail, conns the client closes mid-use, Gets that are cancelled, reaping
// and shard changes going on. Then it checks that every conn was closed,
// that no socket and no goroutine is left, and that no slot was misused. Run
// it with -race.
func TestPoolStressSockets(t *testing.T) {
	for _, capacity := range []int{1, 4} {
		t.Run(fmt.Sprintf("capacity=%d", capacity), func(t *testing.T) {
			goroutinesBefore := runtime.NumGoroutine()
			socketsBefore := openSockets(t)

			srv := startSockServer(t, 40)
			addr := srv.ln.Addr().String()
			d := &sockDialer{cap: capacity, failOne: 25, rng: rand.New(rand.NewPCG(uint64(capacity), 3))}
			p := transport.NewPool(d, transport.PoolConfig{
				MaxConnsPerUpstream: 12,
				MaxIdlePerUpstream:  6,
				MaxPendingDials:     4,
				IdleTimeout:         100 * time.Millisecond,
				MaxRequestsPerConn:  60,
			})
			p.SetShards(4)

			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			goroutines, cycles := 48, 250
			if testing.Short() {
				cycles = 80
			}
			var gets, getErrs, cancels, exchErrs atomic.Int64
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Go(func() { // shard changes, as config reloads make them
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
						p.SetShards(2 + i%5)
					}
				}
			})
			var workers sync.WaitGroup
			for g := range goroutines {
				workers.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), uint64(capacity)))
					for range cycles {
						if ctx.Err() != nil {
							t.Error("stress did not finish in time")
							return
						}
						gctx, gcancel := ctx, context.CancelFunc(func() {})
						if rng.IntN(8) == 0 {
							gctx, gcancel = context.WithTimeout(ctx, time.Duration(rng.IntN(200))*time.Microsecond)
						}
						c, err := p.GetShard(gctx, addr, uint32(g))
						gcancel()
						if err != nil {
							switch {
							case errors.Is(err, context.DeadlineExceeded):
								cancels.Add(1)
							case transport.CodeOf(err) == transport.CodeConnectRefused:
								getErrs.Add(1)
							default:
								t.Errorf("Get: %v", err)
								return
							}
							continue
						}
						gets.Add(1)
						sc := transport.Underlying(c).(*sockConn)
						if rng.IntN(50) == 0 {
							sc.Close() // the conn fails under its user
						}
						if rng.IntN(3) == 0 {
							runtime.Gosched()
						}
						if err := sc.exchange(); err != nil {
							exchErrs.Add(1)
						}
						p.Put(c)
					}
				})
			}
			workers.Wait()
			close(stop)
			wg.Wait()

			for _, c := range d.all() {
				c.mu.Lock()
				if c.violation != "" {
					t.Errorf("conn %p: %s", c, c.violation)
				}
				if c.inUse != 0 {
					t.Errorf("conn %p: %d slots still reserved", c, c.inUse)
				}
				c.mu.Unlock()
			}
			// The pool counts as open exactly the conns not closed. The
			// reaper still runs, and a dial started for a waiter that was
			// then served otherwise may still be on its way: look until
			// neither falls between the counts.
			notClosed := func() int64 {
				n := int64(0)
				for _, c := range d.all() {
					c.mu.Lock()
					if !c.closed {
						n++
					}
					c.mu.Unlock()
				}
				return n
			}
			var s transport.PoolStats
			for deadline := time.Now().Add(10 * time.Second); ; {
				before := notClosed()
				s = p.Stats()
				after := notClosed()
				if before == s.Open && s.Open == after {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("Stats().Open = %d, %d then %d conns not closed", s.Open, before, after)
					break
				}
				runtime.Gosched()
			}
			if s.Gets != uint64(gets.Load()) {
				t.Errorf("Stats().Gets = %d, %d Gets succeeded", s.Gets, gets.Load())
			}
			t.Logf("%d gets (%d cancelled, %d dial errors), %d failed exchanges; %+v",
				gets.Load(), cancels.Load(), getErrs.Load(), exchErrs.Load(), s)

			p.Close()
			srv.Close()
			for _, c := range d.all() {
				c.mu.Lock()
				if !c.closed {
					t.Errorf("conn %p not closed after Close", c)
				}
				c.mu.Unlock()
			}
			if socketsBefore != nil {
				for s := range openSockets(t) {
					if !socketsBefore[s] {
						t.Errorf("%s opened by the test is still open", s)
					}
				}
			}
			// A goroutine that was joined (its last statement signalled)
			// may still be on its way out of the scheduler's count: yield
			// until it has left, bounded in time.
			after := runtime.NumGoroutine()
			for deadline := time.Now().Add(5 * time.Second); after > goroutinesBefore && time.Now().Before(deadline); {
				runtime.Gosched()
				after = runtime.NumGoroutine()
			}
			if after > goroutinesBefore {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d before, %d after\n%s", goroutinesBefore, after, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}
