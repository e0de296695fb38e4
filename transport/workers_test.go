package transport_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/proxynow/proxynow/transport"
)

type taskFunc func()

func (f taskFunc) Run() { f() }

// TestWorkersReuse: a task that follows another runs on a worker the first
// left waiting; Do waits for its task, Go does not.
func TestWorkersReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := transport.NewWorkers(time.Second)
		var ran atomic.Int32
		for range 100 {
			w.Do(taskFunc(func() { ran.Add(1) }))
		}
		if ran.Load() != 100 {
			t.Fatalf("Do returned before its task ran: %d of 100", ran.Load())
		}
		synctest.Wait()
		// Usually 1; a Do that returns before its worker is back waiting
		// lets the next task start another.
		if n := w.Live(); n < 1 || n > 10 {
			t.Errorf("%d workers after 100 tasks in a row, want 1 or a few", n)
		}
		release := make(chan struct{})
		done := make(chan struct{})
		w.Go(taskFunc(func() {
			<-release
			close(done)
		}))
		close(release) // Go returned while its task waited for this
		<-done
		waitIdleExit(t, w)
	})
}

// TestWorkersConcurrent: tasks running at once each get a worker; none waits
// for another.
func TestWorkersConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := transport.NewWorkers(time.Second)
		const n = 20
		var started sync.WaitGroup
		started.Add(n)
		release := make(chan struct{})
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				w.Do(taskFunc(func() {
					started.Done()
					<-release
				}))
			})
		}
		started.Wait() // every task runs at the same time
		if got := w.Live(); got != n {
			t.Errorf("%d workers for %d tasks at once", got, n)
		}
		close(release)
		wg.Wait()
		waitIdleExit(t, w)
	})
}

// waitIdleExit lets the idle workers of w time out, in a synctest bubble.
func waitIdleExit(t *testing.T, w *transport.Workers) {
	t.Helper()
	time.Sleep(time.Second)
	synctest.Wait()
	if n := w.Live(); n != 0 {
		t.Errorf("%d workers after the idle timeout, want 0", n)
	}
}

// TestWorkersIdleExit: idle workers exit after the idle timeout, not before.
func TestWorkersIdleExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := transport.NewWorkers(time.Second)
		release := make(chan struct{})
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { w.Do(taskFunc(func() { <-release })) })
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		if n := w.Live(); n != 3 {
			t.Errorf("%d workers just before the idle timeout, want 3", n)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := w.Live(); n != 0 {
			t.Errorf("%d workers after the idle timeout, want 0", n)
		}
	})
}

// TestWorkersClose: Close ends the idle workers at once and a busy one after
// its task; tasks still run after Close.
func TestWorkersClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := transport.NewWorkers(time.Hour)
		w.Do(taskFunc(func() {}))
		release := make(chan struct{})
		busy := make(chan struct{})
		w.Go(taskFunc(func() {
			close(busy)
			<-release
		}))
		<-busy
		synctest.Wait()
		w.Close()
		synctest.Wait()
		if n := w.Live(); n != 1 {
			t.Errorf("%d workers after Close with one busy, want 1", n)
		}
		close(release)
		synctest.Wait()
		if n := w.Live(); n != 0 {
			t.Errorf("%d workers once the busy one is done, want 0", n)
		}
		ran := false
		w.Do(taskFunc(func() { ran = true }))
		synctest.Wait()
		if !ran || w.Live() != 0 {
			t.Errorf("after Close: task ran %v, %d workers left", ran, w.Live())
		}
	})
}
