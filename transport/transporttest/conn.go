package transporttest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/proxynow/proxynow/transport"
)

// Bounds of the suite. Nothing here waits for them to pass: a conforming conn
// finishes well within; they turn a hang into a failure.
const (
	exchangeTimeout = 10 * time.Second // one whole exchange
	promptly        = 3 * time.Second  // a cancel or close takes effect (< SlowWait)
	notYet          = 200 * time.Millisecond
)

// TestConn runs the upstream-connection conformance suite against conns made
// by d to the server at addr, an echo server the caller runs with
// [EchoHandler]. multiplexed says whether the conns have more than one slot.
//
// Each subtest dials its own conn. The suite checks the contract of
// [transport.Conn]: Reserve, Release, Available and Idle; a slot used exactly
// once and freed by Body.Close, by Release or by RoundTrip's error, by the
// time that call returns (a pool looks at Available and Idle right after);
// GET and
// POST (known and unknown length) echoed with their trailer; concurrent
// streams (multiplexed) or one slot (not); cancellation before the head and
// during the body; Shutdown waiting for an exchange in flight; Close.
func TestConn(t *testing.T, d transport.Dialer, addr string, multiplexed bool) {
	t.Helper()
	s := &suite{d: d, addr: addr, multiplexed: multiplexed}
	t.Run("Slots", s.testSlots)
	t.Run("Release", s.testRelease)
	t.Run("GET", s.testGET)
	t.Run("POST", s.testPOST)
	t.Run("Sequential", s.testSequential)
	t.Run("SlotFreedOnce", s.testSlotFreedOnce)
	t.Run("EarlyBodyClose", s.testEarlyBodyClose)
	if multiplexed {
		t.Run("Concurrent", s.testConcurrent)
	} else {
		t.Run("OneSlot", s.testOneSlot)
	}
	t.Run("CancelBeforeHead", s.testCancelBeforeHead)
	t.Run("CancelDuringBody", s.testCancelDuringBody)
	t.Run("Shutdown", s.testShutdown)
	t.Run("ShutdownIdle", s.testShutdownIdle)
	t.Run("Close", s.testClose)
	t.Run("CloseInFlight", s.testCloseInFlight)
}

type suite struct {
	d           transport.Dialer
	addr        string
	multiplexed bool
}

// dial makes a conn, closed when the test ends, and checks its fresh state.
// It returns the conn and its number of slots. An HTTP/2 conn may learn the
// peer's stream limit (SETTINGS) only after Dial, so for multiplexed conns the
// slots are counted after one exchange, once the peer has spoken.
func (s *suite) dial(t *testing.T) (transport.Conn, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	c, err := s.d.Dial(ctx, s.addr)
	if err != nil {
		t.Fatalf("Dial(%s): %v", s.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Err(); err != nil {
		t.Fatalf("fresh conn: Err() = %v", err)
	}
	if !c.Idle() {
		t.Fatal("fresh conn: Idle() = false")
	}
	n := c.Available()
	switch {
	case s.multiplexed && n <= 1:
		t.Fatalf("fresh multiplexed conn: Available() = %d, want > 1", n)
	case !s.multiplexed && n != 1:
		t.Fatalf("fresh conn: Available() = %d, want 1", n)
	}
	if s.multiplexed {
		reserve(t, c)
		s.exchange(t, c, http.MethodGet, "/warm-up", nil, true)
		if !c.Idle() {
			t.Fatal("after the warm-up exchange: Idle() = false")
		}
		if n = c.Available(); n <= 1 {
			t.Fatalf("multiplexed conn: Available() = %d after the peer's settings, want > 1", n)
		}
	}
	return c, n
}

// reserve reserves a slot and fails t when it cannot.
func reserve(t *testing.T, c transport.Conn) {
	t.Helper()
	if !c.Reserve() {
		t.Fatalf("Reserve() = false (Available %d, Err %v)", c.Available(), c.Err())
	}
}

// checkFree checks that the conn is idle with all its n slots free.
func checkFree(t *testing.T, c transport.Conn, n int, when string) {
	t.Helper()
	if !c.Idle() {
		t.Errorf("%s: Idle() = false", when)
	}
	if got := c.Available(); got != n {
		t.Errorf("%s: Available() = %d, want %d", when, got, n)
	}
	if err := c.Err(); err != nil {
		t.Errorf("%s: Err() = %v", when, err)
	}
}

// body is a request body that records whether RoundTrip closed it, which the
// contract forbids.
type body struct {
	io.Reader
	mu     sync.Mutex
	closed bool
}

func (b *body) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

func (b *body) wasClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// unsized hides everything but Read, so that no transport can learn a length.
type unsized struct{ r io.Reader }

func (u unsized) Read(p []byte) (int, error) { return u.r.Read(p) }

func (s *suite) request(method, path string, r io.Reader, contentLength int64) *transport.Request {
	if r == nil {
		r = http.NoBody
	}
	return &transport.Request{
		Method:        method,
		Scheme:        "https",
		Authority:     s.addr,
		Path:          path,
		Header:        http.Header{"X-Conformance": {"1"}},
		ContentLength: contentLength,
		Body:          r,
	}
}

// roundTrip runs RoundTrip, failing t if it does not return within the
// exchange timeout.
func roundTrip(t *testing.T, ctx context.Context, c transport.Conn, req *transport.Request) (*transport.Response, error) {
	t.Helper()
	type result struct {
		resp *transport.Response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := c.RoundTrip(ctx, req)
		ch <- result{resp, err}
	}()
	select {
	case r := <-ch:
		if r.err == nil && (r.resp == nil || r.resp.Body == nil) {
			t.Fatalf("RoundTrip returned a nil response or body without an error")
		}
		return r.resp, r.err
	case <-time.After(exchangeTimeout):
		t.Fatalf("RoundTrip %s %s hung for %v", req.Method, req.Path, exchangeTimeout)
		return nil, nil
	}
}

// readBody reads r to its end within d and returns what it read and the error
// that ended it (nil at io.EOF).
func readBody(t *testing.T, r io.Reader, d time.Duration) ([]byte, error) {
	t.Helper()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(r)
		ch <- result{b, err}
	}()
	select {
	case res := <-ch:
		return res.b, res.err
	case <-time.After(d):
		t.Fatalf("reading the response body hung for %v", d)
		return nil, nil
	}
}

// pattern returns n bytes that differ with seed and position.
func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed*13 + i/251)
	}
	return b
}

// exchange does one echo exchange on a reserved slot of c and checks it all:
// head, echoed body, trailer, and the request body left unclosed at EOF.
func (s *suite) exchange(t *testing.T, c transport.Conn, method, path string, payload []byte, sized bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	var reqBody *body
	var req *transport.Request
	switch {
	case payload == nil:
		req = s.request(method, path, nil, 0)
	case sized:
		reqBody = &body{Reader: bytes.NewReader(payload)}
		req = s.request(method, path, reqBody, int64(len(payload)))
	default:
		reqBody = &body{Reader: unsized{bytes.NewReader(payload)}}
		req = s.request(method, path, reqBody, -1)
	}
	resp, err := roundTrip(t, ctx, c, req)
	if err != nil {
		t.Fatalf("RoundTrip %s %s: %v (code %v)", method, path, err, transport.CodeOf(err))
	}
	defer resp.Body.Close()
	if resp.Status != http.StatusOK {
		t.Errorf("status = %d, want 200", resp.Status)
	}
	checkHeader(t, resp.Header, HeaderMethod, method)
	checkHeader(t, resp.Header, HeaderHost, s.addr)
	checkHeader(t, resp.Header, HeaderPath, path)
	switch {
	case payload == nil:
		// No content: a client need not send content-length: 0, and an
		// HTTP/3 server cannot tell it from an unknown length then.
		if got := resp.Header.Get(HeaderContentLength); got != "0" && got != "-1" {
			t.Errorf("response header %s = %q, want 0 or -1", HeaderContentLength, got)
		}
	case sized:
		checkHeader(t, resp.Header, HeaderContentLength, strconv.Itoa(len(payload)))
	case len(payload) > 0:
		checkHeader(t, resp.Header, HeaderContentLength, "-1")
	}
	if resp.ContentLength != -1 && resp.ContentLength != int64(len(payload)) {
		t.Errorf("response ContentLength = %d, want -1 or %d", resp.ContentLength, len(payload))
	}
	got, err := readBody(t, resp.Body, exchangeTimeout)
	if err != nil {
		t.Fatalf("reading the response body: %v after %d bytes", err, len(got))
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("echoed body: %d bytes, want %d (equal prefix %d)", len(got), len(payload), commonPrefix(got, payload))
	}
	sum := sha256.Sum256(payload)
	if tr := resp.Trailer.Get(TrailerBodySHA256); tr != hex.EncodeToString(sum[:]) {
		t.Errorf("trailer %s after EOF = %q, want %q (trailer %v, header %v)", TrailerBodySHA256, tr, hex.EncodeToString(sum[:]), resp.Trailer, resp.Header)
	}
	if reqBody != nil {
		if reqBody.wasClosed() {
			t.Error("RoundTrip closed the request body")
		}
		if n, _ := io.Copy(io.Discard, reqBody.Reader); n != 0 {
			t.Errorf("RoundTrip left %d bytes of the request body unread", n)
		}
	}
	if err := resp.Body.Close(); err != nil {
		t.Errorf("Body.Close after EOF = %v", err)
	}
}

func checkHeader(t *testing.T, h http.Header, key, want string) {
	t.Helper()
	if got := h.Get(key); got != want {
		t.Errorf("response header %s = %q, want %q", key, got, want)
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// isCancel reports whether err reports the cancel of a request ctx.
func isCancel(err, cause error) bool {
	return transport.CodeOf(err) == transport.CodeClientCancelled || errors.Is(err, cause)
}

func (s *suite) testSlots(t *testing.T) {
	c, n := s.dial(t)
	for i := range n {
		if !c.Reserve() {
			t.Fatalf("Reserve #%d of %d = false", i+1, n)
		}
		if got := c.Available(); got != n-i-1 {
			t.Fatalf("after %d Reserves: Available() = %d, want %d", i+1, got, n-i-1)
		}
		if c.Idle() {
			t.Fatalf("after %d Reserves: Idle() = true", i+1)
		}
	}
	if c.Reserve() {
		t.Fatalf("Reserve beyond the %d slots = true", n)
	}
	if err := c.Err(); err != nil {
		t.Errorf("full conn: Err() = %v; a full conn is not a broken one", err)
	}
	for i := range n {
		c.Release()
		if got := c.Available(); got != i+1 {
			t.Fatalf("after %d Releases: Available() = %d, want %d", i+1, got, i+1)
		}
		if idle := c.Idle(); idle != (i == n-1) {
			t.Fatalf("after %d of %d Releases: Idle() = %v", i+1, n, idle)
		}
	}
	checkFree(t, c, n, "all slots released")
}

func (s *suite) testRelease(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	c.Release()
	checkFree(t, c, n, "after Release")
	// The released slot was not spent: the conn still serves.
	reserve(t, c)
	s.exchange(t, c, http.MethodGet, "/after-release", nil, true)
	checkFree(t, c, n, "after an exchange")
}

func (s *suite) testGET(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	s.exchange(t, c, http.MethodGet, "/get?q=1&r=%2F", nil, true)
	checkFree(t, c, n, "after Body.Close")
}

func (s *suite) testPOST(t *testing.T) {
	for _, size := range []int{1, 1000, 64<<10 + 1, 1 << 20} {
		for _, sized := range []bool{true, false} {
			name := fmt.Sprintf("%d/length=%d", size, size)
			if !sized {
				name = fmt.Sprintf("%d/length=unknown", size)
			}
			t.Run(name, func(t *testing.T) {
				c, n := s.dial(t)
				reserve(t, c)
				if c.Idle() {
					t.Error("slot reserved: Idle() = true")
				}
				s.exchange(t, c, http.MethodPost, "/post", pattern(size, size), sized)
				checkFree(t, c, n, "after Body.Close")
			})
		}
	}
	t.Run("empty/length=unknown", func(t *testing.T) {
		c, n := s.dial(t)
		reserve(t, c)
		s.exchange(t, c, http.MethodPut, "/put", []byte{}, false)
		checkFree(t, c, n, "after Body.Close")
	})
}

// testSequential reuses one conn for exchanges of mixed framing: a conn must
// not lose its framing between them (HTTP/1.1 keep-alive).
func (s *suite) testSequential(t *testing.T) {
	c, n := s.dial(t)
	for i, size := range []int{0, 10, 70 << 10, 3, 0, 200 << 10} {
		reserve(t, c)
		if size == 0 {
			s.exchange(t, c, http.MethodGet, "/seq", nil, true)
		} else {
			s.exchange(t, c, http.MethodPost, "/seq", pattern(size, i), i%2 == 0)
		}
		checkFree(t, c, n, fmt.Sprintf("after exchange %d", i+1))
	}
}

// testSlotFreedOnce checks that the slot of one exchange is given back once:
// closing the body again, or reading after the end, frees nothing more.
func (s *suite) testSlotFreedOnce(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodPost, "/once", bytes.NewReader([]byte("once")), 4))
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	if c.Idle() {
		t.Error("response body open: Idle() = true")
	}
	if got := c.Available(); got != n-1 {
		t.Errorf("response body open: Available() = %d, want %d", got, n-1)
	}
	if _, err := readBody(t, resp.Body, exchangeTimeout); err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	resp.Body.Close()
	resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
	checkFree(t, c, n, "after Body.Close twice")
	if s.multiplexed {
		return
	}
	reserve(t, c)
	if c.Reserve() {
		t.Error("a freed slot counted twice: second Reserve = true")
		c.Release()
	}
	c.Release()
}

// testEarlyBodyClose closes the response body before its end: the slot is
// freed at once, and the conn stays usable (HTTP/2, HTTP/3: the stream is
// reset) or reports itself broken (HTTP/1.1 may close it).
func (s *suite) testEarlyBodyClose(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	payload := pattern(256<<10, 1)
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodPost, "/early", bytes.NewReader(payload), int64(len(payload))))
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatalf("reading 1 KiB of the body: %v", err)
	}
	done := make(chan struct{})
	go func() {
		resp.Body.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(promptly):
		t.Fatalf("Body.Close before EOF hung for %v", promptly)
	}
	if !c.Idle() {
		t.Fatal("Body.Close before EOF: Idle() = false")
	}
	if s.multiplexed {
		checkFree(t, c, n, "after Body.Close before EOF")
	} else if c.Err() != nil {
		return // the conn was closed rather than drained: allowed
	} else if got := c.Available(); got != n {
		t.Fatalf("after Body.Close before EOF: Available() = %d, want %d", got, n)
	}
	reserve(t, c)
	s.exchange(t, c, http.MethodGet, "/after-early-close", nil, true)
	checkFree(t, c, n, "after the next exchange")
}

func (s *suite) testConcurrent(t *testing.T) {
	c, n := s.dial(t)
	k := min(8, n)
	for range k {
		reserve(t, c)
	}
	if got := c.Available(); got != n-k {
		t.Fatalf("%d slots reserved: Available() = %d, want %d", k, got, n-k)
	}
	var wg sync.WaitGroup
	for i := range k {
		wg.Go(func() {
			t.Run(fmt.Sprintf("stream%d", i), func(t *testing.T) {
				s.exchange(t, c, http.MethodPost, fmt.Sprintf("/concurrent/%d", i), pattern(32<<10+i, i), i%2 == 0)
			})
		})
	}
	wg.Wait()
	checkFree(t, c, n, "after the concurrent exchanges")
	// And all at once, in flight together: k bodies held open.
	for range k {
		reserve(t, c)
	}
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	var resps []*transport.Response
	for i := range k {
		resp, err := roundTrip(t, ctx, c, s.request(http.MethodGet, fmt.Sprintf("/open/%d", i), nil, 0))
		if err != nil {
			t.Fatalf("RoundTrip %d with %d bodies open: %v", i, i, err)
		}
		resps = append(resps, resp)
	}
	if c.Idle() || c.Available() != n-k {
		t.Errorf("%d bodies open: Idle() = %v, Available() = %d; want false, %d", k, c.Idle(), c.Available(), n-k)
	}
	for _, resp := range resps {
		if _, err := readBody(t, resp.Body, exchangeTimeout); err != nil {
			t.Errorf("reading body: %v", err)
		}
		resp.Body.Close()
	}
	checkFree(t, c, n, "after closing the bodies")
}

func (s *suite) testOneSlot(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	if c.Reserve() {
		t.Fatal("second Reserve on a one-slot conn = true")
	}
	if got := c.Available(); got != 0 {
		t.Errorf("slot held: Available() = %d, want 0", got)
	}
	// Still held while the response body is open.
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodGet, "/one", nil, 0))
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	if c.Reserve() {
		t.Error("Reserve with a response body open = true")
		c.Release()
	}
	readBody(t, resp.Body, exchangeTimeout)
	resp.Body.Close()
	checkFree(t, c, n, "after Body.Close")
	reserve(t, c)
	c.Release()
}

// testCancelBeforeHead cancels the ctx while RoundTrip waits for the head of
// PathSlow: RoundTrip returns at once, its error frees the slot.
func (s *suite) testCancelBeforeHead(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	cause := errors.New("transporttest: client went away")
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	timer := time.AfterFunc(notYet, func() { cancel(cause) })
	defer timer.Stop()
	start := time.Now()
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodGet, PathSlow, nil, 0))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("RoundTrip %s returned %d after %v, want the cancel", PathSlow, resp.Status, time.Since(start))
	}
	if el := time.Since(start); el > promptly {
		t.Errorf("RoundTrip returned %v after the cancel, want at once", el-notYet)
	}
	if !isCancel(err, cause) {
		t.Errorf("RoundTrip error = %v (code %v), want code client_cancelled or the ctx cause", err, transport.CodeOf(err))
	}
	if !c.Idle() {
		t.Fatal("after RoundTrip's error: Idle() = false; the error must free the slot")
	}
	if !s.multiplexed && c.Err() != nil {
		return // HTTP/1.1 closes the conn to cancel
	}
	checkFree(t, c, n, "after the cancelled exchange")
	reserve(t, c)
	s.exchange(t, c, http.MethodGet, "/after-cancel", nil, true)
}

// testCancelDuringBody cancels the ctx while the body of PathSlowBody is read.
func (s *suite) testCancelDuringBody(t *testing.T) {
	c, n := s.dial(t)
	reserve(t, c)
	cause := errors.New("transporttest: client went away")
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodGet, PathSlowBody, nil, 0))
	if err != nil {
		t.Fatalf("RoundTrip %s: %v", PathSlowBody, err)
	}
	defer resp.Body.Close()
	if resp.Status != http.StatusOK {
		t.Fatalf("status = %d", resp.Status)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		readErr <- err
	}()
	select {
	case err := <-readErr:
		t.Fatalf("body read ended before the cancel: %v", err)
	case <-time.After(notYet):
	}
	cancel(cause)
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("body read to EOF after the cancel, want an error")
		}
		if !isCancel(err, cause) {
			t.Errorf("body read error = %v (code %v), want code client_cancelled or the ctx cause", err, transport.CodeOf(err))
		}
	case <-time.After(promptly):
		t.Fatalf("body read still blocked %v after the cancel", promptly)
	}
	resp.Body.Close()
	if !c.Idle() {
		t.Fatal("after Body.Close: Idle() = false")
	}
	if !s.multiplexed && c.Err() != nil {
		return
	}
	checkFree(t, c, n, "after the cancelled exchange")
	reserve(t, c)
	s.exchange(t, c, http.MethodGet, "/after-cancel", nil, true)
}

// testShutdown starts Shutdown while a request body is still being sent:
// Shutdown waits for the exchange, which completes, and then the conn is done.
func (s *suite) testShutdown(t *testing.T) {
	c, _ := s.dial(t)
	reserve(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	payload := pattern(64<<10, 3)
	pr, pw := io.Pipe()
	defer pw.Close()
	req := s.request(http.MethodPost, "/shutdown", pr, int64(len(payload)))
	type result struct {
		resp *transport.Response
		err  error
	}
	rt := make(chan result, 1)
	go func() {
		resp, err := c.RoundTrip(ctx, req)
		rt <- result{resp, err}
	}()
	// Once the transport has taken the first half, the exchange is in flight.
	half := len(payload) / 2
	wrote := make(chan error, 1)
	go func() {
		_, err := pw.Write(payload[:half])
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("writing the request body: %v", err)
		}
	case r := <-rt:
		t.Fatalf("RoundTrip returned before reading its body: %v", r.err)
	case <-time.After(exchangeTimeout):
		t.Fatal("RoundTrip does not read the request body")
	}

	shut := make(chan error, 1)
	go func() { shut <- c.Shutdown(ctx) }()
	// Shutdown runs on its own goroutine: look for it to begin (Err) rather
	// than assume it did within some time.
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(promptly); c.Err() == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("Err() still nil %v after calling Shutdown", promptly)
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with an exchange in flight", err)
		case <-tick.C:
		}
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with an exchange in flight", err)
	case <-time.After(notYet):
	}
	if c.Reserve() {
		t.Error("Reserve during Shutdown = true")
		c.Release()
	}
	if c.Err() == nil {
		t.Error("Err() = nil during Shutdown")
	}

	go func() {
		_, err := pw.Write(payload[half:])
		pw.CloseWithError(err)
	}()
	var r result
	select {
	case r = <-rt:
	case <-time.After(exchangeTimeout):
		t.Fatal("RoundTrip hung during Shutdown")
	}
	if r.err != nil {
		t.Fatalf("exchange in flight during Shutdown: %v (code %v)", r.err, transport.CodeOf(r.err))
	}
	got, err := readBody(t, r.resp.Body, exchangeTimeout)
	if err != nil {
		t.Fatalf("reading the body during Shutdown: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("echoed body: %d bytes, want %d", len(got), len(payload))
	}
	sum := sha256.Sum256(payload)
	if tr := r.resp.Trailer.Get(TrailerBodySHA256); tr != hex.EncodeToString(sum[:]) {
		t.Errorf("trailer during Shutdown = %q", tr)
	}
	r.resp.Body.Close()
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(promptly):
		t.Fatal("Shutdown still waiting after the exchange ended")
	}
	if c.Err() == nil {
		t.Error("after Shutdown: Err() = nil")
	}
	if c.Reserve() {
		t.Error("after Shutdown: Reserve() = true")
	}
	if got := c.Available(); got != 0 {
		t.Errorf("after Shutdown: Available() = %d, want 0", got)
	}
}

func (s *suite) testShutdownIdle(t *testing.T) {
	c, _ := s.dial(t)
	ctx, cancel := context.WithTimeout(t.Context(), promptly)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown of an idle conn = %v", err)
	}
	if c.Err() == nil {
		t.Error("after Shutdown: Err() = nil")
	}
	if c.Reserve() {
		t.Error("after Shutdown: Reserve() = true")
	}
	if got := c.Available(); got != 0 {
		t.Errorf("after Shutdown: Available() = %d, want 0", got)
	}
}

func (s *suite) testClose(t *testing.T) {
	c, _ := s.dial(t)
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if c.Err() == nil {
		t.Error("after Close: Err() = nil")
	}
	if c.Reserve() {
		t.Error("after Close: Reserve() = true")
	}
	if got := c.Available(); got != 0 {
		t.Errorf("after Close: Available() = %d, want 0", got)
	}
	c.Close() // a second Close must not panic
	ctx, cancel := context.WithTimeout(t.Context(), promptly)
	defer cancel()
	c.Shutdown(ctx) // nor Shutdown after Close
}

// testCloseInFlight closes the conn while a response body is being read: the
// read fails at once.
func (s *suite) testCloseInFlight(t *testing.T) {
	c, _ := s.dial(t)
	reserve(t, c)
	ctx, cancel := context.WithTimeout(t.Context(), exchangeTimeout)
	defer cancel()
	resp, err := roundTrip(t, ctx, c, s.request(http.MethodGet, PathSlowBody, nil, 0))
	if err != nil {
		t.Fatalf("RoundTrip %s: %v", PathSlowBody, err)
	}
	defer resp.Body.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		readErr <- err
	}()
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(promptly):
		t.Fatal("Close blocked with an exchange in flight")
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("body read to EOF after Close, want an error")
		}
	case <-time.After(promptly):
		t.Fatal("body read still blocked after Close")
	}
	if c.Err() == nil {
		t.Error("after Close: Err() = nil")
	}
}
