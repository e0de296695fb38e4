package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is an io.Writer safe for the writer goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.b.String(), "\n"), "\n")
}

func closeLog(t testing.TB, h *AsyncHandler) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestAsyncHandlerWritesInOrder(t *testing.T) {
	var buf lockedBuffer
	h := NewAsyncHandler(slog.NewJSONHandler(&buf, nil), AsyncHandlerOptions{Buffer: 64})
	defer closeLog(t, h)
	log := slog.New(h)
	for i := range 50 {
		log.Info("m", "i", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	lines := buf.lines()
	if len(lines) != 50 {
		t.Fatalf("%d lines after Flush, want 50", len(lines))
	}
	for i, l := range lines {
		var rec struct{ I int }
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.I != i {
			t.Fatalf("line %d: %q (%v)", i, l, err)
		}
	}
	if h.Written() != 50 || h.Dropped() != 0 {
		t.Errorf("written %d dropped %d", h.Written(), h.Dropped())
	}
}

func TestAsyncHandlerDerivedShareQueue(t *testing.T) {
	var buf lockedBuffer
	h := NewAsyncHandler(slog.NewJSONHandler(&buf, nil), AsyncHandlerOptions{Buffer: 8})
	log := slog.New(h).With("svc", "gw").WithGroup("req")
	log.Info("a", "path", "/x")
	closeLog(t, h) // closing the root closes the derived handlers' queue
	lines := buf.lines()
	if len(lines) != 1 || !strings.Contains(lines[0], `"svc":"gw"`) || !strings.Contains(lines[0], `"req":{"path":"/x"}`) {
		t.Fatalf("lines: %q", lines)
	}
	// After Close, a derived handler writes synchronously.
	log.Info("late")
	if lines := buf.lines(); len(lines) != 2 || !strings.Contains(lines[1], `"msg":"late"`) {
		t.Fatalf("after close: %q", lines)
	}
	if err := h.Flush(context.Background()); err != ErrLogClosed {
		t.Errorf("Flush after Close: %v", err)
	}
}

// stallHandler blocks in Handle until release is closed: a sink that has
// stopped draining (a full pipe, a stuck terminal).
type stallHandler struct {
	slog.Handler
	entered chan struct{} // receives once per Handle call
	release chan struct{}
}

func (s *stallHandler) Handle(ctx context.Context, r slog.Record) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Handler.Handle(ctx, r)
}

// TestAsyncHandlerStalledSink: with the sink stuck, Handle keeps returning at
// once; what does not fit in the queue is dropped and counted; once the sink
// drains, everything queued is written.
func TestAsyncHandlerStalledSink(t *testing.T) {
	var buf lockedBuffer
	sink := &stallHandler{Handler: slog.NewJSONHandler(&buf, nil), entered: make(chan struct{}, 1), release: make(chan struct{})}
	const queue, total = 16, 1000
	h := NewAsyncHandler(sink, AsyncHandlerOptions{Buffer: queue})
	log := slog.New(h)

	log.Info("first")
	select { // the writer holds "first" inside the stuck sink
	case <-sink.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never reached the sink")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total - 1 {
			log.Info("m", "i", i)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Handle blocked on a stalled sink")
	}
	if got := h.Dropped(); got != total-1-queue {
		t.Errorf("dropped %d, want %d", got, total-1-queue)
	}
	close(sink.release)
	closeLog(t, h)
	if got := len(buf.lines()); got != queue+1 {
		t.Errorf("%d lines written, want %d", got, queue+1)
	}
	if h.Written()+h.Dropped() != total {
		t.Errorf("written %d + dropped %d != %d", h.Written(), h.Dropped(), total)
	}
}

// TestAsyncHandlerCloseRace: records logged concurrently with Close are
// either queued before the writer stops or written synchronously: none is
// lost.
func TestAsyncHandlerCloseRace(t *testing.T) {
	for range 20 {
		var buf lockedBuffer
		h := NewAsyncHandler(slog.NewTextHandler(&buf, nil), AsyncHandlerOptions{Buffer: 4096})
		log := slog.New(h)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 200 {
					log.Info("m")
				}
			})
		}
		closeLog(t, h)
		wg.Wait()
		if n := len(buf.lines()); n != 800 || h.Dropped() != 0 {
			t.Fatalf("%d lines, %d dropped; want 800, 0", n, h.Dropped())
		}
	}
}

func TestAsyncHandlerFlushContext(t *testing.T) {
	sink := &stallHandler{Handler: slog.NewTextHandler(io.Discard, nil), entered: make(chan struct{}, 1), release: make(chan struct{})}
	h := NewAsyncHandler(sink, AsyncHandlerOptions{Buffer: 1})
	slog.New(h).Info("stuck")
	select {
	case <-sink.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never reached the sink")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.Flush(ctx); err != context.DeadlineExceeded {
		t.Errorf("Flush with a stuck sink: %v", err)
	}
	close(sink.release)
	closeLog(t, h)
}

func BenchmarkAsyncHandler(b *testing.B) {
	h := NewAsyncHandler(slog.NewJSONHandler(discardWriter{}, nil), AsyncHandlerOptions{})
	defer closeLog(b, h)
	b.ReportAllocs()
	for b.Loop() {
		r := slog.NewRecord(time.Time{}, slog.LevelInfo, "m", 0)
		r.AddAttrs(slog.String("k", "v"), slog.Int("n", 1))
		h.Handle(context.Background(), r)
	}
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

func TestLogLevelHandler(t *testing.T) {
	lv := new(slog.LevelVar)
	srv := httptest.NewServer(logLevelHandler(lv))
	defer srv.Close()
	do := func(method, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL, strings.NewReader(body))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", ""); code != 200 || body != "INFO\n" {
		t.Errorf("GET: %d %q", code, body)
	}
	if code, body := do("PUT", "debug\n"); code != 200 || body != "DEBUG\n" || lv.Level() != slog.LevelDebug {
		t.Errorf("PUT debug: %d %q, level %v", code, body, lv.Level())
	}
	if code, _ := do("PUT", "loud"); code != 400 || lv.Level() != slog.LevelDebug {
		t.Errorf("PUT loud: %d, level %v", code, lv.Level())
	}
	if code, body := do("PUT", "WARN"); code != 200 || body != "WARN\n" {
		t.Errorf("PUT WARN: %d %q", code, body)
	}
}
