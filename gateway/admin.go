package gateway

import (
	"log/slog"
	"net/http"
)

const levelDebug = slog.LevelDebug

// AdminHandler returns the admin endpoint's handler: /healthz answers 200 while
// the process runs; /readyz answers 200 while the gateway takes traffic and 503
// once a drain has begun, so a load balancer stops sending at once.
func (g *Gateway) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if g.Draining() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("draining\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		st := g.state.Load()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("file: " + st.cfg.File + "\nhash: " + st.cfg.Hash() + "\n"))
	})
	return mux
}
