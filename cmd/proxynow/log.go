package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"

	"github.com/proxynow/proxynow/gateway"
)

// logs are the process's log outputs: the logger, and the access log's
// handler. Both write through an asynchronous handler, with a queue each, so
// that neither a slow output nor a burst of access lines holds up a request,
// and a flood of access lines does not crowd out the other logs. Close
// flushes them.
type logs struct {
	log    *slog.Logger
	app    *gateway.AsyncHandler
	access *gateway.AsyncHandler
}

// newLogs makes the process's logs on w: tint on a terminal, JSON otherwise,
// unless format says which. The level, changeable at run time through lv,
// applies to the logger; the access log has its own settings. buffer is the
// queue length of each writer.
func newLogs(w io.Writer, format string, lv *slog.LevelVar, buffer int) *logs {
	sink := newHandler(w, format, lv)
	l := &logs{
		app:    gateway.NewAsyncHandler(sink, gateway.AsyncHandlerOptions{Buffer: buffer}),
		access: gateway.NewAsyncHandler(sink, gateway.AsyncHandlerOptions{Buffer: buffer}),
	}
	l.log = slog.New(l.app)
	return l
}

// close writes what the queues hold, waiting at most five seconds.
func (l *logs) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.access.Close(ctx)
	l.app.Close(ctx)
}

// newHandler returns the handler that formats and writes records: tint on a
// terminal, JSON otherwise, unless format says which.
func newHandler(w io.Writer, format string, lv *slog.LevelVar) slog.Handler {
	if format == "" || format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			format = "text"
		}
	}
	if format == "text" {
		return tint.NewHandler(w, &tint.Options{Level: lv, TimeFormat: time.TimeOnly})
	}
	return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return slog.LevelInfo
	}
	return l
}
