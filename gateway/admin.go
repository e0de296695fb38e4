package gateway

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
)

const levelDebug = slog.LevelDebug

// AdminHooks are the process-level actions the admin endpoint triggers; cmd
// provides them. A nil hook disables its endpoint (405).
type AdminHooks struct {
	// Drain starts a drain, as SIGTERM does. It returns at once.
	Drain func()
	// Reload re-reads the config file, as SIGHUP does, and returns the
	// error that kept the old config (with file, line and field) or nil.
	Reload func() error
	// Phase returns the drain phase ("serving", "not_ready", ...) and the
	// streams cut so far.
	Phase func() (phase string, cut int64)
	// Metrics is the registry GET /metrics serves (the gateway's metrics
	// and the process's); nil: 404.
	Metrics prometheus.Gatherer
	// LogLevel is the level GET and PUT /loglevel read and set; nil: 404.
	LogLevel *slog.LevelVar
}

// AdminHandler returns the admin endpoint's handler:
//
//	GET  /healthz  200 while the process runs
//	GET  /readyz   200 while taking traffic, 503 once a drain has begun
//	GET  /status   JSON: config file, hash, reloads, in-flight streams, drain phase
//	POST /reload   re-read the config file: 200 with the new hash, or 400 with the error
//	POST /drain    begin a graceful drain: 202
//	GET  /metrics  Prometheus metrics (text, or protobuf with native histograms); 404 with metrics.enabled false
//	GET  /loglevel the log level, "INFO"
//	PUT  /loglevel set it from the body ("debug", "info", "warn", "error"): 200 with the new level, 400
//	GET  /debug/pprof/ Go's profiles (net/http/pprof), as Caddy's admin endpoint has them
func (g *Gateway) AdminHandler(hooks AdminHooks) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	if hooks.Metrics != nil {
		metrics := metricsHandler(hooks.Metrics, g.log)
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
			if !g.Config().MetricsEnabled() {
				http.Error(w, "metrics are off (metrics.enabled: false)", http.StatusNotFound)
				return
			}
			metrics.ServeHTTP(w, r)
		})
	}
	if hooks.LogLevel != nil {
		h := logLevelHandler(hooks.LogLevel)
		mux.Handle("GET /loglevel", h)
		mux.Handle("PUT /loglevel", h)
	}
	text := func(w http.ResponseWriter, code int, s string) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		w.Write([]byte(s + "\n"))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if g.Draining() {
			text(w, http.StatusServiceUnavailable, "draining")
			return
		}
		text(w, http.StatusOK, "ready")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := struct {
			Status
			Phase      string `json:"drain_phase"`
			StreamsCut int64  `json:"streams_cut"`
		}{Status: g.Status(), Phase: "serving"}
		if hooks.Phase != nil {
			st.Phase, st.StreamsCut = hooks.Phase()
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(st)
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if hooks.Reload == nil {
			text(w, http.StatusMethodNotAllowed, "reload is not available: the gateway runs the embedded default")
			return
		}
		if err := hooks.Reload(); err != nil {
			text(w, http.StatusBadRequest, "reload failed, the previous config keeps serving:\n"+err.Error())
			return
		}
		text(w, http.StatusOK, "reloaded "+g.Config().File+" hash "+g.Config().Hash())
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		if hooks.Drain == nil {
			text(w, http.StatusMethodNotAllowed, "drain is not available")
			return
		}
		hooks.Drain()
		text(w, http.StatusAccepted, "draining")
	})
	return mux
}
