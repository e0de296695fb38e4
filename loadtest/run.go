package loadtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Run runs one workload and returns what it measured. It returns early, with
// what was measured so far and Result.Interrupted set, when ctx is done.
//
// Failed requests are counted by kind in the Result, not returned. Run
// returns an error only when the workload cannot start: an invalid Config
// (see Config), a host that does not resolve (HTTP/3), or no UDP socket.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	t, err := cfg.defaults()
	if err != nil {
		return nil, err
	}
	r, err := newRunner(ctx, t)
	if err != nil {
		return nil, err
	}
	return r.run(ctx), nil
}

// runner is one run: its streams, their slots, and the schedule.
type runner struct {
	t       *target
	c       *client
	reqs    []*http.Request // one template per URL
	streams []*stream
	slots   []*slot

	runStart     time.Time // warm-up starts
	measureStart time.Time // measurement starts
	measureEnd   time.Time // measurement ends; zero without Config.Duration
	warmupN      int64     // open loop: requests of the schedule in the warm-up
	tickets      atomic.Int64
}

func newRunner(ctx context.Context, t *target) (*runner, error) {
	c, err := newClient(ctx, t)
	if err != nil {
		return nil, err
	}
	r := &runner{t: t, c: c}
	host := t.cfg.Header.Get("Host")
	hdr := t.cfg.Header.Clone()
	hdr.Del("Host")
	for _, u := range t.urls {
		req, err := http.NewRequest(t.cfg.Method, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("loadtest: %w", err)
		}
		req.Header = hdr
		if host != "" {
			req.Host = host
		}
		r.reqs = append(r.reqs, req)
	}
	r.slots = make([]*slot, t.conns)
	for i := range r.slots {
		r.slots[i] = newSlot(c)
	}
	r.streams = make([]*stream, t.streams)
	for i := range r.streams {
		r.streams[i] = &stream{
			r:      r,
			id:     int64(i),
			slot:   r.slots[i/t.perConn],
			urlIdx: i % len(r.reqs),
			status: make(map[int]int64),
			buf:    make([]byte, 32<<10),
		}
	}
	return r, nil
}

func (r *runner) run(parent context.Context) *Result {
	cfg := &r.t.cfg
	r.runStart = time.Now()
	r.measureStart = r.runStart.Add(cfg.Warmup)
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	if cfg.Duration > 0 {
		r.measureEnd = r.measureStart.Add(cfg.Duration)
		var c2 context.CancelFunc
		ctx, c2 = context.WithDeadline(ctx, r.measureEnd)
		defer c2()
	}
	if cfg.Rate > 0 {
		r.warmupN = int64(math.Ceil(cfg.Warmup.Seconds() * cfg.Rate))
	}

	var wg sync.WaitGroup
	for _, st := range r.streams {
		wg.Go(func() { st.run(ctx) })
	}
	done := make(chan struct{})
	var pwg sync.WaitGroup
	if cfg.Progress != nil {
		pwg.Go(func() { r.progress(done) })
	}

	// CPU time counts from the end of the warm-up.
	cpu0 := cpuTime()
	if cfg.Warmup > 0 {
		tm := time.NewTimer(cfg.Warmup)
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
		}
		cpu0 = cpuTime()
	}
	wg.Wait()
	cpu := cpuTime() - cpu0
	end := time.Now()
	close(done)
	pwg.Wait()
	for _, s := range r.slots {
		s.close()
	}

	res := &Result{
		Proto:   cfg.Proto,
		URL:     r.t.urls[0].String(),
		Method:  cfg.Method,
		Conns:   r.t.conns,
		Streams: r.t.perConn,
		NewConn: cfg.NewConn,
		Rate:    cfg.Rate,
		Start:   r.measureStart,
		Warmup:  cfg.Warmup,
		Status:  make(map[int]int64),
		CPU:     cpu,
		Step:    cfg.Step,
	}
	if cfg.NewConn {
		res.Conns, res.Streams = r.t.streams, 1
	}
	res.Interrupted = parent.Err() != nil
	var last time.Time
	for _, st := range r.streams {
		res.Requests += st.requests
		for k, n := range st.errs {
			res.Errors[k] += n
		}
		for code, n := range st.status {
			res.Status[code] += n
		}
		res.BytesIn += st.bytesIn
		res.BytesOut += st.bytesOut
		res.Unsent += st.unsent
		res.Latency.Merge(&st.latency)
		res.TTFB.Merge(&st.ttfb)
		for i, n := range st.timeline {
			if i >= len(res.Timeline) {
				res.Timeline = append(res.Timeline, make([]int64, i+1-len(res.Timeline))...)
			}
			res.Timeline[i] += n
		}
		if st.lastDone.After(last) {
			last = st.lastDone
		}
	}
	for _, s := range r.slots {
		s.mu.Lock()
		res.Setup.Merge(&s.setup)
		res.Dials += s.dials
		res.Resumed += s.resumed
		res.ZeroRTT += s.zeroRTT
		s.mu.Unlock()
	}
	switch {
	case res.Interrupted:
		stop := end
		if !r.measureEnd.IsZero() && r.measureEnd.Before(stop) {
			stop = r.measureEnd
		}
		res.Duration = max(0, stop.Sub(r.measureStart))
	case cfg.Requests > 0 && (r.measureEnd.IsZero() || end.Before(r.measureEnd)):
		// The count was done before any time limit.
		res.Duration = max(0, last.Sub(r.measureStart))
	default:
		res.Duration = cfg.Duration
	}
	// The timeline covers the measured duration, no more and no less: a run
	// whose last steps had no completion ends in zeros.
	if n := int((res.Duration + cfg.Step - 1) / cfg.Step); len(res.Timeline) > n {
		res.Timeline = res.Timeline[:n]
	} else if len(res.Timeline) < n {
		res.Timeline = append(res.Timeline, make([]int64, n-len(res.Timeline))...)
	}
	return res
}

func (r *runner) progress(done <-chan struct{}) {
	cfg := &r.t.cfg
	tk := time.NewTicker(cfg.ProgressInterval)
	defer tk.Stop()
	var prev int64
	prevT := time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-tk.C:
			p := Progress{Proto: cfg.Proto}
			for _, st := range r.streams {
				p.Requests += st.done.Load()
				p.Errors += st.failed.Load()
			}
			if now.Before(r.measureStart) {
				p.Warmup = true
				p.Elapsed = now.Sub(r.runStart)
			} else {
				p.Elapsed = now.Sub(r.measureStart)
			}
			p.Rate = float64(p.Requests-prev) / now.Sub(prevT).Seconds()
			prev, prevT = p.Requests, now
			cfg.Progress(p)
		}
	}
}

// stream is one sequence of requests, one at a time, on a slot's conn. Its
// figures are written only by its own goroutine and read after it ends,
// except done and failed, which feed the progress line.
type stream struct {
	r      *runner
	id     int64
	slot   *slot
	urlIdx int
	buf    []byte

	requests int64
	errs     [numErrorKinds]int64
	status   map[int]int64
	bytesIn  int64
	bytesOut int64
	unsent   int64
	latency  Histogram
	ttfb     Histogram
	timeline []int64
	lastDone time.Time

	done   atomic.Int64 // measured requests completed or failed
	failed atomic.Int64

	// The requests' context and its timeout (see arm).
	rctx     context.Context
	rcancel  context.CancelCauseFunc
	watchdog *time.Timer
}

func (st *stream) run(ctx context.Context) {
	defer st.release()
	if st.r.t.cfg.Rate > 0 {
		st.openLoop(ctx)
		return
	}
	st.closedLoop(ctx)
}

func (st *stream) closedLoop(ctx context.Context) {
	cfg := &st.r.t.cfg
	for ctx.Err() == nil {
		measuring := !time.Now().Before(st.r.measureStart)
		if measuring && cfg.Requests > 0 && st.r.tickets.Add(1) > cfg.Requests {
			return
		}
		st.do(ctx, time.Time{}, measuring)
	}
}

// openLoop sends requests at the intended times of the schedule: the g-th
// request of the run (all streams together) is due at runStart + g/Rate, and
// stream i sends those with g mod N = i, N the number of streams.
func (st *stream) openLoop(ctx context.Context) {
	r := st.r
	cfg := &r.t.cfg
	n := int64(len(r.streams))
	end := int64(math.MaxInt64) // first index after the measured ones
	if cfg.Requests > 0 {
		end = r.warmupN + cfg.Requests
	}
	tm := time.NewTimer(time.Hour)
	tm.Stop()
	defer tm.Stop()
	for g := st.id; g < end; g += n {
		due := r.runStart.Add(time.Duration(float64(g) * 1e9 / cfg.Rate))
		if !r.measureEnd.IsZero() && !due.Before(r.measureEnd) {
			return
		}
		waited := false
		if d := time.Until(due); d > 0 {
			waited = true
			tm.Reset(d)
			select {
			case <-tm.C:
			case <-ctx.Done():
			}
		}
		// The run's context may learn of its end a little after the end: a
		// request sent then would be neither counted nor unsent.
		if ctx.Err() != nil || r.ended() {
			if waited {
				// On schedule: the run ended while this stream waited for
				// the next due time (a timer firing a little late is not
				// being behind).
				g += n
			}
			st.countUnsent(g, end)
			return
		}
		st.do(ctx, due, g >= r.warmupN)
	}
}

// ended reports whether the measurement is over (Config.Duration).
func (r *runner) ended() bool {
	return !r.measureEnd.IsZero() && !time.Now().Before(r.measureEnd)
}

// countUnsent counts the measured requests from index g on that were due
// before the run stopped but never sent.
func (st *stream) countUnsent(g, end int64) {
	r := st.r
	stop := time.Now()
	if !r.measureEnd.IsZero() && r.measureEnd.Before(stop) {
		stop = r.measureEnd
	}
	due := int64(math.Ceil(stop.Sub(r.runStart).Seconds() * r.t.cfg.Rate)) // indices due before stop
	hi := min(due, end)
	n := int64(len(r.streams))
	for g = max(g, r.warmupN); g < hi; g += n {
		if (g-st.id)%n == 0 {
			st.unsent++
		}
	}
}

// request returns a request for the stream's next URL, on ctx.
func (st *stream) request(ctx context.Context) *http.Request {
	tmpl := st.r.reqs[st.urlIdx]
	st.urlIdx++
	if st.urlIdx == len(st.r.reqs) {
		st.urlIdx = 0
	}
	req := tmpl.WithContext(ctx)
	if body := st.r.t.cfg.Body; len(body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return req
}

// do sends one request and records it if measuring. due is the intended
// send time in an open loop, zero in a closed loop (the request starts when
// sent).
func (st *stream) do(ctx context.Context, due time.Time, measuring bool) {
	cfg := &st.r.t.cfg
	rctx := st.arm(ctx)
	defer st.disarm()

	var (
		lc    *liveConn
		cn    conn
		start = due
	)
	if cfg.NewConn {
		if start.IsZero() {
			start = time.Now()
		}
		c, d, ph, err := st.r.c.dial(rctx, st.slot, cfg.Resume && cfg.Proto == H3)
		if err != nil {
			st.fail(ctx, ph, err, measuring)
			return
		}
		cn = c
		defer cn.close()
		// The connection counts with its request: not in the warm-up, not
		// when cut off by the end of the run.
		counted := false
		defer func() {
			if counted {
				st.slot.mu.Lock()
				st.slot.recordDialLocked(d)
				st.slot.mu.Unlock()
			}
		}()
		counted = st.exchange(ctx, rctx, nil, cn, start, measuring)
		if h, ok := cn.(*h3Conn); ok && h.dialedEarly && counted {
			// Whether an early connection resumed a session, and whether
			// the server took its 0-RTT data, is known once the handshake
			// is done.
			cs := h.qc.ConnectionState()
			st.slot.mu.Lock()
			if cs.TLS.DidResume {
				st.slot.resumed++
			}
			if cs.Used0RTT {
				st.slot.zeroRTT++
			}
			st.slot.mu.Unlock()
		}
		return
	}
	lc, ph, err := st.slot.get(rctx)
	if err != nil {
		st.fail(ctx, ph, err, measuring)
		return
	}
	defer st.slot.put(lc)
	if start.IsZero() {
		start = time.Now()
	}
	st.exchange(ctx, rctx, lc, lc.conn, start, measuring)
}

// exchange sends one request on cn (which is lc's, unless in new-connection
// mode) and reads the response, and records it if measuring. It reports
// whether it was recorded.
func (st *stream) exchange(ctx, rctx context.Context, lc *liveConn, cn conn, start time.Time, measuring bool) bool {
	req := st.request(rctx)
	resp, err := cn.roundTrip(req)
	if err != nil {
		st.connFailed(lc, err)
		return st.fail(ctx, phaseRequest, err, measuring)
	}
	ttfb := time.Since(start)
	var n int64
	for {
		m, rerr := resp.Body.Read(st.buf)
		n += int64(m)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	resp.Body.Close()
	end := time.Now()
	if err != nil {
		st.connFailed(lc, err)
		return st.fail(ctx, phaseRequest, err, measuring)
	}
	if lc != nil && resp.Close {
		st.slot.retire(lc) // the server said Connection: close
	}
	if !measuring || (!st.r.measureEnd.IsZero() && end.After(st.r.measureEnd)) {
		return false
	}
	st.requests++
	st.status[resp.StatusCode]++
	st.bytesIn += n
	st.bytesOut += req.ContentLength
	st.latency.Record(end.Sub(start))
	st.ttfb.Record(ttfb)
	st.mark(end)
	st.done.Add(1)
	return true
}

// connFailed retires lc after a request failed on it, unless only the
// request's own stream was reset or timed out and the connection is still
// usable.
func (st *stream) connFailed(lc *liveConn, err error) {
	if lc == nil {
		return
	}
	timedOut := context.Cause(st.rctx) == errRequestTimeout
	if st.r.t.cfg.Proto == H1 || !lc.usable() || !(timedOut || streamLevel(err)) {
		st.slot.retire(lc)
	}
}

// errRequestTimeout is the cause of a request context cancelled by the
// stream's watchdog.
var errRequestTimeout = errors.New("loadtest: request timeout")

// arm returns the context for the stream's next request and starts its
// timeout (Config.Timeout). One cancellable context and one timer serve all
// the stream's requests until one times out: a context and a timer per
// request cost several allocations and a timer-heap update each.
func (st *stream) arm(run context.Context) context.Context {
	if st.rctx == nil || st.rctx.Err() != nil {
		if st.rcancel != nil {
			st.rcancel(nil)
		}
		ctx, cancel := context.WithCancelCause(run)
		st.rctx, st.rcancel = ctx, cancel
		st.watchdog = time.AfterFunc(time.Hour, func() { cancel(errRequestTimeout) })
	}
	st.watchdog.Reset(st.r.t.cfg.Timeout)
	return st.rctx
}

// disarm stops the timeout of the current request. If it fired, the next
// request gets a new context.
func (st *stream) disarm() {
	if !st.watchdog.Stop() {
		st.rcancel(errRequestTimeout) // fired, or firing: make sure the context is done
	}
}

// release frees the stream's context at its end.
func (st *stream) release() {
	if st.rcancel != nil {
		st.watchdog.Stop()
		st.rcancel(nil)
	}
}

// fail records a failed request, unless the run was over: requests cut off
// by the end of the run are not errors.
// It reports whether it was recorded.
func (st *stream) fail(ctx context.Context, p phase, err error, measuring bool) bool {
	if ctx.Err() != nil || !measuring {
		return false
	}
	end := time.Now()
	if !st.r.measureEnd.IsZero() && end.After(st.r.measureEnd) {
		return false
	}
	k := classify(p, err)
	if p == phaseRequest && context.Cause(st.rctx) == errRequestTimeout {
		k = ErrTimeout
	}
	st.errs[k]++
	st.mark(end)
	st.done.Add(1)
	st.failed.Add(1)
	return true
}

// mark counts a completion in the timeline.
func (st *stream) mark(end time.Time) {
	st.lastDone = end
	i := int(end.Sub(st.r.measureStart) / st.r.t.cfg.Step)
	if i < 0 {
		return
	}
	for len(st.timeline) <= i {
		st.timeline = append(st.timeline, 0)
	}
	st.timeline[i]++
}
