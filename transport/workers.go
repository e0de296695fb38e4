package transport

import (
	"sync"
	"sync/atomic"
	"time"
)

// A Task is work for Workers: a request stream's handling.
type Task interface{ Run() }

// Workers runs tasks on goroutines that outlive them, so that a server that
// would start a goroutine per stream (HTTP/2, HTTP/3) reuses one whose stack
// has already grown to what a proxied request needs. A fresh goroutine starts
// with a small stack and grows it, copying, as the request goes deeper (the
// server, the gateway, an upstream client): on the HTTP/3 path that copying
// was an eighth of the CPU per request.
//
// A task goes to a worker that is waiting for one, or else to a new worker
// (there is no cap: the servers bound their streams); a worker waits for the
// next task up to the idle timeout and then exits. The zero Workers is not
// usable; use NewWorkers.
type Workers struct {
	work chan *task // unbuffered: a send succeeds only when a worker waits
	idle time.Duration
	live atomic.Int64 // workers running or waiting
	free sync.Pool    // of *task

	quit      chan struct{} // closed by Close
	closeOnce sync.Once
}

// Live returns the number of workers, running a task or waiting for one.
func (w *Workers) Live() int { return int(w.live.Load()) }

// NewWorkers returns Workers whose idle workers exit after idle (10s when
// zero).
func NewWorkers(idle time.Duration) *Workers {
	if idle <= 0 {
		idle = 10 * time.Second
	}
	return &Workers{work: make(chan *task), idle: idle, quit: make(chan struct{})}
}

// Close makes the idle workers exit now, and the busy ones once their task
// is done. Do and Go still run tasks after Close, each on a goroutine of its
// own. A server closes its Workers when it shuts down.
func (w *Workers) Close() {
	w.closeOnce.Do(func() { close(w.quit) })
}

type task struct {
	t    Task
	wait bool          // Do: signal done when t.Run returns
	done chan struct{} // buffered 1
}

func (w *Workers) get(t Task, wait bool) *task {
	tk, _ := w.free.Get().(*task)
	if tk == nil {
		tk = &task{done: make(chan struct{}, 1)}
	}
	tk.t, tk.wait = t, wait
	return tk
}

// Do runs t on a worker and returns when t.Run has returned.
func (w *Workers) Do(t Task) {
	tk := w.get(t, true)
	w.start(tk)
	<-tk.done
	w.free.Put(tk)
}

// Go runs t on a worker and returns at once.
func (w *Workers) Go(t Task) {
	w.start(w.get(t, false))
}

func (w *Workers) start(tk *task) {
	select {
	case w.work <- tk:
	default:
		w.live.Add(1)
		go w.worker(tk)
	}
}

func (w *Workers) worker(tk *task) {
	defer w.live.Add(-1)
	timer := time.NewTimer(w.idle)
	defer timer.Stop()
	for {
		t, wait, done := tk.t, tk.wait, tk.done
		tk.t = nil
		if !wait {
			w.free.Put(tk)
		}
		t.Run()
		if wait {
			done <- struct{}{} // Do recycles tk
		}
		timer.Reset(w.idle)
		select {
		case tk = <-w.work:
		case <-timer.C:
			return
		case <-w.quit:
			return
		}
	}
}
