package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

// DefaultLogBuffer is the number of records an AsyncHandler queues when its
// options leave Buffer at zero. A queued record is about 300 bytes.
const DefaultLogBuffer = 2048

// AsyncHandlerOptions configure an AsyncHandler.
type AsyncHandlerOptions struct {
	// Buffer is the number of records waiting for the writer; beyond it
	// records are dropped and counted. Default DefaultLogBuffer.
	Buffer int
}

// AsyncHandler is a slog.Handler that hands records to a writer goroutine
// through a bounded queue, so logging never blocks the caller on I/O: Handle
// clones the record into the queue and returns; when the queue is full the
// record is dropped and counted (Dropped). The writer calls the inner handler
// one record at a time, in order.
//
// Values are formatted by the writer goroutine, after Handle returned: a
// value logged must not be changed afterwards (strings, numbers, times and
// immutable structs are fine; a LogValuer is resolved late, on the writer).
//
// The handlers that WithAttrs and WithGroup derive share the queue, the
// writer and the drop count. Flush waits until what was queued is written;
// Close flushes and stops the writer. Records handled after Close are written
// synchronously, so nothing logged during shutdown is lost.
type AsyncHandler struct {
	inner slog.Handler
	q     *logQueue
}

var _ slog.Handler = (*AsyncHandler)(nil)

// logQueue is the state shared by an AsyncHandler and those derived from it.
type logQueue struct {
	ch      chan queuedRecord
	dropped atomic.Uint64
	written atomic.Uint64

	// sending counts the Handle and Flush calls between their check of
	// closed and the end of their send: the writer, stopping, drains until
	// it is zero, so no record is queued after the writer has gone.
	sending   atomic.Int64
	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{} // closed by Close, after closed is set
	done      chan struct{} // closed when the writer has exited
}

// queuedRecord is a record and the handler that writes it, or, with flushed
// set, a flush marker.
type queuedRecord struct {
	h       slog.Handler
	r       slog.Record
	flushed chan struct{}
}

// NewAsyncHandler starts the writer goroutine of a new AsyncHandler around
// inner. Close stops it.
func NewAsyncHandler(inner slog.Handler, opts AsyncHandlerOptions) *AsyncHandler {
	n := opts.Buffer
	if n <= 0 {
		n = DefaultLogBuffer
	}
	q := &logQueue{ch: make(chan queuedRecord, n), stop: make(chan struct{}), done: make(chan struct{})}
	go q.run()
	return &AsyncHandler{inner: inner, q: q}
}

func (q *logQueue) run() {
	defer close(q.done)
	for {
		select {
		case e := <-q.ch:
			q.write(e)
		case <-q.stop:
			// closed is set: a sender that has not yet counted itself in
			// sending will see it and write synchronously. Those counted
			// finish their send in a moment; drain until none is left.
			for {
				select {
				case e := <-q.ch:
					q.write(e)
					continue
				default:
				}
				if q.sending.Load() == 0 && len(q.ch) == 0 {
					return
				}
				runtime.Gosched()
			}
		}
	}
}

func (q *logQueue) write(e queuedRecord) {
	if e.flushed != nil {
		close(e.flushed)
		return
	}
	// The inner handler's errors have nowhere to go: slog.Logger drops them
	// too.
	_ = e.h.Handle(context.Background(), e.r)
	q.written.Add(1)
}

// Enabled reports whether the inner handler handles records at level.
func (h *AsyncHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle queues a clone of r for the writer and returns nil; it drops and
// counts r when the queue is full. After Close it writes r synchronously and
// returns the inner handler's error.
func (h *AsyncHandler) Handle(ctx context.Context, r slog.Record) error {
	q := h.q
	q.sending.Add(1)
	if q.closed.Load() {
		q.sending.Add(-1)
		return h.inner.Handle(ctx, r)
	}
	select {
	case q.ch <- queuedRecord{h: h.inner, r: r.Clone()}:
	default:
		q.dropped.Add(1)
	}
	q.sending.Add(-1)
	return nil
}

// WithAttrs returns a handler that adds attrs, sharing h's queue.
func (h *AsyncHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &AsyncHandler{inner: h.inner.WithAttrs(attrs), q: h.q}
}

// WithGroup returns a handler that opens group name, sharing h's queue.
func (h *AsyncHandler) WithGroup(name string) slog.Handler {
	return &AsyncHandler{inner: h.inner.WithGroup(name), q: h.q}
}

// Dropped returns the number of records dropped because the queue was full.
func (h *AsyncHandler) Dropped() uint64 { return h.q.dropped.Load() }

// Written returns the number of records the writer has passed to the inner
// handler.
func (h *AsyncHandler) Written() uint64 { return h.q.written.Load() }

// ErrLogClosed is returned by Flush after Close.
var ErrLogClosed = errors.New("gateway: async log handler closed")

// Flush waits until the records queued before the call have been written. It
// returns ctx's error if ctx ends first, ErrLogClosed after Close (when Close
// has written everything).
func (h *AsyncHandler) Flush(ctx context.Context) error {
	q := h.q
	q.sending.Add(1)
	if q.closed.Load() {
		q.sending.Add(-1)
		return ErrLogClosed
	}
	flushed := make(chan struct{})
	select {
	case q.ch <- queuedRecord{flushed: flushed}:
		q.sending.Add(-1)
	case <-ctx.Done():
		q.sending.Add(-1)
		return ctx.Err()
	}
	select {
	case <-flushed:
		return nil
	case <-q.done:
		return nil // Close drained the queue, the marker with it
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close writes what is queued and stops the writer goroutine. It returns
// ctx's error if ctx ends first; the writer then still exits once it has
// written the queue. Close is idempotent; it closes the queue shared by every
// handler derived from h.
func (h *AsyncHandler) Close(ctx context.Context) error {
	q := h.q
	q.closeOnce.Do(func() {
		q.closed.Store(true)
		close(q.stop)
	})
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logLevelHandler serves the log level: GET returns it ("INFO"), PUT sets it
// from the body ("debug", "info", "warn", "error", or an offset such as
// "info+2"; case-insensitive) and returns the new level. 400 for a level it
// does not know.
func logLevelHandler(lv *slog.LevelVar) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if r.Method == http.MethodPut {
			body, err := io.ReadAll(io.LimitReader(r.Body, 64))
			if err != nil {
				http.Error(w, "reading the level: "+err.Error(), http.StatusBadRequest)
				return
			}
			var l slog.Level
			if err := l.UnmarshalText(bytes.TrimSpace(body)); err != nil {
				http.Error(w, "unknown level "+strconv.Quote(string(body))+": want debug, info, warn or error", http.StatusBadRequest)
				return
			}
			lv.Set(l)
		}
		io.WriteString(w, lv.Level().String()+"\n")
	}
}
